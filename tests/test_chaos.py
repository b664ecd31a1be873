"""Crash-proof progress (issue 5, section 3): updates killed with SIGKILL at random instants
(during the read, between batches, while the state is written), with random directory churn
in between, then one clean update: the service must equal the directory's projection, and
no Idempotency-Key may ever have been sent with two different bodies.

Seeded and bounded: CHAOS_SEED replays a failure (the seed is in every assertion message),
CHAOS_ROUNDS and CHAOS_SECONDS bound it by count and by time."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from devstack.graph_emulator import GraphEmulator
from devstack.sync_receiver import SyncReceiver
from devstack.tenant import generate_tenant
from shared.projection import project
from tests.stack import CREDENTIAL, DOMAINS, ROOT, base_env, run_cli, service_view

SEED = int(os.environ.get("CHAOS_SEED", "5150"))
ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "14"))
SECONDS = float(os.environ.get("CHAOS_SECONDS", "75"))


def expected(graph: GraphEmulator) -> dict:
    p = project(graph.snapshot(), DOMAINS)
    return {
        "addresses": set(p.datasets["addresses"]),
        "groups": {k: {"id": k, "name": v[0], "parentIds": list(v[1])} for k, v in p.datasets["groups"].items()},
        "users": {k: {"id": k, "address": v[0], "groupIds": list(v[1])} for k, v in p.datasets["users"].items()},
    }


def difference(have: dict, want: dict) -> dict:
    out = {}
    for d in want:
        h, w = have[d], want[d]
        if isinstance(w, set):
            out[d] = {"extra": sorted(h - w)[:5], "missing": sorted(w - h)[:5]}
        else:
            out[d] = {"extra": sorted(set(h) - set(w))[:5], "missing": sorted(set(w) - set(h))[:5],
                      "different": [(k, h[k], w[k]) for k in sorted(set(h) & set(w)) if h[k] != w[k]][:5]}
    return out


def churn(graph: GraphEmulator, rng: random.Random, n: int) -> None:
    snap = graph.snapshot()
    users = [u["id"] for u in snap["users"]]
    groups = [g["id"] for g in snap["groups"]]
    for i in range(rng.randint(3, 25)):
        op = rng.random()
        tag = f"{n}x{i}"
        if op < 0.35 and users:
            graph.upsert_user({"id": rng.choice(users), "mail": rng.choice([f"c{tag}@contoso.com", None, f"C{tag}@Fabrikam.com"])})
        elif op < 0.5:
            uid = f"1c{n:06d}-0000-0000-0000-{i:012d}"
            graph.upsert_user({"id": uid, "mail": f"n{tag}@contoso.com", "proxyAddresses": [f"smtp:alt{tag}@fabrikam.com"]})
            users.append(uid)
        elif op < 0.62 and users:
            uid = users.pop(rng.randrange(len(users)))
            graph.delete_user(uid)
        elif op < 0.8 and groups and users:
            graph.add_member(rng.choice(groups), rng.choice(users + groups))
        elif op < 0.9 and groups:
            gid = rng.choice(groups)
            members = next(g["members"] for g in snap["groups"] if g["id"] == gid)
            if members:
                try:
                    graph.remove_member(gid, rng.choice(members))
                except KeyError:
                    pass
        elif groups:
            graph.upsert_group({"id": rng.choice(groups), "displayName": f"Renamed {tag}"})


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["file", "blob"])
def test_updates_killed_at_random_instants_lose_nothing(tmp_path, backend, request):
    rng = random.Random(SEED)
    graph = GraphEmulator(generate_tenant(150, groups=12, seed=SEED % 1000, domains=tuple(DOMAINS[:2])), latency=0.01)
    receiver = SyncReceiver(domains=DOMAINS, credential=CREDENTIAL)
    graph.start()
    receiver.start()
    try:
        if backend == "file":
            state = f"file:{tmp_path / 'state'}"
            extra = {}
        else:  # Azurite; a killed holder's lease is taken over at once (same host, process gone)
            azurite = request.getfixturevalue("azurite")
            state = f"blob:chaos-{SEED}-{os.getpid()}"
            extra = {"AzureWebJobsStorage": azurite.connection_string, "TMPDIR": str(tmp_path / "tmp")}
            (tmp_path / "tmp").mkdir()
        env = {**base_env(graph.base_url, receiver.base_url, state), "SYNC_TEST_MAX_ITEMS": "3", **extra}
        deadline = time.monotonic() + SECONDS
        kills = finished = 0
        # Kill instants are drawn within an estimate of a run's length: a kill says the run takes
        # longer than that instant (the estimate grows), a finished run says how long it took.
        estimate = 1.0
        for n in range(ROUNDS):
            if time.monotonic() > deadline:
                break
            if n:
                churn(graph, rng, n)
            if n % 4 == 3:
                graph.expire_delta_tokens()  # some rounds are full reads again
            started = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-m", "shared", "update"], cwd=ROOT, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            kill_at = started + rng.uniform(0.05, 1.0) * estimate
            while proc.poll() is None and time.monotonic() < kill_at:
                time.sleep(0.005)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                estimate *= 1.2
            else:
                estimate = (estimate + time.monotonic() - started) / 2
                finished += 1
            proc.wait()
            assert receiver.keys_reused_with_different_body() == [], f"CHAOS_SEED={SEED} round {n}"
        clean = run_cli("update", env, "--json")
        assert clean.code == 0, f"CHAOS_SEED={SEED}: {clean.stderr[-2000:]}"
        have, want = service_view(receiver), expected(graph)
        assert have == want, f"CHAOS_SEED={SEED}: the service differs from the projection: {difference(have, want)}"
        assert receiver.keys_reused_with_different_body() == [], f"CHAOS_SEED={SEED}"
        assert kills >= 3, f"CHAOS_SEED={SEED}: only {kills} runs were killed ({finished} finished); the test did not test"
        # and the next run has nothing left to send
        again = run_cli("update", env, "--json").summary
        assert all(c["added"] == 0 and c["removed"] == 0 for c in again["datasets"].values()), f"CHAOS_SEED={SEED}"
        print(f"chaos ({backend}): seed {SEED}, {kills} killed, {finished} finished, then converged")
    finally:
        graph.stop()
        receiver.stop()
