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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..common.fastjson import loads
from .counts import start_of
from .fold import KIND_OF, OTYPE, Net, Round, member_kind, merge, recipient_entry  # noqa: F401 - Round, member_kind: this module's API
from .loading import CACHE_TABLES, FLUSH_ENTRIES, PUT_KEPT, Before, StreamLoad, chunks, encode_data, prefetch
from .projection import EXCHANGE_SOURCE, GRAPH_SOURCE, Projection, candidates
from .rules import EVERYTHING, NO_RULES, Rules, Shape, Verdict, judge
from .views import WholeDirectory
from .writes import DROP_MEMBER, PUT_MEMBER, Writes

log = logging.getLogger("shared.directory")  # the name its log lines have always carried

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (id TEXT PRIMARY KEY, kind TEXT NOT NULL, data TEXT NOT NULL, excluded INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kept (address TEXT NOT NULL, object_id TEXT NOT NULL, PRIMARY KEY (address, object_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kept_by_object ON kept (object_id);
CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, primary_address TEXT) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS users_by_primary ON users (primary_address);
CREATE TABLE IF NOT EXISTS members (group_id TEXT NOT NULL, member_id TEXT NOT NULL, kind TEXT NOT NULL, PRIMARY KEY (group_id, member_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_by_member ON members (member_id, group_id, kind);
CREATE INDEX IF NOT EXISTS objects_excluding ON objects (excluded) WHERE excluded > 0;
"""


@dataclass
class Affected:
    """Record keys a round may have changed, per dataset."""

    addresses: set[str] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)
    users: set[str] = field(default_factory=set)
    primaries: set[str] = field(default_factory=set)

    def keys(self, dataset: str) -> set[str]:
        return getattr(self, dataset)


class Cache(WholeDirectory):
    """The cache tables of one open state database (inside the caller's transaction), or of a
    scratch database (``scratch_cache``). The whole-directory projection is in
    ``shared/model/views.py``."""

    def __init__(self, conn: sqlite3.Connection, provisioned: frozenset[str], rules: Rules = NO_RULES, *, empty: bool = False) -> None:
        self.conn = conn
        self.provisioned = provisioned
        self.rules = rules  # scope and exclusions (shared/model/rules.py)
        self._verdict: Verdict | None = None
        self._empty = empty  # known to hold no object: a round is loaded in bulk
        self._loading: StreamLoad | None = None  # a full read being streamed in (load)
        self.immediate_writes = False  # True: each delta write run at once (the tests' reference)
        self._w = Writes(conn, immediate=True)  # a delta round's queued writes (apply_round)
        self.start: dict[str, tuple[int, list[Any]]] | None = {}  # see WholeDirectory.excluded_since
        self.end: dict[str, tuple[int, list[Any]]] = {}  # the same after the rounds, for the objects whose rows they wrote

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

    # --- applying a delta round ----------------------------------------------------------
    def apply(self, collection: str, objects: Iterable[dict[str, Any]], affected: Affected | None) -> None:
        """Apply one collection's entries of a round, in order (``Round`` says how), and add
        the record keys they can affect to ``affected`` (``None``: not needed, as after a full
        read, which projects everything). Raises ``ValueError`` for an entry without an id."""
        rnd = Round()
        for obj in objects:
            rnd.take(collection, obj)
        self.apply_round(rnd, affected)

    def apply_round(self, rnd: Round, affected: Affected | None) -> None:
        """Apply a folded round (every collection) to the cache."""
        self._verdict = None  # the scope is judged again over the merged cache
        if self._empty:
            self.load().feed(rnd)
            self.finish_load(affected)
            return
        sink = affected if affected is not None else Affected()
        # Each object's rows before the round, read in chunks; an id named twice (in two
        # collections) reads them again, after its first entry changed them.
        before = prefetch(self.conn, [oid for nets in rnd.nets.values() for oid in nets])
        if self.start is not None:  # each object's rows before the first round that named it
            self.start = {**start_of(before), **self.start}
        # The rows' writes are queued and run a statement kind at a time (shared/model/writes.py).
        self._w = Writes(self.conn, immediate=self.immediate_writes)
        for collection, nets in rnd.nets.items():
            kind = KIND_OF[collection]
            for oid, net in nets.items():
                self._apply_net(oid, kind, net, sink, before.pop(oid, None))
        self._w.flush()

    def load(self, *, flush_entries: int = FLUSH_ENTRIES, keep: bool = False) -> StreamLoad:
        """Empty the cache for a full read, which is then streamed into it (``StreamLoad``);
        ``keep``: a checkpointed read resumed, its merged pages stay."""
        self._verdict = None
        self.start = None
        self._loading = StreamLoad(self.conn, self.provisioned, self.rules, flush_entries=flush_entries, keep=keep)
        return self._loading

    def finish_load(self, affected: Affected | None = None) -> dict[str, int]:
        """The streamed round is complete: its last batch merged, the indexes built (``StreamLoad.finish``).
        Returns the distinct objects per collection; with ``affected``, every key the cache
        now implies goes to it (the cache held nothing before)."""
        loading = self._loading if self._loading is not None else self.load()  # nothing streamed in (EXO_MODE=only)
        self._loading = None
        counts = loading.finish()
        self._empty = False
        if affected is not None:
            q = self.conn.execute
            affected.addresses.update(a for (a,) in q("SELECT address FROM kept"))
            for uid, primary in q("SELECT id, primary_address FROM users"):
                affected.users.add(uid)
                if primary:
                    affected.primaries.add(primary)
            affected.groups.update(g for (g,) in q("SELECT id FROM objects WHERE kind='g'"))
            for _, mid, mk in q("SELECT group_id, member_id, kind FROM members"):
                if mk in ("u", "?"):
                    affected.users.add(mid)
                if mk in ("g", "?"):
                    affected.groups.add(mid)
        return counts

    def _apply_net(self, oid: str, kind: str, net: Net, affected: Affected, before: Before | None = None) -> None:
        # What the object held before: the keys it could stop affecting (an id met again
        # reads its rows as its first entry left them: the queued writes run first).
        if before is None:
            self._w.flush()
        kept, primaries, row = before if before is not None else prefetch(self.conn, [oid])[oid]
        affected.addresses.update(kept)
        for primary in primaries:
            affected.users.add(oid)
            if primary:
                affected.primaries.add(primary)
        if row is not None and (net.reset or not net.present):
            self._remove(oid, row[0], affected)
            row, kept, primaries = None, [], []
        if net.present:
            old = loads(row[1]) if row is not None and row[0] == kind else None  # orjson; json for what it refuses
            if row is None and kind == "g":
                self._children(oid, affected)  # a group that (re)appears becomes a parent again
            self._upsert(oid, kind, merge(old, kind, net.props), affected, (kept, primaries, row))
        if kind == "g" and net.members:
            self._member_ops(oid, net.members, net.present, affected)

    def _remove(self, oid: str, old_kind: str, affected: Affected) -> None:
        w = self._w.add
        if old_kind == "g":
            affected.groups.add(oid)
            self._children(oid, affected)
            w("drop_members", (oid,))
        elif old_kind == "u":
            affected.users.add(oid)
        w("drop_object", (oid,))
        w("drop_kept", (oid,))
        w("drop_user", (oid,))
        self.end[oid] = (0, [])

    def _children(self, gid: str, affected: Affected) -> None:
        self._w.flush()  # a read sees every write queued before it
        for mid, mkind in self.conn.execute("SELECT member_id, kind FROM members WHERE group_id=?", (gid,)):
            if mkind in ("u", "?"):
                affected.users.add(mid)
            if mkind in ("g", "?"):
                affected.groups.add(mid)

    def _upsert(self, oid: str, kind: str, data: dict[str, Any], affected: Affected, now: Before) -> None:
        """``now``: the object's rows as they are (``Before``); rows that are already right stay."""
        w = self._w.add
        cands = candidates(oid, OTYPE[kind], data, self.provisioned, self.rules)
        row = (kind, encode_data(data), len(cands.exclusions))
        self.end[oid] = (row[2], [cands.primary] if kind == "u" else now[1])  # another kind keeps its users row
        if now[2] != row:
            if now[2] is not None and now[2][0] == kind and now[2][2] == row[2]:
                w("put_data", (row[1], oid))  # only the data changed: no index entry is rewritten
            else:
                w("put_object", (oid, *row))
        # Only the kept rows that change are written: each one written dirties a page of
        # ``kept`` and one of ``kept_by_object``, committed through the WAL and checkpointed.
        held = set(now[0])
        if held != set(cands.kept):
            for a in held.difference(cands.kept):
                w("drop_address", (a, oid))
            for a in cands.kept:
                if a not in held:
                    w("put_kept", (a, oid))
        affected.addresses.update(cands.kept)
        if kind == "u":
            primary = cands.primary
            if now[1] != [primary]:
                w("put_user", (oid, primary))
            affected.users.add(oid)
            if primary:
                affected.primaries.add(primary)
        elif kind == "g":
            affected.groups.add(oid)

    def _member_ops(self, gid: str, ops: dict[str, tuple[bool, str]], group_exists: bool, affected: Affected) -> None:
        w = self._w.add
        for mid, (added, mkind) in ops.items():
            if not added:
                if mkind == "?":  # Graph did not say what the member was: the cached row does
                    self._w.flush()
                    row = self.conn.execute("SELECT kind FROM members WHERE group_id=? AND member_id=?", (gid, mid)).fetchone()
                    if row is not None:
                        mkind = row[0]
                w("member", (DROP_MEMBER, (gid, mid)))
            elif group_exists:
                w("member", (PUT_MEMBER, (gid, mid, mkind)))
            else:
                continue
            if mkind in ("u", "?"):
                affected.users.add(mid)
            if mkind in ("g", "?"):
                affected.groups.add(mid)

    # --- Exchange Online: no delta, the whole kind every run ----------------------------------
    def apply_recipients(self, recipients: Iterable[dict[str, Any]], affected: Affected | None) -> None:
        """Make the cached Exchange recipients exactly ``recipients`` (a complete read of the
        configured types): a changed one is projected again, one that is gone no longer holds
        its addresses, and the addresses either touches go to ``affected``. A recipient listed
        twice (its Guid in any letter case) is what its last entry says: the later entry is its
        newer state, as within a Graph round (docs/sync-rules.md, "Every round is a delta round, and entries are applied in arrival order")."""
        q = self.conn.execute
        sink = affected if affected is not None else Affected()
        self.start = None  # changes objects no round named
        old = dict(q("SELECT id, data FROM objects WHERE kind='x'").fetchall())
        latest: dict[str, tuple[str, dict[str, Any]]] = {}
        for rec in recipients:
            oid, guid, data = recipient_entry(rec)
            latest[oid] = (guid, data)
        seen = latest.keys()
        kept: list[tuple[str, str]] = []  # each recipient's kept rows, inserted after the loop (only its own rows are read in it)
        for oid, (guid, data) in latest.items():
            text = encode_data(data)
            if old.get(oid) == text:
                continue
            sink.addresses.update(a for (a,) in q("SELECT address FROM kept WHERE object_id=?", (oid,)))
            cands = candidates(guid, data["type"], data, self.provisioned, self.rules, source=EXCHANGE_SOURCE)
            q("INSERT OR REPLACE INTO objects (id, kind, data, excluded) VALUES (?, 'x', ?, ?)", (oid, text, len(cands.exclusions)))
            q("DELETE FROM kept WHERE object_id=?", (oid,))
            kept.extend([(a, oid) for a in cands.kept])
            sink.addresses.update(cands.kept)
        PUT_KEPT.run(self.conn, kept)
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
        """The projected record of each key (``None``: the directory implies no record), read
        a chunk of keys at a time (``shared/model/views.py``)."""
        if self.rules.judges_objects:
            self.verdict()  # a scope id that names no group fails here, before anything is sent
        keys = list(keys)
        out: dict[str, tuple | None] = {}
        project = {"addresses": self._kept_chunk, "groups": self._group_chunk}.get(dataset, self._user_chunk)
        for part in chunks(list(dict.fromkeys(keys))):
            out.update(project(part))
        return {k: out[k] for k in keys}

    # --- a full read starts from nothing ------------------------------------------------------
    def clear(self) -> None:
        """Empty the cache (a full read is a round applied to an empty cache)."""
        for table in CACHE_TABLES:
            self.conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
        self._empty = True
        self.start = None


def scratch_cache(provisioned: Iterable[str], rules: Rules = NO_RULES) -> Cache:
    """An empty cache in a scratch database (a dry run, tests), never the state: SQLite's private
    temporary database (spills to a file past its 32 MiB cache, deleted on close), not RAM."""
    conn = sqlite3.connect("", isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA cache_size=-32768")
    conn.executescript(SCHEMA)
    return Cache(conn, frozenset(provisioned), rules, empty=True)


def project_entries(entries: Iterable[tuple[str, dict[str, Any]]], provisioned: Iterable[str], rules: Rules = NO_RULES) -> Projection:
    """Project a round given as ``(collection, entry)`` pairs in arrival order (tests).
    Raises ``rules.ScopeError`` when a scope id names no group of the round."""
    rnd = Round()
    for collection, obj in entries:
        rnd.take(collection, obj)
    cache = scratch_cache(provisioned, rules)
    try:
        # Merged a few entries at a time, as a full read streams its pages into the cache.
        cache.load(flush_entries=3).feed(rnd)
        cache.finish_load()
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
