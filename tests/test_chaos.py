"""Crash-proof progress (issue 5, section 3): updates killed with SIGKILL at random instants
(during the read, between batches, while the state is written), with random directory churn
in between, then one clean update: the service must equal the directory's projection, and
no Idempotency-Key may ever have been sent with two different bodies.

Issue 9: the churn also undoes, in the next round, changes that a killed run may already have
sent (a user created then deleted, an alias added then removed, a member added then removed or
removed then re-added, a group renamed and renamed back, a user deleted then restored), and the
kill instants include the start and the end of a run, where the run lock is claimed, leased and
released (tests/test_lock.py kills at each of those requests deterministically).

Seeded and bounded: several seeds per backend (CHAOS_SEED replays one; the seed is in every
assertion message), CHAOS_ROUNDS rounds per seed, and CHAOS_SECONDS bounds the whole test."""

from __future__ import annotations

import functools
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
from shared.model.directory import project
from tests.stack import CREDENTIAL, DOMAINS, ROOT, base_env, run_cli, service_view

SEEDS = [int(os.environ["CHAOS_SEED"])] if os.environ.get("CHAOS_SEED") else [5150, 17, 2026]
ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "8"))
SECONDS = float(os.environ.get("CHAOS_SECONDS", "100"))


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


def exists(graph: GraphEmulator, oid: str) -> bool:
    snap = graph.snapshot()
    return any(o["id"] == oid for c in ("users", "groups") for o in snap[c])


def restore(graph: GraphEmulator, user: dict, parents: list[str]) -> None:
    """A deleted user back, with the memberships it had (as Entra restores them)."""
    graph.upsert_user(user)
    for gid in parents:
        if exists(graph, gid):
            graph.add_member(gid, user["id"])


def undo_all(steps: list) -> None:
    """Undo in order; a step whose object the later random churn removed has nothing to undo."""
    for step in steps:
        try:
            step()
        except KeyError:
            pass


def churn(graph: GraphEmulator, rng: random.Random, n: int, undo: list) -> None:
    """Random changes; some of them are undoable, and their undo goes to ``undo`` (done after
    the next killed run, so that a change the killed run sent is undone in Entra)."""
    snap = graph.snapshot()
    by_id = {o["id"]: o for c in ("users", "groups") for o in snap[c]}
    for i in range(rng.randint(1, 3)):
        op = rng.random()
        tag = f"{n}u{i}"
        users_now = [u["id"] for u in snap["users"]]
        groups_now = [g["id"] for g in snap["groups"]]
        if not users_now or not groups_now:
            break
        if op < 1 / 6:
            uid = f"1d{n:06d}-0000-0000-0000-{i:012d}"
            graph.upsert_user({"id": uid, "mail": f"t{tag}@contoso.com", "proxyAddresses": []})
            graph.add_member(rng.choice(groups_now), uid)
            undo.append(lambda uid=uid: graph.delete_user(uid))
        elif op < 2 / 6:
            user = by_id[rng.choice(users_now)]
            before = list(user.get("proxyAddresses") or [])
            graph.upsert_user({"id": user["id"], "proxyAddresses": [*before, f"smtp:alias{tag}@fabrikam.com"]})
            undo.append(lambda uid=user["id"], before=before: exists(graph, uid) and graph.upsert_user({"id": uid, "proxyAddresses": before}))
        elif op < 3 / 6:
            gid, uid = rng.choice(groups_now), rng.choice(users_now)
            if uid not in by_id[gid].get("members", []):
                graph.add_member(gid, uid)
                undo.append(lambda gid=gid, uid=uid: graph.remove_member(gid, uid))
        elif op < 4 / 6:
            gid = rng.choice(groups_now)
            members = [m for m in by_id[gid].get("members", []) if m in by_id]
            if members:
                mid = rng.choice(members)
                graph.remove_member(gid, mid)
                undo.append(lambda gid=gid, mid=mid: graph.add_member(gid, mid))
        elif op < 5 / 6:
            group = by_id[rng.choice(groups_now)]
            graph.upsert_group({"id": group["id"], "displayName": f"Renamed {tag}"})
            undo.append(functools.partial(graph.upsert_group, {"id": group["id"], "displayName": group.get("displayName")}))
        else:
            user = by_id[rng.choice(users_now)]
            parents = [g["id"] for g in snap["groups"] if user["id"] in g.get("members", [])]
            graph.delete_user(user["id"])

            undo.append(functools.partial(restore, graph, dict(user), parents))
        snap = graph.snapshot()
        by_id = {o["id"]: o for c in ("users", "groups") for o in snap[c]}
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
    deadline = time.monotonic() + SECONDS
    estimate: list[float] = []  # a run's length, carried from seed to seed
    for seed in SEEDS:
        if time.monotonic() > deadline:
            break
        one_seed(tmp_path / str(seed), backend, request, seed, deadline, estimate)


def kill_instant(rng: random.Random, estimate: float) -> float:
    """Seconds after the start: a quarter of the kills fall at the start of a run (the lock is
    claimed and leased, the state opened), a quarter at its end (commit, publish, the lock's
    release), the rest anywhere."""
    where = rng.random()
    if where < 0.25:
        return rng.uniform(0.0, 0.2) * estimate
    if where < 0.5:
        return rng.uniform(0.8, 1.1) * estimate
    return rng.uniform(0.05, 1.0) * estimate


def one_seed(tmp_path, backend: str, request, seed: int, deadline: float, length: list[float]) -> None:
    rng = random.Random(seed)
    tmp_path.mkdir()
    graph = GraphEmulator(generate_tenant(150, groups=12, seed=seed % 1000, domains=tuple(DOMAINS[:2])), latency=0.01)
    receiver = SyncReceiver(domains=DOMAINS, credential=CREDENTIAL)
    graph.start()
    receiver.start()
    try:
        if backend == "file":
            state = f"file:{tmp_path / 'state'}"
            extra = {}
        else:  # Azurite; a killed holder's lease is taken over at once (same host, process gone)
            azurite = request.getfixturevalue("azurite")
            state = f"blob:chaos-{seed}-{os.getpid()}"
            extra = {"AzureWebJobsStorage": azurite.connection_string, "TMPDIR": str(tmp_path / "tmp")}
            (tmp_path / "tmp").mkdir()
        env = {**base_env(graph.base_url, receiver.base_url, state), "SYNC_TEST_MAX_ITEMS": "3", **extra}
        kills = finished = 0
        # Kill instants are drawn within an estimate of a run's length: a kill says the run takes
        # longer than that instant (the estimate grows), a finished run says how long it took.
        # The very first run is let finish, to measure it.
        estimate = length[0] if length else float("inf")
        undo: list = []
        for n in range(ROUNDS):  # CHAOS_SECONDS bounds the seeds, never a seed's rounds
            undo_all(undo)  # undo what the last (maybe killed) run may have sent
            undo = []
            if n:
                churn(graph, rng, n, undo)
            if n % 4 == 1:
                # Some rounds are full reads again: early ones, so that the last rounds and the
                # clean update are delta rounds, which must repair what killed runs left without
                # the help of a full read.
                graph.expire_delta_tokens()
            started = time.monotonic()
            errors = open(tmp_path / f"stderr-{n}.txt", "w+b")  # noqa: SIM115 - closed below
            proc = subprocess.Popen([sys.executable, "-m", "tests.launcher", "update"], cwd=ROOT, env=env,
                                    stdout=subprocess.DEVNULL, stderr=errors)
            if not length:
                kill_at = started + 600.0  # the first run: measured
            elif n % 4 == 1:
                # Surely killed (no run finishes in 0.15 s: the interpreter is still starting, or
                # the lock is being claimed), so that every seed kills runs whatever the timing.
                kill_at = started + min(0.15, kill_instant(rng, estimate))
            else:
                kill_at = started + kill_instant(rng, estimate)
            while proc.poll() is None and time.monotonic() < kill_at:
                time.sleep(0.005)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                estimate *= 1.2
                length[:] = [estimate]
                proc.wait()
            else:
                took = time.monotonic() - started
                estimate = took if not length else (estimate + took) / 2
                length[:] = [estimate]
                finished += 1
                # A run that ended by itself must have succeeded: a refusal (say, a lock a killed
                # run left behind) is a failure, not something to wait out.
                errors.seek(0)
                assert proc.returncode == 0, f"CHAOS_SEED={seed} round {n}: {errors.read()[-2000:]!r}"
            errors.close()
            assert receiver.keys_reused_with_different_body() == [], f"CHAOS_SEED={seed} round {n}"
        undo_all(undo)
        clean = run_cli("update", env, "--json")
        assert clean.code == 0, f"CHAOS_SEED={seed}: {clean.stderr[-2000:]}"
        have, want = service_view(receiver), expected(graph)
        assert have == want, f"CHAOS_SEED={seed}: the service differs from the projection: {difference(have, want)}"
        assert receiver.keys_reused_with_different_body() == [], f"CHAOS_SEED={seed}"
        assert kills >= 2, f"CHAOS_SEED={seed}: only {kills} runs were killed ({finished} finished); the test did not test"
        # and the next run has nothing left to send
        again = run_cli("update", env, "--json").summary
        assert all(c["added"] == 0 and c["removed"] == 0 for c in again["datasets"].values()), f"CHAOS_SEED={seed}"
        print(f"chaos ({backend}): seed {seed}, {kills} killed, {finished} finished, then converged")
    finally:
        graph.stop()
        receiver.stop()
