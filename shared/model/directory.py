"""The directory cache: what a delta round needs to know about every object it does not see.

A delta round names only the objects that changed, and for those only some properties. To
project it, the state keeps, per object, the selected properties as last read (``objects``),
the candidate addresses it keeps (``kept``), a user's primary address (``users``) and each
group's direct members (``members``), in the state database. Applying a round changes those
rows for the objects it names and returns the record keys they can affect; ``desired``
then projects exactly those keys from the cache, by the same rules as a full read.

Kinds: ``u`` user, ``g`` group, ``c`` contact, ``x`` an Exchange Online recipient (id
``exo:<Guid>``; Exchange has no delta, so every run replaces the whole kind with
``apply_recipients``, and a recipient that disappeared stops holding its addresses); a member
is ``u``, ``g``, ``o`` (another type: contact, device, service principal) or ``?`` (Graph did
not say).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .projection import (
    EXCHANGE_SOURCE,
    GRAPH_SOURCE,
    GROUP_TYPE,
    USER_TYPE,
    Exclusion,
    Projection,
    candidates,
    group_name,
)
from .records import DATASETS, GroupRecord, Records, UserRecord
from .rules import EVERYTHING, NO_RULES, Rules, Shape, Verdict, judge, rule_of

log = logging.getLogger("shared.directory")  # the name its log lines have always carried

PROPS: dict[str, tuple[str, ...]] = {
    "u": ("mail", "proxyAddresses", "userType"),
    "g": ("displayName", "mail", "proxyAddresses"),
    "c": ("mail", "proxyAddresses"),
    "x": ("mail", "proxyAddresses"),  # PrimarySmtpAddress, EmailAddresses (plus "type")
}
OTYPE = {"u": "user", "g": "group", "c": "contact"}
KIND_OF = {"users": "u", "groups": "g", "contacts": "c"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (id TEXT PRIMARY KEY, kind TEXT NOT NULL, data TEXT NOT NULL, excluded INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kept (address TEXT NOT NULL, object_id TEXT NOT NULL, PRIMARY KEY (address, object_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kept_by_object ON kept (object_id);
CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, primary_address TEXT) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS users_by_primary ON users (primary_address);
CREATE TABLE IF NOT EXISTS members (group_id TEXT NOT NULL, member_id TEXT NOT NULL, kind TEXT NOT NULL, PRIMARY KEY (group_id, member_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_by_member ON members (member_id);
"""
CACHE_TABLES = ("objects", "kept", "users", "members")
INDEXES = {  # the cache's secondary indexes (also in SCHEMA): rebuilt after a bulk load
    "kept_by_object": "CREATE INDEX IF NOT EXISTS kept_by_object ON kept (object_id)",
    "users_by_primary": "CREATE INDEX IF NOT EXISTS users_by_primary ON users (primary_address)",
    "members_by_member": "CREATE INDEX IF NOT EXISTS members_by_member ON members (member_id)",
}


def _compact_value(prop: str, value: Any) -> Any:
    if prop == "proxyAddresses":
        return [p for p in value if isinstance(p, str) and p[:5].lower() == "smtp:"] if isinstance(value, list) else []
    return value if isinstance(value, str) else None


def compact(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The selected properties the object carries; proxy addresses without an ``smtp:`` prefix
    are never candidates, so they are not kept."""
    return {prop: _compact_value(prop, obj[prop]) for prop in PROPS[kind] if prop in obj}


# The cached data is JSON with non-ASCII escaped: a Graph string can carry lone surrogates
# (JSON escapes), which SQLite's UTF-8 text cannot hold; the escapes round-trip them.
def compact_json(kind: str, obj: dict[str, Any]) -> str:
    return json.dumps(compact(kind, obj), separators=(",", ":"), ensure_ascii=True)


def recipient_object(rec: dict[str, Any]) -> dict[str, Any]:
    """A recipient in the shape the candidate rules read (``mail`` and ``proxyAddresses``):
    ``PrimarySmtpAddress`` plays ``mail`` and ``EmailAddresses`` plays ``proxyAddresses``
    (docs/sync-rules.md: exactly the rules of Graph candidates)."""
    primary = rec.get("PrimarySmtpAddress")
    addresses = rec.get("EmailAddresses")
    return {
        "mail": primary if isinstance(primary, str) else None,
        "proxyAddresses": [a for a in addresses if isinstance(a, str)] if isinstance(addresses, list) else [],
    }


def recipient_id(rec: dict[str, Any]) -> str:
    """The directory cache's key of a recipient: its Exchange Guid, marked as Exchange's so
    that it never meets a Graph object id."""
    return f"exo:{str(rec['Guid']).strip().lower()}"


def recipient_entry(rec: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """An Exchange Online recipient → (cache id ``exo:<guid>``, its Guid, the cached data:
    ``mail`` = PrimarySmtpAddress, ``proxyAddresses`` = the ``smtp:`` EmailAddresses, ``type``
    = RecipientTypeDetails)."""
    oid = recipient_id(rec)
    data = compact("x", recipient_object(rec))
    data["type"] = str(rec.get("RecipientTypeDetails") or "")
    # The Entra object the recipient is (a mailbox's user, a synced group), if any: with scope
    # or user-type rules the recipient follows that object's verdict (shared/model/rules.py judge).
    entra = rec.get("ExternalDirectoryObjectId")
    data["entraId"] = entra.strip().lower() if isinstance(entra, str) and entra.strip() else None
    return oid, oid[4:], data


def merge(old: dict[str, Any] | None, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """A partial object merged into the cached one: a property the change does not carry is
    unchanged, never cleared."""
    merged = dict(old or {})
    merged.update(compact(kind, obj))
    return merged


def member_kind(otype: Any) -> str:
    if not otype:
        return "?"
    if otype == USER_TYPE:
        return "u"
    if otype == GROUP_TYPE:
        return "g"
    return "o"


@dataclass
class Affected:
    """Record keys a round may have changed, per dataset."""

    addresses: set[str] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)
    users: set[str] = field(default_factory=set)
    primaries: set[str] = field(default_factory=set)

    def keys(self, dataset: str) -> set[str]:
        return getattr(self, dataset)


class _Net:
    """What a round's entries about one object say, folded in arrival order.

    ``present``: the last entry was not ``@removed``. ``reset``: an ``@removed`` entry came, so
    whatever the cache held for the object before the round is gone (a later entry recreates
    it from nothing). ``props``: the selected properties carried since the last reset, a later
    value replacing an earlier one. ``members``: member id -> (added, member kind), the last
    ``members@delta`` entry for a member winning."""

    __slots__ = ("present", "reset", "props", "members")

    def __init__(self) -> None:
        self.present = True
        self.reset = False
        self.props: dict[str, Any] = {}
        self.members: dict[str, tuple[bool, str]] = {}


class Round:
    """One delta round's entries (a full read's first round as much as a later one), folded
    per object in the order Graph sent them. Graph documents that, within a round, an object
    comes back when it changed during the round (the later entry is the newer state), that
    ``@removed`` removes it (reason ``changed`` or ``deleted``), and that a big group comes in
    slices that repeat its selected properties, with ``members@delta`` entries that add up and
    member entries marked ``@removed`` that remove that member (docs/sync-rules.md, "Reading
    the directory"; Microsoft Graph: "Use delta query to track changes in Microsoft Graph
    data", "group: delta", "user: delta").

    Pages are fed with ``take(collection, entry)`` as they arrive (a 100,000-user read never
    holds the raw pages); ``Cache.apply_round`` then applies the fold to the directory cache.
    Folding first and applying once equals applying every entry one after the other."""

    def __init__(self) -> None:
        self.nets: dict[str, dict[str, _Net]] = {c: {} for c in KIND_OF}
        self.entries: dict[str, int] = dict.fromkeys(KIND_OF, 0)

    def take(self, collection: str, obj: dict[str, Any]) -> None:
        """Fold one entry. Raises ``ValueError`` for an entry without an id."""
        kind = KIND_OF[collection]
        oid = obj.get("id")
        if not isinstance(oid, str) or not oid:
            raise ValueError(f"a {collection} delta entry without an id")
        self.entries[collection] += 1
        nets = self.nets[collection]
        net = nets.get(oid)
        if net is None:
            net = nets[oid] = _Net()
        if "@removed" in obj:
            net.present, net.reset = False, True
            net.props = {}
            net.members = {}
        else:
            net.present = True
            props = net.props
            for prop in PROPS[kind]:
                if prop in obj:
                    props[prop] = _compact_value(prop, obj[prop])
        if kind == "g":
            ops = obj.get("members@delta")
            if isinstance(ops, list):
                members = net.members
                present = net.present
                for m in ops:
                    if not isinstance(m, dict):
                        continue
                    mid = m.get("id")
                    if not isinstance(mid, str) or not mid:
                        continue
                    if "@removed" in m:
                        members[mid] = (False, member_kind(m.get("@odata.type")))
                    elif present:
                        members[mid] = (True, member_kind(m.get("@odata.type")))

    def distinct(self) -> dict[str, int]:
        """Distinct objects the round named, per collection (an object sent twice counts once)."""
        return {c: len(n) for c, n in self.nets.items()}

    def present(self) -> dict[str, int]:
        """Distinct objects that exist at the end of the round, per collection."""
        return {c: sum(1 for net in n.values() if net.present) for c, n in self.nets.items()}


class Cache:
    """The cache tables of one open state database (inside the caller's transaction), or of a
    scratch database (``memory_cache``)."""

    def __init__(self, conn: sqlite3.Connection, provisioned: frozenset[str], rules: Rules = NO_RULES, *, empty: bool = False) -> None:
        self.conn = conn
        self.provisioned = provisioned
        self.rules = rules  # scope and exclusions (shared/model/rules.py)
        self._verdict: Verdict | None = None
        self._empty = empty  # known to hold no object: a round is loaded in bulk

    # --- scope and exclusions (shared/model/rules.py), judged over the whole cached directory ---------
    def shape(self) -> Shape:
        """What the rules read of the cached directory."""
        q = self.conn.execute
        groups = frozenset(g for (g,) in q("SELECT id FROM objects WHERE kind='g'"))
        contacts = frozenset(c for (c,) in q("SELECT id FROM objects WHERE kind='c'"))
        if self.rules.exclude_user_types:
            users = dict(q("SELECT id, json_extract(data, '$.userType') FROM objects WHERE kind='u'").fetchall())
        else:
            users = dict.fromkeys(u for (u,) in q("SELECT id FROM objects WHERE kind='u'"))
        members: dict[str, list[tuple[str, str]]] = {}
        if self.rules.scope_groups is not None:
            for gid, mid, kind in q("SELECT group_id, member_id, kind FROM members"):
                members.setdefault(gid, []).append((mid, kind))
        recipients = dict(q("SELECT id, json_extract(data, '$.entraId') FROM objects WHERE kind='x'").fetchall())
        return Shape(groups, users, contacts, members, recipients)

    def verdict(self) -> Verdict:
        """The rules' verdict over the cache as it is now (recomputed after each ``apply``).
        Raises ``rules.ScopeError`` when a scope id names no cached group."""
        if not self.rules.judges_objects:
            return EVERYTHING
        if self._verdict is None:
            self._verdict = judge(self.shape(), self.rules)
        return self._verdict

    def rescope(self, before: Verdict | None, affected: Affected) -> None:
        """Add the keys of every object whose kept / left-out status differs from ``before``
        (a delta round that moved users, contacts or whole nested subtrees in or out of scope).
        ``before`` ``None`` (the cache could not be judged before the round): every object."""
        q = self.conn.execute
        after = self.verdict()
        changed = after.changed(before) if before is not None else {o for (o,) in q("SELECT id FROM objects")}
        for oid in sorted(changed):
            affected.addresses.update(a for (a,) in q("SELECT address FROM kept WHERE object_id=?", (oid,)))
            row = q("SELECT kind FROM objects WHERE id=?", (oid,)).fetchone()
            if row is None:
                continue
            if row[0] == "u":
                affected.users.add(oid)
                for (primary,) in q("SELECT primary_address FROM users WHERE id=?", (oid,)):
                    if primary:
                        affected.primaries.add(primary)
            elif row[0] == "g":
                affected.groups.add(oid)
                self._children(oid, affected)  # their parentIds / groupIds name it or no longer do

    def rule_exclusions(self) -> list[Exclusion]:
        """What the scope and exclusion settings leave out of the whole cached directory, with
        the reason naming the setting (and the pattern), for the run report and ``status``."""
        return self.exclusions(only_rules=True)

    # --- applying a delta round ----------------------------------------------------------
    def apply(self, collection: str, objects: Iterable[dict[str, Any]], affected: Affected | None) -> None:
        """Apply one collection's entries of a round, in order (``Round`` says how), and add
        the record keys they can affect to ``affected`` (``None``: not needed, as after a full
        read, which projects everything). Raises ``ValueError`` for an entry without an id."""
        rnd = Round()
        for obj in objects:
            rnd.take(collection, obj)
        self.apply_round(rnd, affected)

    def apply_round(self, rnd: Round, affected: Affected | None, *, consume: bool = False) -> None:
        """Apply a folded round (every collection) to the cache. ``consume``: the round may be
        emptied as it is applied (a full read's fold is as big as the directory)."""
        self._verdict = None  # the scope is judged again over the merged cache
        if self._empty:
            self._load(rnd, affected, consume)
            return
        sink = affected if affected is not None else Affected()
        for collection, nets in rnd.nets.items():
            kind = KIND_OF[collection]
            for oid, net in nets.items():
                self._apply_net(oid, kind, net, sink)

    def _apply_net(self, oid: str, kind: str, net: _Net, affected: Affected) -> None:
        q = self.conn.execute
        # What the object held before: the keys it could stop affecting.
        affected.addresses.update(a for (a,) in q("SELECT address FROM kept WHERE object_id=?", (oid,)))
        for (primary,) in q("SELECT primary_address FROM users WHERE id=?", (oid,)):
            affected.users.add(oid)
            if primary:
                affected.primaries.add(primary)
        row = q("SELECT kind, data FROM objects WHERE id=?", (oid,)).fetchone()
        if row is not None and (net.reset or not net.present):
            self._remove(oid, row[0], affected)
            row = None
        if net.present:
            old = json.loads(row[1]) if row is not None and row[0] == kind else None
            if row is None and kind == "g":
                self._children(oid, affected)  # a group that (re)appears becomes a parent again
            self._upsert(oid, kind, merge(old, kind, net.props), affected)
        if kind == "g" and net.members:
            self._member_ops(oid, net.members, net.present, affected)

    def _remove(self, oid: str, old_kind: str, affected: Affected) -> None:
        q = self.conn.execute
        if old_kind == "g":
            affected.groups.add(oid)
            self._children(oid, affected)
            q("DELETE FROM members WHERE group_id=?", (oid,))
        elif old_kind == "u":
            affected.users.add(oid)
        q("DELETE FROM objects WHERE id=?", (oid,))
        q("DELETE FROM kept WHERE object_id=?", (oid,))
        q("DELETE FROM users WHERE id=?", (oid,))

    def _children(self, gid: str, affected: Affected) -> None:
        for mid, mkind in self.conn.execute("SELECT member_id, kind FROM members WHERE group_id=?", (gid,)):
            if mkind in ("u", "?"):
                affected.users.add(mid)
            if mkind in ("g", "?"):
                affected.groups.add(mid)

    def _upsert(self, oid: str, kind: str, data: dict[str, Any], affected: Affected) -> None:
        q = self.conn.execute
        cands = candidates(oid, OTYPE[kind], data, self.provisioned, self.rules)
        q(
            "INSERT OR REPLACE INTO objects (id, kind, data, excluded) VALUES (?, ?, ?, ?)",
            (oid, kind, json.dumps(data, separators=(",", ":"), ensure_ascii=True), len(cands.exclusions)),
        )
        q("DELETE FROM kept WHERE object_id=?", (oid,))
        self.conn.executemany("INSERT OR IGNORE INTO kept (address, object_id) VALUES (?, ?)", ((a, oid) for a in cands.kept))
        affected.addresses.update(cands.kept)
        if kind == "u":
            primary = cands.primary
            q("INSERT OR REPLACE INTO users (id, primary_address) VALUES (?, ?)", (oid, primary))
            affected.users.add(oid)
            if primary:
                affected.primaries.add(primary)
        elif kind == "g":
            affected.groups.add(oid)

    def _member_ops(self, gid: str, ops: dict[str, tuple[bool, str]], group_exists: bool, affected: Affected) -> None:
        q = self.conn.execute
        for mid, (added, mkind) in ops.items():
            if not added:
                row = q("SELECT kind FROM members WHERE group_id=? AND member_id=?", (gid, mid)).fetchone()
                if row is not None and mkind == "?":
                    mkind = row[0]
                q("DELETE FROM members WHERE group_id=? AND member_id=?", (gid, mid))
            elif group_exists:
                q("INSERT OR REPLACE INTO members (group_id, member_id, kind) VALUES (?, ?, ?)", (gid, mid, mkind))
            else:
                continue
            if mkind in ("u", "?"):
                affected.users.add(mid)
            if mkind in ("g", "?"):
                affected.groups.add(mid)

    def _load(self, rnd: Round, affected: Affected | None, consume: bool) -> None:
        """A round into a cache that holds nothing: the same fold, written with one bulk
        insert per table (what makes a 100,000-user full read affordable)."""
        objects: list[tuple[str, str, str, int]] = []
        kept: list[tuple[str, str]] = []
        users: list[tuple[str, str | None]] = []
        members: list[tuple[str, str, str]] = []
        provisioned = self.provisioned
        dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode
        for collection, nets in rnd.nets.items():
            kind, otype = KIND_OF[collection], OTYPE[KIND_OF[collection]]
            for oid, net in (_drain(nets) if consume else nets.items()):
                if not net.present:
                    continue  # removed during the round: nothing cached held it
                cands = candidates(oid, otype, net.props, provisioned, self.rules)
                objects.append((oid, kind, dumps(net.props), len(cands.exclusions)))
                if cands.kept:
                    kept.extend([(a, oid) for a in cands.kept])
                if kind == "u":
                    users.append((oid, cands.primary))
                elif kind == "g" and net.members:
                    members.extend([(oid, mid, mk) for mid, (added, mk) in net.members.items() if added])
        # Rows in primary-key order append to each B-tree instead of splitting pages all over
        # it, and the secondary indexes are built once at the end rather than row by row.
        objects.sort()
        kept.sort()
        users.sort()
        members.sort()
        q, em = self.conn.execute, self.conn.executemany
        for index in INDEXES:
            q(f"DROP INDEX IF EXISTS {index}")  # noqa: S608 - fixed index names
        em("INSERT OR REPLACE INTO objects (id, kind, data, excluded) VALUES (?, ?, ?, ?)", objects)
        em("INSERT OR IGNORE INTO kept (address, object_id) VALUES (?, ?)", kept)
        em("INSERT OR REPLACE INTO users (id, primary_address) VALUES (?, ?)", users)
        em("INSERT OR REPLACE INTO members (group_id, member_id, kind) VALUES (?, ?, ?)", members)
        for statement in INDEXES.values():
            q(statement)
        self._empty = False
        if affected is not None:
            affected.addresses.update(a for a, _ in kept)
            affected.users.update(u for u, _ in users)
            affected.primaries.update(p for _, p in users if p)
            affected.groups.update(oid for oid, kind, _, _ in objects if kind == "g")
            for _, mid, mk in members:
                if mk in ("u", "?"):
                    affected.users.add(mid)
                if mk in ("g", "?"):
                    affected.groups.add(mid)

    # --- Exchange Online: no delta, the whole kind every run ----------------------------------
    def apply_recipients(self, recipients: Iterable[dict[str, Any]], affected: Affected | None) -> None:
        """Make the cached Exchange recipients exactly ``recipients`` (a complete read of the
        configured types): a changed one is projected again, one that is gone no longer holds
        its addresses, and the addresses either touches go to ``affected``. A recipient listed
        twice: the first one stands."""
        q = self.conn.execute
        sink = affected if affected is not None else Affected()
        old = dict(q("SELECT id, data FROM objects WHERE kind='x'").fetchall())
        seen: set[str] = set()
        for rec in recipients:
            oid, guid, data = recipient_entry(rec)
            if oid in seen:
                continue
            seen.add(oid)
            text = json.dumps(data, separators=(",", ":"), ensure_ascii=True)
            if old.get(oid) == text:
                continue
            sink.addresses.update(a for (a,) in q("SELECT address FROM kept WHERE object_id=?", (oid,)))
            cands = candidates(guid, data["type"], data, self.provisioned, self.rules, source=EXCHANGE_SOURCE)
            q("INSERT OR REPLACE INTO objects (id, kind, data, excluded) VALUES (?, 'x', ?, ?)", (oid, text, len(cands.exclusions)))
            q("DELETE FROM kept WHERE object_id=?", (oid,))
            self.conn.executemany("INSERT OR IGNORE INTO kept (address, object_id) VALUES (?, ?)", ((a, oid) for a in cands.kept))
            sink.addresses.update(cands.kept)
        for oid in old.keys() - seen:
            sink.addresses.update(a for (a,) in q("SELECT address FROM kept WHERE object_id=?", (oid,)))
            q("DELETE FROM objects WHERE id=?", (oid,))
            q("DELETE FROM kept WHERE object_id=?", (oid,))
        self._empty = False

    def sources(self, addresses: Iterable[str]) -> list[dict[str, Any]]:
        """Where each address comes from: one entry per (address, object) with its source
        (Graph or Exchange Online), recipient type (user, group, contact, or the Exchange
        RecipientTypeDetails) and object id (an Exchange recipient's Guid); ``test-update``
        lists them beside its additions."""
        q = self.conn.execute
        out: list[dict[str, Any]] = []
        for address in sorted(set(addresses)):
            for oid, kind, data in q(
                "SELECT o.id, o.kind, o.data FROM kept k JOIN objects o ON o.id = k.object_id WHERE k.address=? ORDER BY o.id", (address,)
            ):
                if kind == "x":
                    out.append({"address": address, "source": EXCHANGE_SOURCE, "recipientType": json.loads(data).get("type"), "objectId": oid[4:]})
                else:
                    out.append({"address": address, "source": GRAPH_SOURCE, "recipientType": OTYPE.get(kind, kind), "objectId": oid})
        return out

    # --- projecting the affected keys ------------------------------------------------------
    def desired(self, dataset: str, keys: Iterable[str]) -> dict[str, tuple | None]:
        """The projected record of each key (``None``: the directory implies no record)."""
        if self.rules.judges_objects:
            self.verdict()  # a scope id that names no group fails here, before anything is sent
        if dataset == "addresses":
            return {a: (() if self._kept(a) else None) for a in keys}
        if dataset == "groups":
            return {g: self._group(g) for g in keys}
        return {u: self._user(u) for u in keys}

    def claimants(self, primaries: Iterable[str]) -> set[str]:
        """Users whose primary address is one of these (an owner can change with any of them)."""
        out: set[str] = set()
        for p in primaries:
            out.update(u for (u,) in self.conn.execute("SELECT id FROM users WHERE primary_address=?", (p,)))
        return out

    def _kept(self, address: str) -> bool:
        if not self.rules.judges_objects:
            return self.conn.execute("SELECT 1 FROM kept WHERE address=? LIMIT 1", (address,)).fetchone() is not None
        verdict = self.verdict()
        return any(verdict.keeps(o) for (o,) in self.conn.execute("SELECT object_id FROM kept WHERE address=?", (address,)))

    def _group(self, gid: str) -> tuple | None:
        row = self.conn.execute("SELECT data FROM objects WHERE id=? AND kind='g'", (gid,)).fetchone()
        verdict = self.verdict()
        if row is None or not verdict.keeps(gid):
            return None
        parents = self.conn.execute(
            "SELECT DISTINCT m.group_id FROM members m JOIN objects g ON g.id = m.group_id AND g.kind = 'g' "
            "WHERE m.member_id = ? AND m.kind IN ('g', '?')",
            (gid,),
        ).fetchall()
        return GroupRecord(group_name(gid, json.loads(row[0])), tuple(sorted(p for (p,) in parents if verdict.keeps(p))))

    def _user(self, uid: str) -> tuple | None:
        q = self.conn.execute
        verdict = self.verdict()
        row = q("SELECT primary_address FROM users WHERE id=?", (uid,)).fetchone()
        if row is None or not row[0] or not verdict.keeps(uid):
            return None
        if verdict is EVERYTHING:
            owner = q("SELECT MIN(id) FROM users WHERE primary_address=?", (row[0],)).fetchone()[0]
        else:  # only users the rules keep claim a primary address
            owner = min(u for (u,) in q("SELECT id FROM users WHERE primary_address=?", (row[0],)) if verdict.keeps(u))
        if owner != uid:
            return None
        groups = q(
            "SELECT DISTINCT m.group_id FROM members m JOIN objects g ON g.id = m.group_id AND g.kind = 'g' "
            "WHERE m.member_id = ? AND m.kind IN ('u', '?')",
            (uid,),
        ).fetchall()
        return UserRecord(row[0], tuple(sorted(g for (g,) in groups if verdict.keeps(g))))

    # --- whole-directory figures -----------------------------------------------------------
    def excluded(self) -> dict[str, int]:
        """Candidates and users left out across the whole directory, as a full read counts them."""
        q = self.conn.execute
        addresses = q("SELECT COALESCE(SUM(excluded), 0) FROM objects").fetchone()[0]
        verdict = self.verdict()
        if verdict is EVERYTHING:
            no_primary = q("SELECT COUNT(*) FROM users WHERE primary_address IS NULL").fetchone()[0]
            shared = q("SELECT COUNT(*) - COUNT(DISTINCT primary_address) FROM users WHERE primary_address IS NOT NULL").fetchone()[0]
            return {"addresses": int(addresses), "groups": 0, "users": int(no_primary + shared)}
        # Everything an object the rules leave out would have kept is left out too; a left-out
        # user counts once, whatever else is true of it.
        left_users = 0
        left_groups = 0
        kept_primaries: list[str | None] = []
        users = dict(q("SELECT id, primary_address FROM users").fetchall())
        left = verdict.left_out
        addresses += sum(n for oid, n in q("SELECT object_id, COUNT(*) FROM kept GROUP BY object_id") if oid in left)
        groups = {g for (g,) in q("SELECT id FROM objects WHERE kind='g'")}
        left_groups = sum(1 for g in verdict.left_out if g in groups)
        for uid, primary in users.items():
            if verdict.keeps(uid):
                kept_primaries.append(primary)
            else:
                left_users += 1
        with_primary = [p for p in kept_primaries if p]
        no_primary = len(kept_primaries) - len(with_primary)
        shared = len(with_primary) - len(set(with_primary))
        return {"addresses": int(addresses), "groups": left_groups, "users": left_users + no_primary + shared}

    def counts(self) -> dict[str, int]:
        q = self.conn.execute
        return {
            kind: q("SELECT COUNT(*) FROM objects WHERE kind=?", (k,)).fetchone()[0]
            for kind, k in (("users", "u"), ("groups", "g"), ("contacts", "c"))
        }

    # --- the whole directory, projected (a full read) ------------------------------------------
    def records(self, dataset: str) -> Records:
        """Every record of a dataset the cached directory implies, by the rules of
        docs/sync-rules.md ("From directory objects to the three datasets"); the same rules as
        ``desired``, over every key at once. Canonical values as in ``shared/model/projection.py``."""
        q = self.conn.execute
        verdict = self.verdict()  # the scope and exclusions: what is left out contributes nothing
        keeps = verdict.keeps
        if dataset == "addresses":
            if verdict is EVERYTHING:
                return dict.fromkeys((a for (a,) in q("SELECT DISTINCT address FROM kept ORDER BY address")), ())
            return dict.fromkeys(sorted({a for a, o in q("SELECT address, object_id FROM kept") if keeps(o)}), ())
        if dataset == "groups":
            names = {gid: group_name(gid, json.loads(data)) for gid, data in q("SELECT id, data FROM objects WHERE kind='g' ORDER BY id") if keeps(gid)}
            parents: dict[str, list[str]] = {}
            # Member rows exist only for cached groups (an add needs the group; a removed group's
            # rows go with it); scanned in primary-key order, so each list comes out sorted.
            for gid, mid in q("SELECT group_id, member_id FROM members WHERE kind IN ('g', '?') ORDER BY group_id, member_id"):
                if mid in names and gid in names:
                    parents.setdefault(mid, []).append(gid)
            return {gid: GroupRecord(name, tuple(sorted(set(parents[gid]))) if gid in parents else ()) for gid, name in names.items()}
        if dataset != "users":
            raise ValueError(f"unknown dataset {dataset!r}")
        owner: dict[str, str] = {}  # primary address -> the user with the smallest id
        primary_of: dict[str, str] = {}
        for uid, primary in q("SELECT id, primary_address FROM users WHERE primary_address IS NOT NULL ORDER BY id"):
            if not keeps(uid):
                continue
            first = owner.setdefault(primary, uid)
            if first == uid:
                primary_of[uid] = primary
            else:
                log.warning("user %s shares the primary address %s with user %s, which keeps the record", uid, primary, first)
        group_set = {gid for (gid,) in q("SELECT id FROM objects WHERE kind='g'")}
        group_ids: dict[str, list[str]] = {}
        for gid, mid in q("SELECT group_id, member_id FROM members WHERE kind IN ('u', '?') ORDER BY group_id, member_id"):
            if mid in primary_of and gid in group_set and keeps(gid):
                group_ids.setdefault(mid, []).append(gid)
        return {uid: UserRecord(primary, tuple(sorted(set(group_ids[uid]))) if uid in group_ids else ()) for uid, primary in primary_of.items()}

    def exclusions(self, *, only_rules: bool = False) -> list[Exclusion]:
        """Every candidate address and user the rules leave out, with its reason, recomputed
        from the cached objects (``test-update`` reports them): addresses per object in id
        order, then users in id order. ``only_rules``: only what the scope and exclusion
        settings leave out (candidates are recomputed only when address patterns are set)."""
        q = self.conn.execute
        out: list[Exclusion] = []
        if not only_rules or self.rules.exclude_address_patterns:
            for oid, kind, data in q("SELECT id, kind, data FROM objects WHERE excluded > 0 ORDER BY id"):
                obj = json.loads(data)
                if kind == "x":  # an Exchange Online recipient
                    cands = candidates(oid[4:], str(obj.get("type")), obj, self.provisioned, self.rules, warn=False, source=EXCHANGE_SOURCE)
                else:
                    cands = candidates(oid, OTYPE[kind], obj, self.provisioned, self.rules, warn=False)
                out.extend(e for e in cands.exclusions if not only_rules or rule_of(e.reason) is not None)
        # What the scope and user types leave out: every address the object would keep, the
        # group, the user (docs/sync-rules.md, "Scope and exclusions").
        verdict = self.verdict()
        left = verdict.left_out
        if left:
            kept_by: dict[str, list[str]] = {}
            for a, oid in q("SELECT address, object_id FROM kept ORDER BY object_id, address"):
                if oid in left:
                    kept_by.setdefault(oid, []).append(a)
            for oid, kind, data in q("SELECT id, kind, data FROM objects ORDER BY id"):
                why = left.get(oid)
                if why is None:
                    continue
                if kind == "x":  # an Exchange Online recipient: its Guid and RecipientTypeDetails
                    rtype = str(json.loads(data).get("type"))
                    out.extend(Exclusion("addresses", oid[4:], rtype, a, why, EXCHANGE_SOURCE) for a in kept_by.get(oid, ()))
                    continue
                out.extend(Exclusion("addresses", oid, OTYPE[kind], a, why) for a in kept_by.get(oid, ()))
                if kind == "g":
                    out.append(Exclusion("groups", oid, "group", group_name(oid, json.loads(data)), why))
        owner: dict[str, str] = {}
        if only_rules and not left:
            return out
        for uid, primary in q("SELECT id, primary_address FROM users ORDER BY id"):
            why = verdict.reason(uid)
            if why is not None:
                out.append(Exclusion("users", uid, "user", primary, why))
                continue
            if only_rules:
                continue
            if primary is None:
                out.append(Exclusion("users", uid, "user", None, "no primary address: neither mail nor an SMTP: proxy address is kept"))
                continue
            first = owner.setdefault(primary, uid)
            if first != uid:
                out.append(Exclusion("users", uid, "user", primary, f"primary address already used by user {first}, which has the smaller id"))
        return out

    def projection(self, datasets: Iterable[str] = DATASETS) -> Projection:
        """The whole projection of the cached directory: records of ``datasets``, every exclusion."""
        return Projection({d: self.records(d) for d in datasets}, self.exclusions())

    # --- a full read starts from nothing ------------------------------------------------------
    def clear(self) -> None:
        """Empty the cache (a full read is a round applied to an empty cache)."""
        for table in CACHE_TABLES:
            self.conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
        self._empty = True


def _drain(nets: dict[str, _Net]) -> Iterator[tuple[str, _Net]]:
    """Each item once, removed as it is taken (its memory is freed as the load proceeds)."""
    while nets:
        yield nets.popitem()


def memory_cache(provisioned: Iterable[str], rules: Rules = NO_RULES) -> Cache:
    """An empty cache in a scratch in-memory database (a dry run, tests): never the state."""
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    conn.executescript(SCHEMA)
    return Cache(conn, frozenset(provisioned), rules, empty=True)


def project_entries(entries: Iterable[tuple[str, dict[str, Any]]], provisioned: Iterable[str], rules: Rules = NO_RULES) -> Projection:
    """Project a round given as ``(collection, entry)`` pairs in arrival order (tests).
    Raises ``rules.ScopeError`` when a scope id names no group of the round."""
    rnd = Round()
    for collection, obj in entries:
        rnd.take(collection, obj)
    cache = memory_cache(provisioned, rules)
    try:
        cache.apply_round(rnd, None)
        return cache.projection()
    finally:
        cache.conn.close()


def project(directory: dict[str, list[dict[str, Any]]], provisioned: Iterable[str], rules: Rules = NO_RULES) -> Projection:
    """Project a whole directory held in memory (tests, the emulator's snapshot): each object
    is one entry of a first delta round (a group's ``members`` as its ``members@delta``),
    merged and projected exactly as a full read is."""

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
