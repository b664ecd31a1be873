"""A full read streamed into an empty directory cache, a few pages at a time.

A full read is a first delta round applied to an empty cache (docs/sync-rules.md, "Every round is a delta round, and entries are applied in arrival order"). Holding the whole round in Python objects costs memory in proportion to the
tenant (about 1 KB per object), so the read is folded a batch of entries at a time
(``shared.model.fold.Round``: the same fold as a delta round) and each folded batch is merged
into the cache tables at once (``merge_nets``): an object an earlier batch already wrote gets
the newer properties merged over its row (a group's later slices, a repeated object), an
``@removed`` entry drops its rows (and a group's member rows), member additions and removals
are applied in order. Each object's candidate rows (``kept``, ``users``, ``objects.excluded``)
are derived by the rules of ``shared/model/projection.py`` when its merged row is written, in
the same statements as the batch, so that no second pass over the cache is needed; the
secondary indexes are built once, when the round is complete.

Peak memory is then one batch of entries plus its rows, whatever the tenant's size.
Everything happens in the caller's transaction: a read that fails leaves the cache as the last
commit left it."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import repeat
from typing import Any

from ..common.bulkinsert import BulkInsert
from ..common.fastjson import dumps_ascii, loads
from .fold import KIND_OF, OTYPE, Net, Round
from .projection import tally, warn_invalid
from .rules import NO_RULES, Rules

FLUSH_ENTRIES = 2000  # entries folded in memory before they are merged into the cache tables
CHUNK = 500  # ids per SELECT ... IN (...) query, well under SQLite's limit on host parameters
REDERIVE_ROWS = 4096  # objects rows per step of the pass that derives a resumed checkpoint's rows (_derive_all)

_NOTHING_LOGGED: frozenset[str] = frozenset()  # an object's invalid values logged so far in the round: none

CACHE_TABLES = ("objects", "kept", "users", "members")
INDEXES = {  # the cache's secondary indexes: dropped for a load, built once after it
    "kept_by_object": "CREATE INDEX IF NOT EXISTS kept_by_object ON kept (object_id)",
    "users_by_primary": "CREATE INDEX IF NOT EXISTS users_by_primary ON users (primary_address)",
    "members_by_member": "CREATE INDEX IF NOT EXISTS members_by_member ON members (member_id, group_id, kind)",
    # The few objects with excluded candidates: a run's summary sums them without reading every row.
    "objects_excluding": "CREATE INDEX IF NOT EXISTS objects_excluding ON objects (excluded) WHERE excluded > 0",
}

# The cached data is JSON with non-ASCII escaped: a Graph string can carry lone surrogates
# (JSON escapes), which SQLite's UTF-8 text cannot hold; the escapes round-trip them.
encode_data = dumps_ascii


class StreamLoad:
    """The sink of a full read (``take(collection, entry)``, as ``Round``): it empties the
    cache, merges the entries into it a batch at a time with their candidate rows, and
    ``finish`` builds the indexes. Raises ``ValueError`` for an entry without an id."""

    def __init__(self, conn: sqlite3.Connection, provisioned: frozenset[str], rules: Rules = NO_RULES, *,
                 flush_entries: int = FLUSH_ENTRIES, keep: bool = False) -> None:
        self.conn = conn
        self.provisioned = provisioned
        self.rules = rules
        self.flush_entries = flush_entries
        self.entries: dict[str, int] = dict.fromkeys(KIND_OF, 0)
        self._buf = Round()
        self._pending = 0
        # The ids this load wrote, as marks at their hashes (``WrittenIds``); None: a resumed
        # round, whose cache holds rows of any id.
        self._written: WrittenIds | None = None if keep else WrittenIds()
        # Checkpoints (a full read that outlives one invocation): where each collection's round
        # stands ({"next": nextLink} or {"delta": deltaLink}), and what saves it (``checkpoint``).
        self.progress: dict[str, dict[str, str | None]] = {}
        self.checkpoint: Callable[[dict[str, dict[str, str | None]]], None] | None = None
        self.interval = 300.0
        self._saved_at = time.monotonic()
        if not keep:  # keep: a checkpointed round resumed, its merged pages stay
            for table in CACHE_TABLES:
                conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
        for index in INDEXES:
            conn.execute(f"DROP INDEX IF EXISTS {index}")  # noqa: S608 - fixed index names
        if keep and _underived(conn):
            _derive_all(conn, provisioned, rules)

    def take(self, collection: str, obj: dict[str, Any]) -> None:
        self._buf.take(collection, obj)
        self.entries[collection] += 1
        self._pending += 1
        if self._pending >= self.flush_entries:
            self.flush()

    def take_page(self, collection: str, objs: Sequence[Any]) -> int:
        """``take`` of a page's entries in order, up to the first that is not an object with an
        id (a non-empty string); returns how many were taken (``Round.take_page``). Merged at
        the same entries as ``take`` merges them."""
        taken = 0
        while taken < len(objs):
            part = objs[taken : taken + max(self.flush_entries - self._pending, 1)]  # up to the next merge
            n = self._buf.take_page(collection, part)
            taken += n
            self.entries[collection] += n
            self._pending += n
            if self._pending >= self.flush_entries:
                self.flush()
            if n < len(part):
                break
        return taken

    def page_done(self, collection: str, next_link: str | None, delta_link: str | None) -> None:
        """After each Graph page: where the collection's round stands; every ``interval``
        seconds the merged pages and the links are saved (``checkpoint``), at a page boundary,
        so the saved links continue exactly after what the cache holds."""
        self.progress[collection] = {"delta": delta_link} if next_link is None else {"next": next_link}
        if self.checkpoint is not None and time.monotonic() - self._saved_at >= self.interval:
            self.flush()
            self.checkpoint({c: dict(p) for c, p in self.progress.items()})
            self._saved_at = time.monotonic()

    def stop_checkpoints(self) -> None:
        """A collection has no delta (read in full without links): nothing could be resumed."""
        self.checkpoint = None

    def flush(self) -> None:
        """Merge the folded entries into the cache tables (a checkpoint calls this first)."""
        for collection, nets in self._buf.nets.items():
            if nets:
                merge_nets(self.conn, KIND_OF[collection], nets, self.provisioned, self.rules, self._written)
        self._buf = Round()
        self._pending = 0

    def feed(self, rnd: Round) -> None:
        """A round folded elsewhere, merged as one batch (tests, a dry run's scratch cache)."""
        self.flush()
        self._buf = rnd
        self.flush()

    def finish(self) -> dict[str, int]:
        """The round is complete: the last batch merged, the indexes built. Returns the
        distinct objects per collection that exist at the end of the round."""
        self.flush()
        q = self.conn.execute
        for statement in INDEXES.values():
            q(statement)
        counted = dict(q("SELECT kind, COUNT(*) FROM objects GROUP BY kind").fetchall())
        return {c: counted.get(k, 0) for c, k in KIND_OF.items()}


# The cache's bulk inserts (multi-row statements; shared/common/bulkinsert.py).
PUT_OBJECTS = BulkInsert("objects", ("id", "kind", "data", "excluded"), conflict="OR REPLACE")
# Objects rows with no excluded candidate (most of them) a statement per kind, the kind and the
# ``excluded`` 0 constants of the statement: two values fewer bound per row.
OBJECT_KINDS = tuple(KIND_OF.values())
PUT_PLAIN_OBJECTS = {k: BulkInsert("objects", ("id", "kind", "data", "excluded"), conflict="OR REPLACE", constants={"kind": k, "excluded": 0})
                     for k in OBJECT_KINDS}
PUT_KEPT = BulkInsert("kept", ("address", "object_id"), conflict="OR IGNORE")
PUT_USERS = BulkInsert("users", ("id", "primary_address"), conflict="OR REPLACE")
# Member rows a statement per member kind (shared/model/fold.py's ``member_kind``), the kind a
# constant of the statement: one value fewer bound per row.
MEMBER_KINDS = ("u", "g", "o", "?")
PUT_MEMBERS = {k: BulkInsert("members", ("group_id", "member_id", "kind"), conflict="OR REPLACE", constants={"kind": k}) for k in MEMBER_KINDS}


class _Rows:
    """The statements' parameters of one merged batch, applied in ``apply``'s order."""

    __slots__ = ("gone", "reset_groups", "unkept", "unusers", "objects", "plain", "kept", "users", "added", "removed")

    def __init__(self) -> None:
        self.gone: list[tuple[str]] = []  # objects rows an @removed entry drops
        self.reset_groups: list[tuple[str]] = []  # groups whose member rows go with them
        self.unkept: list[tuple[str, str]] = []  # kept rows of an object's earlier state
        self.unusers: list[tuple[str]] = []  # users rows of an object that is no user now
        self.objects: list[tuple[str, str, str, int]] = []  # objects rows with excluded candidates
        self.plain: dict[str, list[tuple[str, str]]] = {k: [] for k in OBJECT_KINDS}  # (id, data) rows without, per kind
        self.kept: list[tuple[str, str]] = []
        self.users: list[tuple[str, str | None]] = []
        self.added: dict[str, list[tuple[str, str]]] = {k: [] for k in MEMBER_KINDS}  # (group, member) rows per member kind
        self.removed: list[tuple[str, str]] = []

    def put_object(self, oid: str, kind: str, text: str, excluded: int) -> None:
        """The object's ``objects`` row: with excluded candidates, in ``objects`` (PUT_OBJECTS);
        without (most), in its kind's ``plain`` rows (PUT_PLAIN_OBJECTS, ``excluded`` 0).
        ``_write`` writes the same split inline (its hot path: no call per object)."""
        if excluded:
            self.objects.append((oid, kind, text, excluded))
        else:
            self.plain[kind].append((oid, text))

    def apply(self, conn: sqlite3.Connection) -> None:
        """Deletions first, then the new rows, each sorted by its table's key (a B-tree fed
        in key order touches each page once per batch), as multi-row statements
        (shared/common/bulkinsert.py: the same rows as one ``executemany`` each)."""
        em = conn.executemany
        em("DELETE FROM objects WHERE id=?", self.gone)
        em("DELETE FROM members WHERE group_id=?", self.reset_groups)
        em("DELETE FROM kept WHERE address=? AND object_id=?", self.unkept)
        em("DELETE FROM users WHERE id=?", self.unusers)
        PUT_OBJECTS.run(conn, sorted(self.objects))
        for kind, plain in self.plain.items():  # a batch writes each id once: any order of statements gives the same rows
            if plain:
                PUT_PLAIN_OBJECTS[kind].run(conn, sorted(plain))
        PUT_KEPT.run(conn, sorted(self.kept))
        PUT_USERS.run(conn, sorted(self.users))
        em("DELETE FROM members WHERE group_id=? AND member_id=?", self.removed)
        for kind, added in self.added.items():  # a batch adds each (group, member) once: any order of kinds gives the same rows
            if added:
                PUT_MEMBERS[kind].run(conn, sorted(added))


class WrittenIds:
    """The ids a load into an emptied cache wrote so far, as one byte per slot of a fixed table
    (``BITS`` slots, 2 MB) marked at each id's hash: an id whose slot is clear has no row, so
    only the others are looked up (a few percent of a full read's ids share a slot with an
    earlier one: looked up, as without the table). Memory does not grow with the tenant."""

    BITS = 1 << 21  # slots (a byte each: marked and tested without the bit arithmetic)

    def __init__(self) -> None:
        self.bits = bytearray(self.BITS)

    def take(self, oids: Iterable[str]) -> list[str]:
        """Mark each of ``oids`` written, in order; returns those that may have had rows
        before (their slot was marked: by an earlier id, or by one of ``oids`` before it)."""
        bits, mask = self.bits, self.BITS - 1
        maybe = []
        for oid in oids:
            h = hash(oid) & mask
            if bits[h]:
                maybe.append(oid)
            else:
                bits[h] = 1
        return maybe


def merge_nets(conn: sqlite3.Connection, kind: str, nets: dict[str, Net], provisioned: frozenset[str], rules: Rules = NO_RULES,
               written: WrittenIds | None = None) -> None:
    """One folded batch of one kind merged into the cache tables, with each written object's
    candidate rows (the rows of an object an earlier batch wrote are its state so far in this
    round: they are replaced, or left as they are when the merged row is unchanged).
    ``written``: the ids the load wrote before (only those may be looked up), updated with this
    batch's; ``None``: every id is looked up."""
    old: dict[str, tuple[str, str]] = {}
    ids = list(nets) if written is None else written.take(nets)
    for part in chunks(ids):
        marks = ",".join("?" * len(part))
        old.update((oid, (k, data)) for oid, k, data in conn.execute(f"SELECT id, kind, data FROM objects WHERE id IN ({marks})", part))  # noqa: S608
    rows = _Rows()
    added, removed = rows.added, rows.removed
    for oid, net in nets.items():
        prev = old.get(oid) if old else None  # a first batch of a full read finds no row
        quiet = _NOTHING_LOGGED
        if prev is not None and (net.reset or not net.present):
            rows.gone.append((oid,))
            if prev[0] == "g":
                rows.reset_groups.append((oid,))
            quiet = _forget(rows, oid, prev[0], loads(prev[1]), provisioned, rules, kind if net.present else None)
            prev = None
        if net.present:
            _write(rows, oid, kind, net.props, prev, provisioned, rules, quiet)
        if net.members:
            for mid, (add, mkind) in net.members.items():
                if add:
                    added[mkind].append((oid, mid))
                else:
                    removed.append((oid, mid))
    rows.apply(conn)


def _write(rows: _Rows, oid: str, kind: str, props: dict[str, Any], prev: tuple[str, str] | None,
           provisioned: frozenset[str], rules: Rules, quiet: frozenset[str]) -> None:
    """The object's merged row and its candidate rows. ``prev``: its row so far in this round
    (kind, data); ``quiet``: invalid values already logged for it."""
    data = props
    if prev is not None:
        old = loads(prev[1])
        if prev[0] == kind:
            data = {**old, **props}
        text = encode_data(data)
        if text == prev[1] and prev[0] == kind:
            return  # already right (a group's later slice with the same properties)
        quiet = _forget(rows, oid, prev[0], old, provisioned, rules, kind)
    else:
        text = encode_data(data)
    kept, primary, excluded, invalid = tally(data, provisioned, rules)
    if invalid:
        warn_invalid(OTYPE[kind], oid, invalid, quiet)
    if excluded:  # _Rows.put_object, inline: a full read's hot path, without a call per object
        rows.objects.append((oid, kind, text, excluded))
    else:
        rows.plain[kind].append((oid, text))
    if kept:
        append = rows.kept.append
        for address in kept:  # (address, oid) rows, without a comprehension's frame
            append((address, oid))
    if kind == "u":
        rows.users.append((oid, primary))


def _forget(rows: _Rows, oid: str, prev_kind: str, prev_data: dict[str, Any], provisioned: frozenset[str], rules: Rules,
            kind: str | None) -> frozenset[str]:
    """Take back the candidate rows an object's earlier state wrote: its kept rows (derived
    again from that state, by key: the load runs without the index by object) and its users
    row, unless a users row of the new state (``kind`` ``u``) replaces it. Returns the invalid
    values that state had (they were logged then)."""
    kept, _, _, invalid = tally(prev_data, provisioned, rules)
    rows.unkept.extend(zip(kept, repeat(oid)))
    if prev_kind == "u" and kind != "u":
        rows.unusers.append((oid,))
    return frozenset(value for value, _ in invalid)


def _underived(conn: sqlite3.Connection) -> bool:
    """A resumed checkpoint whose objects have no candidate rows: one saved by a release that
    derived them only once the round was complete (no users row and no kept row at all)."""
    q = conn.execute
    return (q("SELECT 1 FROM users LIMIT 1").fetchone() is None and q("SELECT 1 FROM kept LIMIT 1").fetchone() is None
            and q("SELECT 1 FROM objects WHERE kind IN ('u', 'g', 'c') LIMIT 1").fetchone() is not None)


def _derive_all(conn: sqlite3.Connection, provisioned: frozenset[str], rules: Rules) -> None:
    """Every Graph object's candidate rows, in one pass over ``objects`` in key order, a step
    of ``REDERIVE_ROWS`` rows at a time (a resumed checkpoint that has none: ``_underived``)."""
    q = conn.execute
    last = ""
    while True:
        step = q("SELECT id, kind, data FROM objects WHERE id > ? AND kind IN ('u', 'g', 'c') ORDER BY id LIMIT ?", (last, REDERIVE_ROWS)).fetchall()
        if not step:
            break
        last = step[-1][0]
        rows = _Rows()
        for oid, kind, text in step:
            t = tally(loads(text), provisioned, rules)
            warn_invalid(OTYPE[kind], oid, t.invalid)
            rows.put_object(oid, kind, text, t.excluded)  # the split _write writes inline
            rows.kept.extend([(a, oid) for a in t.kept])
            if kind == "u":
                rows.users.append((oid, t.primary))
        rows.apply(conn)


# An object's rows before a delta round: its kept addresses, its users row's primary address
# (an empty list: no users row; ``[None]``: a user without one) and its objects row (kind,
# data, excluded).
Before = tuple[list[str], list[str | None], tuple[str, str, int] | None]


def chunks(ids: list[str], size: int = CHUNK) -> Iterator[list[str]]:
    """``ids`` in consecutive slices of at most ``size``."""
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


def prefetch(conn: sqlite3.Connection, ids: Iterable[str]) -> dict[str, Before]:
    """The rows of each of ``ids`` as they are now (``Before``), read a chunk at a time."""
    unique = list(dict.fromkeys(ids))
    kept: dict[str, list[str]] = {oid: [] for oid in unique}
    primaries: dict[str, list[str | None]] = {oid: [] for oid in unique}
    rows: dict[str, tuple[str, str, int]] = {}
    for part in chunks(unique):
        marks = ",".join("?" * len(part))
        for address, oid in conn.execute(f"SELECT address, object_id FROM kept WHERE object_id IN ({marks})", part):  # noqa: S608 - placeholders only
            kept[oid].append(address)
        for oid, primary in conn.execute(f"SELECT id, primary_address FROM users WHERE id IN ({marks})", part):  # noqa: S608
            primaries[oid].append(primary)
        for oid, kind, data, excluded in conn.execute(f"SELECT id, kind, data, excluded FROM objects WHERE id IN ({marks})", part):  # noqa: S608
            rows[oid] = (kind, data, excluded)
    return {oid: (kept[oid], primaries[oid], rows.get(oid)) for oid in unique}
