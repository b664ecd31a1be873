"""Directory objects → the three datasets of docs/sync-api.md, by the rules of the product
(docs/sync-rules.md): the rules for one object (its candidate addresses, its primary address,
a group's name) and the plain-data shapes of a projection.

Every read merges Graph's entries into the directory cache (``shared/model/directory.py``), which
projects the whole directory (a full read) or the keys a delta round affects, by these rules.
The records themselves are typed in ``shared/model/records.py``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .addresses import InvalidAddress, domain_of, normalize_address
from .records import Records
from .rules import NO_RULES, Rules

log = logging.getLogger("shared.projection")  # the name its log lines have always carried

GRAPH_SOURCE = "Graph"
EXCHANGE_SOURCE = "Exchange Online"
USER_TYPE = "#microsoft.graph.user"
GROUP_TYPE = "#microsoft.graph.group"


@dataclass(frozen=True)
class Exclusion:
    """A candidate address or a user left out, and why."""

    dataset: str
    object_id: str
    object_type: str
    value: str | None
    reason: str
    source: str = "Graph"  # or "Exchange Online"; object_type is then its RecipientTypeDetails

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "objectId": self.object_id,
            "objectType": self.object_type,
            "value": self.value,
            "reason": self.reason,
            "source": self.source,
        }


@dataclass
class Projection:
    datasets: dict[str, Records]
    exclusions: list[Exclusion] = field(default_factory=list)

    def excluded(self, dataset: str) -> int:
        return sum(1 for e in self.exclusions if e.dataset == dataset)


@dataclass
class Candidates:
    kept: list[str]
    primary_proxy: str | None  # the first kept "SMTP:" value
    kept_mail: str | None  # the normalized mail, when it is kept
    exclusions: list[Exclusion] = field(default_factory=list)

    @property
    def primary(self) -> str | None:
        """A user's primary address: the kept mail, else the kept ``SMTP:`` value."""
        return self.kept_mail or self.primary_proxy


def candidates(oid: str, otype: str, obj: dict[str, Any], provisioned: frozenset[str], rules: Rules = NO_RULES, *, warn: bool = True,
               source: str = "Graph") -> Candidates:
    """Normalize and check one object's candidate addresses: the kept ones, its primary
    address, and every exclusion with its reason (invalid values are logged with the id,
    unless ``warn`` is false: a report recomputing what a read already logged). ``source``
    names where the object was read: an Exchange Online recipient's ``mail`` is its
    PrimarySmtpAddress and its ``proxyAddresses`` its EmailAddresses, under exactly these rules.
    A candidate that matches an ``EXCLUDE_ADDRESS_PATTERNS`` pattern is not kept, so a user
    whose ``mail`` matches falls back to its kept ``SMTP:`` value (docs/sync-rules.md)."""
    raw: list[tuple[str, bool | None]] = []  # (value, is the uppercase SMTP: primary proxy; None: mail)
    mail = obj.get("mail")
    if isinstance(mail, str) and mail.strip():
        raw.append((mail, None))
    proxies = obj.get("proxyAddresses")
    if isinstance(proxies, list):
        for p in proxies:
            if isinstance(p, str) and p[:5].lower() == "smtp:":
                raw.append((p[5:], p.startswith("SMTP:")))
    out = Candidates([], None, None)
    seen: set[str] = set()
    normalized: dict[str, str] = {}  # each distinct value is normalized once (mail is often also the SMTP: value)
    for value, is_primary in raw:
        address = normalized.get(value)
        try:
            if address is None:
                address = normalized[value] = normalize_address(value)
        except InvalidAddress as exc:
            shown = value.strip().lower()
            if shown not in seen:
                seen.add(shown)
                if warn:
                    log.warning("%s %s: skipped invalid address %r: %s", otype, oid, value, exc)
                out.exclusions.append(Exclusion("addresses", oid, otype, _printable(value), f"invalid address: {exc}", source))
            continue
        if domain_of(address) not in provisioned:
            if address not in seen:
                seen.add(address)
                out.exclusions.append(Exclusion("addresses", oid, otype, address, f"domain {domain_of(address)} is not provisioned", source))
            continue
        why = rules.address_reason(address) if rules.exclude_address_patterns else None
        if why is not None:
            if address not in seen:
                seen.add(address)
                out.exclusions.append(Exclusion("addresses", oid, otype, address, why, source))
            continue
        if address not in seen:
            seen.add(address)
            out.kept.append(address)
        if is_primary is None:
            out.kept_mail = address
        elif is_primary and out.primary_proxy is None:
            out.primary_proxy = address
    return out




def _usable_name(value: Any) -> bool:
    """Not blank, and Unicode text that UTF-8 can carry (JSON escapes can smuggle lone
    surrogates into a Graph string; they would make the request body unsendable). An over-long
    name is kept as the rules define it: the service rejects that record and the run reports it."""
    if not isinstance(value, str) or not value.strip():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def group_name(gid: str, obj: dict[str, Any]) -> str:
    """A group record's ``name``: its displayName, where that is empty its mail, else its id
    (docs/sync-rules.md). A value that cannot be encoded at all (lone surrogates) counts as empty."""
    for value in (obj.get("displayName"), obj.get("mail")):
        if _usable_name(value):
            return value
    return gid


def _printable(value: str) -> str:
    """A raw value as a report can print it: lone surrogates escaped (``\\ud800``)."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
