"""Incremental-sync benchmark (issue 4, section 6): a full update of a synthetic tenant, then
delta updates after changes to 0.1 %, 1 % and 10 % of the users, optionally with latency per
Graph request. Each update is its own process (``python -m shared update --json``), so wall
time includes interpreter start-up and peak RSS is the product's own. Prints a table; it is
not a timed test, and on a shared machine only ratios within one run are comparable.

    .venv/bin/python bench/incremental_sync.py --users 100000
    .venv/bin/python bench/incremental_sync.py --users 100000 --latency 0.1

The changes: of the chosen users, 85 % get a new ``mail`` (a partial object in the delta),
10 % join a group (``members@delta``), 5 % are deleted. The deletion guard's thresholds are
raised for the run (they would hold the 10 % round's 500 deletions, as designed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from full_sync import CREDENTIAL, DOMAINS, BenchError, UpdateRun, run_update, service, tenant_ids  # noqa: E402


def mutate(graph_url: str, users: list[str], groups: list[str], fraction: float, rng: random.Random, tag: str) -> int:
    """Change ``fraction`` of the users through the emulator's admin endpoint; returns how many."""
    k = max(1, round(len(users) * fraction))
    chosen = rng.sample(users, k)
    ops = []
    for i, uid in enumerate(chosen):
        roll = i % 20
        if roll == 0:
            ops.append({"op": "delete_user", "args": {"id": uid}})
            users.remove(uid)
        elif roll in (1, 2):
            ops.append({"op": "add_member", "args": {"group_id": rng.choice(groups), "member_id": uid}})
        else:
            ops.append({"op": "upsert_user", "args": {"obj": {"id": uid, "mail": f"changed.{tag}.{i}@contoso.com"}}})
    root = graph_url.rsplit("/v1.0", 1)[0]
    for start in range(0, len(ops), 5000):
        req = urllib.request.Request(f"{root}/_emulator/mutations", data=json.dumps(ops[start : start + 5000]).encode(),  # noqa: S310
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=300) as resp:  # noqa: S310 - the loopback emulator, http only
            resp.read()
    return k


def state_size(state: Path) -> float:
    return sum(f.stat().st_size for f in state.iterdir() if f.is_file()) / 1e6


HEADER = "| run | changed users | read | wall s | in-process s | peak RSS MB | Graph req | sync req | records sent | state MB | time vs full | Graph req vs full |"


def row(name: str, changed: int | str, r: UpdateRun, full: UpdateRun, size: float) -> str:
    read = r.summary.get("read", {}).get("kind", "?")
    sent = sum(c["added"] + c["removed"] for c in r.summary["datasets"].values())
    return (f"| {name} | {changed} | {read} | {r.wall_seconds:.2f} | {r.summary['durationSeconds']:.2f} | {r.peak_rss_mb:.0f} "
            f"| {r.summary['graphRequests']} | {r.summary['syncRequests']} | {sent:,} | {size:.1f} "
            f"| {100 * r.wall_seconds / full.wall_seconds:.1f} % | {100 * r.summary['graphRequests'] / full.summary['graphRequests']:.1f} % |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds of emulator sleep per Graph request")
    parser.add_argument("--fractions", default="0.001,0.01,0.1")
    parser.add_argument("--sequential", action="store_true", help="read users, groups and contacts one after another "
                        "(SYNC_TEST_SEQUENTIAL_READ=1), to measure what reading them concurrently buys")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="incremental_sync."))
    groups_n = args.users // 10
    emulator = ["devstack.graph_emulator", "--port", "0", "--users", str(args.users), "--groups", str(groups_n),
                "--seed", str(args.seed), "--latency", str(args.latency)]
    receiver = ["devstack.sync_receiver", "--port", "0", "--domains", DOMAINS, "--credential", CREDENTIAL, "--no-log-bodies"]
    print(f"# python {platform.python_version()}, nproc {os.cpu_count()}, {platform.machine()}, latency {args.latency * 1000:.0f} ms "
          f"per Graph request, {'sequential' if args.sequential else 'concurrent'} collection reads, load average {os.getloadavg()[0]:.1f} at start; logs in {tmp}", flush=True)
    # The same deterministic tenant the emulator builds, for the ids to change (built in a child process).
    users, groups, memberships = tenant_ids(args.users, args.seed)
    rng = random.Random(args.seed)
    os.environ["DELETE_THRESHOLD_COUNT"] = str(10**9)
    os.environ["DELETE_THRESHOLD_PERCENT"] = "100"
    if args.sequential:
        os.environ["SYNC_TEST_SEQUENTIAL_READ"] = "1"
    lines = [HEADER, "|" + " --- |" * (HEADER.count("|") - 1)]
    try:
        with service(emulator, tmp / "emulator.err") as graph_url, service(receiver, tmp / "receiver.err") as sync_url:
            state = tmp / "state"
            state.mkdir()
            full = run_update(graph_url, sync_url, state, tmp, "full")
            lines.append(row("full (first run)", "all", full, full, state_size(state)))
            print(lines[-1], flush=True)
            same = run_update(graph_url, sync_url, state, tmp, "nochange")
            lines.append(row("delta, no change", 0, same, full, state_size(state)))
            print(lines[-1], flush=True)
            for f in (float(x) for x in args.fractions.split(",")):
                changed = mutate(graph_url, users, groups, f, rng, f"r{f}")
                r = run_update(graph_url, sync_url, state, tmp, f"delta{f}")
                lines.append(row(f"delta, {f * 100:g} % of users changed", f"{changed:,}", r, full, state_size(state)))
                print(lines[-1], flush=True)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print()
    print(f"tenant: {args.users:,} users, {groups_n:,} groups, {memberships:,} memberships")
    print("\n".join(lines))
    print(f"# load average {os.getloadavg()[0]:.1f} at the end")
    if not args.keep:
        shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    start = time.perf_counter()
    code = main()
    print(f"# benchmark took {time.perf_counter() - start:.0f} s")
    sys.exit(code)
