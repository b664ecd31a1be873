"""``replace`` under every ``SYNC_DATASETS`` subset of a small matrix, after the directory and
the service have both moved on from the state: each replaced dataset's summary counts are what
docs/sync-rules.md ("The run summary (`--json`)": ``added``, records that differ from the state before;
``removed``, keys of the state before that the service no longer holds) says, computed here from
the state before and the service after; the state after equals the service's copy of every
replaced dataset; a dataset outside ``SYNC_DATASETS`` is neither sent, nor counted, nor touched in
the state (on the service it changes only by the service's own removal of deleted groups' ids) (docs/sync-rules.md, "Actions": ``replace``)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.storage.state import StateDB
from tests.stack import EngineStack, G, U, service_view

DATASETS = ("addresses", "groups", "users")
SUBSETS = ["addresses,groups,users", "groups,users", "users", "addresses", "addresses,groups"]


def state_of(state_dir) -> dict[str, dict[str, Any]]:
    db = StateDB(state_dir / "state.db", "test", readonly=True)
    try:
        return {d: db.records(d) for d in DATASETS}
    finally:
        db.close()


def service_records(receiver) -> dict[str, dict[str, Any]]:
    """The service's copy in the state's form (key -> canonical value), independently of the product's parser."""
    view = service_view(receiver)
    return {
        "addresses": {a: () for a in view["addresses"]},
        "groups": {k: (v["name"], tuple(v["parentIds"])) for k, v in view["groups"].items()},
        "users": {k: (v["address"], tuple(v["groupIds"])) for k, v in view["users"].items()},
    }


def cascaded(dataset: str, records: dict[str, Any], groups: set[str]) -> dict[str, Any]:
    """``records`` as the service keeps them once the groups outside ``groups`` are deleted: it
    removes a deleted group's id from every ``parentIds`` and ``groupIds`` (docs/sync-api.md, "4.3 Relations")."""
    if dataset == "addresses":
        return records
    return {k: (v[0], tuple(i for i in v[1] if i in groups)) for k, v in records.items()}


@pytest.mark.parametrize("subset", SUBSETS)
def test_replace_counts_each_replaced_dataset_against_the_state_before_and_touches_no_other(nasty_graph, receiver, tmp_path, subset):
    stack = EngineStack(nasty_graph, receiver, tmp_path)
    stack.update()  # everything, so that each dataset has a state
    chosen = subset.split(",")
    stack.env["SYNC_DATASETS"] = subset
    # The directory moves on (a user and a group go, a group is renamed) ...
    nasty_graph.delete_user(U(8))
    nasty_graph.delete_group(G(3))
    renamed = next(iter(receiver.records("groups")))
    nasty_graph.upsert_group({"id": renamed, "displayName": "Renamed by the test"})
    # ... and the service too, behind the state's back: an address the state does not know.
    receiver.load("addresses", [*receiver.records("addresses").values(), {"address": "extra@contoso.com"}])
    before, service_before = state_of(tmp_path), service_records(receiver)

    out = stack.update("replace")

    after, service_after = state_of(tmp_path), service_records(receiver)
    for d in DATASETS:
        counts = out["datasets"][d]
        if d not in chosen:
            assert (counts["added"], counts["removed"]) == (0, 0), d
            assert after[d] == before[d], f"the state of {d}, outside SYNC_DATASETS={subset}, was rebuilt"
            assert service_after[d] == cascaded(d, service_before[d], set(service_after["groups"])), f"{d} was sent"
            continue
        assert {k: tuple(v) for k, v in after[d].items()} == service_after[d], f"the state of {d} is not the service's copy"
        added = sum(1 for k, v in service_after[d].items() if k not in before[d] or tuple(before[d][k]) != v)
        removed = sum(1 for k in before[d] if k not in service_after[d])
        assert (counts["added"], counts["removed"]) == (added, removed), (d, counts)
    assert "extra@contoso.com" not in service_after["addresses"] or "addresses" not in chosen


@pytest.mark.parametrize("at", ["addresses/replacements", "addresses/replacements/"], ids=["create", "staging"])
@pytest.mark.parametrize("kind", ["applied_wrong_shape", "401", "drop_after"])
def test_a_replace_interrupted_after_two_datasets_then_an_update_converges(nasty_graph, receiver, tmp_path, at, kind):
    """groups and users are replaced and committed, then the addresses step fails (the request
    applied with its answer lost, refused, or dropped every time): the run fails, the state
    keeps what the service confirmed, and the next ``update`` (with the directory moved on again)
    leaves the service as the directory implies and the state equal to the service's copy."""
    stack = EngineStack(nasty_graph, receiver, tmp_path)
    stack.update()
    nasty_graph.delete_group(G(3))
    receiver.inject_fault(kind, path_contains=at, times=50, retry_after=0)
    out = stack.run("replace")
    assert not out["ok"], "the addresses step failed every time, yet the replace succeeded"
    receiver.clear_faults()
    assert {d: {k: tuple(v) for k, v in recs.items()} for d, recs in state_of(tmp_path).items() if d != "addresses"} == {
        d: recs for d, recs in service_records(receiver).items() if d != "addresses"}
    nasty_graph.delete_user(U(8))
    stack.update()
    assert service_view(receiver) == stack.expected()
    assert {d: {k: tuple(v) for k, v in recs.items()} for d, recs in state_of(tmp_path).items()} == service_records(receiver)
