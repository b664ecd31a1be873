"""Directory objects → the three datasets of docs/sync-api.md, by the rules of the product
(docs/sync-rules.md): the rules for one object (its candidate addresses, its primary address,
a group's name) and the plain-data shapes of a projection.

Every read merges Graph's entries into the directory cache (``shared/directory.py``), which
projects the whole directory (a full read) or the keys a delta round affects, by these rules.
Records are kept in a compact canonical form (tuples with sorted id lists), which is also what
the state stores, so a diff is a plain comparison."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .addresses import InvalidAddress, domain_of, normalize_address
from .rules import NO_RULES, Rules

log = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("addresses", "groups", "users")

GRAPH_SOURCE = "Graph"
EXCHANGE_SOURCE = "Exchange Online"
USER_TYPE = "#microsoft.graph.user"
GROUP_TYPE = "#microsoft.graph.group"

# Canonical record values, keyed by the record key:
#   addresses: address -> ()
#   groups:    id -> (name, (parentId, ...))   parent ids sorted
#   users:     id -> (address, (groupId, ...)) group ids sorted
Records = dict[str, tuple]


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


def to_api_record(dataset: str, key: str, value: tuple) -> dict[str, Any]:
    """The canonical record as the JSON object docs/sync-api.md defines."""
    if dataset == "addresses":
        return {"address": key}
    if dataset == "groups":
        return {"id": key, "name": value[0], "parentIds": list(value[1])}
    if dataset == "users":
        return {"id": key, "address": value[0], "groupIds": list(value[1])}
    raise ValueError(f"unknown dataset {dataset!r}")


def from_api_record(dataset: str, record: dict[str, Any]) -> tuple[str, tuple]:
    """A record as the service returns it → (key, canonical value)."""
    if dataset == "addresses":
        return str(record["address"]).lower(), ()
    if dataset == "groups":
        return str(record["id"]), (str(record["name"]), tuple(sorted(map(str, record.get("parentIds") or ()))))
    if dataset == "users":
        return str(record["id"]), (
            str(record["address"]).lower(),
            tuple(sorted(map(str, record.get("groupIds") or ()))),
        )
    raise ValueError(f"unknown dataset {dataset!r}")



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
    for value, is_primary in raw:
        shown = value.strip().lower()
        try:
            address = normalize_address(value)
        except InvalidAddress as exc:
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


def project(directory: dict[str, list[dict[str, Any]]], provisioned: Iterable[str], rules: Rules = NO_RULES) -> Projection:
    """Project a whole directory held in memory (tests, the emulator's snapshot): each object
    is one entry of a first delta round (a group's ``members`` as its ``members@delta``),
    merged and projected exactly as a full read is (``shared/directory.py``)."""
    from .directory import project_entries

    def entries() -> Iterable[tuple[str, dict[str, Any]]]:
        for u in directory.get("users", ()):
            yield "users", u
        for c in directory.get("contacts", ()):
            yield "contacts", c
        for g in directory.get("groups", ()):
            members = g.get("members") or ()
            entry = {k: v for k, v in g.items() if k != "members"}
            entry["members@delta"] = [m if isinstance(m, dict) else {"id": m} for m in members]
            yield "groups", entry

    return project_entries(entries(), provisioned, rules)
