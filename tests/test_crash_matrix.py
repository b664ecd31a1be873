"""The crash matrix (issue 9, docs/sync-rules.md "The recovery guarantee").

For every undo pattern × every kill point, on ``file:`` and ``blob:`` (Azurite) state:
change the directory (through the Graph emulator's admin endpoint), run an ``update`` that is
killed there with SIGKILL, undo the change, run ONE ``update``: the service must then equal the
projection of the directory, and that update must have read a delta round (no full read).

Kill points, for the killed run's write requests (POST .../changes) numbered 1..K:
- ``answered k`` (k < K): the k-th write was answered; the process dies when write k+1
  reaches the receiver, before it is applied (the CLI had journaled answer k by then);
- ``in flight k``: write k is applied by the receiver, and the process dies before the answer;
- ``commit``: after the K-th answer, the process dies during the final commit, at three
  instants: before the database commit, between the commit and the publish (file: the journal
  is still there; blob: the upload has not happened), and right after the publish.
K is learned from the commit case of each pattern (it kills only after all writes)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from devstack.graph_emulator import GraphEmulator
from devstack.receiver_http import HttpResponse
from devstack.sync_receiver import SyncReceiver
from shared.model.directory import project
from tests.stack import CREDENTIAL, DOMAINS, ROOT, base_env, service_view

U1, U2, U3, U9 = (f"c1000000-0000-0000-0000-00000000000{n}" for n in (1, 2, 3, 9))
G1, G2 = (f"c2000000-0000-0000-0000-00000000000{n}" for n in (1, 2))

ALICE = {"id": U1, "displayName": "Alice", "mail": "alice@contoso.com", "proxyAddresses": ["SMTP:alice@contoso.com"]}
BOB = {"id": U2, "displayName": "Bob", "mail": "bob@contoso.com", "proxyAddresses": ["SMTP:bob@contoso.com", "smtp:bob@fabrikam.com"]}
CAROL = {"id": U3, "displayName": "Carol", "mail": "carol@fabrikam.com", "proxyAddresses": ["smtp:c.arol@contoso.com"]}


def directory() -> dict[str, Any]:
    return {
        "users": [dict(ALICE), dict(BOB), dict(CAROL)],
        "groups": [
            {"id": G1, "displayName": "Sales", "mail": "sales@contoso.com", "proxyAddresses": [], "members": [U1, U2, G2]},
            {"id": G2, "displayName": "Team", "mail": None, "proxyAddresses": [], "members": [U2, U3]},
        ],
        "contacts": [],
    }


def op(name: str, **args: Any) -> dict[str, Any]:
    return {"op": name, "args": args}


def _patterns(n: int) -> dict[str, tuple[list[dict], list[dict]]]:
    """pattern -> (change, undo) as admin mutations; ``n`` numbers the case (a created user
    gets a new object id each time, as Entra gives it)."""
    nina = f"c9000000-0000-0000-0000-{n:012d}"
    return {
        "user created, then deleted": (
            [op("upsert_user", obj={"id": nina, "displayName": "Nina", "mail": f"nina{n}@contoso.com",
                                    "proxyAddresses": [f"smtp:nina{n}@fabrikam.com"]}), op("add_member", group_id=G2, member_id=nina)],
            [op("delete_user", id=nina)],
        ),
        "alias added, then removed": (
            [op("upsert_user", obj={"id": U1, "proxyAddresses": ["SMTP:alice@contoso.com", "smtp:al@fabrikam.com"]})],
            [op("upsert_user", obj={"id": U1, "proxyAddresses": ["SMTP:alice@contoso.com"]})],
        ),
        "member added, then removed": (
            [op("add_member", group_id=G2, member_id=U1)],
            [op("remove_member", group_id=G2, member_id=U1)],
        ),
        "member removed, then re-added": (
            [op("remove_member", group_id=G1, member_id=U2)],
            [op("add_member", group_id=G1, member_id=U2)],
        ),
        "group renamed, then renamed back": (
            [op("upsert_group", obj={"id": G1, "displayName": "Sales EMEA"})],
            [op("upsert_group", obj={"id": G1, "displayName": "Sales"})],
        ),
        "user deleted, then restored": (
            [op("delete_user", id=U3)],
            [op("upsert_user", obj=dict(CAROL)), op("add_member", group_id=G2, member_id=U3)],
        ),
    }


PATTERNS = list(_patterns(0))

COMMIT_INSTANTS = ("before the database commit", "between commit and publish", "after the publish")

# The killed run for the commit instants: the engine in a child process whose state commit or
# publish is patched (here, in the test) to die at that instant.
COMMIT_CHILD = """
import os, signal, sys
import shared.storage.state as state
import shared.storage.stores as stores
instant = sys.argv[1]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if instant == "before the database commit":
    def patched(self):
        die()
    state.StateDB.commit = patched
else:
    for cls in (stores.FileStateStore, stores.BlobStateStore):
        def wrap(publish):
            def patched(self, db):
                if instant == "between commit and publish":
                    die()
                publish(self, db)
                die()
            return patched
        cls.publish = wrap(cls.publish)
from tests.launcher import main
sys.exit(main(["update", "--json"]))
"""


def mutate(graph: GraphEmulator, ops: list[dict]) -> None:
    """Change the directory through the emulator's admin endpoint, as a harness would."""
    url = graph.base_url.rsplit("/v1.0", 1)[0] + "/_emulator/mutations"
    resp = httpx.post(url, json=ops, timeout=10)
    assert resp.status_code == 200, resp.text


def expected(graph: GraphEmulator) -> dict:
    p = project(graph.snapshot(), DOMAINS)
    return {
        "addresses": set(p.datasets["addresses"]),
        "groups": {k: {"id": k, "name": v[0], "parentIds": sorted(v[1])} for k, v in p.datasets["groups"].items()},
        "users": {k: {"id": k, "address": v[0], "groupIds": sorted(v[1])} for k, v in p.datasets["users"].items()},
    }


class Killer:
    """Wraps the in-process receiver's request handler: it SIGKILLs the CLI process at the
    chosen write request (POST .../changes), either on receipt (nothing applied) or once the
    request was applied (its answer never sent)."""

    def __init__(self, receiver: SyncReceiver) -> None:
        self.api = receiver._api
        self.inner = self.api.handle
        self.api.handle = self.handle
        self.pid: int | None = None
        self.at: tuple[str, int] | None = None  # ("receipt" | "applied", n)
        self.writes = 0
        self.killed = False
        self.mutex = threading.Lock()

    def arm(self, pid: int | None, at: tuple[str, int] | None) -> None:
        """Count this run's writes from 0, and kill ``pid`` at ``at``."""
        with self.mutex:
            self.pid, self.at, self.writes, self.killed = pid, at, 0, False

    def disarm(self) -> None:
        with self.mutex:
            self.pid, self.at = None, None

    def handle(self, request: Any) -> HttpResponse:
        with self.mutex:
            write = request.method == "POST" and request.path.endswith("/changes")
            if write:
                self.writes += 1
            hit = write and self.at is not None and self.at[1] == self.writes and self.pid is not None
            if hit and self.at[0] == "receipt":
                self._kill()
                return HttpResponse(drop=True)
        response = self.inner(request)
        if hit:
            with self.mutex:
                self._kill()
            return HttpResponse(drop=True)
        return response

    def _kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.killed = True


@pytest.fixture
def stack(request, tmp_path):
    def make(backend: str) -> tuple[GraphEmulator, SyncReceiver, Killer, dict[str, str]]:
        graph = GraphEmulator(directory())
        receiver = SyncReceiver(domains=DOMAINS, credential=CREDENTIAL)
        graph.start()
        receiver.start()
        request.addfinalizer(graph.stop)
        request.addfinalizer(receiver.stop)
        where = tmp_path / uuid.uuid4().hex[:8]
        where.mkdir()
        if backend == "file":
            env = base_env(graph.base_url, receiver.base_url, f"file:{where / 'state'}")
        else:
            azurite = request.getfixturevalue("azurite")
            (where / "tmp").mkdir()
            env = {**base_env(graph.base_url, receiver.base_url, f"blob:crash-{uuid.uuid4().hex[:12]}"),
                   "AzureWebJobsStorage": azurite.connection_string, "TMPDIR": str(where / "tmp")}
        return graph, receiver, Killer(receiver), env

    return make


def killed_update(env: dict[str, str], killer: Killer, at: tuple[str, int]) -> int:
    proc = subprocess.Popen([sys.executable, "-m", "tests.launcher", "update"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killer.arm(proc.pid, at)
    _, err = proc.communicate(timeout=120)
    killer.disarm()
    assert proc.returncode == -signal.SIGKILL and killer.killed, f"the update was not killed at {at}: {err[-1500:]}"
    return killer.writes


def commit_killed_update(env: dict[str, str], instant: str) -> None:
    proc = subprocess.run([sys.executable, "-c", COMMIT_CHILD, instant], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"the update was not killed {instant}: {proc.stderr[-1500:]}"


def in_process_update(env: dict[str, str], action: str = "update") -> dict[str, Any]:
    """One ``update`` as the CLI runs it, in this process (the receiver serves on its threads)."""
    from shared.config.settings import load_settings
    from shared.engine import run
    from tests.launcher import test_options

    summary = asyncio.run(run(action, load_settings(env), env=env, options=test_options(env)))
    return summary.as_dict()


class Matrix:
    """One stack, one pattern: the cases run one after another, each from the converged state
    the previous one left (which the undo returns to the first directory)."""

    def __init__(self, make: Callable, backend: str, pattern: str) -> None:
        self.backend, self.pattern = backend, pattern
        self.graph, self.receiver, self.killer, self.env = make(backend)
        self.cases = 0
        first = in_process_update(self.env)
        assert first["ok"], first
        assert service_view(self.receiver) == expected(self.graph)

    def case(self, kill: Callable[[dict, Killer], Any], label: str) -> int:
        """Change, a run killed by ``kill``, undo, one update. Returns the killed run's writes."""
        self.cases += 1
        change, undo = _patterns(self.cases)[self.pattern]
        mutate(self.graph, change)
        self.killer.arm(None, None)
        kill(self.env, self.killer)
        writes = self.killer.writes
        self.killer.disarm()
        mutate(self.graph, undo)
        after = in_process_update(self.env)
        where = f"[{self.backend}] {self.pattern}, killed {label}"
        assert after["ok"], f"{where}: {after.get('error')}"
        assert after["read"]["kind"] == "delta", f"{where}: {after['read']}"
        have, want = service_view(self.receiver), expected(self.graph)
        assert have == want, f"{where}: the service differs from the directory's projection"
        assert self.receiver.keys_reused_with_different_body() == [], where
        return writes


@pytest.mark.slow
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("backend", ["file", "blob"])
def test_one_update_after_a_killed_run_and_an_undo_converges(stack, backend, pattern):
    matrix = Matrix(stack, backend, pattern)
    # The commit instants come first: the writes they count are K, the killed run's writes.
    counts = set()
    for instant in COMMIT_INSTANTS:
        counts.add(matrix.case(lambda env, killer, instant=instant: commit_killed_update(env, instant),
                               f"during the final commit ({instant})"))
    assert len(counts) == 1, counts
    k_writes = counts.pop()
    assert k_writes >= 1, f"{pattern}: the change sent nothing"
    for k in range(1, k_writes + 1):
        matrix.case(lambda env, killer, k=k: killed_update(env, killer, ("applied", k)),
                    f"with write {k} of {k_writes} in flight (applied, not answered)")
        if k < k_writes:
            matrix.case(lambda env, killer, k=k: killed_update(env, killer, ("receipt", k + 1)),
                        f"after write {k} of {k_writes} was answered")


# --- an answer that cannot be read ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["applied_not_json", "applied_wrong_shape", "applied_truncated_gzip", "applied_html"])
@pytest.mark.parametrize("backend", ["file", "blob"])
def test_an_applied_batch_answered_unreadably_is_rechecked_by_the_next_update(stack, backend, kind):
    """The service applies the deletion of a user but answers 2xx with a body that cannot be
    read; the user is restored in Entra; the next update (a delta round) puts it back."""
    graph, receiver, _, env = stack(backend)
    assert in_process_update(env)["ok"]
    mutate(graph, [op("delete_user", id=U3)])
    receiver.inject_fault(kind, path_contains="/datasets/users/changes")
    failed = in_process_update(env)
    assert not failed["ok"]
    assert U3 not in service_view(receiver)["users"]  # applied, though the answer said nothing readable
    mutate(graph, _patterns(0)["user deleted, then restored"][1])
    after = in_process_update(env)
    assert after["ok"], after.get("error")
    assert after["read"]["kind"] == "delta"
    assert service_view(receiver) == expected(graph)


# --- a lost state ------------------------------------------------------------------------------------
def lose_state(backend: str, env: dict[str, str], keep_reports: bool) -> dict[str, str]:
    """The state gone: the file deleted, or the blob removed; without the reports, as a new
    storage account (a new container) would be."""
    where = env["SYNC_STATE"].split(":", 1)[1]
    if backend == "file":
        from pathlib import Path

        d = Path(where)
        for p in d.iterdir():
            if p.name.startswith("state.") or (not keep_reports and p.is_dir()):
                if p.is_dir():
                    import shutil

                    shutil.rmtree(p)
                else:
                    p.unlink()
        return env
    if keep_reports:
        from azure.storage.blob import BlobServiceClient

        container = BlobServiceClient.from_connection_string(env["AzureWebJobsStorage"]).get_container_client(where)
        for blob in container.list_blobs():
            if blob.name.startswith("state."):
                container.delete_blob(blob.name)
        return env
    return {**env, "SYNC_STATE": f"blob:crash-{uuid.uuid4().hex[:12]}"}  # a new storage account


@pytest.mark.parametrize("signal_", ["the service holds records", "run reports exist"])
@pytest.mark.parametrize("backend", ["file", "blob"])
def test_a_lost_state_is_rebuilt_from_the_service_before_the_diff(stack, backend, signal_):
    """Issue 9: after the state is lost, a departed user's records are deleted by the next
    update (the baseline comes from GET .../records), and the summary says why."""
    graph, receiver, _, env = stack(backend)
    assert in_process_update(env)["ok"]
    if signal_ == "run reports exist":
        # The service's copy is gone too (say it was restored empty): only the reports tell.
        for d in ("users", "addresses", "groups"):
            receiver.load(d, [])
        env = lose_state(backend, env, keep_reports=True)
    else:
        env = lose_state(backend, env, keep_reports=False)
    mutate(graph, [op("delete_user", id=U3)])
    preview = in_process_update(env, "test-update")  # says what the update below sends
    summary = in_process_update(env)
    assert summary["ok"], summary.get("error")
    for d in ("addresses", "groups", "users"):
        assert (preview["datasets"][d]["added"], preview["datasets"][d]["removed"]) == (
            summary["datasets"][d]["added"], summary["datasets"][d]["removed"]), d
    assert preview["stateRebuilt"]["signals"] == summary["stateRebuilt"]["signals"]
    have, want = service_view(receiver), expected(graph)
    assert have == want
    assert U3 not in have["users"] and "carol@fabrikam.com" not in have["addresses"]
    rebuilt = summary["stateRebuilt"]
    if signal_ == "run reports exist":
        assert rebuilt["signals"] == ["run reports exist"]
    else:
        assert rebuilt["signals"][-1].startswith("the service already holds")
        assert summary["datasets"]["users"]["removed"] == 1  # judged and sent as a deletion
        assert rebuilt["serviceRecords"]["users"] == 3


def test_a_first_run_against_an_empty_service_reads_no_baseline(stack):
    graph, receiver, _, env = stack("file")
    summary = in_process_update(env)
    assert summary["ok"] and "stateRebuilt" not in summary
    assert service_view(receiver) == expected(graph)
