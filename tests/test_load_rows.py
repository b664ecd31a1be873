"""The streamed load derives each object's candidate rows with its batch
(``shared.model.loading.merge_nets``), and the cache it leaves is row for row what the two-pass
load left (``tests/load_reference.py``: merge every batch, then derive from every final row):
over generated full rounds (hypothesis) of users, groups and contacts with arbitrary address
values, objects repeated with newer state, ``@removed`` (reasons ``changed`` and ``deleted``)
before and after an object's other entries, group slices with member additions and removals,
an id that Graph names in two collections (whose outcome, there as before, depends on which
entries share a batch), batches of 1 to 7 entries (so objects straddle batches), address exclusion patterns, and a checkpoint resumed by another load
(``keep=True``), including one saved by the two-pass release. The same load logs each invalid
address once per object, with its id."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.model.directory import SCHEMA, Cache
from shared.model.loading import WrittenIds
from shared.model.rules import NO_RULES, Rules, parse_rules
from tests.load_reference import derive, merge_entries
from tests.test_properties import mail as any_mail
from tests.test_properties import props
from tests.test_properties import proxies as any_proxies
from tests.test_streamed_load import member_ops

PROVISIONED = frozenset({"contoso.com", "fabrikam.com", "xn--bcher-kva.example"})
USERS = [f"u{i}" for i in range(5)]
GROUPS = [f"g{i}" for i in range(3)]
CONTACTS = [f"c{i}" for i in range(3)]
SHARED = "s0"  # an id two collections name (Graph ids are unique directory-wide; the load must not care)
PLAIN_MAILS = ["a@contoso.com", "A@Contoso.COM", " b@fabrikam.com ", "x@elsewhere.org", "bad..dot@contoso.com", "k@bücher.example",
               "noreply@contoso.com", None]
PLAIN_PROXIES = [["SMTP:a@contoso.com"], ["smtp:c@contoso.com", "SMTP:d@fabrikam.com"], ["X500:/o=x", "smtp:bad@@contoso.com"],
                 ["SMTP:noreply@contoso.com", "smtp:e@contoso.com"], []]
RULES = [NO_RULES, parse_rules(None, None, r"noreply@.*,.*@fabrikam\.com")]
SELECTED = {"users": ("mail", "proxyAddresses", "userType"), "groups": ("displayName", "mail", "proxyAddresses"),
            "contacts": ("mail", "proxyAddresses")}


@st.composite
def entry(draw: Any) -> tuple[str, dict[str, Any]]:
    collection = draw(st.sampled_from(["users", "groups", "contacts"]))
    pool = {"users": USERS, "groups": GROUPS, "contacts": CONTACTS}[collection] + [SHARED]
    obj: dict[str, Any] = {"id": draw(st.sampled_from(pool))}
    if draw(st.integers(0, 5)) == 0:
        obj["@removed"] = {"reason": draw(st.sampled_from(["changed", "deleted"]))}
    else:
        for name in SELECTED[collection]:
            if not draw(st.booleans()):
                continue
            if name == "proxyAddresses":
                obj[name] = draw(st.one_of(st.sampled_from(PLAIN_PROXIES), any_proxies))
            elif name == "userType":
                obj[name] = draw(st.sampled_from(["Member", "Guest", None]))
            elif name == "displayName":
                obj[name] = draw(st.sampled_from(["Sales", "", "Ops", None]))
            else:
                obj[name] = draw(st.one_of(st.sampled_from(PLAIN_MAILS), any_mail))
    if collection == "groups" and draw(st.booleans()):
        obj["members@delta"] = member_ops(draw, USERS + GROUPS + CONTACTS)
    return collection, obj


def database() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(SCHEMA)
    return conn


def tables(conn: sqlite3.Connection) -> dict[str, list[tuple]]:
    """Every cache table, row for row (the cached data as its text)."""
    q = conn.execute
    return {
        "objects": q("SELECT id, kind, data, excluded FROM objects ORDER BY id").fetchall(),
        "kept": q("SELECT address, object_id FROM kept ORDER BY 1, 2").fetchall(),
        "users": q("SELECT id, primary_address FROM users ORDER BY 1").fetchall(),
        "members": q("SELECT group_id, member_id, kind FROM members ORDER BY 1, 2").fetchall(),
    }


def expected(entries: list[tuple[str, dict[str, Any]]], rules: Rules, batch: int, split: int) -> dict[str, list[tuple]]:
    """The two-pass load over the same batches: ``split`` ends one (a checkpoint flushes)."""
    conn = database()
    merge_entries(conn, entries[:split], batch)
    merge_entries(conn, entries[split:], batch)
    derive(conn, PROVISIONED, rules)
    return tables(conn)


def resumed(conn: sqlite3.Connection, rest: list[tuple[str, dict[str, Any]]], batch: int, rules: Rules) -> dict[str, int]:
    """Another invocation resumes the checkpoint in ``conn`` (``keep=True``) and completes the round."""
    cache = Cache(conn, PROVISIONED, rules)
    load = cache.load(flush_entries=batch, keep=True)
    for collection, obj in rest:
        load.take(collection, obj)
    return cache.finish_load()


def counts_of(rows: dict[str, list[tuple]]) -> dict[str, int]:
    kinds = [row[1] for row in rows["objects"]]
    return {"users": kinds.count("u"), "groups": kinds.count("g"), "contacts": kinds.count("c")}


@props(300)
@given(st.lists(entry(), max_size=30), st.integers(1, 7), st.integers(0, 30), st.sampled_from(RULES))
def test_the_streamed_load_leaves_the_rows_of_the_two_pass_load(entries: list[tuple[str, dict[str, Any]]], batch: int, split: int,
                                                                rules: Rules) -> None:
    """The first ``split`` entries are loaded and flushed (what a checkpoint commits); another
    load resumes with ``keep=True`` and completes the round."""
    conn = database()
    load = Cache(conn, PROVISIONED, rules, empty=True).load(flush_entries=batch)
    for collection, obj in entries[:split]:
        load.take(collection, obj)
    load.flush()
    counts = resumed(conn, entries[split:], batch, rules)
    want = expected(entries, rules, batch, split)
    assert tables(conn) == want
    assert counts == counts_of(want)


@props(150)
@given(st.lists(entry(), min_size=1, max_size=30), st.integers(1, 7), st.integers(1, 30), st.sampled_from(RULES))
def test_a_checkpoint_the_two_pass_release_saved_is_resumed_with_its_rows_derived(entries: list[tuple[str, dict[str, Any]]], batch: int,
                                                                                  split: int, rules: Rules) -> None:
    """That release's checkpoint holds ``objects`` and ``members`` only (it derived the rest
    once the round was complete): the resuming load derives the missing rows first."""
    conn = database()
    merge_entries(conn, entries[:split], batch)
    counts = resumed(conn, entries[split:], batch, rules)
    want = expected(entries, rules, batch, split)
    assert tables(conn) == want
    assert counts == counts_of(want)


def _warned(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "skipped invalid address" in r.getMessage()]


@pytest.mark.parametrize("batch", [1, 2, 100])
def test_an_invalid_address_is_logged_once_per_object_with_its_id(batch: int, caplog: pytest.LogCaptureFixture) -> None:
    entries = [
        ("users", {"id": "u1", "mail": "bad..dot@contoso.com", "proxyAddresses": []}),
        ("groups", {"id": "g1", "displayName": "Sales", "mail": "sales@@contoso.com", "members@delta": [{"id": "u1"}]}),
        ("users", {"id": "u1", "proxyAddresses": ["SMTP:a@contoso.com"]}),  # newer state, the same invalid mail
        ("groups", {"id": "g1", "displayName": "Sales", "mail": "sales@@contoso.com", "members@delta": [{"id": "u2"}]}),  # a later slice
        ("users", {"id": "u2", "mail": "bad..dot@contoso.com"}),  # another object with the same value: logged for it too
    ]
    conn = database()
    cache = Cache(conn, PROVISIONED, empty=True)
    load = cache.load(flush_entries=batch)
    with caplog.at_level(logging.WARNING):
        for collection, obj in entries:
            load.take(collection, obj)
        cache.finish_load()
    warned = _warned(caplog)
    assert sorted(warned) == sorted([
        "user u1: skipped invalid address 'bad..dot@contoso.com': local part has an empty dot-atom (leading, trailing or double dot)",
        "group g1: skipped invalid address 'sales@@contoso.com': an address needs exactly one '@'",
        "user u2: skipped invalid address 'bad..dot@contoso.com': local part has an empty dot-atom (leading, trailing or double dot)",
    ])
    assert tables(conn) == expected(entries, NO_RULES, batch, len(entries))


def _pages(entries: list[tuple[str, dict[str, Any]]], size: int) -> list[tuple[str, list[Any]]]:
    """Runs of one collection's entries, at most ``size`` each (Graph's pages)."""
    out: list[tuple[str, list[Any]]] = []
    for collection, obj in entries:
        if out and out[-1][0] == collection and len(out[-1][1]) < size:
            out[-1][1].append(obj)
        else:
            out.append((collection, [obj]))
    return out


@props(150)
@given(st.lists(entry(), max_size=30), st.integers(1, 7), st.integers(1, 9), st.sampled_from(RULES), st.booleans())
def test_pages_taken_at_once_leave_the_rows_of_their_entries_taken_one_by_one(entries: list[tuple[str, dict[str, Any]]], batch: int,
                                                                               size: int, rules: Rules, collide: bool) -> None:
    """``take_page`` (what the Graph read feeds) against ``take`` of each entry; ``collide``:
    every id the load wrote shares its bit with every other (``WrittenIds``), so each one is
    looked up, as without the table."""
    conn = database()
    load = Cache(conn, PROVISIONED, rules, empty=True).load(flush_entries=batch)
    for collection, obj in entries:
        load.take(collection, obj)
    load.finish()
    paged = database()
    with patch.object(WrittenIds, "BITS", 8 if collide else WrittenIds.BITS):
        load = Cache(paged, PROVISIONED, rules, empty=True).load(flush_entries=batch)
        for collection, page in _pages(entries, size):
            assert load.take_page(collection, page) == len(page)
        load.finish()
    assert tables(paged) == tables(conn)


def test_a_page_is_taken_up_to_its_first_entry_without_an_id() -> None:
    load = Cache(database(), PROVISIONED, empty=True).load(flush_entries=2)
    page = [{"id": "u1", "mail": "a@contoso.com"}, {"id": "u2"}, {"id": "u3"}, {"id": ""}, {"id": "u4"}]
    assert load.take_page("users", page) == 3
    assert load.take_page("users", [["not an object"]]) == 0
    assert load.entries["users"] == 3
    with pytest.raises(ValueError, match="a users delta entry without an id"):
        load.take("users", page[3])


def test_every_member_kind_the_fold_gives_has_its_member_statement() -> None:
    """The member rows go a statement per kind (``PUT_MEMBERS``, the kind a constant): every kind
    the fold can give a member has one."""
    from shared.model import fold
    from shared.model.loading import MEMBER_KINDS, PUT_MEMBERS

    kinds = {fold.member_kind(t) for t in (fold.USER_TYPE, fold.GROUP_TYPE, "#microsoft.graph.device", "", None, 7)}
    kinds |= {k for _, k in (*fold._ADDED.values(), *fold._REMOVED.values(), fold._ADDED_OTHER, fold._REMOVED_OTHER)}
    assert kinds == set(MEMBER_KINDS) == set(PUT_MEMBERS)
    assert all(f"'{k}')" in PUT_MEMBERS[k].one for k in MEMBER_KINDS)


def test_every_kind_a_load_writes_has_its_objects_statement() -> None:
    """Objects rows without excluded candidates go a statement per kind (``PUT_PLAIN_OBJECTS``,
    the kind and ``excluded`` 0 constants): every kind a load or a re-derivation writes has one."""
    from shared.model.fold import KIND_OF
    from shared.model.loading import PUT_PLAIN_OBJECTS

    assert set(PUT_PLAIN_OBJECTS) == set(KIND_OF.values()) == {"u", "g", "c"}
    assert all(PUT_PLAIN_OBJECTS[k].one.endswith(f"VALUES (?,'{k}',?,0)") and PUT_PLAIN_OBJECTS[k].width == 2 for k in PUT_PLAIN_OBJECTS)
