"""The operator endpoints (GET status, POST test-update, POST approve-deletions) and the timer's
handling of a held run lock, called as the Functions host calls them: the decorated functions
from the app's index, with real HttpRequests, against the Graph emulator and the strict sync API
receiver on loopback, with ``file:`` state."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

import function_app
from devstack.graph_emulator import GraphEmulator
from devstack.sync_receiver import SyncReceiver
from devstack.tenant import generate_tenant
from shared.plan.approval import held_digest
from shared.storage.lock import FileRunLock
from tests.stack import (
    CREDENTIAL,
    DOMAINS,
    EXPECTED,
    EXPECTED_EXCLUDED,
    ROOT,
    G,
    app_functions,
    base_env,
    nasty_directory,
    posts,
    service_view,
)

FUNCTIONS = app_functions()
PASSWORD = CREDENTIAL.split(":", 1)[1]
ENDPOINTS = {  # function name -> (route, method)
    "operator_status": ("status", "GET"),
    "operator_test_update": ("test-update", "POST"),
    "operator_approve_deletions": ("approve-deletions", "POST"),
}
NEWCOMER = "1a000000-0000-0000-0000-000000000001"


# --- calling the app as the host does --------------------------------------------------------------
def call(name: str, method: str | None = None, *, params: dict[str, str] | None = None, body: Any = None) -> tuple[int, dict[str, Any]]:
    """Invoke one endpoint's user function; every answer is JSON without the credential."""
    route, declared = ENDPOINTS[name]
    raw = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    req = func.HttpRequest(method or declared, f"http://localhost:7071/api/{route}", params=params or {}, body=raw)
    resp = FUNCTIONS[name].get_user_function()(req)
    assert isinstance(resp, func.HttpResponse)
    assert resp.mimetype == "application/json"
    text = resp.get_body().decode("utf-8")
    assert CREDENTIAL not in text and PASSWORD not in text
    return resp.status_code, json.loads(text)


def timer() -> None:
    from azure.functions.timer import TimerRequest

    request = TimerRequest(past_due=False, schedule_status={"Last": dt.datetime.now().isoformat()})
    FUNCTIONS["sync_timer"].get_user_function()(request)


def state_files(state: Path) -> dict[str, bytes]:
    """Everything in the state directory but the run reports."""
    return {str(p.relative_to(state)): p.read_bytes() for p in sorted(state.rglob("*")) if p.is_file() and p.parts[len(state.parts)] != "runs"}


def reports(state: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((state / "runs").glob("*.json"))]


# --- the stack ------------------------------------------------------------------------------------
@pytest.fixture
def stack(monkeypatch, tmp_path):
    """Start the stack for a directory and point the app's settings at it."""
    started = []

    def start(directory: dict[str, Any], *, guard: bool = False, receiver_credential: str = CREDENTIAL):
        graph = GraphEmulator(directory)
        receiver = SyncReceiver(domains=DOMAINS, credential=receiver_credential)
        graph.start()
        started.append(graph)
        receiver.start()
        started.append(receiver)
        env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
        for name in ("DELETE_THRESHOLD_PERCENT", "DELETE_THRESHOLD_COUNT"):
            if guard:  # the defaults: 10 % and 500
                env.pop(name)
                monkeypatch.delenv(name, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return graph, receiver, tmp_path / "state"

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def tenant():
    return generate_tenant(200, groups=10, seed=3, domains=tuple(DOMAINS[:2]))


@pytest.fixture
def held(stack, tenant):
    """A synced 200-user tenant that lost 30 % of its users: the guard holds the deletions."""
    graph, receiver, state = stack(tenant, guard=True)
    timer()
    before = service_view(receiver)
    gone = [u["id"] for u in tenant["users"]][:60]
    for uid in gone:
        graph.delete_user(uid)
    with pytest.raises(function_app.SyncRunFailed, match="deletion guard"):
        timer()
    keys = sorted(set(gone) & set(before["users"]))
    assert keys and set(keys) <= set(receiver.records("users"))  # held: nothing was deleted
    return graph, receiver, state, keys


# --- the bindings the host reads -------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_each_endpoint_is_bound_to_its_route_with_function_key_auth(name):
    route, method = ENDPOINTS[name]
    trigger, output = (json.loads(b) for b in FUNCTIONS[name].get_raw_bindings())
    assert trigger == {"direction": "IN", "type": "httpTrigger", "name": "req", "methods": [method], "authLevel": "FUNCTION", "route": route}
    assert output == {"direction": "OUT", "type": "http", "name": "$return"}


def test_the_routes_live_under_the_default_api_prefix():
    host = json.loads((ROOT / "host.json").read_text())
    assert "routePrefix" not in host.get("extensions", {}).get("http", {})


# --- GET status -----------------------------------------------------------------------------------
def test_status_after_two_updates_lists_both_runs_newest_first(stack):
    _, _, state = stack(nasty_directory())
    timer()
    timer()
    code, info = call("operator_status")
    assert code == 200
    assert [(r["action"], r["ok"], r["read"]["kind"]) for r in info["runs"]] == [("update", True, "delta"), ("update", True, "full")]
    assert info["heldDeletions"] == {} and info["state"] == f"file:{state}"
    assert info["records"]["users"] == len(EXPECTED["users"])
    code, info = call("operator_status", params={"limit": "1"})
    assert code == 200 and len(info["runs"]) == 1 and info["runs"][0]["read"]["kind"] == "delta"


def test_status_shows_runs_without_their_record_lists(stack):
    _, _, state = stack(nasty_directory())
    timer()
    assert call("operator_test_update")[0] == 200
    on_disk = reports(state)[-1]
    assert on_disk["action"] == "test-update" and on_disk["changes"] and on_disk["exclusions"]
    code, info = call("operator_status")
    assert code == 200
    newest = info["runs"][0]
    assert newest["action"] == "test-update" and newest["ok"] is True
    assert "changes" not in newest and "exclusions" not in newest
    assert newest["datasets"]["users"]["excluded"] == EXPECTED_EXCLUDED["users"]
    assert "alice@contoso.com" not in json.dumps(info)  # no directory data in the status


@pytest.mark.parametrize("limit", ["0", "51", "ten", "1.5", "-3", "²"])
def test_status_refuses_a_bad_limit_naming_the_parameter(stack, limit):
    stack(nasty_directory())
    code, body = call("operator_status", params={"limit": limit})
    assert code == 400 and body["parameter"] == "limit" and "limit" in body["error"]


# --- POST test-update -----------------------------------------------------------------------------
def test_test_update_returns_the_preview_and_changes_nothing(stack):
    graph, receiver, state = stack(nasty_directory())
    timer()
    graph.upsert_user({"id": NEWCOMER, "displayName": "New", "mail": "newcomer@contoso.com", "proxyAddresses": []})
    graph.delete_user(next(iter(EXPECTED["users"])))  # Alice
    files, sent, held_by_service = state_files(state), len(posts(receiver)), service_view(receiver)

    code, preview = call("operator_test_update")

    assert code == 200 and preview["ok"] is True and preview["action"] == "test-update"
    users = preview["changes"]["users"]
    assert users["added"] == [{"id": NEWCOMER, "address": "newcomer@contoso.com", "groupIds": []}]
    assert users["removed"] == [next(iter(EXPECTED["users"]))]
    assert preview["changes"]["addresses"]["added"] == [{"address": "newcomer@contoso.com"}]
    assert {"alice@contoso.com", "al.ice@fabrikam.com"} <= set(preview["changes"]["addresses"]["removed"])
    assert preview["datasets"]["users"] == {"added": 1, "removed": 1, "rejected": 0, "excluded": EXPECTED_EXCLUDED["users"]}
    assert len([e for e in preview["exclusions"] if e["dataset"] == "users"]) == EXPECTED_EXCLUDED["users"]
    assert preview["heldDeletions"] == {}
    # a preview: the state, the service and what was sent to it are as they were
    assert state_files(state) == files
    assert len(posts(receiver)) == sent and service_view(receiver) == held_by_service
    assert [r["action"] for r in reports(state)] == ["update", "test-update"]


def test_test_update_on_a_fresh_state_previews_the_whole_directory(stack):
    _, receiver, state = stack(nasty_directory())
    code, preview = call("operator_test_update")
    assert code == 200
    assert {r["address"] for r in preview["changes"]["addresses"]["added"]} == EXPECTED["addresses"]
    assert {r["id"]: r for r in preview["changes"]["groups"]["added"]}.keys() == EXPECTED["groups"].keys()
    assert {d: c["excluded"] for d, c in preview["datasets"].items()} == EXPECTED_EXCLUDED
    assert posts(receiver) == [] and receiver.records("users") == {}
    assert state_files(state) == {}


def test_a_failed_preview_answers_502_with_the_summary_and_no_credential(stack):
    stack(nasty_directory(), receiver_credential="someone:else-entirely")
    code, body = call("operator_test_update")
    assert code == 502
    assert body["ok"] is False and body["action"] == "test-update" and "401" in body["error"]


def test_a_secret_value_in_the_directory_is_masked_in_the_preview(stack):
    directory = nasty_directory()
    directory["groups"][0]["displayName"] = PASSWORD  # Sales, named like the credential's password
    stack(directory)
    code, preview = call("operator_test_update")  # call() asserts the password is nowhere in the body
    assert code == 200
    names = {g["id"]: g["name"] for g in preview["changes"]["groups"]["added"]}
    assert names[G(1)] == "***"


# --- the deletion guard and POST approve-deletions ---------------------------------------------------
def test_held_deletions_show_in_status_are_approved_and_the_next_update_applies_them(held):
    graph, receiver, state, keys = held
    code, info = call("operator_status")
    assert code == 200
    users_digest = held_digest({"users": keys})
    assert info["heldDeletions"]["users"] == {"count": len(keys), "approved": 0, "keys": keys, "digest": users_digest}
    assert info["heldCount"] == sum(h["count"] for h in info["heldDeletions"].values())
    assert {"update"} == {r["action"] for r in info["runs"]} and info["runs"][0]["ok"] is False
    assert "deletion guard" in info["runs"][0]["error"]

    # the preview shows them too, without failing
    code, preview = call("operator_test_update")
    assert code == 200 and sorted(preview["heldDeletions"]["users"]["keys"]) == keys

    # a GET approves nothing
    code, body = call("operator_approve_deletions", "GET")
    assert code == 405 and body["ok"] is False
    assert call("operator_status")[1]["heldDeletions"]["users"]["approved"] == 0

    # users first (JSON body), then everything else (no dataset)
    code, users = call("operator_approve_deletions", body={"dataset": "users", "expect": users_digest})
    assert code == 200 and users["ok"] is True
    assert users["approved"] == {"users": {"count": len(keys), "newlyApproved": len(keys), "keys": keys, "digest": users_digest}}
    status = call("operator_status")[1]["heldDeletions"]
    assert status["users"]["approved"] == len(keys)
    assert all(h["approved"] == 0 for d, h in status.items() if d != "users")
    code, rest = call("operator_approve_deletions", params={"expect": info["heldDigest"]})
    assert code == 200 and set(rest["approved"]) == set(status)

    receiver.clear_log()
    timer()  # now it succeeds
    assert set(keys).isdisjoint(receiver.records("users"))
    deleted = {k for p in posts(receiver) if p.path.endswith("/users/changes") for k in (p.body or {}).get("delete", [])}
    assert deleted == set(keys)
    code, info = call("operator_status")
    assert info["heldDeletions"] == {} and info["runs"][0]["action"] == "update" and info["runs"][0]["ok"] is True


@pytest.mark.parametrize(
    ("params", "body"),
    [
        ({"dataset": "contacts"}, None),
        ({"dataset": ""}, None),
        ({}, {"dataset": "Users"}),
        ({}, {"dataset": 3}),
        ({}, {"dataset": "users", "all": True}),
        ({}, ["users"]),
        ({}, b"dataset=users"),
        ({"dataset": "users"}, {"dataset": "addresses"}),
    ],
)
def test_approval_with_a_bad_dataset_is_refused_and_approves_nothing(held, params, body):
    _, _, state, keys = held
    files = state_files(state)
    code, answer = call("operator_approve_deletions", params=params, body=body)
    assert code == 400 and answer["parameter"] == "dataset" and answer["ok"] is False
    assert state_files(state) == files
    assert call("operator_status")[1]["heldDeletions"]["users"]["approved"] == 0


def test_approval_while_another_run_holds_the_lock_is_409_naming_the_holder(held):
    graph, receiver, state, keys = held
    lock = FileRunLock(state, "update by someone at the console")
    lock.acquire()
    try:
        files = state_files(state)
        code, body = call("operator_approve_deletions", params={"dataset": "users"})
        assert code == 409 and body["ok"] is False
        assert "another run holds the lock" in body["error"] and "update by someone at the console" in body["error"]
        assert state_files(state) == files
        # reading is never blocked by the lock
        code, info = call("operator_status")
        assert code == 200 and info["heldDeletions"]["users"]["approved"] == 0
        assert call("operator_test_update")[0] == 200
    finally:
        lock.release()
    assert call("operator_approve_deletions", params={"dataset": "users", "expect": held_digest({"users": keys})})[0] == 200


def test_approval_with_nothing_held_approves_nothing(stack):
    _, receiver, state = stack(nasty_directory())
    timer()
    files = state_files(state)
    code, body = call("operator_approve_deletions")
    assert code == 200 and body["ok"] is True and body["approved"] == {}
    assert state_files(state) == files


# --- settings -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_a_missing_setting_is_500_naming_it(monkeypatch, name):
    monkeypatch.setenv("GRAPH_AUTH", "none")
    monkeypatch.setenv("GRAPH_BASE_URL", "http://127.0.0.1:9/v1.0")
    monkeypatch.setenv("SYNC_API_CREDENTIAL", CREDENTIAL)
    monkeypatch.setenv("SYNC_STATE", "file:/tmp/never-used")
    monkeypatch.delenv("SYNC_API_URL", raising=False)
    code, body = call(name)
    assert code == 500 and body["ok"] is False
    assert body["setting"] == "SYNC_API_URL" and "SYNC_API_URL" in body["error"]


# --- the timer and the run lock -------------------------------------------------------------------
def test_the_timer_returns_quietly_when_another_run_holds_the_lock(stack, caplog):
    graph, receiver, state = stack(nasty_directory())
    timer()
    graph.upsert_user({"id": NEWCOMER, "mail": "newcomer@contoso.com", "proxyAddresses": []})
    lock = FileRunLock(state, "refresh by an operator")
    lock.acquire()
    try:
        files, sent = state_files(state), len(posts(receiver))
        with caplog.at_level(logging.WARNING, logger="sync"):
            assert timer() is None
        assert any("skipped" in r.getMessage() and "refresh by an operator" in r.getMessage() for r in caplog.records)
        assert state_files(state) == files and len(posts(receiver)) == sent
    finally:
        lock.release()
    timer()
    assert NEWCOMER in receiver.records("users")


def test_the_timer_still_raises_for_a_broken_state(stack):
    _, _, state = stack(nasty_directory())
    timer()
    (state / "state.db").write_bytes(b"not a database")
    with pytest.raises(function_app.SyncRunFailed, match="state"):
        timer()
