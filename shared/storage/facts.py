"""What ``status`` shows of a state: its *facts*. ``read_facts`` reads them through any
connection to a state database; ``live_facts`` reads them from a ``file:`` state in place, one
read transaction on the live database instead of a copy of it (144 MB at 100,000 users). A
``blob:`` state publishes them as a small part beside each manifest (shared/storage/blob_store.py),
so that ``status`` on a cold instance downloads that part, not the database."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from ..model.records import DATASETS


def held_rows(conn: sqlite3.Connection, dataset: str | None = None) -> dict[str, dict[str, bool]]:
    """The deletions the guard holds: dataset -> {key: approved} (one dataset, or all)."""
    out: dict[str, dict[str, bool]] = {}
    rows = (
        conn.execute("SELECT dataset, key, approved FROM held WHERE dataset=?", (dataset,))
        if dataset
        else conn.execute("SELECT dataset, key, approved FROM held")
    )
    for d, k, approved in rows:
        out.setdefault(d, {})[k] = bool(approved)
    return out


def read_facts(conn: sqlite3.Connection) -> dict[str, Any]:
    """The facts, read through ``conn`` (call it inside one read transaction, for one
    generation's figures): ``generation`` (int), ``held`` (dataset -> {key: approved},
    datasets holding none left out), ``lastFullRead`` and ``savedAt`` (ISO times, UTC, or None)
    and ``records`` (dataset -> how many records the service holds: one index range count each,
    about 60 ms at 100,000 users)."""
    meta = {k: json.loads(v) for k, v in conn.execute(
        "SELECT key, value FROM meta WHERE key IN ('generation', 'lastFullRead', 'savedAt')")}
    records = {d: int(conn.execute("SELECT COUNT(*) FROM records WHERE dataset=?", (d,)).fetchone()[0]) for d in DATASETS}
    return {"generation": int(meta.get("generation") or 0), "held": {d: keys for d, keys in held_rows(conn).items() if keys},
            "lastFullRead": meta.get("lastFullRead"), "savedAt": meta.get("savedAt"), "records": records}


def copy_facts(db: Any) -> dict[str, Any] | None:
    """``read_facts`` of ``db``, the copy a dry run reads (``StateStore.open(readonly=True)``),
    which is closed (and so removed) after; ``None`` for no copy (there is no state)."""
    if db is None:
        return None
    try:
        return read_facts(db.conn)
    finally:
        db.close()


def live_facts(path: Path, ident: tuple[str, int]) -> dict[str, Any] | None:
    """``read_facts`` of the committed state at ``path``, read in place in one read transaction:
    in WAL mode it neither waits for a running update nor makes one wait. ``ident``: the
    ``(format, version)`` its meta must name. ``None`` when there is no file there or it is not
    a state database of that format and version: the caller then opens it the full way, which
    names what is wrong."""
    if not path.exists():
        return None
    try:
        # mode=rw: never creates a file. Not mode=ro: a read-only connection leaves a WAL
        # database's -wal/-shm files behind (journal.snapshot); this one only reads.
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        conn.execute("BEGIN")
        meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta WHERE key IN ('format', 'version')")}
        if (meta.get("format"), meta.get("version")) != ident:
            return None
        facts = read_facts(conn)
        conn.execute("COMMIT")
        return facts
    except (sqlite3.Error, ValueError, TypeError):
        return None
    finally:
        conn.close()
