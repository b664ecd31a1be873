"""The operator endpoints (GET status, POST test-update, POST approve-deletions) and the timer's
handling of a held run lock, called as the Functions host calls them: the decorated functions
from the app's index, with real HttpRequests, against the Graph emulator and the strict sync API
receiver on loopback, with ``file:`` state (and ``blob:`` on Azurite for the preview's lock).

``POST test-update`` starts the preview in the background (202) and its result appears in
``GET status`` (``preview``); ``preview()`` below does both, as an operator would."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
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
    """Everything in the state directory but the run reports and the previews' lock and records."""
    return {str(p.relative_to(state)): p.read_bytes() for p in sorted(state.rglob("*"))
            if p.is_file() and p.parts[len(state.parts)] not in ("runs", "preview")}


def start_preview() -> dict[str, Any]:
    """POST test-update: 202 at once, naming the preview and where its result appears."""
    code, body = call("operator_test_update")
    assert code == 202, body
    assert body["ok"] is True and body["action"] == "test-update" and body["resultIn"] == "GET /api/status"
    assert re.fullmatch(r"[0-9a-f]{16}", body["preview"]["id"]) and body["preview"]["state"] == "running"
    dt.datetime.fromisoformat(body["preview"]["startedAt"])
    return body["preview"]


def preview_ended(preview_id: str, *, full: bool = True, within: float = 120.0) -> dict[str, Any]:
    """GET status until the preview ``preview_id`` is no longer running; its ``preview`` block."""
    deadline = time.monotonic() + within
    while True:
        code, info = call("operator_status", params={"preview": "full"} if full else {})
        assert code == 200, info
        block = info.get("preview") or {}
        assert block.get("id") == preview_id, block  # the newest preview is the one started
        if block["state"] != "running":
            return block
        assert time.monotonic() < deadline, f"the preview {preview_id} still runs after {within} s"
        time.sleep(0.05)


def preview() -> dict[str, Any]:
    """Start a preview and wait for it: its run summary (what POST test-update used to answer)."""
    started = start_preview()
    block = preview_ended(started["id"])
    assert block["state"] in ("finished", "failed") and block["startedAt"] == started["startedAt"]
    return block["result"]


def reports(state: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((state / "runs").glob("*.json"))]


# --- the stack ------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _no_preview_outlives_its_test():
    """Every preview a test starts has ended when it ends (a preview thread left running would
    reach into the next test's stack and its SIGTERM registry)."""
    yield
    import threading

    for thread in [t for t in threading.enumerate() if t.name.startswith("preview ")]:
        thread.join(60)
        assert not thread.is_alive(), f"{thread.name} still runs after its test"


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
    assert preview()["ok"] is True
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

    result = preview()

    assert result["ok"] is True and result["action"] == "test-update"
    users = result["changes"]["users"]
    assert users["added"] == [{"id": NEWCOMER, "address": "newcomer@contoso.com", "groupIds": []}]
    assert users["removed"] == [next(iter(EXPECTED["users"]))]
    assert result["changes"]["addresses"]["added"] == [{"address": "newcomer@contoso.com"}]
    assert {"alice@contoso.com", "al.ice@fabrikam.com"} <= set(result["changes"]["addresses"]["removed"])
    assert result["datasets"]["users"] == {"added": 1, "removed": 1, "rejected": 0, "excluded": EXPECTED_EXCLUDED["users"]}
    assert len([e for e in result["exclusions"] if e["dataset"] == "users"]) == EXPECTED_EXCLUDED["users"]
    assert result["heldDeletions"] == {}
    # a preview: the state, the service and what was sent to it are as they were
    assert state_files(state) == files
    assert len(posts(receiver)) == sent and service_view(receiver) == held_by_service
    assert [r["action"] for r in reports(state)] == ["update", "test-update"]


def test_test_update_on_a_fresh_state_previews_the_whole_directory(stack):
    _, receiver, state = stack(nasty_directory())
    result = preview()
    assert result["ok"] is True
    assert {r["address"] for r in result["changes"]["addresses"]["added"]} == EXPECTED["addresses"]
    assert {r["id"]: r for r in result["changes"]["groups"]["added"]}.keys() == EXPECTED["groups"].keys()
    assert {d: c["excluded"] for d, c in result["datasets"].items()} == EXPECTED_EXCLUDED
    assert posts(receiver) == [] and receiver.records("users") == {}
    assert state_files(state) == {}


def test_a_failed_preview_shows_failed_in_status_with_the_summary_and_no_credential(stack):
    stack(nasty_directory(), receiver_credential="someone:else-entirely")
    started = start_preview()
    block = preview_ended(started["id"])  # call() asserts the credential is nowhere in the body
    assert block["state"] == "failed" and "401" in block["error"]
    body = block["result"]
    assert body["ok"] is False and body["action"] == "test-update" and "401" in body["error"]
    assert dt.datetime.fromisoformat(block["endedAt"]) >= dt.datetime.fromisoformat(block["startedAt"])
    again = start_preview()  # the failed preview gave its lock back
    assert again["id"] != started["id"] and preview_ended(again["id"])["state"] == "failed"


def test_a_secret_value_in_the_directory_is_masked_in_the_preview(stack):
    directory = nasty_directory()
    directory["groups"][0]["displayName"] = PASSWORD  # Sales, named like the credential's password
    stack(directory)
    result = preview()  # call() asserts the password is nowhere in the body
    assert result["ok"] is True
    names = {g["id"]: g["name"] for g in result["changes"]["groups"]["added"]}
    assert names[G(1)] == "***"


def test_test_update_answers_202_at_once_a_second_post_gets_409_and_status_shows_it_running_then_its_result(stack):
    graph, receiver, state = stack(nasty_directory())
    graph.latency = 3600  # the preview waits in its Graph read until the test lowers the latency
    try:
        started = start_preview()  # answered while the preview is still reading
        code, info = call("operator_status")
        assert code == 200
        assert info["preview"] == {"action": "test-update", "id": started["id"], "state": "running", "startedAt": started["startedAt"]}

        code, body = call("operator_test_update")
        assert code == 409 and body["ok"] is False
        assert body["running"] == {"id": started["id"], "startedAt": started["startedAt"]}
        assert started["id"] in body["error"] and body["resultIn"] == "GET /api/status"
        assert call("operator_status")[1]["preview"]["id"] == started["id"]  # the refused POST started nothing
    finally:
        graph.latency = 0.0
    block = preview_ended(started["id"])
    assert block["state"] == "finished" and "error" not in block
    assert block["startedAt"] == started["startedAt"]
    assert dt.datetime.fromisoformat(block["endedAt"]) >= dt.datetime.fromisoformat(block["startedAt"])
    assert {r["address"] for r in block["result"]["changes"]["addresses"]["added"]} == EXPECTED["addresses"]
    assert posts(receiver) == []
    again = start_preview()  # it ended: the next POST starts another
    assert again["id"] != started["id"] and preview_ended(again["id"])["state"] == "finished"


def test_status_shows_the_preview_counts_and_its_record_lists_only_when_asked(stack, capsys):
    stack(nasty_directory())
    started = start_preview()
    full = preview_ended(started["id"], full=True)
    code, info = call("operator_status")
    assert code == 200
    compact = info["preview"]
    assert compact["state"] == "finished" and compact["result"]["datasets"] == full["result"]["datasets"]
    assert "changes" not in compact["result"] and "exclusions" not in compact["result"]
    assert "alice@contoso.com" not in json.dumps(info)  # no directory data in the status by default
    assert "alice@contoso.com" in json.dumps(full)
    code, body = call("operator_status", params={"preview": "yes"})
    assert code == 400 and body["parameter"] == "preview"
    # the command line's status shows it too (the same engine action)
    from tests import launcher

    capsys.readouterr()
    assert launcher.main(["status"]) == 0
    assert f"newest preview (POST test-update) {started['id']}: finished, started {started['startedAt']}, ended " in capsys.readouterr().out
    assert launcher.main(["status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["preview"]["id"] == started["id"] and doc["preview"]["result"]["changes"] == full["result"]["changes"]


def test_a_preview_running_elsewhere_gets_409_and_never_blocks_the_timer(stack):
    """Another instance's preview holds the previews' lock (beside the state's run lock): a
    POST is refused naming it, and the timer's update runs all the same."""
    graph, receiver, state = stack(nasty_directory())
    other = FileRunLock(state / "preview", "test-update 0123456789abcdef by pid 7 on host web-2")
    other.acquire()
    try:
        code, body = call("operator_test_update")
        assert code == 409 and body["running"] == {"id": "0123456789abcdef", "startedAt": other.since}
        timer()  # the update takes the state's own lock
        assert service_view(receiver) == EXPECTED
    finally:
        other.release()
    assert preview()["ok"] is True


def test_a_preview_on_blob_state_runs_once_at_a_time_with_its_record_in_the_container(stack, monkeypatch, azurite):
    import threading

    from azure.storage.blob import BlobServiceClient

    graph, receiver, _ = stack(nasty_directory())
    monkeypatch.setenv("SYNC_STATE", "blob:preview-state")
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    built_on: list[str] = []  # the thread that built each blob service client
    original = BlobServiceClient.__init__

    def counting(self, *args, **kwargs):
        built_on.append(threading.current_thread().name)
        original(self, *args, **kwargs)

    monkeypatch.setattr(BlobServiceClient, "__init__", counting)
    graph.latency = 3600
    try:
        started = start_preview()
        code, body = call("operator_test_update")
        assert code == 409 and body["running"] == {"id": started["id"], "startedAt": started["startedAt"]}
    finally:
        graph.latency = 0.0
    block = preview_ended(started["id"])
    assert block["state"] == "finished"
    assert {r["address"] for r in block["result"]["changes"]["addresses"]["added"]} == EXPECTED["addresses"]
    # the preview's run used the client its POST built for the previews' lock and records
    assert built_on and not [name for name in built_on if name.startswith("preview ")]
    names = [b.name for b in BlobServiceClient.from_connection_string(azurite.connection_string)
             .get_container_client("preview-state").list_blobs()]
    assert "preview/run.lock" in names and sum(n.startswith("preview/runs/") for n in names) == 2
    assert not any(n.startswith("runs/") for n in names)  # a dry run over no state leaves no run report


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
    result = preview()
    assert result["ok"] is True and sorted(result["heldDeletions"]["users"]["keys"]) == keys

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
        assert preview()["ok"] is True
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


# --- the HTTP status of each failure ----------------------------------------------------------------
def _http_status_cases() -> list[tuple[Exception, int]]:
    from shared.common import errors
    from shared.plan.approval import ApprovalForbiddenError, ApprovalMismatchError
    from shared.previews import PreviewRunningError
    from shared.storage.lock import RunLockedError

    return [
        (RunLockedError("file:/x/run.lock", "update pid 1", None), 409),
        (PreviewRunningError("0123456789abcdef", "2026-01-01T00:00:00Z", "preview"), 409),
        (ApprovalMismatchError("the held deletions are not the set that was reviewed"), 409),
        (ApprovalForbiddenError("no principal"), 403),
        (errors.SettingsError("--expect", "approving needs the digest"), 400),
        (errors.SettingsError("SYNC_SCOPE_GROUPS", "names no group"), 500),
        (errors.GraphError("page failed"), 502),
        (errors.IncompleteReadError("page failed"), 502),
        (errors.SecretError("vault"), 502),
        (errors.CredentialExpiredError("expired"), 502),
        (errors.SyncApiUnavailableError("503"), 502),
        (errors.SyncApiRequestError("400", 400), 502),
        (errors.StateError("unreadable"), 500),
        (errors.StateConflictError("written meanwhile"), 500),
        (errors.DeletionsHeldError("held"), 500),
        (errors.RunCancelledError("SIGTERM"), 500),
        (errors.ExchangeError("exo"), 500),
        (errors.SyncError("anything"), 500),
    ]


def test_each_failure_carries_the_http_status_the_endpoints_answer_with():
    """The SyncError tree's ``http_status`` (shared/common/errors.py): 409 for a lock or preview
    held elsewhere and for a held set that is not the one reviewed, 400 for the caller's own
    input, 502 when a service the sync depends on failed, 500 otherwise."""
    got = [(type(exc).__name__, exc.http_status) for exc, _ in _http_status_cases()]
    assert got == [(type(exc).__name__, status) for exc, status in _http_status_cases()]


def test_the_preview_lists_group_names_exactly_as_update_sends_them(stack):
    # docs/sync-rules.md, "Actions": test-update reports what update would send. Right-to-left
    # names carry marks (U+200F), copied text zero-width spaces; a name is its displayName as it is.
    names = ["\u05de\u05db\u05d9\u05e8\u05d5\u05ea\u200f", "Team\u200bA", "line\u2028sep", "Ops\tNight"]
    groups = [{"id": f"20000000-0000-4000-8000-{n:012d}", "displayName": name, "mail": None, "proxyAddresses": [], "members": []}
              for n, name in enumerate(names, start=1)]
    _, receiver, state = stack({"users": [], "groups": groups, "contacts": []})
    result = preview()
    assert {r["id"]: r["name"] for r in result["changes"]["groups"]["added"]} == {g["id"]: g["displayName"] for g in groups}
    # the preview's record, as status lists it and as it is stored, parses to the same names
    assert [r["changes"]["groups"]["added"] for r in reports(state) if r["action"] == "test-update"] in ([], [result["changes"]["groups"]["added"]])
    timer()
    assert {k: v["name"] for k, v in receiver.records("groups").items()} == {g["id"]: g["displayName"] for g in groups}
