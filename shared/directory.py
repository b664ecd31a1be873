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
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .projection import EXCHANGE_SOURCE, GROUP_TYPE, USER_TYPE, candidates, group_name

PROPS: dict[str, tuple[str, ...]] = {
    "u": ("mail", "proxyAddresses"),
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


def data_json(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def recipient_entry(rec: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """An Exchange Online recipient → (cache id ``exo:<guid>``, its Guid, the cached data:
    ``mail`` = PrimarySmtpAddress, ``proxyAddresses`` = the ``smtp:`` EmailAddresses, ``type``
    = RecipientTypeDetails)."""
    from .exchange import recipient_id, recipient_object

    oid = recipient_id(rec)
    data = compact("x", recipient_object(rec))
    data["type"] = str(rec.get("RecipientTypeDetails") or "")
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


class Cache:
    """The cache tables of one open state database (inside the caller's transaction)."""

    def __init__(self, conn: sqlite3.Connection, provisioned: frozenset[str]) -> None:
        self.conn = conn
        self.provisioned = provisioned

    # --- applying a delta round ----------------------------------------------------------
    def apply(self, collection: str, objects: Iterable[dict[str, Any]], affected: Affected) -> None:
        kind = KIND_OF[collection]
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
        cands = candidates(oid, OTYPE[kind], data, self.provisioned)
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

    # --- Exchange Online: no delta, the whole kind every run ----------------------------------
    def apply_recipients(self, recipients: Iterable[dict[str, Any]], affected: Affected) -> None:
        """Make the cached Exchange recipients exactly ``recipients`` (a complete read of the
        configured types): a changed one is projected again, one that is gone no longer holds
        its addresses. A recipient listed twice: the first one stands."""
        q = self.conn.execute
        old = dict(q("SELECT id, data FROM objects WHERE kind='x'").fetchall())
        seen: set[str] = set()
        for rec in recipients:
            oid, guid, data = recipient_entry(rec)
            if oid in seen:
                continue
            seen.add(oid)
            text = data_json(data)
            if old.get(oid) == text:
                continue
            self._forget(oid, affected)
            cands = candidates(guid, data["type"], data, self.provisioned, source=EXCHANGE_SOURCE)
            q("INSERT OR REPLACE INTO objects (id, kind, data, excluded) VALUES (?, 'x', ?, ?)", (oid, text, len(cands.exclusions)))
            q("DELETE FROM kept WHERE object_id=?", (oid,))
            self.conn.executemany("INSERT OR IGNORE INTO kept (address, object_id) VALUES (?, ?)", ((a, oid) for a in cands.kept))
            affected.addresses.update(cands.kept)
        for oid in old.keys() - seen:
            self._forget(oid, affected)
            q("DELETE FROM objects WHERE id=?", (oid,))
            q("DELETE FROM kept WHERE object_id=?", (oid,))

    # --- projecting the affected keys ------------------------------------------------------
    def desired(self, dataset: str, keys: Iterable[str]) -> dict[str, tuple | None]:
        """The projected record of each key (``None``: the directory implies no record)."""
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
        return self.conn.execute("SELECT 1 FROM kept WHERE address=? LIMIT 1", (address,)).fetchone() is not None

    def _group(self, gid: str) -> tuple | None:
        row = self.conn.execute("SELECT data FROM objects WHERE id=? AND kind='g'", (gid,)).fetchone()
        if row is None:
            return None
        parents = self.conn.execute(
            "SELECT DISTINCT m.group_id FROM members m JOIN objects g ON g.id = m.group_id AND g.kind = 'g' "
            "WHERE m.member_id = ? AND m.kind IN ('g', '?')",
            (gid,),
        ).fetchall()
        return (group_name(gid, json.loads(row[0])), tuple(sorted(p for (p,) in parents)))

    def _user(self, uid: str) -> tuple | None:
        q = self.conn.execute
        row = q("SELECT primary_address FROM users WHERE id=?", (uid,)).fetchone()
        if row is None or not row[0]:
            return None
        owner = q("SELECT MIN(id) FROM users WHERE primary_address=?", (row[0],)).fetchone()[0]
        if owner != uid:
            return None
        groups = q(
            "SELECT DISTINCT m.group_id FROM members m JOIN objects g ON g.id = m.group_id AND g.kind = 'g' "
            "WHERE m.member_id = ? AND m.kind IN ('u', '?')",
            (uid,),
        ).fetchall()
        return (row[0], tuple(sorted(g for (g,) in groups)))

    # --- whole-directory figures -----------------------------------------------------------
    def excluded(self) -> dict[str, int]:
        """Candidates and users left out across the whole directory, as a full read counts them."""
        q = self.conn.execute
        addresses = q("SELECT COALESCE(SUM(excluded), 0) FROM objects").fetchone()[0]
        no_primary = q("SELECT COUNT(*) FROM users WHERE primary_address IS NULL").fetchone()[0]
        shared = q("SELECT COUNT(*) - COUNT(DISTINCT primary_address) FROM users WHERE primary_address IS NOT NULL").fetchone()[0]
        return {"addresses": int(addresses), "groups": 0, "users": int(no_primary + shared)}

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
