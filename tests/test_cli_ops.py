"""The operator's command line, run as an operator runs it (``python -m shared`` in a
subprocess) against the Graph emulator and the strict receiver on loopback: --version,
per-action help, status and approve-deletions with only the state settings, progress lines
during long reads and sends, and silence about telemetry when none is configured."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

import shared
from devstack.graph_emulator import GraphEmulator
from shared.engine import ACTIONS
from shared.storage.stores import FileStateStore
from tests.stack import ROOT, base_env, run_cli
from tests.test_graph_emulator import small_directory

ALL_ACTIONS = (*ACTIONS, "status")
SETTINGS_LINE = "Settings come from environment variables (locally) or the Function app's app settings (in Azure)"


def _bare_env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {**keep, **extra}


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.launcher", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_version() -> None:
    r = _cli("--version", env=_bare_env())
    assert r.returncode == 0
    assert r.stdout.strip() == f"python -m shared {shared.__version__}"


@pytest.mark.parametrize("action", ALL_ACTIONS)
def test_each_action_has_its_own_help_with_an_example(action: str) -> None:
    r = _cli(action, "--help", env=_bare_env())
    assert r.returncode == 0, r.stderr
    assert f"usage: python -m shared {action}" in r.stdout
    assert re.search(rf"^example: python -m shared {re.escape(action)}\b", r.stdout, re.M)
    assert SETTINGS_LINE in " ".join(r.stdout.split())
    assert ("--dataset" in r.stdout) == (action == "approve-deletions")


def test_top_level_help_names_every_action_and_the_settings() -> None:
    r = _cli("--help", env=_bare_env())
    assert r.returncode == 0
    for action in ALL_ACTIONS:
        assert action in r.stdout
    assert SETTINGS_LINE in " ".join(r.stdout.split())


@pytest.mark.parametrize("action", ALL_ACTIONS)
def test_each_help_example_is_a_command_line_that_parses_as_written(action: str) -> None:
    """The example an operator copies from ``ACTION --help`` is accepted by the parser, and the
    approval's example names the reviewed digest: ``--expect`` is required whenever deletions
    are held (docs/sync-rules.md, "The deletion guard"), the only time one approves."""
    from shared.cli import _ACTION_HELP, build_parser

    example = _ACTION_HELP[action][1].split(">")[0].split()
    assert example[:3] == ["python", "-m", "shared"]
    args = build_parser().parse_args(example[3:])
    assert args.action == action
    if action == "approve-deletions":
        assert args.expect == "DIGEST"


def test_top_level_help_summarizes_each_action_in_a_whole_sentence() -> None:
    """``python -m shared --help`` lists each action with its description's first sentence,
    not a fragment of it (``test-update  Dry run`` said nothing of what a dry run does)."""
    from shared.cli import _ACTION_HELP

    r = _cli("--help", env=_bare_env())
    flat = " ".join(r.stdout.split())
    for action, (text, _example) in _ACTION_HELP.items():
        first = text.split(". ", 1)[0].rstrip(".")
        assert " ".join(first.split()) in flat, action
    assert "read the directory and report what update would send" in flat


def test_dataset_belongs_to_approve_deletions_only() -> None:
    r = _cli("status", "--dataset", "users", env=_bare_env())
    assert r.returncode == 2 and "--dataset" in r.stderr


def test_status_and_approve_need_only_the_state_settings(tmp_path) -> None:
    env = _bare_env(SYNC_STATE=f"file:{tmp_path / 'state'}")  # no Graph, sync API or secret setting
    r = _cli("status", env=env)
    assert r.returncode == 0, r.stderr
    FileStateStore(tmp_path / "state").open().close()  # a state an update made (it holds nothing)
    r = _cli("approve-deletions", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert '"ok":true' in r.stdout.replace(" ", "")
    # update still needs everything, and says which setting is missing.
    r = _cli("update", env=env)
    assert r.returncode == 2 and "GRAPH_TENANT_ID" in r.stderr


def test_approve_deletions_where_no_state_is_names_sync_state_and_creates_no_state(tmp_path) -> None:
    """A mistyped SYNC_STATE: the approval must not read as "nothing to approve" (the operator
    would believe the held deletions approved), and no empty state is made there."""
    env = _bare_env(SYNC_STATE=f"file:{tmp_path / 'typo'}")
    r = _cli("approve-deletions", "--expect", "3f9a0c1d2e4b5a69", env=env)
    assert r.returncode != 0
    assert "no state at" in r.stderr and "SYNC_STATE" in r.stderr
    assert "nothing to approve" not in r.stdout + r.stderr
    assert not (tmp_path / "typo" / "state.db").exists()


def test_approve_deletions_in_an_empty_blob_container_names_sync_state_and_writes_no_state(azurite) -> None:
    from azure.storage.blob import BlobServiceClient

    env = _bare_env(SYNC_STATE="blob:typo-state", AzureWebJobsStorage=azurite.connection_string)
    r = _cli("approve-deletions", "--json", env=env)
    assert r.returncode != 0 and "blob:typo-state" in r.stderr and "SYNC_STATE" in r.stderr
    container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client("typo-state")
    names = [b.name for b in container.list_blobs()] if container.exists() else []
    assert not [n for n in names if n.startswith("state")], names


def test_status_still_checks_the_state_settings() -> None:
    r = _cli("status", env=_bare_env(SYNC_STATE="blob:sync-state"))
    assert r.returncode == 2
    assert "AzureWebJobsStorage" in r.stderr


@pytest.mark.parametrize("bad", ["abc", "-1", "99999"])
def test_a_bad_progress_interval_is_named(bad: str, tmp_path) -> None:
    env = _bare_env(SYNC_STATE=f"file:{tmp_path / 'state'}", PROGRESS_INTERVAL_SECONDS=bad)
    r = _cli("status", env=env)
    assert r.returncode == 2 and "PROGRESS_INTERVAL_SECONDS" in r.stderr


@pytest.fixture
def slow_graph():
    # Pages of 25 objects, 20 ms each: a read of ~330 objects takes a few hundred ms.
    em = GraphEmulator(small_directory(300), latency=0.02, max_page_size=25)
    em.start()
    yield em
    em.stop()


def test_progress_lines_during_long_reads_and_sends(slow_graph, receiver, tmp_path) -> None:
    env = base_env(slow_graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    # The read lasts at least 0.24 s (12 pages of users at 20 ms each): several 0.02 s ticks. The
    # send is ~300 batches, each an HTTP round trip and an fsync'd journal entry: at least one tick.
    env.update(PROGRESS_INTERVAL_SECONDS="0.02", SYNC_TEST_MAX_ITEMS="2")
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    reading = [ln for ln in r.stderr.splitlines() if "progress: reading Graph:" in ln]
    sending = [ln for ln in r.stderr.splitlines() if "progress: sending:" in ln]
    assert len(reading) >= 2 and len(sending) >= 1, r.stderr
    counts = [int(re.search(r"reading Graph: ([\d,]+) objects", ln).group(1).replace(",", "")) for ln in reading]
    assert counts == sorted(counts) and counts[-1] > 0
    assert re.search(r"\(users [\d,]+, groups [\d,]+, contacts [\d,]+\), [\d,]+ pages", reading[-1])
    sent = [tuple(map(int, re.search(r"sending: (\d+) of (\d+) batches sent", ln).groups())) for ln in sending]
    totals = {total for _, total in sent}
    assert len(totals) == 1 and totals.pop() >= 150  # ~600 records in batches of 2
    assert [n for n, _ in sent] == sorted(n for n, _ in sent)
    # The summary is unchanged by progress reporting.
    assert r.summary["ok"] is True and r.summary["datasets"]["users"]["added"] == 300


def test_no_progress_lines_when_turned_off_or_short(slow_graph, receiver, tmp_path) -> None:
    env = base_env(slow_graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    env["PROGRESS_INTERVAL_SECONDS"] = "0"
    r = run_cli("update", env)
    assert r.code == 0, r.stderr
    assert "progress:" not in r.stderr
    env.pop("PROGRESS_INTERVAL_SECONDS")  # the default, 30 s, is longer than this run
    r = run_cli("update", env)
    assert r.code == 0 and "progress:" not in r.stderr


def test_a_cli_run_says_nothing_about_telemetry_when_none_is_configured(slow_graph, receiver, tmp_path) -> None:
    env = base_env(slow_graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    r = run_cli("update", env)
    assert r.code == 0, r.stderr
    text = (r.stdout + r.stderr).lower()
    for word in ("telemetry", "application insights", "applicationinsights", "opentelemetry", "azure monitor"):
        assert word not in text


def test_the_timer_honours_and_checks_the_progress_setting(monkeypatch, tmp_path) -> None:
    import function_app
    from tests.test_function_app import _timer

    for k, v in base_env("http://127.0.0.1:9/v1.0", "http://127.0.0.1:9/v1", f"file:{tmp_path}").items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PROGRESS_INTERVAL_SECONDS", "soon")
    with pytest.raises(function_app.SyncRunFailed, match="PROGRESS_INTERVAL_SECONDS"):
        function_app.sync_timer(_timer())


def test_progress_lines_during_a_replace(slow_graph, receiver, tmp_path) -> None:
    env = base_env(slow_graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    env.update(PROGRESS_INTERVAL_SECONDS="0.01", SYNC_TEST_MAX_ITEMS="3")  # ~300 staging posts: many ticks
    r = run_cli("replace", env, "--json")
    assert r.code == 0, r.stderr
    sending = [ln for ln in r.stderr.splitlines() if "progress: sending:" in ln]
    assert sending, r.stderr
    for ln in sending:
        sent, total = map(int, re.search(r"sending: (\d+) of (\d+) batches sent", ln).groups())
        assert 0 <= sent <= total


def test_a_progress_line_that_cannot_be_rendered_never_fails_the_run() -> None:
    """The ticker renders from live objects it does not own: a source whose counters are gone
    (an AttributeError, as a changed stats shape once caused) skips that line, the run goes on."""
    import asyncio

    from shared.common.progress import Progress

    class Broken:
        @property
        def stats(self):
            raise AttributeError("no counters")

    emitted: list[str] = []
    progress = Progress(0.01, emit=emitted.append)
    progress.reading(Broken())

    async def go() -> None:
        task = asyncio.ensure_future(progress.ticker())
        await asyncio.sleep(0.1)
        progress.idle()
        progress.sending(3)
        progress.sent()
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert not any("reading" in line for line in emitted)
    assert any(line.startswith("progress: sending: 1 of 3 batches sent") for line in emitted)


@pytest.mark.parametrize("flags, info, debug", [((), False, False), (("-v",), True, False), (("-vv",), True, True), (("-v", "-v"), True, True)])
def test_stderr_has_warnings_only_unless_asked(receiver, tmp_path, flags, info, debug) -> None:
    """Without -v a run's stderr holds its warnings and errors only (a failure: one error line,
    docs/sync-rules.md); -v adds the INFO lines (the SyncRunSummary record), -vv debug."""
    em = GraphEmulator(small_directory(5))
    em.start()
    try:
        env = base_env(em.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
        r = run_cli("update", env, "--json", *flags)
    finally:
        em.stop()
    assert r.code == 0, r.stderr
    assert ("INFO shared.engine: SyncRunSummary" in r.stderr) is info
    assert (" DEBUG " in r.stderr) is debug
    assert all(" INFO " not in ln and " DEBUG " not in ln for ln in r.stderr.splitlines()) is (not info)


def test_the_plain_report_says_which_read_ran_what_was_rejected_and_what_refresh_read_back(tmp_path) -> None:
    """Without --json an operator still sees why the counts are what they are: the read's kind
    and reason, each rejection's key and code, and what refresh read back (its table is all
    zeros by nature)."""
    from devstack.sync_receiver import SyncReceiver
    from tests.stack import CREDENTIAL, DOMAINS

    graph = GraphEmulator(small_directory(6))
    receiver = SyncReceiver(domains=DOMAINS, credential=CREDENTIAL, other_account_addresses=["user3@contoso.com"])
    graph.start()
    receiver.start()
    try:
        env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
        r = run_cli("update", env)
        assert r.code == 0, r.stderr
        assert "read: full (first run: no directory cache yet)" in r.stdout
        assert "addresses: the service rejected 1 (offered again by the next update):" in r.stdout
        assert re.search(r"^    x user3@contoso\.com: address_in_other_account\b", r.stdout, re.M), r.stdout
        r = run_cli("refresh", env)
        assert r.code == 0, r.stderr
        held = {d: len(receiver.records(d)) for d in ("addresses", "groups", "users")}
        assert f"read back from the service (GET .../records): addresses {held['addresses']:,}, groups {held['groups']:,}, users {held['users']:,}" in r.stdout
        assert held["addresses"] > 0 and "read:" not in r.stdout  # refresh reads no directory
        assert CREDENTIAL not in r.stdout + r.stderr
    finally:
        receiver.stop()
        graph.stop()


def test_a_first_update_after_a_failed_one_says_why_it_rebuilds_from_the_service(receiver, tmp_path) -> None:
    """An administrator's first update fails (a wrong credential); the next one, fixed, finds a
    run report and no state. Its warning names that case too, not only a lost state."""
    graph = GraphEmulator(small_directory(3))
    graph.start()
    try:
        env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
        r = run_cli("update", {**env, "SYNC_API_CREDENTIAL": "sync-admin:wrong-password"})
        assert r.code == 1 and "SYNC_API_CREDENTIAL" in r.stderr and "wrong-password" not in r.stderr
        r = run_cli("update", env)
        assert r.code == 0, r.stderr
        warning = next(ln for ln in r.stderr.splitlines() if "no change-tracking state" in ln)
        assert "run reports exist" in warning and "every earlier run failed before its first commit" in warning
    finally:
        graph.stop()


def test_held_deletions_the_guard_says_how_to_approve_and_a_refused_approval_never_says_none_are_held(receiver, tmp_path) -> None:
    """The guard's error gives the approval command an operator can run as written (with
    --expect: without it the command refuses, exit 2); a refused approval (no --expect, a
    wrong digest) reports the refusal, not "no deletions are held", which is false then."""
    graph = GraphEmulator(small_directory(60))
    graph.start()
    try:
        env = {**base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}"),
               "DELETE_THRESHOLD_PERCENT": "10", "DELETE_THRESHOLD_COUNT": "500"}
        assert run_cli("update", env).code == 0
        for user in graph.snapshot()["users"][:40]:
            graph.delete_user(user["id"])
        r = run_cli("update", env)
        assert r.code == 4
        error = r.stderr.strip().splitlines()[-1]
        assert "python -m shared approve-deletions --expect DIGEST" in error and "?expect=DIGEST" in error
        for args, code in ((), 2), (("--expect", "0123456789abcdef"), 5):
            r = run_cli("approve-deletions", env, *args)
            assert r.code == code, r.stderr
            assert "nothing to approve" not in r.stdout and "no deletions are held" not in r.stdout
            assert "held" in r.stderr
        status = run_cli("status", env, "--json")
        digest = json.loads(status.stdout.strip().splitlines()[-1])["heldDigest"]
        r = run_cli("approve-deletions", env, "--expect", digest)
        assert r.code == 0 and "approved 40 held users deletions" in r.stdout
    finally:
        graph.stop()
