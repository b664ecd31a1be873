"""A full read streamed into an empty directory cache, a few pages at a time.

A full read is a first delta round applied to an empty cache (docs/sync-rules.md, "Every round is a delta round, and entries are applied in arrival order"). Holding the whole round in Python objects costs memory in proportion to the
tenant (about 1 KB per object), so the read is folded a batch of entries at a time
(``shared.model.fold.Round``: the same fold as a delta round) and each folded batch is merged
into the cache tables ``objects`` and ``members`` at once: an object an earlier batch already
wrote gets the newer properties merged over its row (a group's later slices, a repeated
object), an ``@removed`` entry drops the row (and a group's member rows), member additions
and removals are applied in order. When the round is complete, one pass over ``objects`` in
key order derives the candidate rows (``kept``, ``users``, ``objects.excluded``) by the rules of
``shared/model/projection.py``, and the secondary indexes are built once.

Peak memory is then one batch of entries plus one chunk of rows, whatever the tenant's size.
Everything happens in the caller's transaction: a read that fails leaves the cache as the last
commit left it."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..common.fastjson import dumps_ascii, loads
from .fold import KIND_OF, OTYPE, Net, Round
from .projection import candidates
from .rules import NO_RULES, Rules

FLUSH_ENTRIES = 2000  # entries folded in memory before they are merged into the cache tables
CHUNK = 4096  # objects per step of the candidate pass
_LOOKUP = 500  # ids per SELECT ... IN (...) (under SQLite's 999 host parameters)

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
    cache, merges the entries into it a batch at a time, and ``finish`` derives the rest.
    Raises ``ValueError`` for an entry without an id."""

    def __init__(self, conn: sqlite3.Connection, provisioned: frozenset[str], rules: Rules = NO_RULES, *,
                 flush_entries: int = FLUSH_ENTRIES, keep: bool = False) -> None:
        self.conn = conn
        self.provisioned = provisioned
        self.rules = rules
        self.flush_entries = flush_entries
        self.entries: dict[str, int] = dict.fromkeys(KIND_OF, 0)
        self._buf = Round()
        self._pending = 0
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

    def take(self, collection: str, obj: dict[str, Any]) -> None:
        self._buf.take(collection, obj)
        self.entries[collection] += 1
        self._pending += 1
        if self._pending >= self.flush_entries:
            self.flush()

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
                merge_nets(self.conn, KIND_OF[collection], nets)
        self._buf = Round()
        self._pending = 0

    def feed(self, rnd: Round) -> None:
        """A round folded elsewhere, merged as one batch (tests, a dry run's scratch cache)."""
        self.flush()
        self._buf = rnd
        self.flush()

    def finish(self) -> dict[str, int]:
        """The round is complete: derive the candidate rows, build the indexes. Returns the
        distinct objects per collection that exist at the end of the round."""
        self.flush()
        derive(self.conn, self.provisioned, self.rules)
        q = self.conn.execute
        return {c: q("SELECT COUNT(*) FROM objects WHERE kind=?", (k,)).fetchone()[0] for c, k in KIND_OF.items()}


def merge_nets(conn: sqlite3.Connection, kind: str, nets: dict[str, Net]) -> None:
    """One folded batch of one kind merged into ``objects`` and ``members`` (the rows of an
    object an earlier batch wrote are its state so far in this round)."""
    q, em = conn.execute, conn.executemany
    ids = list(nets)
    old: dict[str, tuple[str, str]] = {}
    for i in range(0, len(ids), _LOOKUP):
        chunk = ids[i : i + _LOOKUP]
        marks = ",".join("?" * len(chunk))
        old.update((oid, (k, data)) for oid, k, data in q(f"SELECT id, kind, data FROM objects WHERE id IN ({marks})", chunk))  # noqa: S608
    gone: list[tuple[str]] = []
    reset_groups: list[tuple[str]] = []
    rows: list[tuple[str, str, str, int]] = []
    added: list[tuple[str, str, str]] = []
    removed: list[tuple[str, str]] = []
    for oid, net in nets.items():
        prev = old.get(oid)
        if prev is not None and (net.reset or not net.present):
            gone.append((oid,))
            if prev[0] == "g":
                reset_groups.append((oid,))
            prev = None
        if net.present:
            data = {**loads(prev[1]), **net.props} if prev is not None and prev[0] == kind else net.props
            rows.append((oid, kind, encode_data(data), 0))
        for mid, (add, mkind) in net.members.items():
            if add:
                added.append((oid, mid, mkind))
            else:
                removed.append((oid, mid))
    em("DELETE FROM objects WHERE id=?", gone)
    em("DELETE FROM members WHERE group_id=?", reset_groups)
    em("INSERT OR REPLACE INTO objects (id, kind, data, excluded) VALUES (?, ?, ?, ?)", rows)
    em("DELETE FROM members WHERE group_id=? AND member_id=?", removed)
    em("INSERT OR REPLACE INTO members (group_id, member_id, kind) VALUES (?, ?, ?)", added)


def derive(conn: sqlite3.Connection, provisioned: frozenset[str], rules: Rules) -> None:
    """Every Graph object's candidates (kept addresses, a user's primary address, the count
    of excluded candidates) in one pass over ``objects`` in key order, a chunk at a time;
    then the secondary indexes."""
    q, em = conn.execute, conn.executemany
    last = ""
    while True:
        chunk = q("SELECT id, kind, data FROM objects WHERE id > ? ORDER BY id LIMIT ?", (last, CHUNK)).fetchall()
        if not chunk:
            break
        last = chunk[-1][0]
        kept: list[tuple[str, str]] = []
        users: list[tuple[str, str | None]] = []
        excluded: list[tuple[int, str]] = []
        for oid, kind, data in chunk:
            otype = OTYPE.get(kind)
            if otype is None:
                continue  # an Exchange Online recipient: apply_recipients derives its rows
            cands = candidates(oid, otype, loads(data), provisioned, rules)
            if cands.kept:
                kept.extend([(a, oid) for a in cands.kept])
            if kind == "u":
                users.append((oid, cands.primary))
            if cands.exclusions:
                excluded.append((len(cands.exclusions), oid))
        em("INSERT OR IGNORE INTO kept (address, object_id) VALUES (?, ?)", kept)
        em("INSERT OR REPLACE INTO users (id, primary_address) VALUES (?, ?)", users)
        em("UPDATE objects SET excluded=? WHERE id=?", excluded)
    for statement in INDEXES.values():
        q(statement)


# An object's rows before a delta round: its kept addresses, its users row's primary address
# (an empty list: no users row; ``[None]``: a user without one) and its objects row (kind,
# data, excluded).
Before = tuple[list[str], list[str | None], tuple[str, str, int] | None]
CHUNK = 500  # ids per IN (...) query, well under SQLite's limit on host parameters


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
