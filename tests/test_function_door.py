"""The Functions door under attack, called as the host calls it (the decorated functions from the
app's index, real ``func.HttpRequest``s): malformed requests to each endpoint, a preview whose
instance was recycled before it recorded its outcome, and run reports that a crash or a hand
left unreadable. No Graph read happens here: ``status`` and the request checks stop before one.

Facts the door relies on (the sources are cited in the docstrings of the code they shaped):
the host stops a language worker with ``Process.Kill`` (SIGKILL, no handler runs), and a thread
left running after a function returns is not an execution, so nothing keeps its instance alive."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from shared.config.state_settings import load_state_settings
from shared.previews import preview_lock, preview_records
from shared.storage.backend import open_storage
from tests.stack import CREDENTIAL, app_functions, base_env

FUNCTIONS = app_functions()
PASSWORD = CREDENTIAL.split(":", 1)[1]
ROUTES = {"operator_status": ("status", "GET"), "operator_test_update": ("test-update", "POST"),
          "operator_approve_deletions": ("approve-deletions", "POST")}


def call(name: str, method: str | None = None, *, params: dict[str, str] | None = None, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    route, declared = ROUTES[name]
    req = func.HttpRequest(method or declared, f"http://localhost:7071/api/{route}", params=params or {}, body=body)
    resp = FUNCTIONS[name].get_user_function()(req)
    assert isinstance(resp, func.HttpResponse) and resp.mimetype == "application/json"
    text = resp.get_body().decode("utf-8")
    assert PASSWORD not in text
    return resp.status_code, json.loads(text)


@pytest.fixture
def state(monkeypatch, tmp_path) -> Path:
    """The app's settings on ``file:`` state; Graph and the sync API point at a closed port
    (nothing here may reach them)."""
    where = tmp_path / "state"
    for k, v in base_env("http://127.0.0.1:9/v1.0", "http://127.0.0.1:9/v1", f"file:{where}").items():
        monkeypatch.setenv(k, v)
    return where


def storage_of(where: Path):
    return open_storage(load_state_settings({"SYNC_STATE": f"file:{where}"}))


# --- malformed requests ----------------------------------------------------------------------------
MALFORMED_BODIES = {
    "truncated": b'{"dataset": "us',
    "not UTF-8": b'{"dataset": "\xff\xfe"}',
    "nested arrays past the parser's depth": b"[" * 100_000 + b"]" * 100_000,
    "nested objects past the parser's depth": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "a list": b'["users"]',
    "null": b"null",
    "an unknown key": b'{"dataset": "users", "approveAll": true}',
    "a BOM then JSON": b'\xef\xbb\xbf{"dataset": "users"}',
}


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_a_malformed_approval_body_is_a_400_naming_the_body(state, body):
    code, doc = call("operator_approve_deletions", params={"expect": "3f9a0c1d2e4b5a69"}, body=body)
    assert code == 400 and doc["ok"] is False and doc["parameter"] == "dataset", doc
    assert "body" in doc["error"]
    assert not state.exists()  # refused before any state was opened


def test_a_huge_body_approves_nothing_and_is_not_echoed(state):
    body = b'{"dataset": "users", "expect": "' + b"f" * (8 * 1024 * 1024) + b'"}'
    code, doc = call("operator_approve_deletions", body=body)
    assert code == 500 and doc["ok"] is False and doc["error"].startswith("no state at "), doc  # no update ran here
    assert len(json.dumps(doc)) < 64 * 1024 and "f" * 100 not in json.dumps(doc)


@pytest.mark.parametrize("name", ROUTES)
@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "get", "POST", "GET"])
def test_a_wrong_method_is_a_405_naming_the_right_one(state, name, method):
    declared = ROUTES[name][1]
    if method.upper() == declared:
        return  # the right method is exercised elsewhere
    code, doc = call(name, method)
    assert code == 405 and doc == {"ok": False, "error": f"use {declared}"}
    assert not state.exists()


def test_unknown_query_parameters_are_ignored_like_the_function_key_and_known_ones_still_checked(state):
    code, doc = call("operator_status", params={"code": "the-function-key", "verbose": "1"})
    assert code == 200 and doc["runs"] == [] and "the-function-key" not in json.dumps(doc)
    code, doc = call("operator_status", params={"code": "k", "limit": "0"})
    assert code == 400 and doc["parameter"] == "limit"


# --- a preview whose instance was recycled ---------------------------------------------------------
def _orphan(where: Path, preview_id: str = "00000000000000ab") -> dict[str, Any]:
    """What a preview leaves when its worker is killed (SIGKILL) after it started: its
    ``running`` record, and a lock nobody holds any more (the kernel dropped the flock)."""
    storage = storage_of(where)
    holder = preview_lock(storage, f"test-update {preview_id} by pid 1 on host gone")
    holder.acquire()
    record = {"action": "test-update", "id": preview_id, "state": "running", "startedAt": holder.since}
    preview_records(storage).write(record)
    holder.release()
    return record


def test_status_says_a_preview_whose_instance_stopped_failed_not_running_forever(state):
    orphan = _orphan(state)
    code, doc = call("operator_status")
    assert code == 200, doc
    block = doc["preview"]
    assert block["id"] == orphan["id"] and block["startedAt"] == orphan["startedAt"]
    assert block["state"] == "failed", block
    assert "stopped before it recorded its outcome" in block["error"] and "POST test-update" in block["error"]
    lock = preview_lock(storage_of(state), "test-update 00000000000000ac by pid 2 on host here")
    lock.acquire()  # and the next preview may start at once: nothing holds the lock
    lock.release()


def test_on_blob_state_a_preview_whose_lease_is_gone_shows_failed_and_a_leased_one_running(state, monkeypatch, azurite):
    """Flex Consumption's case: the preview's lock is a lease on ``preview/run.lock``. A live
    preview's lease is renewed (running); a killed instance's lease expires within 60 s
    (broken here, as it would be after expiring): then status says failed."""
    from azure.storage.blob import BlobServiceClient

    from shared.config.state_settings import load_state_settings as settings_of

    monkeypatch.setenv("SYNC_STATE", "blob:orphan-preview")
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    storage = open_storage(settings_of({"SYNC_STATE": "blob:orphan-preview", "AzureWebJobsStorage": azurite.connection_string}))
    holder = preview_lock(storage, "test-update 00000000000000b1 by pid 1 on host elsewhere")
    holder.acquire()
    preview_records(storage).write({"action": "test-update", "id": "00000000000000b1", "state": "running", "startedAt": holder.since})
    code, doc = call("operator_status")
    assert code == 200 and doc["preview"]["state"] == "running" and "error" not in doc["preview"], doc
    holder._stop_renewal()  # the instance is gone: nobody renews, nobody releases
    blob = BlobServiceClient.from_connection_string(azurite.connection_string).get_blob_client("orphan-preview", "preview/run.lock")
    from azure.storage.blob import BlobLeaseClient

    BlobLeaseClient(blob).break_lease(lease_break_period=0)
    code, doc = call("operator_status")
    assert code == 200 and doc["preview"]["id"] == "00000000000000b1" and doc["preview"]["state"] == "failed", doc
    assert "stopped before it recorded its outcome" in doc["preview"]["error"]
    again = preview_lock(storage, "test-update 00000000000000b2 by pid 2 on host here")
    again.acquire()  # the next preview may start
    again.release()


def test_status_still_says_running_while_the_preview_holds_its_lock(state):
    storage = storage_of(state)
    holder = preview_lock(storage, "test-update 00000000000000cd by pid 1 on host elsewhere")
    holder.acquire()
    try:
        preview_records(storage).write({"action": "test-update", "id": "00000000000000cd", "state": "running", "startedAt": holder.since})
        code, doc = call("operator_status")
        assert code == 200 and doc["preview"]["state"] == "running" and "error" not in doc["preview"], doc
        code, refused = call("operator_test_update")
        assert code == 409 and refused["running"]["id"] == "00000000000000cd"
    finally:
        holder.release()


def test_a_lock_the_status_probe_holds_for_an_instant_is_taken_not_refused(state, monkeypatch):
    """The probe that tells a dead preview from a live one (a shared ``flock`` for an instant,
    no name written) must not look like a holder: a POST test-update meeting it is not told
    that "an unnamed run" holds the lock."""
    import fcntl
    import os
    from types import SimpleNamespace

    import shared.storage.lock as lock_module

    storage = storage_of(state)
    lock = preview_lock(storage, "test-update 00000000000000ef by pid 1 on host here")
    lock.acquire()
    lock.release()  # the lock file exists and names nobody, as after any preview
    probe = [os.open(lock.path, os.O_RDONLY)]
    fcntl.flock(probe[0], fcntl.LOCK_SH | fcntl.LOCK_NB)  # the probe's instant, caught as it happens

    def sleep(seconds: float) -> None:  # the starter waits for a name; meanwhile the probe lets go
        if probe:
            os.close(probe.pop())

    monkeypatch.setattr(lock_module, "time", SimpleNamespace(sleep=sleep))
    lock.acquire()  # raised RunLockedError('"an unnamed run"') before the lock retried a nameless holder
    assert lock.held
    lock.release()
    assert probe == []


# --- run reports a crash or a hand left unreadable --------------------------------------------------
UNREADABLE_REPORTS = {
    "half-written": b'{"action": "update", "ok": tr',
    "empty": b"",
    "not UTF-8": b"\xff\xfe\x00",
    "nested past the parser's depth": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "an array": b"[1, 2]",
}


@pytest.mark.parametrize("data", UNREADABLE_REPORTS.values(), ids=UNREADABLE_REPORTS.keys())
def test_status_on_a_cold_instance_skips_an_unreadable_report_and_shows_the_others(state, data):
    reports = storage_of(state).reports()
    reports.write({"action": "update", "ok": True})
    (state / "runs").mkdir(parents=True, exist_ok=True)
    (state / "runs" / "29991231T235959999999Z-update-0badbeef.json").write_bytes(data)  # the newest name
    code, doc = call("operator_status")
    assert code == 200, doc
    assert [r["action"] for r in doc["runs"]] == ["update"]


@pytest.mark.parametrize("data", UNREADABLE_REPORTS.values(), ids=UNREADABLE_REPORTS.keys())
def test_status_skips_an_unreadable_preview_record(state, data):
    records = preview_records(storage_of(state))
    records.write({"action": "test-update", "id": "00000000000000aa", "state": "finished", "startedAt": "2026-01-01T00:00:00+00:00"})
    (state / "preview" / "runs" / "29991231T235959999999Z-test-update-0badbeef.json").write_bytes(data)
    code, doc = call("operator_status")
    assert code == 200, doc
    assert doc["preview"]["id"] == "00000000000000aa" and doc["preview"]["state"] == "finished"


# --- JSON nested past the parser's depth -------------------------------------------------------------
@pytest.mark.parametrize("depth", [1, 1023, 1024, 1025, 3000, 100_000])
@pytest.mark.parametrize("shape", ["array", "object"])
def test_fastjson_reads_deep_json_or_raises_value_error_never_recursion_error(depth, shape):
    """``shared/common/fastjson.loads`` is what Graph pages and error bodies go through: its
    callers catch ``ValueError`` (a malformed page is a clear error, not a crash)."""
    from shared.common import fastjson

    text = ("[" * depth + "]" * depth) if shape == "array" else ('{"a":' * depth + "1" + "}" * depth)
    try:
        doc = fastjson.loads(text)
    except ValueError as exc:
        assert depth > 1024 and "deep" in str(exc)
    else:
        for _ in range(depth - (shape == "array")):
            doc = doc[0] if shape == "array" else doc["a"]
        assert doc == ([] if shape == "array" else 1)


# --- what leaves the door when something unexpected breaks ------------------------------------------
CANARY = "client_secret=hunter2-canary-value"


def _as_the_worker_reports(exc: BaseException) -> str:
    """What the Python worker sends the host for a function that raised (its
    ``_serialize_exception``: ``f"{type}: {exc}"`` and the formatted frames), outside Python
    logging, so no log redaction ever sees it."""
    import traceback

    return f"{type(exc).__name__}: {exc}\n" + "".join(traceback.extract_tb(exc.__traceback__).format())


def _broken(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(f"token request for {CANARY} failed")  # an SDK's text echoing a request


def test_an_unexpected_failure_in_the_timer_fails_the_execution_without_its_text(state, monkeypatch, caplog):
    from azure.functions.timer import TimerRequest

    import function_app

    monkeypatch.setattr(function_app, "perform_blocking", _broken)
    with pytest.raises(function_app.SyncRunFailed) as raised:
        FUNCTIONS["sync_timer"].get_user_function()(TimerRequest(past_due=False))
    reported = _as_the_worker_reports(raised.value)
    assert "RuntimeError" in reported and "hunter2" not in reported, reported
    assert "hunter2" not in caplog.text


@pytest.mark.parametrize("name", ROUTES)
def test_an_unexpected_failure_in_an_endpoint_is_a_500_json_answer_without_its_text(state, monkeypatch, caplog, name):
    import operator_endpoints

    monkeypatch.setattr(operator_endpoints, "perform_blocking", _broken)
    code, doc = call(name)
    assert code == 500 and doc["ok"] is False and "RuntimeError" in doc["error"], doc
    assert "hunter2" not in json.dumps(doc) and "hunter2" not in caplog.text


# --- a run cancelled mid-send ------------------------------------------------------------------------
def _timer_run_on_a_worker_thread() -> BaseException | None:
    """The timer's user function on a thread of its own, as the worker runs a sync function
    (its thread pool); what it raised, if anything."""
    import threading

    from azure.functions.timer import TimerRequest

    raised: list[BaseException] = []

    def run() -> None:
        try:
            FUNCTIONS["sync_timer"].get_user_function()(TimerRequest(past_due=False))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            raised.append(exc)

    thread = threading.Thread(target=run, name="worker-pool")
    thread.start()
    thread.join(120)
    assert not thread.is_alive()
    return raised[0] if raised else None


def test_a_timer_run_cancelled_at_each_send_leaves_the_state_consistent_and_the_next_run_finishes(monkeypatch, tmp_path):
    """SIGTERM's cancel (``shared/common/shutdown.cancel_all``, what the handler calls) lands
    while the service applies the k-th write, for every k: the run fails as cancelled, writes
    its report and gives the lock back; the next timer run brings the service to the directory,
    and the one after sends nothing."""
    import function_app
    from devstack.graph_emulator import GraphEmulator
    from devstack.sync_receiver import SyncReceiver
    from shared.common import shutdown
    from tests.stack import DOMAINS, EXPECTED, nasty_directory, posts, service_view

    with GraphEmulator(nasty_directory()) as graph, SyncReceiver(domains=DOMAINS, credential=CREDENTIAL) as probe:
        for k, v in base_env(graph.base_url, probe.base_url, f"file:{tmp_path / 'probe'}").items():
            monkeypatch.setenv(k, v)
        assert _timer_run_on_a_worker_thread() is None
        writes = len(posts(probe))
    assert writes >= 2
    for k in range(1, writes + 1):
        state = tmp_path / f"state-{k}"
        with GraphEmulator(nasty_directory()) as graph, SyncReceiver(domains=DOMAINS, credential=CREDENTIAL) as receiver:
            for name, value in base_env(graph.base_url, receiver.base_url, f"file:{state}").items():
                monkeypatch.setenv(name, value)
            original, seen = receiver.handle, []

            def handle(request, original=original, seen=seen, k=k):
                if request.method != "GET":
                    seen.append(request.method)
                    if len(seen) == k:
                        assert shutdown.cancel_all() == 1  # the run in flight, and only it
                return original(request)

            monkeypatch.setattr(receiver, "handle", handle)
            failed = _timer_run_on_a_worker_thread()
            assert isinstance(failed, function_app.SyncRunFailed) and "cancelled" in str(failed), (k, failed)
            report = json.loads(sorted((state / "runs").glob("*.json"))[-1].read_text())
            assert report["ok"] is False and "cancelled" in report["error"]
            monkeypatch.setattr(receiver, "handle", original)
            assert _timer_run_on_a_worker_thread() is None, k  # the lock was given back; the next run finishes the job
            assert service_view(receiver) == EXPECTED, k
            before = len(posts(receiver))
            assert _timer_run_on_a_worker_thread() is None
            assert len(posts(receiver)) == before, k  # nothing left to send: the state agrees with the service


def test_a_preview_started_while_the_timer_sends_runs_beside_it_and_both_finish(monkeypatch, tmp_path):
    """POST test-update while the timer's update is writing: 202 at once (the preview has its
    own lock and reads a snapshot); the update finishes the service, the preview finishes too,
    and what it shows to add is part of what the update sent."""
    import threading

    from devstack.graph_emulator import GraphEmulator
    from devstack.sync_receiver import SyncReceiver
    from tests.stack import DOMAINS, EXPECTED, nasty_directory, posts, service_view

    state = tmp_path / "state"
    with GraphEmulator(nasty_directory()) as graph, SyncReceiver(domains=DOMAINS, credential=CREDENTIAL) as receiver:
        for name, value in base_env(graph.base_url, receiver.base_url, f"file:{state}").items():
            monkeypatch.setenv(name, value)
        original, answers = receiver.handle, []

        def handle(request):
            if request.method != "GET" and not answers:
                answers.append(call("operator_test_update"))
            return original(request)

        monkeypatch.setattr(receiver, "handle", handle)
        assert _timer_run_on_a_worker_thread() is None
        code, started = answers[0]
        assert code == 202, started
        for thread in [t for t in threading.enumerate() if t.name.startswith("preview ")]:
            thread.join(60)
        assert service_view(receiver) == EXPECTED
        sent = len(posts(receiver))
        code, doc = call("operator_status", params={"preview": "full"})
        block = doc["preview"]
        assert block["id"] == started["preview"]["id"] and block["state"] == "finished", block
        added = {r["address"] for r in block["result"]["changes"]["addresses"]["added"]}
        assert added <= EXPECTED["addresses"]
        assert len(posts(receiver)) == sent  # the preview sent nothing


# --- functionTimeout ---------------------------------------------------------------------------------
def test_a_timer_run_that_would_outlast_function_timeout_ends_itself_first_with_its_report(monkeypatch, tmp_path):
    """Past ``functionTimeout`` the host restarts the worker (a kill: no report, no summary
    record, the lease left to expire). The timer ends its run before that, as a cancel does:
    it fails naming the time limit, leaves its report and gives the lock back. The limit is
    read as the host reads it: the app setting ``AzureFunctionsJobHost__functionTimeout``
    over host.json."""
    import time

    import function_app
    from devstack.graph_emulator import GraphEmulator
    from devstack.sync_receiver import SyncReceiver
    from shared.storage.lock import FileRunLock
    from tests.stack import DOMAINS, nasty_directory, posts

    state = tmp_path / "state"
    with GraphEmulator(nasty_directory()) as graph, SyncReceiver(domains=DOMAINS, credential=CREDENTIAL) as receiver:
        for name, value in base_env(graph.base_url, receiver.base_url, f"file:{state}").items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AzureFunctionsJobHost__functionTimeout", "00:00:02")
        graph.latency = 3600  # the read would never end by itself
        try:
            started = time.monotonic()
            failed = _timer_run_on_a_worker_thread()
            spent = time.monotonic() - started
        finally:
            graph.latency = 0.0
        assert isinstance(failed, function_app.SyncRunFailed) and "functionTimeout" in str(failed), failed
        assert 1.8 <= spent < 3.0  # its own limit: functionTimeout (2 s) less a tenth, 1.8 s
        report = json.loads(sorted((state / "runs").glob("*.json"))[-1].read_text())
        assert report["ok"] is False and "functionTimeout" in report["error"], report["error"]
        assert posts(receiver) == []
        lock = FileRunLock(state, "the next run")
        lock.acquire()  # given back at once, not left to a dead process
        lock.release()


@pytest.mark.parametrize(("setting", "host_json", "limit"), [
    (None, {"functionTimeout": "00:30:00"}, 30 * 60 - 120),
    ("01:00:00", {"functionTimeout": "00:30:00"}, 60 * 60 - 120),
    (None, {"functionTimeout": "1.00:00:00"}, 24 * 3600 - 120),
    (None, {"functionTimeout": "00:05:00"}, 300 - 30),
    (None, {"functionTimeout": "00:00:10"}, 9.0),
    (None, {}, 30 * 60 - 120),  # Flex Consumption's default
    (None, {"functionTimeout": "-1"}, None),  # unbounded
    (" -1 ", {"functionTimeout": "00:30:00"}, None),
    (None, None, 30 * 60 - 120),  # no host.json to read: the plan's default
])
def test_the_time_limit_follows_function_timeout_less_a_margin(tmp_path, setting, host_json, limit):
    from shared.config.host import run_time_limit

    path = tmp_path / "host.json"
    if host_json is not None:
        path.write_text(json.dumps({"version": "2.0", **host_json}))
    env = {} if setting is None else {"AzureFunctionsJobHost__functionTimeout": setting}
    assert run_time_limit(env, path) == limit


@pytest.mark.parametrize("bad", ["soon", "00:61:00", "1:2:3:4:5", "", "00:00:00", "{", "[1]"])
def test_an_unreadable_function_timeout_is_reported_and_the_default_kept(tmp_path, caplog, bad):
    from shared.config.host import run_time_limit

    path = tmp_path / "host.json"
    path.write_text(bad if bad in ("{", "[1]") else json.dumps({"functionTimeout": bad}))
    assert run_time_limit({}, path) == 30 * 60 - 120
    assert "functionTimeout" in caplog.text


@pytest.mark.parametrize("principal", [b"not base64 at all!", b'{"claims": 5}', b"[" * 100_000 + b"]" * 100_000,
                                       b'{"claims": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"])
def test_with_app_service_authentication_an_unreadable_principal_is_a_403_not_a_crash(state, monkeypatch, principal):
    """``X-MS-CLIENT-PRINCIPAL`` (base64 JSON, set by App Service authentication) that cannot
    be read names no principal: 403, as when none came."""
    import base64

    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")
    raw = principal.decode() if principal.startswith(b"not") else base64.b64encode(principal).decode()
    req = func.HttpRequest("POST", "http://localhost:7071/api/approve-deletions", params={"expect": "3f9a0c1d2e4b5a69"},
                           headers={"X-MS-CLIENT-PRINCIPAL": raw}, body=b"")
    resp = FUNCTIONS["operator_approve_deletions"].get_user_function()(req)
    doc = json.loads(resp.get_body())
    assert resp.status_code == 403 and "signed-in Entra principal" in doc["error"], doc


# --- a timer run skipped for a held lock is not a failed run --------------------------------------------
def _summary_records(caplog) -> list[Any]:
    return [r for r in caplog.records if r.getMessage().startswith("SyncRunSummary ")]


def test_a_timer_run_skipped_for_a_held_lock_is_marked_skipped_and_the_failure_alert_leaves_it_out(monkeypatch, tmp_path, caplog):
    """The timer treats a run another holds the lock for (the CLI's first full sync, say, which
    docs/deployment.md advises above 1,000,000 users) as not a failure; its summary record says
    ``skipped``, and the failed-run alert, which counts summary records with ``ok`` false, leaves
    those out. A run that fails is not skipped."""
    import logging
    import re

    import function_app
    from devstack.graph_emulator import GraphEmulator
    from devstack.sync_receiver import SyncReceiver
    from shared.storage.lock import FileRunLock
    from tests.stack import DOMAINS, ROOT, nasty_directory

    state = tmp_path / "state"
    with GraphEmulator(nasty_directory()) as graph, SyncReceiver(domains=DOMAINS, credential="someone:else") as receiver:
        for name, value in base_env(graph.base_url, receiver.base_url, f"file:{state}").items():
            monkeypatch.setenv(name, value)
        holder = FileRunLock(state, "update by an operator's command line")
        holder.acquire()
        try:
            with caplog.at_level(logging.INFO):
                assert _timer_run_on_a_worker_thread() is None
        finally:
            holder.release()
        (skipped,) = _summary_records(caplog)
        assert skipped.ok is False and skipped.skipped is True and skipped.host == "functions" and skipped.action == "update"
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert isinstance(_timer_run_on_a_worker_thread(), function_app.SyncRunFailed)  # the receiver refuses the credential
        (failed,) = _summary_records(caplog)
        assert failed.ok is False and failed.skipped is False

    bicep = (ROOT / "infra" / "app" / "alert.bicep").read_text(encoding="utf-8")
    portal = (ROOT / "infra" / "portal" / "azuredeploy.json").read_text(encoding="utf-8")
    for text, quote in ((bicep, "\\'"), (portal, "''")):
        query = re.search(r"failedRunsQuery\W+(.*)", text)[1]
        assert f"not(tobool(customDimensions.ok)) and tostring(customDimensions.skipped) !~ {quote}true{quote}" in query, query[:400]
