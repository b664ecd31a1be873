"""The change log of the ``blob:`` state (shared/storage/changelog.py), as a class: for any
sequence of inserts, updates (key changes included), deletes and rolled-back savepoints on
tables of every shape the state may have (rowid, WITHOUT ROWID with one or more key columns,
UNIQUE columns whose values rows trade, values of every SQLite type), the log replayed onto a copy of the starting database gives the
same rows; and when the log cannot be complete, ``collect`` says so (``None``)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.storage import changelog
from tests.blobstate_helpers import rows

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE pairs (a TEXT NOT NULL, b TEXT NOT NULL, v, PRIMARY KEY (a, b)) WITHOUT ROWID;
CREATE INDEX pairs_by_b ON pairs (b);
CREATE TABLE plain (x, y);
CREATE TABLE counted (id INTEGER PRIMARY KEY, v);
CREATE TABLE uniq (id INTEGER PRIMARY KEY, u TEXT UNIQUE);
"""

keys = st.sampled_from(["a", "b", "c", "d", "é", "x'y", ""])
values = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.text(max_size=5), st.binary(max_size=5))
op = st.one_of(
    st.tuples(st.just("upsert meta"), keys, st.text(max_size=5)),
    st.tuples(st.just("delete meta"), keys),
    st.tuples(st.just("upsert pair"), keys, keys, values),
    st.tuples(st.just("rekey pair"), keys, keys),
    st.tuples(st.just("delete pairs of"), keys),
    st.tuples(st.just("insert plain"), values, values),
    st.tuples(st.just("update plain"), values),
    st.tuples(st.just("delete plain"), st.integers(0, 5)),
    st.tuples(st.just("upsert counted"), st.integers(1, 6), values),
    st.tuples(st.just("rolled back"), keys, values),
    st.tuples(st.just("upsert uniq"), st.integers(1, 4), keys),
    st.tuples(st.just("swap uniq"), st.integers(1, 4), st.integers(1, 4)),
)


def run(conn: sqlite3.Connection, o: tuple) -> None:
    kind, *a = o
    q = conn.execute
    if kind == "upsert meta":
        q("INSERT OR REPLACE INTO meta VALUES (?, ?)", a)
    elif kind == "delete meta":
        q("DELETE FROM meta WHERE key=?", a)
    elif kind == "upsert pair":
        q("INSERT OR REPLACE INTO pairs VALUES (?, ?, ?)", a)
    elif kind == "rekey pair":
        q("UPDATE OR REPLACE pairs SET a=? WHERE b=?", a)
    elif kind == "delete pairs of":
        q("DELETE FROM pairs WHERE a=?", a)
    elif kind == "insert plain":
        q("INSERT INTO plain VALUES (?, ?)", a)
    elif kind == "update plain":
        q("UPDATE plain SET y=? WHERE rowid % 2 = 0", a)
    elif kind == "delete plain":
        q("DELETE FROM plain WHERE rowid % 3 = ?", a)
    elif kind == "upsert counted":
        q("INSERT OR REPLACE INTO counted VALUES (?, ?)", a)
    elif kind == "upsert uniq":
        q("INSERT OR REPLACE INTO uniq VALUES (?, ?)", a)
    elif kind == "swap uniq":  # two rows trade their unique values (a replay must not lose either)
        x, y = a
        ux = q("SELECT u FROM uniq WHERE id=?", (x,)).fetchone()
        uy = q("SELECT u FROM uniq WHERE id=?", (y,)).fetchone()
        if ux and uy and x != y:
            q("UPDATE uniq SET u=NULL WHERE id=?", (x,))
            q("UPDATE uniq SET u=? WHERE id=?", (ux[0], y))
            q("UPDATE uniq SET u=? WHERE id=?", (uy[0], x))
    else:
        q("SAVEPOINT s")
        q("INSERT OR REPLACE INTO pairs VALUES (?, 'sp', ?)", a)
        q("DELETE FROM meta")
        q("ROLLBACK TO s")
        q("RELEASE s")


def start(path: Path, first: list[tuple]) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(SCHEMA)
    conn.execute("BEGIN")
    for o in first:
        run(conn, o)
    conn.execute("COMMIT")
    conn.close()


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.lists(op, max_size=12), then=st.lists(op, max_size=25))
def test_a_replayed_log_gives_the_writers_rows(tmp_path_factory, first, then):
    tmp = tmp_path_factory.mktemp("log")
    base, writer = tmp / "base.db", tmp / "writer.db"
    start(base, first)
    shutil.copy(base, writer)
    conn = sqlite3.connect(writer, isolation_level=None)
    schema = changelog.schema_digest(conn)
    conn.execute("BEGIN")
    assert changelog.install(conn, 10_000)
    for o in then:
        run(conn, o)
    conn.execute("COMMIT")
    log = changelog.collect(conn, 10_000, schema)
    assert log is not None
    want = rows(conn)
    conn.close()
    replica = sqlite3.connect(base, isolation_level=None)
    replica.execute("BEGIN")
    changelog.apply(replica, json.loads(json.dumps(log)))  # through JSON, as it travels
    replica.execute("COMMIT")
    assert rows(replica) == want
    replica.close()


def writer_with_log(tmp: Path) -> tuple[sqlite3.Connection, str]:
    start(tmp / "w.db", [("upsert meta", "a", "1")])
    conn = sqlite3.connect(tmp / "w.db", isolation_level=None)
    schema = changelog.schema_digest(conn)
    conn.execute("BEGIN")
    assert changelog.install(conn, 5)
    return conn, schema


def test_no_log_when_the_budget_runs_out(tmp_path):
    conn, schema = writer_with_log(tmp_path)
    for i in range(4):
        conn.execute("INSERT INTO plain VALUES (?, ?)", (i, i))
    assert changelog.collect(conn, 5, schema) is not None
    conn.execute("INSERT INTO plain VALUES (9, 9)")
    assert changelog.collect(conn, 5, schema) is None


def test_no_log_after_a_schema_change_or_a_dropped_table(tmp_path):
    conn, schema = writer_with_log(tmp_path)
    conn.execute("CREATE INDEX plain_by_y ON plain (y)")
    assert changelog.collect(conn, 5, schema) is None
    conn.execute("DROP INDEX plain_by_y")
    assert changelog.collect(conn, 5, schema) is not None  # the same schema again
    conn.execute("DROP TABLE counted")
    conn.execute("CREATE TABLE counted (id INTEGER PRIMARY KEY, v)")  # same SQL, but its triggers are gone
    assert changelog.collect(conn, 5, schema) is None


@pytest.mark.parametrize("ddl", [
    "CREATE TABLE wide (a, b, c, d, e, PRIMARY KEY (a, b, c, d, e)) WITHOUT ROWID",
    "CREATE TABLE g (a INTEGER PRIMARY KEY, b, c AS (b * 2))",
    "CREATE TABLE n (a INTEGER PRIMARY KEY AUTOINCREMENT, b)",
    "CREATE TABLE t (a INTEGER PRIMARY KEY, b); CREATE TRIGGER own AFTER INSERT ON t BEGIN UPDATE t SET b = 1; END",
])
def test_what_rows_cannot_carry_means_no_log(tmp_path, ddl):
    path = tmp_path / "odd.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(ddl)
    schema = changelog.schema_digest(conn)
    assert not changelog.install(conn, 100)
    assert changelog.collect(conn, 100, schema) is None


def test_a_log_for_another_database_is_refused(tmp_path):
    start(tmp_path / "a.db", [])
    conn = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    bad = {"format": changelog.LOG_FORMAT, "version": changelog.LOG_VERSION,
           "tables": {"pairs": {"key": ["rowid"], "columns": ["rowid", "a"], "upsert": [], "delete": []}}}
    try:
        changelog.apply(conn, bad)
        raise AssertionError("applied a log whose table does not match")
    except ValueError as exc:
        assert "pairs" in str(exc)


def test_no_log_when_another_connection_wrote_the_file(tmp_path):
    conn, schema = writer_with_log(tmp_path)
    conn.execute("INSERT INTO plain VALUES (1, 1)")
    conn.execute("COMMIT")
    assert changelog.collect(conn, 5, schema) is not None
    other = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
    other.execute("INSERT INTO counted VALUES (7, 'behind its back')")
    other.close()
    assert changelog.collect(conn, 5, schema) is None
