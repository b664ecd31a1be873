"""The change-tracking state: what the service is known to hold, and the directory cache that
delta rounds are merged into.

Format: one SQLite database (``state.db``), chosen for three reasons. A delta round touches a
few rows of a 100,000-user state, and SQLite reads and writes only those pages, where a JSON
document must be parsed and rewritten whole (2 s each way at 100,000 users). Its commit is
atomic and survives a crash at any instant. And it needs nothing beyond the standard library.

A run works inside one transaction and commits once at the end, as the next *generation*.
Batches the service confirms in between are also appended to a journal (a file with fsync,
or an append blob), each before the next batch is sent, so a process killed between two
batches loses nothing: the next run replays the journal onto the last committed generation.
Journal entries name the generation and sequence they extend, so a stale or torn entry is
ignored rather than applied twice, and the position (lineage:generation:sequence) is part of
every Idempotency-Key.

Backends (``file:`` and ``blob:``) are in ``shared/storage/stores.py``; a state written by
the previous release (``state.json.gz``) is converted on first open by
``shared/storage/legacy.py``."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import shutil
import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..common.errors import StateError
from ..model.directory import SCHEMA as CACHE_SCHEMA
from ..model.directory import Cache
from ..model.loading import INDEXES as CACHE_INDEXES
from ..model.records import DATASETS, Records
from ..model.rules import NO_RULES, Rules
from .codec import _UPSERT, UNKNOWN, UNKNOWN_TEXT, UPSERT_UNKNOWN, _decode, _encode, _upsert_rows  # noqa: F401 - the record values as stored
from .facts import held_rows, read_facts
from .journal import good_prefix, parse_journal, replay_journal, snapshot  # noqa: F401 - the journal's side of the state

log = logging.getLogger("shared.state")  # the name its log lines have always carried

FORMAT = "entra-dirsync-state"
VERSION = 2
DB_NAME = "state.db"
JOURNAL_NAME = "state.journal.jsonl"
V1_NAME = "state.json.gz"  # the previous release's format

# Keys whose value at the service may differ from what the records say: every key that a batch
# of an interrupted run named (confirmed or only intended). The next update compares each of
# them again with what the directory implies, whatever its read (full or delta) saw; the
# commit of a successful update empties the table. (docs/sync-rules.md: "The recovery guarantee".)
RECHECK_TABLE = "CREATE TABLE IF NOT EXISTS recheck (dataset TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (dataset, key)) WITHOUT ROWID"
# Records of unknown state are few: each run finds them without reading every record.
UNKNOWN_INDEX = "CREATE INDEX IF NOT EXISTS records_unknown ON records (dataset) WHERE value = '?'"

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (dataset TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (dataset, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS held (dataset TEXT NOT NULL, key TEXT NOT NULL, approved INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (dataset, key)) WITHOUT ROWID;
"""
    + RECHECK_TABLE + ";\n" + UNKNOWN_INDEX + ";\n"
    + CACHE_SCHEMA
)


class _Meta:
    """A named meta value of the state (JSON; ``None`` deletes it). Only the state writes its
    meta keys: every other module reads and writes them through these accessors."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __get__(self, db: StateDB | None, owner: type | None = None) -> Any:
        return self if db is None else db._get_meta(self.key)

    def __set__(self, db: StateDB, value: Any) -> None:
        db._set_meta(self.key, value)


class StateDB:
    """One open state database. Everything happens in one transaction until ``commit``."""

    def __init__(self, path: Path, where: str, *, durable: bool = True, readonly: bool = False, discard: bool = False) -> None:
        self.path = path
        self.where = where
        self.readonly = readonly
        self.discard = discard  # a scratch copy (dry runs): removed on close
        try:
            self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            # Checked before anything is set: a file that is not ours is refused untouched.
            tables = [name for (name,) in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            fmt = self._meta_raw("format") if tables else None
            if tables and fmt is None:
                raise StateError(f"the state at {where} is not a sync state database; run 'refresh' to rebuild it")
            if fmt is not None and json.loads(fmt) != FORMAT:
                raise StateError(f"the state at {where} is not a sync state database; run 'refresh' to rebuild it")
            if fmt is not None and self._get_meta("version") != VERSION:
                raise StateError(
                    f"the state at {where} has version {self._get_meta('version')!r}, this release reads version {VERSION}; "
                    "run 'refresh' to rebuild it from the service"
                )
            # WAL for a state on disk: a dry run's snapshot never waits for a running update's
            # commit, and the update never waits for the snapshot. A working copy (``blob:``,
            # snapshots) keeps its rollback journal in a file, not in memory: a full read
            # rewrites most pages, and their old images would otherwise all be held in RAM.
            self.conn.execute("PRAGMA journal_mode=" + ("WAL" if durable else "TRUNCATE"))
            self.conn.execute("PRAGMA synchronous=" + ("FULL" if durable else "OFF"))
            self.conn.execute("PRAGMA cache_size=-32768")
            self.conn.execute("PRAGMA foreign_keys=OFF")
            if fmt is None:
                if readonly:
                    raise StateError(f"the state at {where} is empty")
                self._create()
            else:
                self.lineage = str(self._get_meta("lineage"))
                self.generation = int(self._get_meta("generation"))
                for statement in (RECHECK_TABLE, UNKNOWN_INDEX, *CACHE_INDEXES.values()):  # a state of this version written before them
                    self.conn.execute(statement)
                self.conn.execute("BEGIN")
        except StateError:
            self._close_quietly()
            raise
        except sqlite3.DatabaseError as exc:
            self._close_quietly()
            raise StateError(f"the state at {where} is unreadable ({exc}); run 'refresh' to rebuild it from the service") from None
        except (TypeError, ValueError):
            self._close_quietly()
            raise StateError(f"the state at {where} is malformed; run 'refresh' to rebuild it from the service") from None
        self.seq = 0  # journal entries applied on top of ``generation``
        self.run_id = uuid.uuid4().hex[:12]  # ties this run's intents to its confirmations
        # Runs that left a batch unconfirmed at this very position. One such run: a resend of
        # its body reuses its key (the service replays its answer). Two or more: they may have
        # sent different bodies there, and a resend of the first one's must not be answered
        # from its stale replay, so the position (and every key) moves on.
        self.attempts = 0
        self.changed = False
        self.plan_failed = False  # see planning

    def _create(self) -> None:
        """A new state: the schema and a new lineage, durable before any batch is journaled
        against it; then the run's transaction begins."""
        self.conn.executescript(SCHEMA)
        self.conn.execute("BEGIN")
        self.lineage = uuid.uuid4().hex
        self.generation = 0
        for key, value in (("format", FORMAT), ("version", VERSION), ("lineage", self.lineage), ("generation", 0)):
            self._set_meta(key, value)
        self.conn.execute("COMMIT")
        self.conn.execute("BEGIN")

    # --- identity --------------------------------------------------------------------------
    @property
    def position(self) -> str:
        """Where this state stands; part of every Idempotency-Key so that a key is never
        reused for a different intention, even when the same body is sent again later."""
        base = f"{self.lineage}:{self.generation}:{self.seq}"
        return f"{base}~{self.attempts}" if self.attempts > 1 else base

    # --- meta --------------------------------------------------------------------------------
    last_action = _Meta("lastAction")  # the last action that committed: "update", "replace", ...
    converted_from = _Meta("convertedFrom")  # set when converted from the previous release's format
    service = _Meta("syncApi")  # the sync API its records describe (target.syncapi.service_address); None before 2026-11-30
    last_full_read = _Meta("lastFullRead")  # ISO time of the last full read (UTC)
    saved_at = _Meta("savedAt")  # ISO time of the last commit (UTC)
    directory_cache = _Meta("directoryCache")  # "complete" when the cache holds a whole read
    delta_links = _Meta("deltaLinks")  # collection -> deltaLink of the last read
    read_fingerprint = _Meta("readFingerprint")  # the settings the cache was read under
    rejected = _Meta("rejected")  # dataset -> keys the service rejected last run (sent again)
    full_read_progress = _Meta("fullReadProgress")  # a checkpointed full read (shared/reading.py Checkpoints)
    excluded_figures = _Meta("excludedFigures")  # the cache's excluded figures and the generation they hold for (shared/model/counts.py)

    def forget_reads(self) -> None:
        """The cache no longer holds a whole read: the next update reads in full."""
        self.directory_cache = None
        self.delta_links = None

    def record_read(self, links: dict[str, str | None] | None, fingerprint: dict[str, Any], full_at: str | None) -> None:
        """A complete read is the cache's: its deltaLinks (``None``: read in full next time),
        the settings it was read under, and the time of a full read (``None``: a delta round)."""
        if full_at is not None:
            self.last_full_read = full_at
        self.directory_cache = "complete"
        self.delta_links = links
        self.read_fingerprint = fingerprint

    def adopt_lineage(self, lineage: str, generation: int) -> None:
        """Continue an existing lineage at ``generation`` (a converted state of the previous release)."""
        self.lineage, self.generation = lineage, generation
        self._set_meta("lineage", lineage)

    def _meta_raw(self, key: str) -> str | None:
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        except sqlite3.OperationalError:
            return None  # no meta table: an empty database
        return None if row is None else row[0]

    def _get_meta(self, key: str, default: Any = None) -> Any:
        raw = self._meta_raw(key)
        return default if raw is None else json.loads(raw)

    def _set_meta(self, key: str, value: Any) -> None:
        if value is None:
            self.conn.execute("DELETE FROM meta WHERE key=?", (key,))
        else:
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value, ensure_ascii=False)))
        self.changed = True

    # --- records (what the service holds) ------------------------------------------------------
    def records(self, dataset: str) -> Records:
        try:
            seen: dict[str, str] = {}
            return {k: _decode(dataset, v, seen) for k, v in self.conn.execute("SELECT key, value FROM records WHERE dataset=?", (dataset,))}
        except (ValueError, TypeError):
            raise StateError(f"the state at {self.where} holds a malformed {dataset} record; run 'refresh' to rebuild it") from None

    def values(self, dataset: str, keys: Iterable[str]) -> Records:
        out: Records = {}
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), 500):  # a chunk of keys per query
            part = unique[i : i + 500]
            sql = f"SELECT key, value FROM records WHERE dataset=? AND key IN ({','.join('?' * len(part))})"  # noqa: S608 - placeholders only
            for k, value in self.conn.execute(sql, (dataset, *part)):
                out[k] = _decode(dataset, value)
        return {k: out[k] for k in unique if k in out}

    def count(self, dataset: str, limit: int | None = None) -> int:
        """The dataset's records; with ``limit``, at most that many are counted."""
        if limit is None:
            return int(self.conn.execute("SELECT COUNT(*) FROM records WHERE dataset=?", (dataset,)).fetchone()[0])
        return int(self.conn.execute("SELECT COUNT(*) FROM (SELECT 1 FROM records WHERE dataset=? LIMIT ?)", (dataset, limit)).fetchone()[0])

    def apply(self, dataset: str, upsert: dict[str, tuple], delete: Iterable[str]) -> None:
        self.conn.executemany("DELETE FROM records WHERE dataset=? AND key=?", ((dataset, k) for k in delete))
        bulk, rows = _upsert_rows(dataset, upsert)
        bulk.run(self.conn, rows)
        self.changed = True

    def replace_records(self, dataset: str, records: Records) -> None:
        self.conn.execute("DELETE FROM records WHERE dataset=?", (dataset,))
        self.apply(dataset, records, ())

    # --- journal -----------------------------------------------------------------------------
    def intent_entry(self, dataset: str, keys: list[str]) -> dict[str, Any]:
        """Journaled before a batch is sent: should no confirmation follow (the process died
        with the request in flight), these keys are marked unknown on the next open."""
        return {"lineage": self.lineage, "generation": self.generation, "seq": self.seq + 1, "run": self.run_id,
                "dataset": dataset, "intent": list(keys)}

    def unknown_keys(self, dataset: str) -> list[str]:
        return [k for (k,) in self.conn.execute("SELECT key FROM records INDEXED BY records_unknown WHERE dataset=? AND value='?'", (dataset,))]

    def mark_unknown(self, dataset: str, keys: Iterable[str]) -> None:
        if dataset in UPSERT_UNKNOWN:
            UPSERT_UNKNOWN[dataset].run(self.conn, [(k,) for k in keys])
        else:
            _UPSERT.run(self.conn, [(dataset, k, UNKNOWN_TEXT) for k in keys])
        self.changed = True

    def mark_recheck(self, dataset: str, keys: Iterable[str]) -> None:
        """Keys to compare again with the directory on the next update (see RECHECK_TABLE)."""
        self.conn.executemany("INSERT OR IGNORE INTO recheck (dataset, key) VALUES (?, ?)", ((dataset, k) for k in keys))
        self.changed = True

    def recheck_keys(self, dataset: str) -> list[str]:
        return [k for (k,) in self.conn.execute("SELECT key FROM recheck WHERE dataset=?", (dataset,))]

    def clear_recheck(self, dataset: str | None = None) -> None:
        """After an update compared every such key with the directory, or a refresh or replace
        rebuilt the dataset's records from the service's own copy."""
        if dataset is None:
            self.conn.execute("DELETE FROM recheck")
        else:
            self.conn.execute("DELETE FROM recheck WHERE dataset=?", (dataset,))
        self.changed = True

    def journal_entry(self, dataset: str, upsert: dict[str, tuple], delete: list[str]) -> dict[str, Any]:
        """A confirmed batch. ``upsert``'s values, tuples of (first, ids) for a group or user and
        empty for an address, are written as the lists ``[first, [ids...]]`` or ``[]`` (JSON
        writes a tuple so). A group's or user's goes in as the plain tuple ``(first, ids)``: orjson
        writes that itself, where a ``GroupRecord``/``UserRecord`` cost a call of its ``default``
        hook per record (shared/common/fastjson.py); an address's as it is."""
        values = upsert if dataset == "addresses" else {k: (v[0], v[1]) for k, v in upsert.items()}
        return {"lineage": self.lineage, "generation": self.generation, "seq": self.seq + 1, "run": self.run_id,
                "dataset": dataset, "upsert": values, "delete": list(delete)}

    def replay(self, entry: dict[str, Any]) -> bool:
        """Apply a journal entry if it is the next one for this state."""
        if (
            entry.get("lineage") != self.lineage
            or entry.get("generation") != self.generation
            or entry.get("seq") != self.seq + 1
            or entry.get("dataset") not in DATASETS
        ):
            return False
        dataset = entry["dataset"]
        try:
            upsert = {k: (() if dataset == "addresses" else (v[0], tuple(v[1]))) for k, v in entry["upsert"].items()}
            delete = [str(k) for k in entry["delete"]]
        except (KeyError, TypeError, IndexError, AttributeError):
            return False
        self.apply(dataset, upsert, delete)
        # Confirmed by the service, but the directory may have moved since (an undo): the
        # next update compares these keys again, even when its delta round does not name them.
        self.mark_recheck(dataset, [*upsert, *delete])
        self.advance()
        return True

    # --- the journal protocol around one request (docs/sync-rules.md: nothing is lost) ----------
    def record_intent(self, journal: Any, dataset: str, keys: list[str]) -> Any:
        """Journal, before a request is sent, the keys it names (``journal``: a state store's
        ``append_journal``); returns the token that withdraws it (``withdraw_intent``)."""
        return journal.append_journal(self.intent_entry(dataset, keys))

    def withdraw_intent(self, journal: Any, token: Any) -> None:
        """Take back an intent whose request surely changed nothing at the service."""
        journal.retract_journal(token)

    def confirm(self, journal: Any, dataset: str, upsert: dict[str, tuple], delete: list[str]) -> None:
        """Journal what the service confirmed (not fsync'd on its own: the next intent's fsync
        carries it; a confirmation lost with the OS leaves its intent, which the next run
        repairs), then apply it and advance the position."""
        journal.append_journal(self.journal_entry(dataset, upsert, delete), durable=False)
        self.apply(dataset, upsert, delete)
        self.advance()

    def advance(self) -> None:
        """One confirmed batch further: the next request's position (Idempotency-Key) differs."""
        self.seq += 1

    # --- held deletions (the deletion guard) -----------------------------------------------------
    def held(self, dataset: str | None = None) -> dict[str, dict[str, bool]]:
        """dataset -> {key: approved}."""
        return held_rows(self.conn, dataset)

    def facts(self) -> dict[str, Any]:
        """What ``status`` shows of this state (``read_facts``)."""
        return read_facts(self.conn)

    def set_held(self, dataset: str, keys: dict[str, bool]) -> None:
        self.conn.execute("DELETE FROM held WHERE dataset=?", (dataset,))
        self.conn.executemany("INSERT INTO held (dataset, key, approved) VALUES (?, ?, ?)", ((dataset, k, int(a)) for k, a in keys.items()))
        self.changed = True

    # --- the directory cache ---------------------------------------------------------------------
    def cache(self, provisioned: frozenset[str], rules: Rules = NO_RULES) -> Cache:
        return Cache(self.conn, provisioned, rules)

    @contextlib.contextmanager
    def planning(self) -> Iterator[None]:
        """Changes made inside stay in the run's transaction (committed only by the run's one
        commit, after the service confirmed everything); when it raises, ``commit`` refuses, so
        they are only ever rolled back with the run's transaction when the state is closed. (A
        savepoint copied each page the merge changed to a sub-journal: 15 ms of a 1 % round.)"""
        try:
            yield
        except BaseException:
            self.plan_failed = True
            raise

    # --- ending --------------------------------------------------------------------------------
    def commit(self) -> None:
        """Make everything durable as the next generation (the journal becomes stale)."""
        if self.readonly or self.plan_failed:
            raise StateError("internal error: a read-only state, or one whose plan failed, cannot be committed")
        self.generation += 1
        self.seq = 0
        self._set_meta("generation", self.generation)
        self._set_meta("savedAt", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        try:
            self.conn.execute("COMMIT")
            self.conn.execute("BEGIN")
        except sqlite3.DatabaseError as exc:
            raise StateError(f"cannot write the state at {self.where}: {exc}") from None
        self.changed = False

    def close(self) -> None:
        """Close without committing: anything not committed is rolled back."""
        self._close_quietly()

    def _close_quietly(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is None:
            return
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        conn.close()
        self.conn = None  # type: ignore[assignment]
        if self.discard:
            shutil.rmtree(self.path.parent, ignore_errors=True)
