"""Review findings, kept as regression tests: each scenario once left the service differing from the projection."""

from __future__ import annotations

from tests.stack import G, U, service_view
from tests.test_delta import expected_view, graph, stack  # noqa: F401 - fixtures


def _differences(stack) -> dict:  # noqa: F811 - the fixture
    want, _ = expected_view(stack.graph)
    have = service_view(stack.receiver)
    out = {}
    for d in want:
        w, h = want[d], have[d]
        if isinstance(w, set):
            if w != h:
                out[d] = {"missing": sorted(w - h), "extra": sorted(h - w)}
        else:
            bad = {k: (w.get(k), h.get(k)) for k in set(w) | set(h) if w.get(k) != h.get(k)}
            if bad:
                out[d] = bad
    return out



def test_two_lost_answers_at_one_position_do_not_leave_the_service_stale(stack):  # noqa: F811 - the fixture
    stack.update()
    rc = stack.receiver
    for mail in ("a.move@fabrikam.com", "b.move@fabrikam.com"):  # two runs, each dies with the users answer lost
        stack.graph.upsert_user({"id": U(8), "mail": mail})
        rc.inject_fault("drop_after", path_contains="/users/changes", times=100)
        assert not stack.update()["ok"]
        rc._api.faults._faults.clear()
    assert rc.records("users")[U(8)]["address"] == "b.move@fabrikam.com"
    stack.graph.upsert_user({"id": U(8), "mail": "a.move@fabrikam.com"})  # back to run 1's value
    assert stack.update()["ok"]
    stack.update(FULL_SYNC_INTERVAL_HOURS="0")  # not even a full reconcile puts it right
    assert _differences(stack) == {}



def test_a_blob_dry_run_during_an_update_does_not_lose_its_commit(azurite, tmp_path):
    from azure.storage.blob import BlobServiceClient

    from shared.storage.stores import BlobStateStore
    from tests.test_state import fill

    svc = BlobServiceClient.from_connection_string(azurite.connection_string)
    local = tmp_path / "instance-tmp"  # one Function instance: one temp dir
    a = BlobStateStore(svc, "state-review", "azurite", local_dir=local)
    d = a.open()
    fill(d)
    d.commit()
    a.publish(d)
    d.close()
    w = a.open()  # the timer's update
    BlobStateStore(svc, "state-review", "azurite", local_dir=local).open(readonly=True).close()  # GET status meanwhile
    w.replace_records("users", {})  # what the update confirmed
    w.commit()
    a.publish(w)
    w.close()
    other = BlobStateStore(svc, "state-review", "azurite", local_dir=tmp_path / "elsewhere").open()
    try:
        assert other.records("users") == {}
    finally:
        other.close()



def test_a_group_deleted_and_recreated_in_one_round_drops_its_old_members(stack):  # noqa: F811 - the fixture
    stack.update()
    stack.graph.delete_group(G(2))  # members U(2), G(3)
    stack.graph.upsert_group({"id": G(2), "displayName": "Team again", "mail": None, "proxyAddresses": [], "members": [U(8)]})
    s = stack.update()
    assert s["ok"] and s["read"]["kind"] == "delta"
    assert _differences(stack) == {}
