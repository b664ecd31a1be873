"""End-to-end runs through the CLI (as an operator or the harness runs it) against the Graph
emulator, the strict receiver and, for blob state, Azurite: every action, on nasty data."""

from __future__ import annotations

import os
import signal

import pytest

from devstack.sync_receiver import SyncReceiver
from tests.stack import (
    CREDENTIAL,
    DOMAINS,
    EXPECTED,
    EXPECTED_EXCLUDED,
    G,
    U,
    base_env,
    posts,
    run_cli,
    service_view,
)


@pytest.fixture
def graph(nasty_graph):
    return nasty_graph


@pytest.fixture
def env(graph, receiver, tmp_path):
    return base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")


def test_update_sends_exactly_the_projection(env, receiver, tmp_path):
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    s = r.summary
    assert s["ok"] is True and s["action"] == "update"
    assert service_view(receiver) == EXPECTED
    for d in ("addresses", "groups", "users"):
        assert s["datasets"][d]["added"] == len(EXPECTED[d])
        assert s["datasets"][d]["removed"] == 0
        assert s["datasets"][d]["rejected"] == 0
        assert s["datasets"][d]["excluded"] == EXPECTED_EXCLUDED[d]
    assert s["graphRequests"] >= 3 and s["syncRequests"] >= 4
    # warnings name the object of an invalid value
    assert U(6) in r.stderr and "invalid address" in r.stderr
    # a second run has nothing to send
    again = run_cli("update", env, "--json")
    assert again.code == 0
    assert all(again.summary["datasets"][d]["added"] == 0 and again.summary["datasets"][d]["removed"] == 0 for d in EXPECTED)
    assert [p.path for p in posts(receiver)].count("/v1/datasets/addresses/changes") == 1


def test_requests_follow_the_contract_order(env, receiver, graph):
    assert run_cli("update", env).code == 0
    graph.delete_group(G(3))
    graph.delete_user(U(8))
    graph.upsert_group({"id": G(9), "displayName": "New", "mail": None, "proxyAddresses": [], "members": [U(1)]})
    receiver.clear_log()
    assert run_cli("update", env).code == 0
    order = [(p.path.split("/")[3], bool(p.body.get("upsert")), bool(p.body.get("delete"))) for p in posts(receiver)]
    assert order == [("groups", True, False), ("users", True, True), ("addresses", False, True), ("groups", False, True)]
    view = service_view(receiver)
    assert G(3) not in view["groups"] and G(9) in view["groups"]
    assert view["users"][U(1)]["groupIds"] == sorted([G(1), G(9)])
    assert U(8) not in view["users"] and "dave@fabrikam.com" not in view["addresses"]


def test_test_update_reports_but_sends_nothing_and_keeps_no_state(env, receiver, tmp_path):
    r = run_cli("test-update", env, "--json")
    assert r.code == 0, r.stderr
    s = r.summary
    assert {rec["address"] for rec in s["changes"]["addresses"]["added"]} == EXPECTED["addresses"]
    assert {rec["id"] for rec in s["changes"]["users"]["added"]} == set(EXPECTED["users"])
    assert s["datasets"]["users"]["added"] == len(EXPECTED["users"])
    reasons = {(e["objectId"], e["reason"].split(":")[0]) for e in s["exclusions"]}
    assert (U(3), "no primary address") in reasons
    assert any(e["objectId"] == U(5) and "smaller id" in e["reason"] for e in s["exclusions"])
    assert all(p.method == "GET" for p in receiver.request_log)
    assert not (tmp_path / "state").exists()
    # after an update, a test-update shows what the next update would send
    assert run_cli("update", env).code == 0
    nothing = run_cli("test-update", env, "--json").summary
    assert all(nothing["datasets"][d]["added"] == 0 and nothing["datasets"][d]["removed"] == 0 for d in EXPECTED)


def test_incremental_update_sends_only_what_changed(env, receiver, graph):
    assert run_cli("update", env).code == 0
    graph.upsert_user({"id": U(20), "displayName": "Eve", "mail": "eve@contoso.com", "proxyAddresses": ["SMTP:eve@contoso.com"]})
    graph.delete_user(U(4))  # U(5) shared its primary address and now keeps the record
    graph.delete_user(U(8))
    graph.add_member(G(1), U(20))
    receiver.clear_log()
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    s = r.summary["datasets"]
    assert (s["users"]["added"], s["users"]["removed"]) == (2, 2)
    assert (s["addresses"]["added"], s["addresses"]["removed"]) == (1, 1)
    assert (s["groups"]["added"], s["groups"]["removed"]) == (0, 0)
    sent = [p.body for p in posts(receiver)]
    assert sent == [
        {"upsert": [{"id": U(5), "address": "shared@contoso.com", "groupIds": []},
                    {"id": U(20), "address": "eve@contoso.com", "groupIds": [G(1)]}], "delete": [U(4), U(8)]},
        {"upsert": [{"address": "eve@contoso.com"}], "delete": ["dave@fabrikam.com"]},
    ]


@pytest.mark.parametrize("fault", ["503", "500", "drop", "malformed"])
def test_a_page_that_keeps_failing_fails_the_run_and_sends_nothing(env, receiver, graph, tmp_path, fault):
    assert run_cli("update", env).code == 0
    graph.delete_user(U(1))  # a deletion the broken read must not send
    before = (tmp_path / "state" / "state.db").read_bytes()
    receiver.clear_log()
    graph.inject_fault(fault, path_contains="/users", times=50, retry_after=0)
    r = run_cli("update", env, "--json")
    assert r.code != 0
    assert r.summary["ok"] is False
    assert "nothing was sent" in r.stderr.splitlines()[-1]
    assert posts(receiver) == []
    assert (tmp_path / "state" / "state.db").read_bytes() == before
    assert U(1) in service_view(receiver)["users"]


def test_transient_graph_faults_are_retried(env, receiver, graph):
    graph.inject_fault("429", path_contains="/users", times=1, retry_after=1)
    graph.inject_fault("drop", path_contains="/contacts", times=1)
    graph.inject_fault("malformed", path_contains="/groups", times=1)
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    assert service_view(receiver) == EXPECTED
    assert r.summary["read"]["graphRetries"] >= 2


def test_a_crash_between_two_batches_is_repaired_without_loss_or_duplication(graph, receiver, tmp_path):
    """The process is killed right after the service applied a batch and before the answer
    arrived; the next run converges, reusing a key only for the very same body."""
    import subprocess
    import sys
    import time

    env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    for i in range(30, 60):
        graph.upsert_user({"id": U(i), "displayName": f"u{i}", "mail": f"user{i}@contoso.com", "proxyAddresses": []})
    env["SYNC_TEST_MAX_ITEMS"] = "7"  # small batches: many requests to crash between
    receiver.inject_fault("drop_after", path_contains="/datasets/users/changes", times=1)
    proc = subprocess.Popen([sys.executable, "-m", "tests.launcher", "update"], cwd=str(tmp_path.parent), env={**env, "PYTHONPATH": os.getcwd()},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(r.fault == "drop_after" for r in receiver.request_log):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    applied_before = len(posts(receiver))
    assert applied_before >= 2
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    view = service_view(receiver)
    assert len(view["users"]) == len(EXPECTED["users"]) + 30
    assert receiver.keys_reused_with_different_body() == []
    assert receiver.idempotency_conflicts() == 0
    # nothing confirmed was sent again under a different key
    bodies: dict[str, str] = {}
    import json as _json

    for p in posts(receiver):
        body = _json.dumps(p.body, sort_keys=True)
        if p.status == 200 and not p.replayed:
            assert body not in bodies.values() or bodies.get(p.idempotency_key) == body
            bodies[p.idempotency_key] = body
    assert run_cli("update", env, "--json").summary["datasets"]["users"]["added"] == 0


def test_replace_rebuilds_the_service_and_the_state(env, receiver):
    receiver.load("groups", [{"id": "stale-group", "name": "Stale", "parentIds": []}])
    receiver.load("addresses", [{"address": "old@contoso.com"}])
    receiver.load("users", [{"id": "stale-user", "address": "stale@contoso.com", "groupIds": ["stale-group"]}])
    r = run_cli("replace", env, "--json")
    assert r.code == 0, r.stderr
    assert service_view(receiver) == EXPECTED
    paths = [p.path for p in posts(receiver)]
    assert paths.index("/v1/datasets/groups/replacements") < paths.index("/v1/datasets/users/replacements")
    assert r.summary["datasets"]["addresses"]["added"] == len(EXPECTED["addresses"])
    # the state now matches the service: an update has nothing to send
    nothing = run_cli("update", env, "--json").summary
    assert all(nothing["datasets"][d]["added"] == 0 and nothing["datasets"][d]["removed"] == 0 for d in EXPECTED)


def test_a_failed_replace_leaves_the_live_data_untouched_and_abandons(env, receiver):
    receiver.load("addresses", [{"address": "keep@contoso.com"}])
    receiver.inject_fault("500", path_contains="/datasets/addresses/replacements/", times=100)
    r = run_cli("replace", env, "--json")
    assert r.code != 0
    assert {a["address"] for a in receiver.records("addresses").values()} == {"keep@contoso.com"}
    assert any(p.method == "DELETE" for p in receiver.request_log)


def test_refresh_rebuilds_state_from_the_service_and_sends_nothing(env, receiver):
    receiver.load("addresses", [{"address": "alice@contoso.com"}, {"address": "gone@contoso.com"}])
    r = run_cli("refresh", env, "--json")
    assert r.code == 0, r.stderr
    assert posts(receiver) == []
    u = run_cli("update", env, "--json")
    s = u.summary["datasets"]["addresses"]
    assert s["removed"] == 1 and s["added"] == len(EXPECTED["addresses"]) - 1
    assert service_view(receiver)["addresses"] == EXPECTED["addresses"]


def test_sync_datasets_and_address_domains_narrow_the_run(env, receiver):
    env = {**env, "SYNC_DATASETS": "addresses", "ADDRESS_DOMAINS": "Fabrikam.com"}
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    assert service_view(receiver)["addresses"] == {"al.ice@fabrikam.com", "dave@fabrikam.com", "ext@fabrikam.com"}
    assert receiver.records("users") == {} and receiver.records("groups") == {}


def test_wrong_credential_fails_clearly_without_leaking_it(env, receiver):
    bad = "sync-admin:Wrong-Canary-9d1c"
    r = run_cli("update", {**env, "SYNC_API_CREDENTIAL": bad}, "--json")
    assert r.code != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "401" in last and "SYNC_API_CREDENTIAL" in last
    assert "Wrong-Canary-9d1c" not in r.stdout + r.stderr


def test_rejections_are_reported_and_do_not_fail_the_run(graph, tmp_path):
    rc = SyncReceiver(domains=DOMAINS, credential=CREDENTIAL, other_account_addresses={"dave@fabrikam.com"})
    rc.start()
    try:
        env = base_env(graph.base_url, rc.base_url, f"file:{tmp_path / 'st'}")
        r = run_cli("update", env, "--json")
        assert r.code == 0, r.stderr
        a = r.summary["datasets"]["addresses"]
        assert a["rejected"] >= 1
        assert {"key": "dave@fabrikam.com", "code": "address_in_other_account"}.items() <= a["rejections"][0].items()
        # a rejected record is not recorded as held: the next run tries it again
        again = run_cli("update", env, "--json").summary["datasets"]["addresses"]
        assert again["rejected"] >= 1
    finally:
        rc.stop()


def test_blob_state_in_azurite(graph, receiver, azurite):
    env = base_env(graph.base_url, receiver.base_url, "blob:sync-state-e2e")
    env["AzureWebJobsStorage"] = azurite.connection_string
    assert run_cli("update", env).code == 0
    graph.delete_user(U(8))
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    assert r.summary["datasets"]["users"]["removed"] == 1
    from azure.storage.blob import BlobServiceClient

    names = [b.name for b in BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client("sync-state-e2e").list_blobs()]
    assert "state.manifest.json" in names and any(n.startswith("state.parts/") for n in names)
