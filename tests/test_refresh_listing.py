"""``refresh`` against record pages of ``GET /datasets/{dataset}/records`` that break the
contract's record shapes (docs/sync-api.md, "3. Datasets and their records", "4.1 Shape": every field of a record required, ids,
names and addresses strings, ``parentIds`` / ``groupIds`` lists of group ids) or name a key twice
across the pages of one listing. Refresh rebuilds the change-tracking state from the service's
copy (docs/sync-rules.md, "Actions"): from such a listing it must fail, naming the dataset and the
problem, and leave the state exactly as it was, never coerce a value into a record the service
does not hold (a string ``parentIds`` read as its characters, a number read as an address)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shared.storage.state import StateDB
from tests.stack import EngineStack

ODD = {  # (dataset, how a stored record is bent, a word the error must name)
    "parentIds a string": ("groups", lambda r: {**r, "parentIds": "g-x"}, "parentIds"),
    "parentIds missing": ("groups", lambda r: {k: v for k, v in r.items() if k != "parentIds"}, "parentIds"),
    "parentIds of numbers": ("groups", lambda r: {**r, "parentIds": [7]}, "parentIds"),
    "name a number": ("groups", lambda r: {**r, "name": 5}, "name"),
    "name null": ("groups", lambda r: {**r, "name": None}, "name"),
    "group id null": ("groups", lambda r: {**r, "id": None}, "id"),
    "groupIds a string": ("users", lambda r: {**r, "groupIds": "g-1"}, "groupIds"),
    "groupIds an object": ("users", lambda r: {**r, "groupIds": {"g-1": True}}, "groupIds"),
    "user address a number": ("users", lambda r: {**r, "address": 42}, "address"),
    "user id empty": ("users", lambda r: {**r, "id": ""}, "id"),
    "address a list": ("addresses", lambda r: {"address": [r["address"]]}, "address"),
    "address null": ("addresses", lambda r: {"address": None}, "address"),
}


def state_of(stack_dir) -> dict[str, Any]:
    db = StateDB(stack_dir / "state.db", "test", readonly=True)
    try:
        return {d: db.records(d) for d in ("addresses", "groups", "users")}
    finally:
        db.close()


@pytest.fixture
def synced(nasty_graph, receiver, tmp_path):
    stack = EngineStack(nasty_graph, receiver, tmp_path)
    stack.update()
    return stack, tmp_path


def serve_pages(receiver, dataset: str, pages: list[list[dict[str, Any]]]) -> None:
    """``dataset``'s listing becomes ``pages`` (tokens "p1", "p2", ...); the others are the store's own."""
    store = receiver._store
    real = store.page

    def page(ds: str, size: int, token: str | None) -> dict[str, Any]:
        if ds != dataset:
            return real(ds, size, token)
        i = 0 if token is None else int(token[1:])
        nxt = f"p{i + 1}" if i + 1 < len(pages) else None
        return {"records": pages[i], "nextPageToken": nxt}

    store.page = page


@pytest.mark.parametrize("case", sorted(ODD))
def test_a_record_of_the_wrong_shape_fails_refresh_by_name_and_changes_no_state(synced, receiver, case):
    stack, state_dir = synced
    dataset, bend, word = ODD[case]
    held = [copy.deepcopy(r) for r in receiver.records(dataset).values()]
    assert held, "the nasty directory puts records in every dataset"
    before = state_of(state_dir)
    serve_pages(receiver, dataset, [held[:-1], [bend(held[-1])]])
    out = stack.run("refresh")
    assert not out["ok"], f"refresh took a {case} record as the service's copy"
    assert dataset in out["error"] and word in out["error"], out["error"]
    assert state_of(state_dir) == before


@pytest.mark.parametrize("same", [True, False], ids=["same value", "another value"])
def test_a_key_listed_twice_across_pages_fails_refresh_and_changes_no_state(synced, receiver, same):
    stack, state_dir = synced
    held = [copy.deepcopy(r) for r in receiver.records("groups").values()]
    twice = held[0] if same else {**held[0], "name": held[0]["name"] + " (renamed)"}
    before = state_of(state_dir)
    serve_pages(receiver, "groups", [held, [twice]])
    out = stack.run("refresh")
    assert not out["ok"], "refresh took a listing that names one key twice"
    assert "groups" in out["error"] and "twice" in out["error"], out["error"]
    assert state_of(state_dir) == before


def test_a_listing_in_pages_with_empty_pages_rebuilds_the_state_exactly(synced, receiver):
    """The control: legal pages (one record each, an empty page in between) rebuild the state as the service holds it."""
    stack, state_dir = synced
    held = [copy.deepcopy(r) for r in receiver.records("users").values()]
    pages = [[r] for r in held]
    pages.insert(1, [])
    serve_pages(receiver, "users", pages)
    before = state_of(state_dir)
    out = stack.run("refresh")
    assert out["ok"], out.get("error")
    assert state_of(state_dir) == before


@pytest.mark.parametrize("token", ["", 7, {"t": "p1"}, "same"], ids=["empty", "number", "object", "repeated"])
def test_a_bad_or_repeated_page_token_fails_refresh_by_name_and_changes_no_state(synced, receiver, token):
    """A ``nextPageToken`` that is not a non-empty string, or names a page already listed, cannot
    continue the listing: the run fails naming ``nextPageToken``; the first page is not re-read
    as if the token were absent."""
    stack, state_dir = synced
    held = [copy.deepcopy(r) for r in receiver.records("users").values()]
    store = receiver._store

    def page(ds: str, size: int, tok: str | None) -> dict[str, Any]:
        if ds != "users":
            return real(ds, size, tok)
        if tok is None:
            return {"records": held[:1], "nextPageToken": "same" if token == "same" else token}
        return {"records": held[1:], "nextPageToken": "same"}

    real, store.page = store.page, page
    before = state_of(state_dir)
    out = stack.run("refresh")
    assert not out["ok"], f"refresh followed a nextPageToken of {token!r}"
    assert "users" in out["error"] and "nextPageToken" in out["error"], out["error"]
    assert state_of(state_dir) == before
