"""Directory objects → the three datasets of docs/sync-api.md, by the rules of the product
(docs/sync-rules.md): the rules for one object (its candidate addresses, its primary address,
a group's name) and the plain-data shapes of a projection.

Every read merges Graph's entries into the directory cache (``shared/model/directory.py``), which
projects the whole directory (a full read) or the keys a delta round affects, by these rules.
The records themselves are typed in ``shared/model/records.py``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .addresses import SMTP_PREFIXES, InvalidAddress, split_address
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

    @property
    def counted(self) -> bool:
        """False for a contact or recipient that a rule leaves out while it would keep no
        address (an ``addresses`` exclusion without a value): listed, but the ``excluded``
        counts are of candidates, groups and users (docs/sync-rules.md, "Scope and exclusions")."""
        return self.dataset != "addresses" or self.value is not None

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
        return sum(1 for e in self.exclusions if e.dataset == dataset and e.counted)


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
    found: list[tuple[str, str]] = []
    kept, primary_proxy, kept_mail, _, invalid = _sift(obj, provisioned, rules, found)
    if warn:
        warn_invalid(otype, oid, invalid)
    return Candidates(kept, primary_proxy, kept_mail, [Exclusion("addresses", oid, otype, value, why, source) for value, why in found])


class Tally(NamedTuple):
    """One object's candidate rows without the exclusions themselves (a full read's load
    keeps only their count): the kept addresses, the primary address (``Candidates.primary``),
    how many candidates were left out, and the invalid values with why (for the warning)."""

    kept: list[str]
    primary: str | None
    excluded: int
    invalid: list[tuple[str, InvalidAddress]]


_new_tally = tuple.__new__


def tally(obj: dict[str, Any], provisioned: frozenset[str], rules: Rules = NO_RULES) -> Tally:
    """``candidates`` without building ``Exclusion``s, and without logging (``warn_invalid``):
    the same rules (``_sift``; without exclusion patterns, in one pass that builds no list of
    raw values: tests/test_candidate_paths.py holds it equal). Without patterns a candidate's
    verdict is its domain's alone, so kept and excluded addresses never meet: ``kept`` dedups
    the one, ``gone`` the other (and the invalid values as lowered: never a valid address)."""
    if rules.exclude_address_patterns:
        kept, primary_proxy, kept_mail, excluded, invalid = _sift(obj, provisioned, rules, None)
        return _new_tally(Tally, (kept, kept_mail or primary_proxy, excluded, invalid))  # Tally(...) without its __new__'s frame
    kept: list[str] = []
    invalid: list[tuple[str, InvalidAddress]] = []
    gone: set[str] | None = None
    excluded, primary, split = 0, None, None
    mail = obj.get("mail")
    if isinstance(mail, str) and mail and not mail.isspace():  # mail.strip() is not empty
        try:
            split = address, domain = split_address(mail)
        except InvalidAddress as exc:
            gone = {mail.strip().lower()}
            excluded = 1
            invalid.append((mail, exc))
        else:
            if domain in provisioned:
                kept.append(address)
                primary = address  # the kept mail
            else:
                gone = {address}
                excluded = 1
    proxies = obj.get("proxyAddresses")
    if proxies and isinstance(proxies, list):
        for p in proxies:
            if isinstance(p, str) and (head := p[:5]) in SMTP_PREFIXES:  # head.lower() == "smtp:"
                value = p[5:]
                if split is not None and value == mail:
                    address, domain = split
                else:
                    try:
                        address, domain = split_address(value)
                    except InvalidAddress as exc:
                        shown = value.strip().lower()
                        if gone is None:
                            gone = set()
                        if shown not in gone:
                            gone.add(shown)
                            excluded += 1
                            invalid.append((value, exc))
                        continue
                if domain in provisioned:
                    if address not in kept:
                        kept.append(address)
                    if primary is None and head == "SMTP:":
                        primary = address
                elif gone is None:
                    gone = {address}
                    excluded += 1
                elif address not in gone:
                    gone.add(address)
                    excluded += 1
    return _new_tally(Tally, (kept, primary, excluded, invalid))


def warn_invalid(otype: str, oid: str, invalid: list[tuple[str, InvalidAddress]], quiet: frozenset[str] | set[str] = frozenset()) -> None:
    """Log each invalid candidate with the object's id, except those whose value is in
    ``quiet`` (already logged for this object)."""
    for value, exc in invalid:
        if value not in quiet:
            log.warning("%s %s: skipped invalid address %r: %s", otype, oid, value, exc)


def _sift(obj: dict[str, Any], provisioned: frozenset[str], rules: Rules,
          found: list[tuple[str, str]] | None) -> tuple[list[str], str | None, str | None, int, list[tuple[str, InvalidAddress]]]:
    """The candidate rules of one object (docs/sync-rules.md): its ``mail`` and ``smtp:``
    proxies, each normalized (``split_address``), kept when valid, in a provisioned domain and
    matching no exclusion pattern. Returns (kept addresses in order, the first kept ``SMTP:``
    value, the kept mail, the count of distinct candidates left out, the invalid values with
    why); ``found``, when given, receives each exclusion as (value as a report prints it, reason)."""
    raw: list[tuple[str, bool | None]] = []  # (value, is the uppercase SMTP: primary proxy; None: mail)
    mail = obj.get("mail")
    if isinstance(mail, str) and mail and not mail.isspace():  # mail.strip() is not empty
        raw.append((mail, None))
    proxies = obj.get("proxyAddresses")
    if isinstance(proxies, list):
        for p in proxies:
            if isinstance(p, str):
                head = p[:5]
                if head in SMTP_PREFIXES:  # head.lower() == "smtp:"
                    raw.append((p[5:], head == "SMTP:"))
    kept: list[str] = []
    primary_proxy = kept_mail = None
    excluded = 0
    invalid: list[tuple[str, InvalidAddress]] = []
    seen: set[str] = set()
    normalized: dict[str, tuple[str, str]] = {}  # each distinct value is normalized once (mail is often also the SMTP: value)
    patterns = rules.exclude_address_patterns
    for value, is_primary in raw:
        split = normalized.get(value)
        if split is None:
            try:
                split = normalized[value] = split_address(value)
            except InvalidAddress as exc:
                shown = value.strip().lower()
                if shown not in seen:
                    seen.add(shown)
                    excluded += 1
                    invalid.append((value, exc))
                    if found is not None:
                        found.append((_printable(value), f"invalid address: {exc}"))
                continue
        address, domain = split
        if domain not in provisioned:
            why: str | None = f"domain {domain} is not provisioned" if found is not None else ""
        else:
            why = rules.address_reason(address) if patterns else None
        if why is not None:
            if address not in seen:
                seen.add(address)
                excluded += 1
                if found is not None:
                    found.append((address, why))
            continue
        if address not in seen:
            seen.add(address)
            kept.append(address)
        if is_primary is None:
            kept_mail = address
        elif is_primary and primary_proxy is None:
            primary_proxy = address
    return kept, primary_proxy, kept_mail, excluded, invalid


def _usable_name(value: Any) -> bool:
    """Not empty (absent, null or ``""``; a value of blanks is not empty, and the service takes
    any 1 to 256 characters: docs/sync-rules.md), and Unicode text that UTF-8 can carry (JSON
    escapes can smuggle lone surrogates into a Graph string; they would make the request body
    unsendable). An over-long name is kept as the rules define it: the service rejects that
    record and the run reports it."""
    if not isinstance(value, str) or not value:
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
