"""A delta round's writes are queued and run a statement kind at a time
(``shared/model/writes.py``); the cache it leaves, and the record keys it reports as affected,
are exactly those of the same round applied with one ``execute`` per write, in order.

Over generated rounds (hypothesis) on a cache that already holds a directory: changed and
repeated objects, ``@removed`` objects (reason ``changed`` or ``deleted``) that may come back in
the same round, group slices with member additions and ``@removed`` members (also members
whose type Graph did not say, which the merge looks up in the cache), and one id named in two
collections (its second entry reads the rows its first one wrote)."""

from __future__ import annotations

import sqlite3
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.model import writes
from shared.model.directory import SCHEMA, Affected, Cache, Round
from shared.model.writes import FLUSH_ROWS, PHASES, Writes
from tests.test_streamed_load import entry, tables

PROVISIONED = frozenset({"contoso.com"})


def _cache(base: list[tuple[str, dict[str, Any]]], immediate: bool) -> Cache:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(SCHEMA)
    cache = Cache(conn, PROVISIONED)  # not empty: every round goes through the delta merge
    cache.immediate_writes = immediate
    rnd = Round()
    for collection, obj in base:
        rnd.take(collection, obj)
    cache.apply_round(rnd, None)
    return cache


@st.composite
def crossed(draw: Any) -> tuple[str, dict[str, Any]]:
    """An entry of another collection that names an id of the first pool (``u0``, ``g0``)."""
    collection = draw(st.sampled_from(["users", "groups", "contacts"]))
    oid = draw(st.sampled_from(["u0", "g0", "c0"]))
    return collection, {"id": oid, "mail": draw(st.sampled_from(["x@contoso.com", "y@contoso.com"]))}


rounds = st.lists(st.one_of(entry(), entry(), entry(), crossed()), max_size=25)


@settings(max_examples=300, deadline=None)
@given(rounds, rounds, st.sampled_from([1, 2, 3, 7, FLUSH_ROWS]))
def test_queued_writes_leave_what_one_execute_per_write_leaves(base, delta, limit) -> None:
    """``limit``: the queued rows that make a flush (a large round is flushed as it goes)."""
    writes.FLUSH_ROWS = limit
    try:
        _compare(base, delta)
    finally:
        writes.FLUSH_ROWS = FLUSH_ROWS


def _compare(base: list[tuple[str, dict[str, Any]]], delta: list[tuple[str, dict[str, Any]]]) -> None:
    got, want = _cache(base, immediate=False), _cache(base, immediate=True)
    assert tables(got) == tables(want)
    for cache in (got, want):
        cache.affected = Affected()
        rnd = Round()
        for collection, obj in delta:
            rnd.take(collection, obj)
        cache.apply_round(rnd, cache.affected)
    assert tables(got) == tables(want)
    assert got.affected == want.affected
    assert got.projection().datasets == want.projection().datasets


def test_a_flush_runs_each_phase_in_order_and_nothing_twice() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(SCHEMA)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    w = Writes(conn)
    w.add("put_kept", ("a@contoso.com", "u1"))
    w.add("clear_kept", ("u1",))  # queued after, runs before: an object's own phases are in PHASES order
    w.add("put_kept", ("b@contoso.com", "u2"))
    assert statements == []  # nothing runs before the flush
    w.flush()
    w.flush()  # nothing queued: nothing runs
    def head(sql: str) -> str:  # the statement without its values
        return sql.split(" WHERE")[0].split(" (")[0]

    assert [head(s) for s in statements] == [head(PHASES["clear_kept"])] + [head(PHASES["put_kept"])] * 2
    assert conn.execute("SELECT address, object_id FROM kept ORDER BY 1").fetchall() == [("a@contoso.com", "u1"), ("b@contoso.com", "u2")]
