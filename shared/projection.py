"""Directory objects → the three datasets of sync-api.md, by the rules of the product.

The projector is fed raw Graph objects page by page (so a 100,000-user read never holds the
raw pages), and ``result()`` gives plain data: dicts of canonical records plus every exclusion
with its reason. Records are kept in a compact canonical form (tuples with sorted id lists),
which is also what the state stores, so a diff is a plain comparison."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .addresses import InvalidAddress, domain_of, normalize_address
from .rules import NO_RULES, Rules, Shape, Verdict, judge

log = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("addresses", "groups", "users")

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

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "objectId": self.object_id,
            "objectType": self.object_type,
            "value": self.value,
            "reason": self.reason,
        }


@dataclass
class Projection:
    datasets: dict[str, Records]
    exclusions: list[Exclusion] = field(default_factory=list)

    def excluded(self, dataset: str) -> int:
        return sum(1 for e in self.exclusions if e.dataset == dataset)


def to_api_record(dataset: str, key: str, value: tuple) -> dict[str, Any]:
    """The canonical record as the JSON object sync-api.md defines."""
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


@dataclass
class CacheRows:
    """What a full read leaves for the directory cache (``shared/directory.py``), as rows."""

    objects: list[tuple[str, str, str, int]] = field(default_factory=list)  # id, kind, data, excluded
    kept: list[tuple[str, str]] = field(default_factory=list)  # address, object id
    users: list[tuple[str, str | None]] = field(default_factory=list)  # id, primary address
    members: list[tuple[str, str, str]] = field(default_factory=list)  # group id, member id, member kind


class Projector:
    """Accumulates directory objects and derives the datasets once the read is complete."""

    def __init__(self, provisioned: Iterable[str], *, cache: CacheRows | None = None, rules: Rules = NO_RULES) -> None:
        self.provisioned = frozenset(provisioned)
        self.cache = cache  # when set, every object also leaves its cache rows there
        self.rules = rules  # scope and exclusions (shared/rules.py)
        # With object rules, an object's kept addresses wait for the verdict (kind, kept list).
        self._kept_by: dict[str, tuple[str, list[str]]] = {}
        self._user_types: dict[str, Any] = {}
        self.addresses: set[str] = set()
        self.exclusions: list[Exclusion] = []
        self._user_primary: dict[str, str | None] = {}
        self._group_names: dict[str, str] = {}
        self._contacts: set[str] = set()
        self._members: dict[str, dict[str, str | None]] = {}  # group id -> {member id: @odata.type}

    # --- feeding -------------------------------------------------------------------------
    def add_user(self, obj: dict[str, Any]) -> None:
        uid = _object_id(obj)
        if uid in self._user_primary:
            return  # the same object twice in one read: the first one stands
        cands = self._candidates(uid, "user", obj)
        self._user_primary[uid] = cands.primary
        self._user_types[uid] = obj.get("userType")
        if self.cache is not None:
            self._cache_object(uid, "u", obj, cands)
            self.cache.users.append((uid, cands.primary))

    def add_group(self, obj: dict[str, Any]) -> None:
        gid = _object_id(obj)
        if gid in self._group_names:
            # A later page of a group delta carrying more of its members.
            self.add_members(gid, obj.get("members@delta") or ())
            return
        cands = self._candidates(gid, "group", obj)
        if self.cache is not None:
            self._cache_object(gid, "g", obj, cands)
        self._group_names[gid] = group_name(gid, obj)
        self._members.setdefault(gid, {})
        self.add_members(gid, obj.get("members@delta") or ())

    def add_contact(self, obj: dict[str, Any]) -> None:
        cid = _object_id(obj)
        if cid not in self._contacts:
            self._contacts.add(cid)
            cands = self._candidates(cid, "contact", obj)
            if self.cache is not None:
                self._cache_object(cid, "c", obj, cands)

    def _cache_object(self, oid: str, kind: str, obj: dict[str, Any], cands: Candidates) -> None:
        from .directory import compact_json

        if self.cache is None:
            return
        self.cache.objects.append((oid, kind, compact_json(kind, obj), len(cands.exclusions)))
        self.cache.kept.extend((a, oid) for a in cands.kept)

    def add_members(self, group_id: str, members: Iterable[dict[str, Any]]) -> None:
        bucket = self._members.setdefault(group_id, {})
        for m in members:
            if not isinstance(m, dict) or "@removed" in m:
                continue
            mid = m.get("id")
            if isinstance(mid, str) and mid:
                bucket[mid] = m.get("@odata.type")

    # --- deriving ------------------------------------------------------------------------
    def result(self) -> Projection:
        if self.cache is not None:
            from .directory import member_kind

            for gid, members in self._members.items():
                if gid in self._group_names:
                    self.cache.members.extend((gid, mid, member_kind(otype)) for mid, otype in members.items())
        verdict = self._verdict()
        users = self._user_records(verdict)
        groups = self._group_records(verdict)
        return Projection(
            datasets={"addresses": dict.fromkeys(sorted(self.addresses), ()), "groups": groups, "users": users},
            exclusions=self.exclusions,
        )

    def _verdict(self) -> Verdict:
        """The rules' verdict over the whole read; the kept addresses of the objects it keeps
        join the dataset, and every candidate of an object it leaves out is an exclusion."""
        if not self.rules.judges_objects:
            return judge(Shape(frozenset(), {}, frozenset(), {}), self.rules)
        from .directory import member_kind

        shape = Shape(
            groups=frozenset(self._group_names),
            users=self._user_types,
            contacts=frozenset(self._contacts),
            members={gid: [(mid, member_kind(otype)) for mid, otype in ms.items()] for gid, ms in self._members.items() if gid in self._group_names},
        )
        verdict = judge(shape, self.rules)
        for oid, (otype, kept) in self._kept_by.items():
            why = verdict.reason(oid)
            if why is None:
                self.addresses.update(kept)
            else:
                self.exclusions.extend(Exclusion("addresses", oid, otype, a, why) for a in kept)
        for gid in sorted(self._group_names):
            why = verdict.reason(gid)
            if why is not None:
                self.exclusions.append(Exclusion("groups", gid, "group", self._group_names[gid], why))
        return verdict

    def _group_records(self, verdict: Verdict) -> Records:
        parents: dict[str, list[str]] = {gid: [] for gid in self._group_names if verdict.keeps(gid)}
        for gid, members in self._members.items():
            if gid not in self._group_names or not verdict.keeps(gid):
                continue
            for mid, otype in members.items():
                if self._is_group(mid, otype) and mid in parents:
                    parents[mid].append(gid)
        return {gid: (self._group_names[gid], tuple(sorted(set(parents[gid])))) for gid in sorted(parents)}

    def _user_records(self, verdict: Verdict) -> Records:
        group_ids: dict[str, list[str]] = {}
        for gid, members in self._members.items():
            if gid not in self._group_names or not verdict.keeps(gid):
                continue
            for mid, otype in members.items():
                if self._is_user(mid, otype):
                    group_ids.setdefault(mid, []).append(gid)
        owner: dict[str, str] = {}
        for uid in sorted(self._user_primary):
            primary = self._user_primary[uid]
            why = verdict.reason(uid)
            if why is not None:
                self.exclusions.append(Exclusion("users", uid, "user", primary, why))
                continue
            if primary is None:
                self.exclusions.append(Exclusion("users", uid, "user", None, "no primary address: neither mail nor an SMTP: proxy address is kept"))
                continue
            if primary in owner:
                log.warning("user %s shares the primary address %s with user %s, which keeps the record", uid, primary, owner[primary])
                self.exclusions.append(Exclusion("users", uid, "user", primary, f"primary address already used by user {owner[primary]}, which has the smaller id"))
                continue
            owner[primary] = uid
        return {
            uid: (primary, tuple(sorted(set(group_ids.get(uid, ())))))
            for primary, uid in sorted(owner.items(), key=lambda kv: kv[1])
        }

    def _is_user(self, mid: str, otype: str | None) -> bool:
        if otype:
            return otype == USER_TYPE
        return mid in self._user_primary

    def _is_group(self, mid: str, otype: str | None) -> bool:
        if otype:
            return otype == GROUP_TYPE
        return mid in self._group_names

    def _candidates(self, oid: str, otype: str, obj: dict[str, Any]) -> Candidates:
        cands = candidates(oid, otype, obj, self.provisioned, self.rules)
        if self.rules.judges_objects:
            self._kept_by[oid] = (otype, cands.kept)
        else:
            self.addresses.update(cands.kept)
        self.exclusions.extend(cands.exclusions)
        return cands


def candidates(oid: str, otype: str, obj: dict[str, Any], provisioned: frozenset[str], rules: Rules = NO_RULES, *, quiet: bool = False) -> Candidates:
    """Normalize and check one object's candidate addresses: the kept ones, its primary
    address, and every exclusion with its reason (invalid values are logged with the id).
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
                if not quiet:
                    log.warning("%s %s: skipped invalid address %r: %s", otype, oid, value, exc)
                out.exclusions.append(Exclusion("addresses", oid, otype, _printable(value), f"invalid address: {exc}"))
            continue
        if domain_of(address) not in provisioned:
            if address not in seen:
                seen.add(address)
                out.exclusions.append(Exclusion("addresses", oid, otype, address, f"domain {domain_of(address)} is not provisioned"))
            continue
        why = rules.address_reason(address) if rules.exclude_address_patterns else None
        if why is not None:
            if address not in seen:
                seen.add(address)
                out.exclusions.append(Exclusion("addresses", oid, otype, address, why))
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
    (sync-rules.md). A value that cannot be encoded at all (lone surrogates) counts as empty."""
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


def _object_id(obj: dict[str, Any]) -> str:
    oid = obj.get("id")
    if not isinstance(oid, str) or not oid:
        raise ValueError("a directory object without an id")
    return oid


def project(directory: dict[str, list[dict[str, Any]]], provisioned: Iterable[str], rules: Rules = NO_RULES) -> Projection:
    """Project a whole directory held in memory (tests, the emulator's snapshot)."""
    p = Projector(provisioned, rules=rules)
    for u in directory.get("users", ()):
        p.add_user(u)
    for c in directory.get("contacts", ()):
        p.add_contact(c)
    for g in directory.get("groups", ()):
        members = g.get("members") or ()
        p.add_group({k: v for k, v in g.items() if k != "members"})
        p.add_members(g["id"], (m if isinstance(m, dict) else {"id": m} for m in members))
    return p.result()
