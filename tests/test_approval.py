"""Approvals bound to a review (shared/plan/approval.py): status and test-update show the digest and
the count of the held set; approve-deletions requires that digest and refuses (exit status 5,
HTTP 409) when the held set changed since; the approver is recorded in the run report and the
log line; with App Service authentication on, approving needs the Deletions.Approve app role.

Driven as an operator drives it: the HTTP endpoints called as the Functions host calls them and
the CLI in process, against the Graph emulator and the strict sync API receiver on loopback."""

# ruff: noqa: F811 - the operator-endpoint fixtures are imported by name and requested as arguments
from __future__ import annotations

import base64
import getpass
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.plan.approval import APPROVER_ROLE, held_digest
from tests import launcher
from tests.stack import CREDENTIAL
from tests.test_operator_endpoints import ENDPOINTS, FUNCTIONS, held, preview, stack, state_files, tenant, timer  # noqa: F401 - fixtures below  # noqa: F401 - pytest fixtures

PASSWORD = CREDENTIAL.split(":", 1)[1]


def call(name: str, *, params: dict[str, str] | None = None, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    route, method = ENDPOINTS[name]
    raw = b"" if body is None else json.dumps(body).encode()
    req = func.HttpRequest(method, f"http://localhost:7071/api/{route}", params=params or {}, body=raw, headers=headers or {})
    resp = FUNCTIONS[name].get_user_function()(req)
    text = resp.get_body().decode("utf-8")
    assert CREDENTIAL not in text and PASSWORD not in text
    return resp.status_code, json.loads(text)


def reports(state: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((state / "runs").glob("*.json"))]


def approved_count(dataset: str = "users") -> int:
    return call("operator_status")[1]["heldDeletions"][dataset]["approved"]


def principal(name: str, oid: str, roles: list[str]) -> str:
    doc = {"auth_typ": "aad", "name_typ": "name", "role_typ": "roles",
           "claims": [{"typ": "name", "val": name}, {"typ": "http://schemas.microsoft.com/identity/claims/objectidentifier", "val": oid}]
           + [{"typ": "roles", "val": r} for r in roles]}
    return base64.b64encode(json.dumps(doc).encode()).decode()


# --- the digest -------------------------------------------------------------------------------------
keys = st.lists(st.text(min_size=1, max_size=12), max_size=8, unique=True)


@given(st.dictionaries(st.sampled_from(["addresses", "groups", "users"]), keys))
def test_the_digest_depends_on_the_set_only_not_on_order_or_empty_datasets(held_set):
    shuffled = {d: list(reversed(v)) for d, v in reversed(list(held_set.items()))}
    assert held_digest(shuffled) == held_digest(held_set)
    assert held_digest({**held_set, "contacts": []}) == held_digest(held_set)


@given(st.dictionaries(st.sampled_from(["addresses", "groups", "users"]), keys), st.sampled_from(["addresses", "groups", "users"]), st.text(min_size=1, max_size=12))
def test_one_more_held_key_changes_the_digest(held_set, dataset, extra):
    if extra in held_set.get(dataset, []):
        return
    grown = {**held_set, dataset: [*held_set.get(dataset, []), extra]}
    assert held_digest(grown) != held_digest(held_set)


def test_a_key_moved_to_another_dataset_changes_the_digest():
    assert held_digest({"users": ["a"]}) != held_digest({"groups": ["a"]})


# --- HTTP ----------------------------------------------------------------------------------------------
def test_status_and_test_update_show_the_digest_and_count_of_the_held_set(held):
    _, _, _, keys_held = held
    info = call("operator_status")[1]
    stored = {d: h["keys"] for d, h in info["heldDeletions"].items()}
    assert info["heldDigest"] == held_digest(stored) and info["heldCount"] == sum(len(v) for v in stored.values())
    assert info["heldDeletions"]["users"]["digest"] == held_digest({"users": keys_held})
    result = preview()  # POST test-update, then its result from GET status
    assert result["ok"] is True and result["heldDigest"] == info["heldDigest"] and result["heldCount"] == info["heldCount"]


def test_approval_without_the_digest_is_400_naming_expect_and_approves_nothing(held):
    _, _, state, _ = held
    files = state_files(state)
    code, body = call("operator_approve_deletions")
    assert code == 400 and body["ok"] is False and "--expect" in body["error"] and "status" in body["error"]
    assert state_files(state) == files and approved_count() == 0


def test_approval_of_a_set_that_grew_since_the_review_is_409_and_approves_nothing(held, tenant):
    graph, _, state, _ = held
    reviewed = call("operator_status")[1]
    for user in tenant["users"][60:70]:  # ten more leave after the review; the next run holds them too
        graph.delete_user(user["id"])
    with pytest.raises(Exception, match="deletion guard"):
        timer()
    grown = call("operator_status")[1]
    assert grown["heldCount"] > reviewed["heldCount"] and grown["heldDigest"] != reviewed["heldDigest"]
    files = state_files(state)
    code, body = call("operator_approve_deletions", params={"expect": reviewed["heldDigest"]})
    assert code == 409 and body["ok"] is False
    assert "not the set that was reviewed" in body["error"] and str(grown["heldCount"]) in body["error"]
    assert grown["heldDigest"] not in body["error"]  # the digest is read from status, after a review
    assert state_files(state) == files and approved_count() == 0
    # one dataset's digest does not approve another's, nor all
    users_digest = grown["heldDeletions"]["users"]["digest"]
    assert call("operator_approve_deletions", params={"expect": users_digest})[0] == 409
    code, ok = call("operator_approve_deletions", params={"expect": grown["heldDigest"].upper()})
    assert code == 200 and ok["ok"] is True and approved_count() == grown["heldDeletions"]["users"]["count"]


def test_the_function_key_approver_is_recorded_in_the_report_and_the_log_line(held, caplog):
    _, _, state, keys_held = held
    digest = held_digest({"users": keys_held})
    with caplog.at_level(logging.INFO):
        code, body = call("operator_approve_deletions", params={"dataset": "users", "expect": digest},
                          headers={"x-functions-key": "approver-key-value-1234567890"})
    assert code == 200 and body["approver"]["kind"] == "function-key"
    name = body["approver"]["name"]
    assert name.startswith("sha256:") and "approver-key-value" not in json.dumps(body)
    report = reports(state)[-1]
    assert report["action"] == "approve-deletions" and report["approver"] == {"kind": "function-key", "name": name}
    assert any(name in r.getMessage() and "approved" in r.getMessage() and digest in r.getMessage() for r in caplog.records)
    summary_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("SyncRunSummary")]
    assert summary_lines and name in summary_lines[-1]


@pytest.fixture
def easy_auth(monkeypatch):
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")


def test_with_app_service_auth_on_a_call_without_a_principal_is_403(held, easy_auth):
    _, _, state, keys_held = held
    files = state_files(state)
    code, body = call("operator_approve_deletions", params={"expect": held_digest({"users": keys_held}), "dataset": "users"})
    assert code == 403 and "Entra principal" in body["error"]
    assert state_files(state) == files


def test_with_app_service_auth_on_a_reader_without_the_approver_role_is_403(held, easy_auth):
    _, _, state, keys_held = held
    files = state_files(state)
    headers = {"X-MS-CLIENT-PRINCIPAL": principal("reader@contoso.com", "oid-1", ["Status.Read"])}
    code, body = call("operator_approve_deletions", params={"expect": held_digest({"users": keys_held}), "dataset": "users"}, headers=headers)
    assert code == 403 and APPROVER_ROLE in body["error"] and "reader@contoso.com" in body["error"]
    assert state_files(state) == files and approved_count() == 0
    assert call("operator_status", headers=headers)[0] == 200  # reading needs no approver role


def test_with_app_service_auth_on_the_approver_principal_is_recorded(held, easy_auth):
    _, _, state, keys_held = held
    headers = {"X-MS-CLIENT-PRINCIPAL": principal("approver@contoso.com", "oid-2", [APPROVER_ROLE]),
               "X-MS-CLIENT-PRINCIPAL-NAME": "approver@contoso.com"}
    code, body = call("operator_approve_deletions", params={"expect": held_digest({"users": keys_held}), "dataset": "users"}, headers=headers)
    assert code == 200 and body["approver"] == {"kind": "entra", "name": "approver@contoso.com (oid oid-2)"}
    assert reports(state)[-1]["approver"] == body["approver"] and approved_count() == len(keys_held)


def test_principal_headers_are_not_trusted_when_app_service_auth_is_off(held):
    _, _, _, keys_held = held
    forged = {"X-MS-CLIENT-PRINCIPAL": principal("ceo@contoso.com", "oid-3", [APPROVER_ROLE]), "X-MS-CLIENT-PRINCIPAL-NAME": "ceo@contoso.com"}
    code, body = call("operator_approve_deletions", params={"expect": held_digest({"users": keys_held}), "dataset": "users"}, headers=forged)
    assert code == 200 and body["approver"]["kind"] == "function-key" and "ceo" not in json.dumps(body["approver"])


# --- the command line --------------------------------------------------------------------------
def run_main(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    with monkeypatch.context():
        capsys.readouterr()
        code = launcher.main(list(argv))
        out = capsys.readouterr()
    return code, out.out, out.err


def test_the_cli_requires_the_digest_refuses_a_stale_one_and_records_user_and_host(held, tenant, monkeypatch, capsys):
    graph, _, state, _ = held
    code, out, _ = run_main(monkeypatch, capsys, "status")
    assert code == 0
    reviewed = call("operator_status")[1]["heldDigest"]
    assert f"approve-deletions --expect {reviewed}" in out and "digest" in out

    code, out, err = run_main(monkeypatch, capsys, "approve-deletions")
    assert code == 2 and "--expect" in err and approved_count() == 0

    graph.delete_user(tenant["users"][70]["id"])
    with pytest.raises(Exception, match="deletion guard"):
        timer()
    code, out, err = run_main(monkeypatch, capsys, "approve-deletions", "--expect", reviewed, "--json")
    assert code == 5 and "not the set that was reviewed" in err and approved_count() == 0

    fresh = call("operator_status")[1]["heldDigest"]
    code, out, err = run_main(monkeypatch, capsys, "approve-deletions", "--expect", fresh, "--json")
    assert code == 0, err
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["approver"] == {"kind": "cli", "name": who}
    assert reports(state)[-1]["approver"] == {"kind": "cli", "name": who}
    assert "WEBSITE_AUTH_ENABLED" not in os.environ


# --- SIGTERM in the Functions worker (the run's loop on a worker thread) ----------------------------
def test_a_cancel_from_the_sigterm_handler_ends_a_worker_thread_run_with_its_report(held):
    import threading
    import time

    from shared.common import shutdown
    from shared.config.settings import load_settings
    from shared.engine import run, run_to_end

    graph, _, state, _ = held
    graph.latency = 3600  # the run waits in the Graph read until the test lowers it again
    before = len(reports(state))
    done: dict[str, Any] = {}

    def worker() -> None:
        done["summary"] = run_to_end(run("update", load_settings()))

    thread = threading.Thread(target=worker)
    thread.start()
    deadline = time.monotonic() + 30
    while not shutdown._running and time.monotonic() < deadline:
        time.sleep(0.02)
    assert shutdown.cancel_all() == 1
    thread.join(30)
    graph.latency = 0.0  # releases the emulator's waiting request
    summary = done["summary"]
    assert summary.ok is False and "SIGTERM" in summary.error and summary.exception.exit_code == 143
    assert len(reports(state)) == before + 1 and "SIGTERM" in reports(state)[-1]["error"]
    code, body = call("operator_approve_deletions", params={"expect": "0" * 16})
    assert code == 409 and "not the set that was reviewed" in body["error"]  # the lock was released: refused for the digest
