"""Hostile answers from Graph or from the sync API: each run fails with a clear error, sends
nothing more and leaves the change-tracking state as it was; malformed Retry-After values fall
back to a bounded backoff.

The product runs as ``python -m shared update --json`` does: ``shared.cli.main`` in this
process (a subprocess costs ~2 s of imports per run; one test runs the real subprocess), with the
environment of tests/stack.py, against the Graph emulator and the strict receiver, both real
HTTP servers on loopback, with their fault injection. Each test first runs a successful update
(so a state exists), then changes the directory so that the next update has something to send,
injects the fault, and runs that update.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack.graph_emulator import GraphEmulator
from devstack.sync_receiver import SyncReceiver
from tests import launcher
from tests.stack import CREDENTIAL, DOMAINS, base_env, run_cli, service_view

U1, U2, G1, C1 = "u-0001", "u-0002", "g-0001", "c-0001"
DIRECTORY = {
    "users": [{"id": U1, "displayName": "Alice", "mail": "alice@contoso.com", "proxyAddresses": ["SMTP:alice@contoso.com"]}],
    "groups": [{"id": G1, "displayName": "Sales", "mail": None, "proxyAddresses": [], "members": [U1, C1]}],
    "contacts": [{"id": C1, "displayName": "Ext", "mail": "ext@fabrikam.com", "proxyAddresses": []}],
}
# Files next to the state that are not change-tracking state: run reports and the run lock
# (both written by every run, a failed one included, by design).
NOT_STATE = ("runs", "run.lock")
PROMPT = 5.0  # seconds: "fails promptly", against a Retry-After of a day


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float
    subprocess: bool = False  # in-process, stderr also holds the servers' threads; a crash raises

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads(self.stdout.strip().splitlines()[-1])

    @property
    def error_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""


class Stack:
    def __init__(self, graph: GraphEmulator, receiver: SyncReceiver, state_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
        self.graph, self.receiver, self.state_dir = graph, receiver, state_dir
        self.env = base_env(graph.base_url, receiver.base_url, f"file:{state_dir}")
        self._monkeypatch, self._capsys = monkeypatch, capsys

    def update(self) -> Run:
        """``python -m shared update --json``, in this process, with exactly the stack's environment."""
        with self._monkeypatch.context() as mp:
            for key in list(os.environ):
                if key not in self.env:
                    mp.delenv(key)
            for key, value in self.env.items():
                mp.setenv(key, value)
            self._capsys.readouterr()
            started = time.monotonic()
            code = launcher.main(["update", "--json"])
            seconds = time.monotonic() - started
            out = self._capsys.readouterr()
        return Run(code, out.out, out.err, seconds)

    def state_files(self) -> dict[str, bytes]:
        return {
            str(p.relative_to(self.state_dir)): p.read_bytes()
            for p in sorted(self.state_dir.rglob("*"))
            if p.is_file() and p.relative_to(self.state_dir).parts[0] not in NOT_STATE and not p.name.endswith("-shm")
        }

    def posts(self) -> list[Any]:
        return [r for r in self.receiver.request_log if r.method != "GET"]


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any):
    graph = GraphEmulator(DIRECTORY)
    graph.start()
    receiver = SyncReceiver(domains=DOMAINS, credential=CREDENTIAL)
    receiver.start()
    try:
        s = Stack(graph, receiver, tmp_path / "state", monkeypatch, capsys)
        first = s.update()
        assert first.code == 0, first.stderr
        # Something for the next update to send: a new user in the group, so a new address too.
        graph.upsert_user({"id": U2, "displayName": "Bob", "mail": "bob@contoso.com", "proxyAddresses": []})
        graph.add_member(G1, U2)
        receiver.clear_log()
        yield s
    finally:
        graph.stop()
        receiver.stop()


def assert_failed_cleanly(s: Stack, run: Run, needle: str, *, before: dict[str, bytes], service: dict[str, Any],
                          maybe_applied: bool = False) -> None:
    """Failed with one clear line naming the problem, nothing applied, the state untouched
    (but for the journal's intent entry when the answer may stand for an applied request)."""
    assert run.code != 0, run.stdout
    assert run.summary["ok"] is False
    line = run.error_line
    assert line.startswith("error: ") and run.summary["error"] in line, run.stderr
    assert re.search(needle, line, re.IGNORECASE), line
    if run.subprocess:
        assert "Traceback" not in run.stderr
    after = s.state_files()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert changed == (["state.journal.jsonl"] if maybe_applied else []), f"state files changed: {changed}"
    assert service_view(s.receiver) == service
    assert U2 not in service_view(s.receiver)["users"]


# --- Graph ---------------------------------------------------------------------------------------
GRAPH_BODIES = [
    pytest.param("html", r"users.*not JSON", id="html-200-from-a-proxy"),
    pytest.param("not_json", r"users.*not JSON", id="not-json"),
    pytest.param("wrong_shape", r"users.*without a 'value' list", id="value-is-an-object"),
    pytest.param("no_value", r"users.*without a 'value' list", id="value-missing"),
    pytest.param("truncated_gzip", r"users.*(not JSON|gzip|truncated)", id="truncated-gzip"),
    # json.loads raises RecursionError (not ValueError): today the engine's catch-all names it.
    pytest.param("deep_json", r"not JSON|nested|RecursionError", id="json-nested-100000-deep"),
]


@pytest.mark.parametrize(("kind", "needle"), GRAPH_BODIES)
def test_a_hostile_graph_page_fails_the_run_and_sends_nothing(stack: Stack, kind: str, needle: str) -> None:
    before, service = stack.state_files(), service_view(stack.receiver)
    stack.graph.inject_fault(kind, path_contains="/users", times=100)
    run = stack.update()
    assert_failed_cleanly(stack, run, needle, before=before, service=service)
    assert "nothing was sent" in run.error_line
    assert stack.posts() == []


def test_a_graph_html_page_is_named_as_html(stack: Stack) -> None:
    stack.graph.inject_fault("html", path_contains="/users", times=100)
    run = stack.update()
    assert run.code != 0 and re.search(r"HTML|text/html", run.error_line), run.error_line


def test_a_truncated_gzip_graph_page_is_named_as_such(stack: Stack) -> None:
    stack.graph.inject_fault("truncated_gzip", path_contains="/users", times=100)
    run = stack.update()
    assert run.code != 0 and re.search(r"gzip|truncated", run.error_line), run.error_line


@pytest.mark.parametrize("status", ["429", "503"])
@pytest.mark.parametrize("retry_after", ["86400", "Wed, 21 Oct 2099 07:28:00 GMT"])
def test_an_absurd_graph_retry_after_fails_promptly(stack: Stack, status: str, retry_after: str) -> None:
    before, service = stack.state_files(), service_view(stack.receiver)
    stack.graph.inject_fault(status, path_contains="/users", times=100, retry_after=retry_after)
    run = stack.update()
    assert_failed_cleanly(stack, run, r"wait \d+ s", before=before, service=service)
    assert run.seconds < PROMPT
    assert stack.posts() == []


@pytest.mark.parametrize(
    "retry_after",
    [
        "soon",  # not a number: the HTTP-date parse fails
        "nan",  # a float, but not a number of seconds
        "-5",
        "1e309",
    ],
)
def test_a_malformed_graph_retry_after_backs_off_and_the_run_succeeds(stack: Stack, retry_after: str) -> None:
    # Four 429s: the SDK's retry handler answers three itself; the fourth reaches graph.py's own
    # retry loop, which must read the malformed value as "back off", not as a wait or a failure.
    stack.graph.inject_fault("429", path_contains="/users", times=4, retry_after=retry_after)
    run = stack.update()
    assert run.code == 0, run.stderr
    assert run.summary["read"]["graphRetries"] >= 1
    assert run.seconds < 15
    assert U2 in service_view(stack.receiver)["users"]


# --- the sync API ---------------------------------------------------------------------------------
SYNC_BODIES = [
    pytest.param("html", r"HTML page, not JSON.*text/html", id="html-200-from-a-proxy"),
    pytest.param("not_json", r"not JSON", id="not-json"),
    pytest.param("wrong_shape", r"wrong shape", id="wrong-shape"),
    pytest.param("truncated_gzip", r"truncated or corrupt gzip", id="truncated-gzip"),
    pytest.param("deep_json", r"nested too deeply", id="json-nested-100000-deep"),
]


@pytest.mark.parametrize(("kind", "needle"), SYNC_BODIES)
def test_a_hostile_answer_to_a_post_fails_the_run_and_sends_nothing_more(stack: Stack, kind: str, needle: str) -> None:
    before, service = stack.state_files(), service_view(stack.receiver)
    stack.receiver.inject_fault(kind, path_contains="/changes", times=100)
    run = stack.update()
    # A 2xx whose body cannot be read may stand for an applied request (issue 9): the intent
    # stays in the journal, and the next run compares those records again.
    assert_failed_cleanly(stack, run, needle, before=before, service=service, maybe_applied=True)
    assert [(p.path, p.fault) for p in stack.posts()] == [("/v1/datasets/users/changes", kind)]
    stack.receiver.clear_faults()
    again = stack.update()
    assert again.code == 0, again.stderr
    assert U2 in service_view(stack.receiver)["users"]


@pytest.mark.parametrize("kind", ["html", "truncated_gzip"])
def test_a_hostile_answer_to_get_domains_fails_before_reading_graph(stack: Stack, kind: str) -> None:
    before, service = stack.state_files(), service_view(stack.receiver)
    stack.receiver.inject_fault(kind, path_contains="/domains", times=100)
    graph_requests = len(stack.graph.request_log)
    run = stack.update()
    assert_failed_cleanly(stack, run, r"GET /domains.*(HTML|gzip)", before=before, service=service)
    assert stack.posts() == [] and len(stack.graph.request_log) == graph_requests


@pytest.mark.parametrize("status", ["429", "503"])
@pytest.mark.parametrize("retry_after", ["86400", "Wed, 21 Oct 2099 07:28:00 GMT"])
def test_an_absurd_sync_api_retry_after_fails_promptly(stack: Stack, status: str, retry_after: str) -> None:
    before, service = stack.state_files(), service_view(stack.receiver)
    stack.receiver.inject_fault(status, path_contains="/changes", times=100, retry_after=retry_after)
    run = stack.update()
    assert_failed_cleanly(stack, run, r"asked to wait \d+ s \(Retry-After\)", before=before, service=service)
    assert run.seconds < PROMPT
    assert [p.fault for p in stack.posts()] == [status]


MALFORMED = ["soon", "nan", "-5", "1e309", "", "12abc", "Thu, 99 Foo 2024"]


@pytest.mark.parametrize("status", ["429", "503"])
@pytest.mark.parametrize("retry_after", MALFORMED)
def test_a_malformed_sync_api_retry_after_backs_off_and_the_run_succeeds(
    stack: Stack, status: str, retry_after: str, caplog: pytest.LogCaptureFixture
) -> None:
    stack.receiver.inject_fault(status, path_contains="/changes", times=2, retry_after=retry_after)
    run = stack.update()
    assert run.code == 0, run.stderr
    assert run.seconds < PROMPT
    assert "malformed Retry-After" in caplog.text
    view = service_view(stack.receiver)
    assert U2 in view["users"] and "bob@contoso.com" in view["addresses"]
    faults = [p.fault for p in stack.posts()]
    assert faults[:3] == [status, status, None]  # the same request, retried after the backoff
    assert len({p.idempotency_key for p in stack.posts()[:3]}) == 1
    assert stack.receiver.keys_reused_with_different_body() == []


@pytest.mark.parametrize("retry_after", ["soon", "-5", "1e309"])
def test_a_malformed_retry_after_that_never_stops_fails_clearly_after_bounded_retries(stack: Stack, retry_after: str) -> None:
    before, service = stack.state_files(), service_view(stack.receiver)
    stack.receiver.inject_fault("503", path_contains="/changes", times=100, retry_after=retry_after)
    run = stack.update()
    assert_failed_cleanly(stack, run, r"failed after \d+ attempts \(HTTP 503\)", before=before, service=service)
    assert run.seconds < PROMPT
    assert {p.fault for p in stack.posts()} == {"503"} and len(stack.posts()) > 1


def test_the_cli_process_reports_a_hostile_answer_in_one_line(stack: Stack) -> None:
    """The same through a real ``python -m shared update --json`` process."""
    before, service = stack.state_files(), service_view(stack.receiver)
    stack.receiver.inject_fault("html", path_contains="/changes", times=100)
    result = run_cli("update", stack.env, "--json")
    run = Run(result.code, result.stdout, result.stderr, 0.0, subprocess=True)
    assert_failed_cleanly(stack, run, r"HTML page, not JSON", before=before, service=service, maybe_applied=True)
    assert len(stack.posts()) == 1
