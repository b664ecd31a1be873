"""A full read that outlives one invocation (issue 13, part 4; shared/reading.py Checkpoints):
the product runs as an operator runs it (``python -m tests.launcher update --json``, a
process) against the Graph emulator, with a latency per request and a checkpoint after every
page (``SYNC_TEST_CHECKPOINT_SECONDS=0``). The process is killed (SIGKILL, as a Function host
ends an invocation that ran out of time) once a checkpoint is committed, mid-read. What a user
would check:

* nothing reached the service from the partial read, and the state says its directory cache
  is partial (so no delta round or deletion is computed from it);
* the next update resumes from the saved links: fewer Graph requests than an uninterrupted full
  read of the same directory (run beside it on its own state and service), the same final
  records at the service, and the same records as that uninterrupted run;
* when Graph no longer honours the saved links (a sync reset), the next update reads from the
  start and still ends with the same records."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from devstack.graph_emulator import GraphEmulator
from devstack.sync_receiver import SyncReceiver
from devstack.tenant import generate_tenant
from shared.model.directory import project
from shared.model.records import to_api_record
from tests.stack import CREDENTIAL, DOMAINS, ROOT, base_env, posts, run_cli, service_view


def _expected(graph: GraphEmulator) -> dict[str, Any]:
    p = project(graph.snapshot(), DOMAINS)
    return {
        "addresses": set(p.datasets["addresses"]),
        "groups": {k: to_api_record("groups", k, v) for k, v in p.datasets["groups"].items()},
        "users": {k: to_api_record("users", k, v) for k, v in p.datasets["users"].items()},
    }


def _progress(db: Path) -> dict[str, Any] | None:
    """The committed checkpoint, read as another process would (the state is in WAL mode)."""
    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key='fullReadProgress'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return json.loads(row[0]) if row else None


def _meta(db: Path, key: str) -> Any:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    finally:
        conn.close()
    return json.loads(row[0]) if row else None


def _kill_mid_read(env: dict[str, str], db: Path, pages_done: int) -> dict[str, Any]:
    """Start an update and SIGKILL it once a checkpoint with ``pages_done`` pages in progress
    (some collection not yet complete) is committed; returns that checkpoint."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.launcher", "update", "--json"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            saved = _progress(db)
            if saved is not None and any("next" in p for p in saved["links"].values()):
                seen += 1
                if seen >= pages_done:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=30)
                    return _progress(db) or saved
            assert proc.poll() is None, "the update ended before it was killed mid-read"
            time.sleep(0.05)
        raise AssertionError("no checkpoint was committed")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("refused", [None, "410", "400-expired-page-token"], ids=["resumed", "checkpoint-refused", "checkpoint-page-token-expired"])
def test_a_full_read_killed_mid_read_is_resumed_by_the_next_update(refused: str | None) -> None:
    tenant = generate_tenant(1500, groups=150, seed=7, domains=tuple(DOMAINS))
    graph = GraphEmulator(tenant, max_page_size=50, max_members_per_page=60, latency=0.03)
    service = SyncReceiver(domains=DOMAINS, credential=CREDENTIAL)
    reference = SyncReceiver(domains=DOMAINS, credential=CREDENTIAL)
    for server in (graph, service, reference):
        server.start()
    tmp = tempfile.TemporaryDirectory(prefix="checkpoint-")
    try:
        state = Path(tmp.name) / "state"
        env = {**base_env(graph.base_url, service.base_url, f"file:{state}"), "SYNC_TEST_CHECKPOINT_SECONDS": "0"}
        saved = _kill_mid_read(env, state / "state.db", pages_done=3)
        assert posts(service) == [], "the killed, partial read sent something"
        assert _meta(state / "state.db", "directoryCache") == "partial"
        assert any("next" in p for p in saved["links"].values())

        if refused == "410":
            graph.expire_delta_tokens()  # Graph's sync reset: the saved links answer 410 syncStateNotFound
        elif refused:  # Entra no longer keeps the page token of a saved nextLink (400 Directory_ExpiredPageToken)
            # That link's own token, every time: a request the killed process left in flight may
            # still reach the emulator, and a fresh round's tokens never repeat it.
            link = next(p["next"] for p in saved["links"].values() if "next" in p)
            graph.inject_fault(refused, path_contains=link.split("$skiptoken=", 1)[1], times=1000)
        graph.latency = 0.0
        before = graph.request_count
        resumed = run_cli("update", env, "--json")
        assert resumed.code == 0, resumed.stderr
        summary = resumed.summary
        resumed_requests = graph.request_count - before
        assert summary["graphRequests"] == resumed_requests

        before = graph.request_count
        ref_env = base_env(graph.base_url, reference.base_url, f"file:{Path(tmp.name) / 'reference'}")
        fresh = run_cli("update", ref_env, "--json")
        assert fresh.code == 0, fresh.stderr
        fresh_requests = graph.request_count - before

        assert summary["read"]["kind"] == "full"
        if refused:
            assert summary["read"]["resumedFromCheckpoint"] is False
            assert "refused" in summary["read"]["reason"]
        else:
            assert summary["read"]["resumedFromCheckpoint"] is True
            assert resumed_requests < fresh_requests, (resumed_requests, fresh_requests)
        assert summary["read"]["objects"] == fresh.summary["read"]["objects"]
        assert service_view(service) == service_view(reference) == _expected(graph)
        assert _meta(state / "state.db", "directoryCache") == "complete"
        assert _meta(state / "state.db", "fullReadProgress") is None
        # The next run is a delta round from the resumed read's links, and finds nothing to send.
        again = run_cli("update", env, "--json")
        assert again.code == 0 and again.summary["read"]["kind"] == "delta", again.stderr
        assert sum(d["added"] + d["removed"] for d in again.summary["datasets"].values()) == 0
    finally:
        for server in (graph, service, reference):
            server.stop()
        tmp.cleanup()


@pytest.mark.parametrize("pages_done", [1, 4])
def test_what_changed_after_the_kill_is_in_the_resumed_run(pages_done: int) -> None:
    """The directory does not wait for the next invocation: objects already read before the
    checkpoint change (a new mail, a deletion, a membership added and removed, a group gone)
    and new ones appear. The resumed update leaves the service equal to the directory as it
    is then (docs/sync-rules.md, "The recovery guarantee"), not as the checkpoint saw it."""
    tenant = generate_tenant(600, groups=60, seed=11, domains=tuple(DOMAINS))
    graph = GraphEmulator(tenant, max_page_size=40, max_members_per_page=50, latency=0.03)
    service = SyncReceiver(domains=DOMAINS, credential=CREDENTIAL)
    for server in (graph, service):
        server.start()
    tmp = tempfile.TemporaryDirectory(prefix="checkpoint-")
    try:
        state = Path(tmp.name) / "state"
        env = {**base_env(graph.base_url, service.base_url, f"file:{state}"), "SYNC_TEST_CHECKPOINT_SECONDS": "0"}
        _kill_mid_read(env, state / "state.db", pages_done=pages_done)
        users, groups = tenant["users"], tenant["groups"]
        first_user, second_user, third_user = users[0]["id"], users[1]["id"], users[2]["id"]
        graph.upsert_user({**users[0], "mail": "renamed.after.kill@contoso.com"})
        graph.delete_user(second_user)
        graph.add_member(groups[0]["id"], third_user)
        member = next(m for g in groups[1:] for m in g.get("members", []) if isinstance(m, str) and m != second_user)
        holder = next(g["id"] for g in groups[1:] if member in g.get("members", []))
        graph.remove_member(holder, member)
        graph.delete_group(groups[-1]["id"])
        graph.upsert_user({"id": "0c000000-0000-0000-0000-00000000beef", "mail": "new.after.kill@fabrikam.com", "proxyAddresses": []})
        graph.latency = 0.0
        resumed = run_cli("update", env, "--json")
        assert resumed.code == 0, resumed.stderr
        assert resumed.summary["read"]["resumedFromCheckpoint"] is True
        view = service_view(service)
        assert view == _expected(graph)
        assert "renamed.after.kill@contoso.com" in view["addresses"] and first_user in view["users"]
        assert second_user not in view["users"] and "new.after.kill@fabrikam.com" in view["addresses"]
        again = run_cli("update", env, "--json")  # and the links it saved are current
        assert again.code == 0 and again.summary["read"]["kind"] == "delta", again.stderr
        assert sum(d["added"] + d["removed"] for d in again.summary["datasets"].values()) == 0
    finally:
        for server in (graph, service):
            server.stop()
        tmp.cleanup()
