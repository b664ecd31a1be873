"""``shared.common.bulkinsert.BulkInsert`` leaves the database that the one-row ``executemany``
of the same rows leaves: the same rows (and rowids), and every ``FOR EACH ROW`` trigger fired
for the same rows in the same order (a trigger logs each change into a table whose rowids keep
the order, as the state's change log does: shared/storage/changelog.py).

Over generated rows (hypothesis): keys drawn from a small pool, so that a key repeats within a
statement, across statements and against rows already in the table; row counts around every
statement boundary (0 .. 3k+1 for small k, and around the default k); ``OR REPLACE``, ``OR
IGNORE`` and a plain ``INSERT``; WITHOUT ROWID and rowid tables; NULLs (also in a rowid table's
key, where each NULL is distinct); non-ASCII text; constant columns."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.common.bulkinsert import ROWS_PER_STATEMENT, BulkInsert
from shared.storage import changelog

TABLES = {  # name → (schema, key columns)
    "wr": "CREATE TABLE wr (a TEXT NOT NULL, b TEXT NOT NULL, c TEXT, PRIMARY KEY (a, b)) WITHOUT ROWID",
    "rid": "CREATE TABLE rid (a TEXT PRIMARY KEY, b TEXT, c TEXT)",
    "uniq": "CREATE TABLE uniq (a TEXT, b TEXT, c INTEGER, UNIQUE (b))",
    "plain": "CREATE TABLE plain (a TEXT, b TEXT, c TEXT)",
}
LOG = ("CREATE TEMP TABLE log (op TEXT, a, b, c);"
       "CREATE TEMP TRIGGER log_i AFTER INSERT ON main.{t} BEGIN INSERT INTO log VALUES ('i', NEW.a, NEW.b, NEW.c); END;"
       "CREATE TEMP TRIGGER log_d AFTER DELETE ON main.{t} BEGIN INSERT INTO log VALUES ('d', OLD.a, OLD.b, OLD.c); END;")

keys = st.sampled_from(["k0", "k1", "k2", "é", "日本", "", "K0", "k0 "])
values = st.one_of(st.none(), st.text(max_size=6), st.integers(-3, 3), st.sampled_from(["x", "ÿ", "𝄞", "a\x00b"]))


def _db(table: str, before: list[tuple[Any, ...]], conflict: str) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute(TABLES[table])
    conn.executescript(LOG.format(t=table))
    conn.execute("BEGIN")
    conn.executemany(f"INSERT OR IGNORE INTO {table} (a, b, c) VALUES (?, ?, ?)", before)  # noqa: S608 - fixed names
    return conn


def _dump(conn: sqlite3.Connection, table: str) -> tuple[list[Any], list[Any]]:
    rowid = "" if table == "wr" else "rowid, "
    rows = conn.execute(f"SELECT {rowid}a, b, c, typeof(c) FROM {table} ORDER BY {'a, b' if table == 'wr' else 'rowid'}").fetchall()  # noqa: S608
    return rows, conn.execute("SELECT rowid, op, a, b, c, typeof(c) FROM log ORDER BY rowid").fetchall()


def _row(table: str, draw: Any) -> tuple[Any, ...]:
    if table == "wr":
        return draw(keys), draw(keys), draw(values)
    return draw(st.one_of(keys, st.none())), draw(st.one_of(keys, st.none())), draw(values)


@st.composite
def cases(draw: Any) -> tuple[str, str, int, list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    table = draw(st.sampled_from(sorted(TABLES)))
    conflict = "" if table == "plain" else draw(st.sampled_from(["OR REPLACE", "OR IGNORE"]))
    k = draw(st.sampled_from([2, 3, 5, ROWS_PER_STATEMENT]))
    n = draw(st.integers(0, 3 * k + 1)) if k < ROWS_PER_STATEMENT else draw(st.sampled_from([k - 1, k, k + 1, 2 * k, 2 * k + 1, 3 * k + 1]))
    before = [_row(table, draw) for _ in range(draw(st.integers(0, 4)))]
    rows = [_row(table, draw) for _ in range(n)]
    return table, conflict, k, before, rows


@settings(max_examples=400, deadline=None)
@given(cases())
def test_bulk_insert_leaves_what_the_one_row_executemany_leaves(case) -> None:
    table, conflict, k, before, rows = case
    bulk = BulkInsert(table, ("a", "b", "c"), conflict=conflict, rows_per_statement=k)
    one, many = _db(table, before, conflict), _db(table, before, conflict)
    one.executemany(f"INSERT {conflict} INTO {table} (a, b, c) VALUES (?, ?, ?)", rows)  # noqa: S608 - fixed names
    bulk.run(many, iter(rows))  # any iterable: a generator as the callers pass
    assert _dump(many, table) == _dump(one, table)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["wr", "rid"]), st.sampled_from(["OR REPLACE", "OR IGNORE"]), st.sampled_from([None, "u", "?", "", 7]),
       st.integers(0, 13), st.data())
def test_a_constant_column_is_the_literal_in_every_row(table, conflict, constant, n, data) -> None:
    rows = [data.draw(st.tuples(keys, keys)) for _ in range(n)]
    if table == "wr" and constant is None:
        constant = "g"  # a WITHOUT ROWID table's key is NOT NULL (c is not part of it, so any literal)
    bulk = BulkInsert(table, ("a", "b", "c"), conflict=conflict, constants={"c": constant}, rows_per_statement=4)
    one, many = _db(table, [], conflict), _db(table, [], conflict)
    one.executemany(f"INSERT {conflict} INTO {table} (a, b, c) VALUES (?, ?, ?)", [(a, b, constant) for a, b in rows])  # noqa: S608
    bulk.run(many, rows)
    assert _dump(many, table) == _dump(one, table)


def test_the_two_statements_are_fixed_strings() -> None:
    bulk = BulkInsert("records", ("dataset", "key", "value"), conflict="OR REPLACE", constants={"dataset": "groups"}, rows_per_statement=3)
    assert bulk.one == "INSERT OR REPLACE INTO records (dataset, key, value) VALUES ('groups',?,?)"
    assert bulk.many == "INSERT OR REPLACE INTO records (dataset, key, value) VALUES ('groups',?,?),('groups',?,?),('groups',?,?)"
    assert bulk.width == 2
    assert BulkInsert("t", ("a",)).many.startswith("INSERT INTO t (a) VALUES (?),(?)")


class _Rendered(str):
    """A name or word that passes the checks as itself but renders as other SQL text."""

    def __format__(self, spec: str) -> str:
        return "x'),(1,2); --"

    __str__ = __format__


class _RenderedInt(int):
    def __str__(self) -> str:
        return "0),(1"

    __repr__ = __format__ = lambda self, *_: "0),(1"  # noqa: E731 - every way it could be rendered


@pytest.mark.parametrize("kwargs", [
    {"table": "t; DROP TABLE x", "columns": ("a",)},
    {"table": _Rendered("t"), "columns": ("a",)},
    {"table": "t", "columns": ("a", _Rendered("b"))},
    {"table": "t", "columns": ("a", "b"), "constants": {"b": _Rendered("ok")}},
    {"table": "t", "columns": ("a", "b"), "constants": {"b": _RenderedInt(1)}},
    {"table": "t", "columns": ("a b",)},
    {"table": "t", "columns": ()},
    {"table": "t", "columns": ("a", "a")},
    {"table": "t", "columns": ("a",), "conflict": "OR ROLLBACK; --"},
    {"table": "t", "columns": ("a", "b"), "constants": {"b": "x'); DROP TABLE t; --"}},
    {"table": "t", "columns": ("a", "b"), "constants": {"b": 1.5}},
    {"table": "t", "columns": ("a", "b"), "constants": {"b": True}},
    {"table": "t", "columns": ("a", "b"), "constants": {"c": "x"}},
    {"table": "t", "columns": ("a",), "constants": {"a": "x"}},
    {"table": "t", "columns": ("a",), "rows_per_statement": 1},
    {"table": "t", "columns": ("a", "b", "c"), "rows_per_statement": 334},  # 1,002 host parameters
])
def test_names_clauses_and_constants_outside_the_closed_sets_are_refused(kwargs) -> None:
    table, columns = kwargs.pop("table"), kwargs.pop("columns")
    with pytest.raises(ValueError):
        BulkInsert(table, columns, **kwargs)


def test_a_row_of_the_wrong_width_is_refused_before_anything_is_written() -> None:
    conn = _db("plain", [], "")
    bulk = BulkInsert("plain", ("a", "b", "c"), rows_per_statement=2)
    with pytest.raises(sqlite3.ProgrammingError):
        bulk.run(conn, [("a", "b", "c"), ("a", "b", "c", "d"), ("a", "b")])  # 9 values: a flat list would fit
    assert conn.execute("SELECT count(*) FROM plain").fetchone() == (0,)
    with pytest.raises(sqlite3.ProgrammingError):
        bulk.run(conn, [("a", "b")])  # the remainder: the one-row statement refuses it


def test_the_change_log_records_every_row_of_a_multi_row_statement() -> None:
    """The state's change log (TEMP triggers per row) sees the bulk insert as the one-row form."""
    logs = []
    for bulk in (False, True):
        conn = sqlite3.connect(":memory:", isolation_level=None)
        conn.execute("CREATE TABLE members (group_id TEXT NOT NULL, member_id TEXT NOT NULL, kind TEXT NOT NULL, "
                     "PRIMARY KEY (group_id, member_id)) WITHOUT ROWID")
        conn.execute("CREATE TABLE records (dataset TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (dataset, key))")
        schema = changelog.schema_digest(conn)
        conn.execute("BEGIN")
        assert changelog.install(conn, 10_000)
        rows = [(f"g{i % 7}", f"m{i % 11}", "u") for i in range(123)]
        records = [(f"k{i % 13}", str(i)) for i in range(61)]
        if bulk:
            BulkInsert("members", ("group_id", "member_id", "kind"), conflict="OR REPLACE").run(conn, rows)
            BulkInsert("records", ("dataset", "key", "value"), conflict="OR REPLACE", constants={"dataset": "users"}).run(conn, records)
        else:
            conn.executemany("INSERT OR REPLACE INTO members (group_id, member_id, kind) VALUES (?, ?, ?)", rows)
            conn.executemany("INSERT OR REPLACE INTO records (dataset, key, value) VALUES ('users', ?, ?)", records)
        logs.append((changelog.collect(conn, 10_000, schema), conn.execute(f"SELECT * FROM {changelog.TABLE} ORDER BY rowid").fetchall()))  # noqa: S608
    assert logs[0] == logs[1]
    assert logs[0][0] is not None and len(logs[0][0]["tables"]["members"]["upsert"]) == 77
