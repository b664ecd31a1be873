"""A run's change log of the state database: which rows changed since the generation the
local copy was read at, as a small document that ``blob:`` state uploads instead of the
whole database (``shared/storage/stores.py``, ``shared/storage/image.py``).

Why rows and not pages: the state is a set of SQLite B-trees keyed by random ids (object ids,
addresses), so the rows an incremental run touches are spread over the whole file. Measured
at 20,000 users, a 1 % churn rewrote 18 % of the 4 KiB pages and every 1 MiB chunk, while the
changed rows themselves are well under 1 % of the data.

How: ``install`` puts TEMP triggers (they live only on this connection and are never written
to the database) on every table of ``main``: each insert, update or delete records the row's
primary key (``rowid`` for a rowid table) in the temp table ``dirsync_changes``, up to a
budget. ``collect`` then reads the current value of each recorded key (or its absence) and
returns the log: ``{"format", "version", "tables": {table: {"columns": [...], "key":
[...], "upsert": [[value, ...]], "delete": [[key, ...]]}}}``, values as JSON (bytes as
``{"b": base64}``). ``apply`` replays a log onto a copy of the generation it was taken from
with plain SQL; the result holds the same rows as the writer's database (SQLite's own
indexes follow the rows), though not the same bytes. ``collect`` returns ``None`` whenever
the log could miss something, and the caller then uploads the whole database: the budget ran
out (a full read rewrites most rows), the schema changed (a table or index was created,
dropped or altered; ``schema_digest``), a trigger is gone (its table was dropped), another
connection committed to the file (its writes pass no trigger; ``PRAGMA data_version``), or the
database has what rows cannot carry (more than four primary-key columns, hidden columns,
triggers of its own, AUTOINCREMENT).
Changes rolled back (a savepoint, a failed run) roll back their records with them: the
temp table is part of the same transaction."""

from __future__ import annotations

import base64
import hashlib
import sqlite3
from typing import Any

LOG_FORMAT = "entra-dirsync-state-log"
LOG_VERSION = 1
TABLE = "dirsync_changes"
WATCH = "dirsync_capture_watch"
PREFIX = "dirsync_capture_"
MAX_KEY_COLUMNS = 4
_KEYS = ("k1", "k2", "k3", "k4")


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def schema_digest(conn: sqlite3.Connection) -> str:
    """A digest of the main database's schema (every table, index, trigger and view, with
    its SQL) and its ``user_version``: a log replays only onto the schema it was taken on."""
    rows = conn.execute("SELECT type, name, tbl_name, coalesce(sql, '') FROM main.sqlite_master ORDER BY type, name").fetchall()
    version = conn.execute("PRAGMA main.user_version").fetchone()[0]
    text = "\n".join("\x1f".join(map(str, r)) for r in rows) + f"\nuser_version={version}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _tables(conn: sqlite3.Connection) -> dict[str, list[str] | None]:
    """Every ordinary table of ``main`` → its key columns (``["rowid"]`` for a rowid table),
    or ``None`` when the triggers cannot key it."""
    out: dict[str, list[str] | None] = {}
    # A trigger of the database's own would fire again on replay, and AUTOINCREMENT keeps a
    # counter (sqlite_sequence) no row change carries: neither can be logged by rows alone.
    if conn.execute("SELECT 1 FROM main.sqlite_master WHERE type='trigger' OR name='sqlite_sequence'").fetchone():
        return {"": None}
    names = conn.execute("SELECT name, sql FROM main.sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'").fetchall()
    for name, sql in names:
        info = conn.execute(f"PRAGMA main.table_xinfo({_q(name)})").fetchall()
        if any(row[6] != 0 for row in info) or "VIRTUAL TABLE" in (sql or "").upper():
            out[name] = None
            continue
        pk = [row[1] for row in sorted((r for r in info if r[5] > 0), key=lambda r: r[5])]
        rowid = "WITHOUT ROWID" not in " ".join((sql or "").upper().split())
        keys = ["rowid"] if rowid else pk
        out[name] = keys if 0 < len(keys) <= MAX_KEY_COLUMNS else None
    return out


def install(conn: sqlite3.Connection, budget: int) -> bool:
    """Start recording changed keys on ``conn`` (inside its open transaction is fine).
    ``budget``: the most keys recorded; past it, ``collect`` gives ``None``. Returns whether
    every table could be covered (if not, no trigger is left and ``collect`` gives ``None``)."""
    tables = _tables(conn)
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {TABLE} (tbl TEXT NOT NULL, k1, k2, k3, k4)")
    if any(keys is None for keys in tables.values()):
        return False
    # Writes by another connection pass no trigger of this one: PRAGMA data_version tells.
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {WATCH} (data_version INTEGER NOT NULL)")
    conn.execute(f"DELETE FROM {WATCH}")  # noqa: S608 - a fixed name
    conn.execute(f"INSERT INTO {WATCH} VALUES (?)", (conn.execute("PRAGMA main.data_version").fetchone()[0],))  # noqa: S608
    when = f"WHEN coalesce((SELECT max(rowid) FROM {TABLE}), 0) < {int(budget)}"  # noqa: S608 - fixed names, an int
    for i, (name, keys) in enumerate(sorted(tables.items())):
        def row(alias: str, keys: list[str] = keys or [], name: str = name) -> str:
            cols = [f"{alias}.{k if k == 'rowid' else _q(k)}" for k in keys] + ["NULL"] * (MAX_KEY_COLUMNS - len(keys))
            return f"INSERT INTO {TABLE} VALUES ({_sql_text(name)}, {', '.join(cols)});"  # noqa: S608 - quoted identifiers
        on = f"ON main.{_q(name)} {when} BEGIN"
        conn.execute(f"CREATE TEMP TRIGGER IF NOT EXISTS {PREFIX}{i}_i AFTER INSERT {on} {row('NEW')} END")
        conn.execute(f"CREATE TEMP TRIGGER IF NOT EXISTS {PREFIX}{i}_d AFTER DELETE {on} {row('OLD')} END")
        conn.execute(f"CREATE TEMP TRIGGER IF NOT EXISTS {PREFIX}{i}_u AFTER UPDATE {on} {row('OLD')} {row('NEW')} END")
    conn.execute(f"DELETE FROM {TABLE}")  # noqa: S608 - a fixed name
    return True


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def reset(conn: sqlite3.Connection) -> None:
    """Forget what was recorded (after it was published)."""
    conn.execute(f"DELETE FROM {TABLE}")  # noqa: S608 - a fixed name


def _installed(conn: sqlite3.Connection) -> int:
    return conn.execute(f"SELECT count(*) FROM temp.sqlite_master WHERE type='trigger' AND name LIKE '{PREFIX}%'").fetchone()[0]  # noqa: S608 - a fixed name


def collect(conn: sqlite3.Connection, budget: int, schema: str | None) -> dict[str, Any] | None:
    """The log of what changed since ``install`` (or the last ``reset``), taken on the schema
    whose digest is ``schema``; ``None`` when it could be incomplete (see the module)."""
    tables = _tables(conn)
    if schema is None or schema_digest(conn) != schema or any(k is None for k in tables.values()):
        return None
    if _installed(conn) != 3 * len(tables):
        return None
    seen = conn.execute(f"SELECT data_version FROM {WATCH}").fetchone()  # noqa: S608 - a fixed name
    if seen is None or seen[0] != conn.execute("PRAGMA main.data_version").fetchone()[0]:
        return None  # another connection committed to the file
    if conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] >= budget:  # noqa: S608 - a fixed name
        return None
    out: dict[str, Any] = {}
    for (name,) in conn.execute(f"SELECT DISTINCT tbl FROM {TABLE} ORDER BY tbl").fetchall():  # noqa: S608 - a fixed name
        keys = tables.get(name)
        if keys is None:
            return None
        out[name] = _table_log(conn, name, keys)
    return {"format": LOG_FORMAT, "version": LOG_VERSION, "tables": out}


def _table_log(conn: sqlite3.Connection, name: str, keys: list[str]) -> dict[str, Any]:
    n = len(keys)
    picked = ", ".join(_KEYS[:n])
    rowid = keys == ["rowid"]
    select = "t.rowid AS rowid, t.*" if rowid else "t.*"
    present = "t.rowid" if rowid else f"t.{_q(keys[0])}"
    join = " AND ".join(f"t.{k if k == 'rowid' else _q(k)} = c.{_KEYS[i]}" for i, k in enumerate(keys))
    cur = conn.execute(
        f"SELECT {present} IS NOT NULL, {picked}, {select} FROM (SELECT DISTINCT {picked} FROM {TABLE} WHERE tbl=?) c "  # noqa: S608
        f"LEFT JOIN main.{_q(name)} t ON {join}",
        (name,),
    )
    columns = [d[0] for d in cur.description][1 + n :]
    upsert: list[list[Any]] = []
    delete: list[list[Any]] = []
    for row in cur:
        if row[0]:
            upsert.append([_enc(v) for v in row[1 + n :]])
        else:
            delete.append([_enc(v) for v in row[1 : 1 + n]])
    return {"columns": columns, "key": keys, "upsert": upsert, "delete": delete}


def _enc(value: Any) -> Any:
    return {"b": base64.b64encode(value).decode("ascii")} if isinstance(value, bytes) else value


def _dec(value: Any) -> Any:
    if isinstance(value, dict):
        return base64.b64decode(value["b"], validate=True)
    if isinstance(value, list):
        raise ValueError("a list is no SQLite value")
    return value


def apply(conn: sqlite3.Connection, log: Any) -> None:
    """Replay ``log`` (a ``collect`` result read back from JSON) in ``conn``'s transaction.
    Raises ``ValueError`` (or ``sqlite3.Error``) for a log that does not fit the database."""
    if not isinstance(log, dict) or log.get("format") != LOG_FORMAT or log.get("version") != LOG_VERSION:
        raise ValueError("not a state change log of this version")
    tables = _tables(conn)
    for name, part in log["tables"].items():
        keys, columns = part["key"], part["columns"]
        if tables.get(name) != keys or not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise ValueError(f"the log's table {name!r} does not match the database")
        where = " AND ".join(f"{k if k == 'rowid' else _q(k)}=?" for k in keys)
        conn.executemany(f"DELETE FROM main.{_q(name)} WHERE {where}", ([_dec(v) for v in key] for key in part["delete"]))  # noqa: S608
        cols = ", ".join(c if c == "rowid" and keys == ["rowid"] else _q(c) for c in columns)
        marks = ", ".join("?" * len(columns))
        rows = ([_dec(v) for v in row] for row in part["upsert"])
        conn.executemany(f"INSERT OR REPLACE INTO main.{_q(name)} ({cols}) VALUES ({marks})", rows)  # noqa: S608
