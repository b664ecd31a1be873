"""The directory cache: what a delta round needs to know about every object it does not see.

A delta round names only the objects that changed, and for those only some properties. To
project it, the state keeps, per object, the selected properties as last read (``objects``),
the candidate addresses it keeps (``kept``), a user's primary address (``users``) and each
group's direct members (``members``), in the state database. Applying a round changes those
rows for the objects it names and returns the record keys they can affect; ``desired``
then projects exactly those keys from the cache, by the same rules as a full read.

Kinds: ``u`` user, ``g`` group, ``c`` contact; a member is ``u``, ``g``, ``o`` (another
type: contact, device, service principal) or ``?`` (Graph did not say).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .projection import GROUP_TYPE, USER_TYPE, Exclusion, candidates, group_name
from .rules import EVERYTHING, NO_RULES, PATTERNS_SETTING, Rules, Shape, Verdict, judge, rule_of

PROPS: dict[str, tuple[str, ...]] = {
    "u": ("mail", "proxyAddresses", "userType"),
    "g": ("displayName", "mail", "proxyAddresses"),
    "c": ("mail", "proxyAddresses"),
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


def compact(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The selected properties the object carries; proxy addresses without an ``smtp:`` prefix
    are never candidates, so they are not kept."""
    out: dict[str, Any] = {}
    for prop in PROPS[kind]:
        if prop not in obj:
            continue
        value = obj[prop]
        if prop == "proxyAddresses":
            value = [p for p in value if isinstance(p, str) and p[:5].lower() == "smtp:"] if isinstance(value, list) else []
        elif not isinstance(value, str):
            value = None
        out[prop] = value
    return out


def compact_json(kind: str, obj: dict[str, Any]) -> str:
    return json.dumps(compact(kind, obj), separators=(",", ":"), ensure_ascii=False)


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


class Cache:
    """The cache tables of one open state database (inside the caller's transaction)."""

    def __init__(self, conn: sqlite3.Connection, provisioned: frozenset[str], rules: Rules = NO_RULES) -> None:
        self.conn = conn
        self.provisioned = provisioned
        self.rules = rules
        self._verdict: Verdict | None = None

    # --- scope and exclusions (shared/rules.py), judged over the whole cached directory ---------
    def shape(self) -> Shape:
        """What the rules read of the cached directory."""
        q = self.conn.execute
        groups = frozenset(g for (g,) in q("SELECT id FROM objects WHERE kind='g'"))
        contacts = frozenset(c for (c,) in q("SELECT id FROM objects WHERE kind='c'"))
        if self.rules.exclude_user_types:
            users = {u: json.loads(data).get("userType") for u, data in q("SELECT id, data FROM objects WHERE kind='u'")}
        else:
            users = dict.fromkeys(u for (u,) in q("SELECT id FROM objects WHERE kind='u'"))
        members: dict[str, list[tuple[str, str]]] = {}
        if self.rules.scope_groups is not None:
            for gid, mid, kind in q("SELECT group_id, member_id, kind FROM members"):
                members.setdefault(gid, []).append((mid, kind))
        return Shape(groups, users, contacts, members)

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
        """What the object rules leave out of the whole cached directory: each left-out object's
        kept candidates, users and groups, and every candidate an address pattern left out
        (recomputed from the cached properties, only when patterns are set), with the reason."""
        verdict = self.verdict()
        out: list[Exclusion] = []
        q = self.conn.execute
        if self.rules.exclude_address_patterns:
            for oid, kind, data in q("SELECT id, kind, data FROM objects ORDER BY id").fetchall():
                cands = candidates(oid, OTYPE[kind], json.loads(data), self.provisioned, self.rules, quiet=True)
                out.extend(e for e in cands.exclusions if rule_of(e.reason) == PATTERNS_SETTING)
        for oid in sorted(verdict.left_out):
            why = verdict.left_out[oid]
            row = q("SELECT kind, data FROM objects WHERE id=?", (oid,)).fetchone()
            if row is None:
                continue
            otype = OTYPE[row[0]]
            out.extend(Exclusion("addresses", oid, otype, a, why) for (a,) in q("SELECT address FROM kept WHERE object_id=? ORDER BY address", (oid,)))
            if row[0] == "u":
                primary = q("SELECT primary_address FROM users WHERE id=?", (oid,)).fetchone()
                out.append(Exclusion("users", oid, "user", primary[0] if primary else None, why))
            elif row[0] == "g":
                out.append(Exclusion("groups", oid, "group", group_name(oid, json.loads(row[1])), why))
        return out

    # --- applying a delta round ----------------------------------------------------------
    def apply(self, collection: str, objects: Iterable[dict[str, Any]], affected: Affected) -> None:
        kind = KIND_OF[collection]
        self._verdict = None
        for obj in objects:
            oid = obj.get("id")
            if not isinstance(oid, str) or not oid:
                raise ValueError(f"a {collection} delta entry without an id")
            self._forget(oid, affected)
            if "@removed" in obj:
                self._remove(oid, kind, affected)
            else:
                self._upsert(oid, kind, obj, affected)
            if kind == "g":
                self._member_ops(oid, obj.get("members@delta"), affected)

    def _forget(self, oid: str, affected: Affected) -> None:
        """What the object held before: the keys it could stop affecting."""
        q = self.conn.execute
        affected.addresses.update(a for (a,) in q("SELECT address FROM kept WHERE object_id=?", (oid,)))
        for (primary,) in q("SELECT primary_address FROM users WHERE id=?", (oid,)):
            affected.users.add(oid)
            if primary:
                affected.primaries.add(primary)

    def _remove(self, oid: str, kind: str, affected: Affected) -> None:
        q = self.conn.execute
        row = q("SELECT kind FROM objects WHERE id=?", (oid,)).fetchone()
        if row is None:
            return  # a replayed removal, or one of an object never seen: nothing to undo
        if row[0] == "g":
            affected.groups.add(oid)
            self._children(oid, affected)
            q("DELETE FROM members WHERE group_id=?", (oid,))
        elif row[0] == "u":
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

    def _upsert(self, oid: str, kind: str, obj: dict[str, Any], affected: Affected) -> None:
        q = self.conn.execute
        row = q("SELECT kind, data FROM objects WHERE id=?", (oid,)).fetchone()
        old = json.loads(row[1]) if row is not None and row[0] == kind else None
        if row is None and kind == "g":
            self._children(oid, affected)  # a group that (re)appears becomes a parent again
        data = merge(old, kind, obj)
        cands = candidates(oid, OTYPE[kind], data, self.provisioned, self.rules)
        q(
            "INSERT OR REPLACE INTO objects (id, kind, data, excluded) VALUES (?, ?, ?, ?)",
            (oid, kind, json.dumps(data, separators=(",", ":"), ensure_ascii=False), len(cands.exclusions)),
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

    def _member_ops(self, gid: str, ops: Any, affected: Affected) -> None:
        if not isinstance(ops, list):
            return
        q = self.conn.execute
        group_exists = q("SELECT 1 FROM objects WHERE id=? AND kind='g'", (gid,)).fetchone() is not None
        for m in ops:
            if not isinstance(m, dict):
                continue
            mid = m.get("id")
            if not isinstance(mid, str) or not mid:
                continue
            mkind = member_kind(m.get("@odata.type"))
            if "@removed" in m:
                row = q("SELECT kind FROM members WHERE group_id=? AND member_id=?", (gid, mid)).fetchone()
                if row is not None:
                    mkind = row[0] if mkind == "?" else mkind
                q("DELETE FROM members WHERE group_id=? AND member_id=?", (gid, mid))
            elif group_exists:
                q("INSERT OR REPLACE INTO members (group_id, member_id, kind) VALUES (?, ?, ?)", (gid, mid, mkind))
            else:
                continue
            if mkind in ("u", "?"):
                affected.users.add(mid)
            if mkind in ("g", "?"):
                affected.groups.add(mid)

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
        return (group_name(gid, json.loads(row[0])), tuple(sorted(p for (p,) in parents if verdict.keeps(p))))

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
        return (row[0], tuple(sorted(g for (g,) in groups if verdict.keeps(g))))

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
        for oid, why in verdict.left_out.items():
            addresses += q("SELECT COUNT(*) FROM kept WHERE object_id=?", (oid,)).fetchone()[0]
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

    # --- a full read replaces everything -----------------------------------------------------
    def replace_all(self, rows: Any) -> None:
        """Load the rows a full read produced (``projection.CacheRows``) in place of the old cache."""
        q = self.conn.execute
        for table in CACHE_TABLES:
            q(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
        self.conn.executemany("INSERT OR REPLACE INTO objects (id, kind, data, excluded) VALUES (?, ?, ?, ?)", rows.objects)
        self.conn.executemany("INSERT OR IGNORE INTO kept (address, object_id) VALUES (?, ?)", rows.kept)
        self.conn.executemany("INSERT OR REPLACE INTO users (id, primary_address) VALUES (?, ?)", rows.users)
        self.conn.executemany("INSERT OR REPLACE INTO members (group_id, member_id, kind) VALUES (?, ?, ?)", rows.members)

    def clear(self) -> None:
        for table in CACHE_TABLES:
            self.conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
