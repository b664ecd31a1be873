"""The deletion guard, approval, run history, status and the run lock, through the CLI the way
an operator (or the harness) drives them."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from devstack.graph_emulator import GraphEmulator
from devstack.tenant import generate_tenant
from tests.stack import DOMAINS, ROOT, base_env, posts, run_cli, service_view


@pytest.fixture
def tenant():
    return generate_tenant(200, groups=10, seed=3, domains=tuple(DOMAINS[:2]))


@pytest.fixture
def graph(tenant):
    em = GraphEmulator(tenant)
    em.start()
    yield em
    em.stop()


@pytest.fixture
def env(graph, receiver, tmp_path):
    e = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    e.pop("DELETE_THRESHOLD_PERCENT")
    e.pop("DELETE_THRESHOLD_COUNT")  # the defaults: 10 % and 500
    return e


def user_records(receiver) -> dict:
    return receiver.records("users")


def test_mass_deletion_is_held_reported_and_fails_the_run_then_approval_applies_exactly_it(env, graph, receiver, tenant, tmp_path):
    assert run_cli("update", env).code == 0
    before = service_view(receiver)
    users = [u["id"] for u in tenant["users"]]
    gone = users[: len(users) * 3 // 10]  # 30 % of the users
    for uid in gone:
        graph.delete_user(uid)
    newcomer = "1a000000-0000-0000-0000-000000000001"
    graph.upsert_user({"id": newcomer, "mail": "newcomer@contoso.com", "proxyAddresses": []})

    r = run_cli("update", env, "--json")
    assert r.code == 4, r.stderr
    s = r.summary
    assert s["ok"] is False and "deletion guard" in s["error"] and "approve-deletions" in s["error"]
    held = s["heldDeletions"]
    assert set(held["users"]["keys"]) == {u for u in gone if u in before["users"]}
    assert held["users"]["count"] == len(held["users"]["keys"])
    # nothing deleted, additions still sent
    now = service_view(receiver)
    assert set(before["users"]) <= set(now["users"]) and before["addresses"] <= now["addresses"]
    assert newcomer in now["users"]
    assert "deletion guard" in r.stderr

    # later runs keep holding (and keep failing) until approved
    r2 = run_cli("update", env, "--json")
    assert r2.code == 4 and set(r2.summary["heldDeletions"]["users"]["keys"]) == set(held["users"]["keys"])
    assert set(before["users"]) <= set(user_records(receiver))

    # test-update shows the held deletions
    t = run_cli("test-update", env, "--json")
    assert t.code == 0 and set(t.summary["heldDeletions"]["users"]["keys"]) == set(held["users"]["keys"])

    # status shows them with the approval command
    st = run_cli("status", env)
    assert st.code == 0 and "users: " in st.stdout and "approve-deletions" in st.stdout
    assert held["users"]["keys"][0] in st.stdout

    # one of the deleted users comes back: its deletion is no longer implied and simply disappears
    back = gone[0]
    graph.upsert_user(next(u for u in tenant["users"] if u["id"] == back))
    digest = run_cli("status", env, "--json").summary["heldDigest"]
    ap = run_cli("approve-deletions", env, "--json", "--expect", digest)
    assert ap.code == 0, ap.stderr
    # a new deletion after the approval is not approved by accident
    late = users[-1]
    graph.delete_user(late)
    receiver.clear_log()
    done = run_cli("update", env, "--json")
    after = service_view(receiver)
    expected_deleted = set(held["users"]["keys"]) - {back}
    assert expected_deleted.isdisjoint(after["users"])
    assert back in after["users"]
    # the late deletion (1 of ~140 users: under both thresholds) goes through by the guard's rules
    assert done.code == 0, done.stderr
    assert late not in after["users"]
    deleted_now = {k for p in posts(receiver) if p.path.endswith("/users/changes") for k in (p.body or {}).get("delete", [])}
    assert deleted_now == expected_deleted | {late}
    assert run_cli("update", env, "--json").summary["ok"] is True


def test_approval_per_dataset_and_nothing_new_is_approved(env, graph, receiver, tenant):
    assert run_cli("update", env).code == 0
    users = [u["id"] for u in tenant["users"]]
    for uid in users[:60]:
        graph.delete_user(uid)
    r = run_cli("update", env, "--json")
    assert r.code == 4
    held = r.summary["heldDeletions"]
    assert {"users", "addresses"} <= set(held)
    digest = run_cli("status", env, "--json").summary["heldDeletions"]["users"]["digest"]
    ap = run_cli("approve-deletions", env, "--dataset", "users", "--json", "--expect", digest)
    assert ap.code == 0 and set(ap.summary["approved"]) == {"users"}
    r = run_cli("update", env, "--json")
    # users go; addresses stay held (not approved), so the run still fails
    assert r.code == 4 and "users" not in r.summary["heldDeletions"] and "addresses" in r.summary["heldDeletions"]
    assert set(users[:60]).isdisjoint(user_records(receiver))
    # more users leave: a fresh mass deletion is held again, not covered by the earlier approval
    for uid in users[60:120]:
        graph.delete_user(uid)
    r = run_cli("update", env, "--json")
    assert r.code == 4 and set(r.summary["heldDeletions"]["users"]["keys"]) == set(users[60:120]) & set(user_records(receiver))


def test_thresholds_are_settings(env, graph, receiver, tenant):
    assert run_cli("update", env).code == 0
    for u in tenant["users"][:30]:
        graph.delete_user(u["id"])
    r = run_cli("update", {**env, "DELETE_THRESHOLD_PERCENT": "50"}, "--json")
    assert r.code == 0 and r.summary["datasets"]["users"]["removed"] > 0
    bad = run_cli("update", {**env, "DELETE_THRESHOLD_COUNT": "lots"}, "--json")
    assert bad.code == 2 and "DELETE_THRESHOLD_COUNT" in bad.stderr


def test_each_run_leaves_a_report_and_status_lists_them(env, graph, receiver, tmp_path):
    assert run_cli("update", env).code == 0
    assert run_cli("update", env).code == 0
    reports = sorted((tmp_path / "state" / "runs").glob("*.json"))
    assert len(reports) == 2
    doc = json.loads(reports[-1].read_text())
    assert doc["action"] == "update" and doc["ok"] is True and doc["read"]["kind"] == "delta"
    assert "finishedAt" in doc and "durationSeconds" in doc and set(doc["datasets"]) == {"addresses", "groups", "users"}
    st = run_cli("status", env, "--json")
    info = json.loads(st.stdout.strip().splitlines()[-1])
    assert [r["read"]["kind"] for r in info["runs"]] == ["delta", "full"]
    assert info["heldDeletions"] == {}


def test_a_second_run_exits_promptly_naming_the_holder_and_changes_nothing(env, graph, receiver, tmp_path):
    assert run_cli("update", env).code == 0
    # The first run is held mid-read (every Graph request waits while the latency is an hour),
    # so it holds the lock for as long as the test needs, however slowly processes start here.
    graph.latency = 3600
    graph.upsert_user({"id": "1a000000-0000-0000-0000-000000000009", "mail": "slow@contoso.com", "proxyAddresses": []})
    first = subprocess.Popen([sys.executable, "-m", "tests.launcher", "update", "--json"], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock_file = tmp_path / "state" / "run.lock"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (lock_file.exists() and lock_file.read_text().strip()):
            time.sleep(0.05)
        db = tmp_path / "state" / "state.db"
        before = db.read_bytes()
        second = run_cli("update", env, "--json")  # it must not wait for the lock: run_cli's timeout would fail it
        assert second.code == 3, second.stderr
        assert "another run holds the lock" in second.stderr and f"pid {first.pid}" in second.stderr and "since" in second.stderr
        assert first.poll() is None  # the first was still running: the second changed nothing
        assert db.read_bytes() == before
    finally:
        graph.latency = 0  # releases the first run's waiting request
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert "slow@contoso.com" in {r["address"] for r in receiver.records("addresses").values()}
