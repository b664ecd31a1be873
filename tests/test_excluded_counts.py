"""The summary's whole-directory ``excluded`` counts after delta rounds, counted from the
objects the rounds named and the figures before them (``shared/model/counts.py``), equal the
counts over the whole cache: over generated caches and rounds (hypothesis), with users that
share a primary address, users without one, candidates left out (another domain, an invalid
address), removed objects that come back, one id named in two collections, and several
rounds applied one after another. The figures kept in the state hold only for the generation
they were committed with."""

from __future__ import annotations

import sqlite3
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.model import counts
from shared.model.directory import SCHEMA, Affected, Cache, Round
from shared.model.rules import Rules
from tests.test_delta_writes import rounds
from tests.test_streamed_load import PROVISIONED


def _cache(rules: Rules | None = None) -> Cache:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(SCHEMA)
    return Cache(conn, PROVISIONED) if rules is None else Cache(conn, PROVISIONED, rules)


def _apply(cache: Cache, entries: list[tuple[str, dict[str, Any]]]) -> None:
    rnd = Round()
    for collection, obj in entries:
        rnd.take(collection, obj)
    cache.apply_round(rnd, Affected())


@settings(max_examples=400, deadline=None)
@given(rounds, st.lists(rounds, min_size=1, max_size=3))
def test_counted_from_the_round_equals_counted_over_the_cache(base, deltas) -> None:
    cache = _cache()
    _apply(cache, base)
    before = counts.count_all(cache.conn)
    opened = _cache()  # the next run opens the state: a new Cache over the same rows
    opened.conn = cache.conn
    for delta in deltas:
        _apply(opened, delta)
    got, figures = opened.excluded_since(before)
    assert figures == counts.count_all(cache.conn)
    assert got == opened.excluded_since(None)[0] == opened.excluded()
    # The users holding a primary address, read a chunk of addresses at a time, as one query per address reads them.
    q = cache.conn.execute
    addresses = [p for (p,) in q("SELECT DISTINCT primary_address FROM users WHERE primary_address IS NOT NULL")] + ["nobody@contoso.com"]
    assert opened.claimants(addresses) == {u for p in addresses for (u,) in q("SELECT id FROM users WHERE primary_address=?", (p,))}


def test_the_counts_of_a_shared_primary_address_follow_its_users() -> None:
    """Three users share a@contoso.com (two are left out); one moves away, one is deleted,
    one loses its address: each step counted from the round alone."""
    cache = _cache()
    _apply(cache, [("users", {"id": u, "mail": "a@contoso.com"}) for u in ("u1", "u2", "u3")])
    figures = counts.count_all(cache.conn)
    assert figures == {"addresses": 0, "noPrimary": 0, "shared": 2}
    steps = [
        ([("users", {"id": "u2", "mail": "b@contoso.com"})], {"addresses": 0, "noPrimary": 0, "shared": 1}),
        ([("users", {"id": "u1", "@removed": {"reason": "deleted"}})], {"addresses": 0, "noPrimary": 0, "shared": 0}),
        ([("users", {"id": "u3", "mail": "x@elsewhere.org"})], {"addresses": 1, "noPrimary": 1, "shared": 0}),
        ([("users", {"id": "u4", "mail": "b@contoso.com"}), ("users", {"id": "u3", "mail": "b@contoso.com"})],
         {"addresses": 0, "noPrimary": 0, "shared": 2}),
    ]
    for entries, want in steps:
        opened = _cache()
        opened.conn = cache.conn
        _apply(opened, entries)
        got, figures = opened.excluded_since(figures)
        assert figures == want == counts.count_all(cache.conn)
        assert got == {"addresses": want["addresses"], "groups": 0, "users": want["noPrimary"] + want["shared"]}


def test_a_cache_loaded_or_replaced_in_bulk_is_counted_over_the_cache() -> None:
    """After a full load (or Exchange recipients replaced whole) the rows before are unknown:
    figures given from before are not used."""
    cache = _cache()
    _apply(cache, [("users", {"id": "u1", "mail": "a@contoso.com"})])
    stale = {"addresses": 50, "noPrimary": 50, "shared": 50}
    cache.clear()
    cache.load().feed(Round())
    cache.finish_load()
    assert cache.excluded_since(stale)[1] == counts.count_all(cache.conn) == {"addresses": 0, "noPrimary": 0, "shared": 0}
    other = _cache()
    other.apply_recipients([], None)
    assert other.excluded_since(stale)[1] == {"addresses": 0, "noPrimary": 0, "shared": 0}


def test_rules_that_leave_objects_out_keep_no_figures() -> None:
    cache = _cache(Rules(exclude_user_types=frozenset({"guest"})))
    _apply(cache, [("users", {"id": "u1", "mail": "a@contoso.com", "userType": "Guest"})])
    excluded, figures = cache.excluded_since({"addresses": 9, "noPrimary": 9, "shared": 9})
    assert figures is None
    assert excluded == {"addresses": 1, "groups": 0, "users": 1}


def test_the_figures_of_another_generation_are_not_used() -> None:
    stored = {"generation": 7, "addresses": 1, "noPrimary": 2, "shared": 3}
    assert counts.baseline(stored, 7) == {"addresses": 1, "noPrimary": 2, "shared": 3}
    assert counts.baseline(stored, 8) is None
    assert counts.baseline(None, 7) is None
    assert counts.baseline({"generation": 7, "addresses": 1, "noPrimary": "2", "shared": 3}, 7) is None
