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
from shared.model.directory import OTYPE, SCHEMA, Affected, Cache, Round, candidates, encode_data
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
    w.add("drop_address", ("c@contoso.com", "u1"))  # queued after, runs before: an object's own phases are in PHASES order
    w.add("put_kept", ("b@contoso.com", "u2"))
    assert statements == []  # nothing runs before the flush
    w.flush()
    w.flush()  # nothing queued: nothing runs
    def head(sql: str) -> str:  # the statement without its values
        return sql.split(" WHERE")[0].split(" (")[0]

    assert [head(s) for s in statements] == [head(PHASES["drop_address"])] + [head(PHASES["put_kept"])] * 2
    assert conn.execute("SELECT address, object_id FROM kept ORDER BY 1").fetchall() == [("a@contoso.com", "u1"), ("b@contoso.com", "u2")]


class RewritingCache(Cache):
    """The merge before 2026-11-30 (session 8), the reference of the one that writes only the
    rows that change: a changed objects row REPLACEd whole, and every kept row of an object
    whose kept set changed deleted and inserted again."""

    def _upsert(self, oid: str, kind: str, data: dict[str, Any], affected: Affected, now: Any) -> None:
        cands = candidates(oid, OTYPE[kind], data, self.provisioned, self.rules)
        row = (kind, encode_data(data), len(cands.exclusions))
        execute = self.conn.execute
        self._w.flush()
        if now[2] != row:
            execute("INSERT OR REPLACE INTO objects (id, kind, data, excluded) VALUES (?, ?, ?, ?)", (oid, *row))
        if set(now[0]) != set(cands.kept):
            execute("DELETE FROM kept WHERE object_id=?", (oid,))
            for a in cands.kept:
                execute("INSERT OR IGNORE INTO kept (address, object_id) VALUES (?, ?)", (a, oid))
        affected.addresses.update(cands.kept)
        if kind == "u":
            if now[1] != [cands.primary]:
                execute("INSERT OR REPLACE INTO users (id, primary_address) VALUES (?, ?)", (oid, cands.primary))
            affected.users.add(oid)
            if cands.primary:
                affected.primaries.add(cands.primary)
        elif kind == "g":
            affected.groups.add(oid)


def _merged(cls: type[Cache], base: list[tuple[str, dict[str, Any]]], delta: list[tuple[str, dict[str, Any]]]) -> tuple[Cache, Affected]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(SCHEMA)
    cache = cls(conn, PROVISIONED)
    affected = Affected()
    for entries, sink in ((base, None), (delta, affected)):
        rnd = Round()
        for collection, obj in entries:
            rnd.take(collection, obj)
        cache.apply_round(rnd, sink)
    return cache, affected


@settings(max_examples=300, deadline=None)
@given(rounds, rounds)
def test_writing_only_the_rows_that_change_leaves_what_rewriting_them_leaves(base, delta) -> None:
    got, got_affected = _merged(Cache, base, delta)
    want, want_affected = _merged(RewritingCache, base, delta)
    assert tables(got) == tables(want)
    assert got.conn.execute("SELECT id, excluded FROM objects INDEXED BY objects_excluding WHERE excluded > 0 ORDER BY id").fetchall() == \
        want.conn.execute("SELECT id, excluded FROM objects WHERE excluded > 0 ORDER BY id").fetchall()
    assert got_affected == want_affected
    assert got.projection().datasets == want.projection().datasets
    assert got.excluded() == want.excluded()


def test_an_object_that_gains_an_address_writes_only_that_row() -> None:
    """A user whose mail changes (the old one stays in proxyAddresses, as Exchange keeps it):
    one kept row is inserted, no kept row is deleted, and the objects row is updated in place
    (its entry in objects_excluding, for its onmicrosoft alias left out, is not rewritten)."""
    old = {"id": "u1", "mail": "a@contoso.com", "proxyAddresses": ["SMTP:a@contoso.com", "smtp:b@contoso.com", "smtp:a@x.onmicrosoft.com"]}
    cache, _ = _merged(Cache, [("users", old)], [])
    statements: list[str] = []
    cache.conn.set_trace_callback(statements.append)
    rnd = Round()
    rnd.take("users", {**old, "mail": "c@contoso.com", "proxyAddresses": ["SMTP:c@contoso.com", *(p.lower() for p in old["proxyAddresses"])]})
    cache.apply_round(rnd, Affected())
    writes_run = [s for s in statements if not s.startswith("SELECT")]
    assert not any(s.startswith("DELETE FROM kept") for s in writes_run), writes_run
    assert [s for s in writes_run if s.startswith("INSERT OR IGNORE INTO kept")] == ["INSERT OR IGNORE INTO kept (address, object_id) VALUES ('c@contoso.com', 'u1')"]
    assert not any("INTO objects" in s for s in writes_run), writes_run
    assert [s.split(" SET")[0] for s in writes_run if s.startswith("UPDATE objects")] == ["UPDATE objects"]
    assert cache.conn.execute("SELECT address FROM kept ORDER BY 1").fetchall() == [("a@contoso.com",), ("b@contoso.com",), ("c@contoso.com",)]
    assert cache.excluded()["addresses"] == 1
