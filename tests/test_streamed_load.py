"""A full read streamed into the directory cache a few entries at a time
(``shared.model.loading.StreamLoad``) ends exactly where the same round ends when it is applied
entry by entry through the delta merge (``Cache.apply_round`` on a cache that is not empty),
whatever the batch size: over generated first rounds (hypothesis) with repeated objects,
``@removed`` objects (also before they reappear), group slices that repeat or change the
properties, member additions and ``@removed`` members, and groups that vanish and come back."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.model.directory import SCHEMA, Cache, Round, scratch_cache

PROVISIONED = frozenset({"contoso.com"})
USERS = [f"u{i}" for i in range(6)]
GROUPS = [f"g{i}" for i in range(4)]
CONTACTS = [f"c{i}" for i in range(3)]
MAILS = ["a@contoso.com", "b@contoso.com", "B@Contoso.com", "x@elsewhere.org", "bad..dot@contoso.com", None]
PROXIES = [["SMTP:a@contoso.com"], ["smtp:c@contoso.com", "SMTP:d@contoso.com"], ["X500:/o=x"], []]
MEMBER_TYPES = ["#microsoft.graph.user", "#microsoft.graph.group", "#microsoft.graph.orgContact", None]


def _props(draw: Any, names: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        if draw(st.booleans()):
            if name == "proxyAddresses":
                out[name] = draw(st.sampled_from(PROXIES))
            elif name == "userType":
                out[name] = draw(st.sampled_from(["Member", "Guest"]))
            elif name == "displayName":
                out[name] = draw(st.sampled_from(["Sales", "", "Ops"]))
            else:
                out[name] = draw(st.sampled_from(MAILS))
    return out


@st.composite
def entry(draw: Any) -> tuple[str, dict[str, Any]]:
    collection = draw(st.sampled_from(["users", "groups", "contacts"]))
    pool = {"users": USERS, "groups": GROUPS, "contacts": CONTACTS}[collection]
    obj: dict[str, Any] = {"id": draw(st.sampled_from(pool))}
    if draw(st.integers(0, 5)) == 0:
        obj["@removed"] = {"reason": draw(st.sampled_from(["changed", "deleted"]))}
    else:
        names = {"users": ("mail", "proxyAddresses", "userType"), "groups": ("displayName", "mail", "proxyAddresses"),
                 "contacts": ("mail", "proxyAddresses")}[collection]
        obj.update(_props(draw, names))
    if collection == "groups" and draw(st.booleans()):
        obj["members@delta"] = member_ops(draw, USERS + GROUPS + CONTACTS)
    return collection, obj


def member_ops(draw: Any, ids: list[str], most: int = 4) -> list[dict[str, Any]]:
    """A group slice's ``members@delta``: up to ``most`` members of ``ids`` added or
    ``@removed``, with or without their ``@odata.type`` (also tests/test_load_rows.py,
    tests/test_user_records.py)."""
    ops = []
    for _ in range(draw(st.integers(0, most))):
        op: dict[str, Any] = {"id": draw(st.sampled_from(ids))}
        otype = draw(st.sampled_from(MEMBER_TYPES))
        if otype:
            op["@odata.type"] = otype
        if draw(st.integers(0, 3)) == 0:
            op["@removed"] = {"reason": "deleted"}
        ops.append(op)
    return ops


def tables(cache: Cache) -> dict[str, list[tuple]]:
    q = cache.conn.execute
    return {
        "objects": [(i, k, json.loads(d), e) for i, k, d, e in q("SELECT id, kind, data, excluded FROM objects ORDER BY id")],
        "kept": q("SELECT address, object_id FROM kept ORDER BY 1, 2").fetchall(),
        "users": q("SELECT id, primary_address FROM users ORDER BY 1").fetchall(),
        "members": q("SELECT group_id, member_id, kind FROM members ORDER BY 1, 2").fetchall(),
    }


def entry_by_entry(entries: list[tuple[str, dict[str, Any]]]) -> Cache:
    """The delta merge, one entry at a time, into a cache that is not treated as empty."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(SCHEMA)
    cache = Cache(conn, PROVISIONED)
    for collection, obj in entries:
        rnd = Round()
        rnd.take(collection, obj)
        cache.apply_round(rnd, None)
    return cache


@settings(max_examples=400, deadline=None)
@given(st.lists(entry(), max_size=30), st.integers(1, 31))
def test_a_streamed_full_read_equals_the_entry_by_entry_merge(entries: list[tuple[str, dict[str, Any]]], batch: int) -> None:
    streamed = scratch_cache(PROVISIONED)
    load = streamed.load(flush_entries=batch)
    for collection, obj in entries:
        load.take(collection, obj)
    counts = streamed.finish_load()
    expected = entry_by_entry(entries)
    assert tables(streamed) == tables(expected)
    assert streamed.projection().datasets == expected.projection().datasets
    kinds = [row[1] for row in tables(expected)["objects"]]
    assert counts == {"users": kinds.count("u"), "groups": kinds.count("g"), "contacts": kinds.count("c")}


def test_a_load_empties_what_the_cache_held_and_builds_the_indexes() -> None:
    cache = scratch_cache(PROVISIONED)
    cache.apply_round(_round([("users", {"id": "u1", "mail": "a@contoso.com"})]), None)
    load = cache.load(flush_entries=1)
    load.take("users", {"id": "u2", "mail": "b@contoso.com"})
    cache.finish_load()
    assert [r[0] for r in tables(cache)["objects"]] == ["u2"]
    indexes = {n for (n,) in cache.conn.execute("SELECT name FROM sqlite_master WHERE type='index' AND name NOT LIKE 'sqlite_%'")}
    assert {"kept_by_object", "users_by_primary", "members_by_member"} <= indexes


def _round(entries: list[tuple[str, dict[str, Any]]]) -> Round:
    rnd = Round()
    for collection, obj in entries:
        rnd.take(collection, obj)
    return rnd
