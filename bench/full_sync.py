"""Full-sync benchmark (issue 2, section 8; issue 13, part 5): a synthetic tenant of N users on
the Graph emulator, the product's full ``update``, a second no-change ``update``, an incremental
``update`` after ``--churn`` of the users changed, and the same users read through msgraph-sdk's
typed models, side by side in one run: the full update's product CPU seconds against the typed
read's cost per user × N (CPU and wall), their ratio, peak RSS, and the incremental update's share
of the full one (in-process time, Graph requests).

The emulator, the receiver and each ``update`` are separate processes, so the peak RSS reported
is the product's alone (``os.wait4`` gives each child's own rusage). This prints numbers; it is
not a timed test, and on a shared machine only ratios within one run are comparable. Then
``--rounds`` more full updates (3 by default), each right before a typed read of
``--round-sample`` users, and the median of their ratios: this machine's speed drifts by tens of
percent within minutes, and the first table's typed read runs minutes after its update.

    .venv/bin/python bench/full_sync.py --users 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
CREDENTIAL = "sync:secret"
DOMAINS = "contoso.com,fabrikam.com"


class BenchError(Exception):
    """A run failed: the benchmark exits non-zero."""


# --- the services ----------------------------------------------------------------------------
@contextmanager
def service(args: list[str], log: Path, ready_timeout: float = 300.0) -> Iterator[str]:
    """Start ``python -m <args>`` and yield the base URL from its ``READY <url>`` line; stop it
    on exit. stderr goes to a file so a chatty server can never block on a full pipe."""
    with open(log, "wb") as err:
        proc = subprocess.Popen([PYTHON, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], ready_timeout)
        line = proc.stdout.readline() if readable else ""  # READY is printed whole and flushed
        if not line.startswith("READY "):
            raise BenchError(f"{args[0]} did not start within {ready_timeout:.0f} s (got {line!r}); see {log}")
        yield line.split()[1]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the product's update, in its own process ----------------------------------------------------
@dataclass
class UpdateRun:
    wall_seconds: float
    peak_rss_mb: float
    summary: dict[str, Any]
    cpu_seconds: float = 0.0  # user + system CPU time of the update process (less sensitive to load than wall time)
    system_seconds: float = 0.0  # the system part of cpu_seconds

    @property
    def objects(self) -> int:
        return sum(self.summary.get("read", {}).get("objects", {}).values())

    @property
    def changes(self) -> int:
        return sum(c["added"] + c["removed"] for c in self.summary["datasets"].values())


def update_env(graph_url: str, sync_url: str, state_dir: Path) -> dict[str, str]:
    """The environment of an ``update`` against the emulator and the receiver, with its state in ``state_dir``."""
    return {
        **os.environ,
        "GRAPH_AUTH": "none",
        "GRAPH_BASE_URL": graph_url,
        "SYNC_API_URL": sync_url,
        "SYNC_API_CREDENTIAL": CREDENTIAL,
        "SYNC_STATE": f"file:{state_dir}",
    }


def run_update(graph_url: str, sync_url: str, state_dir: Path, log_dir: Path, tag: str) -> UpdateRun:
    """``python -m shared update --json`` as a direct child; wall time and its own peak RSS."""
    env = update_env(graph_url, sync_url, state_dir)
    out_path, err_path = log_dir / f"{tag}.out", log_dir / f"{tag}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        # The test-only run options (SYNC_TEST_SEQUENTIAL_READ) go through the tests' launcher, never the product.
        door = "tests.launcher" if any(k.startswith("SYNC_TEST_") for k in env) else "shared"
        proc = subprocess.Popen([PYTHON, "-m", door, "update", "--json"], cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's rusage, not the max over all children
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    lines = out_path.read_text().strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise BenchError(f"update ({tag}) exited {proc.returncode}; see {err_path}")
    summary = json.loads(lines[-1])
    if not summary.get("ok"):
        raise BenchError(f"update ({tag}) failed: {summary.get('error')}")
    return UpdateRun(wall, usage.ru_maxrss / 1024, summary, usage.ru_utime + usage.ru_stime, usage.ru_stime)  # ru_maxrss is in KiB on Linux


def tenant_ids(users: int, seed: int) -> tuple[list[str], list[str], int]:
    """The user ids, group ids and membership count of the tenant the emulator builds, computed
    in a child process: this process stays small, because an update's peak RSS from
    ``os.wait4`` also counts the image it was forked from (a 1,000,000-user tenant held here
    showed as every update's peak)."""
    code = ("import json, sys\nfrom devstack.tenant import generate_tenant\n"
            f"t = generate_tenant({users}, groups={users // 10}, seed={seed}, domains={tuple(DOMAINS.split(','))!r})\n"
            "json.dump([[u['id'] for u in t['users']], [g['id'] for g in t['groups']], "
            "sum(len(g.get('members') or ()) for g in t['groups'])], sys.stdout)")
    out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, check=True).stdout
    user_ids, group_ids, memberships = json.loads(out)
    return user_ids, group_ids, memberships


# --- the read paths, in this process ---------------------------------------------------------------
class CountingSink:
    """A sink that only counts, so the raw read is timed without the projection."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    @property
    def objects(self) -> int:
        return len(self.seen)

    def take(self, collection: str, obj: dict[str, Any]) -> None:
        self.seen.add(obj["id"])


async def raw_read(graph_url: str) -> tuple[int, float]:
    """The product's read path alone (``GraphSource.read_directory``): (objects, seconds)."""

    sys.path.insert(0, str(ROOT))
    from shared.sources.graph import GraphSource

    source = GraphSource(graph_url)
    sink = CountingSink()
    try:
        start = time.perf_counter()
        await source.read_directory(sink)
        seconds = time.perf_counter() - start
    finally:
        await source.aclose()
    return sink.objects, seconds


async def typed_read(graph_url: str, limit: int, top: int = 999) -> tuple[int, float]:
    """The first ``limit`` users through msgraph-sdk's typed models, the way the SDK's docs
    page through ``/users`` (``top`` users a page): (users, seconds)."""
    from kiota_abstractions.authentication import AnonymousAuthenticationProvider
    from kiota_abstractions.base_request_configuration import RequestConfiguration
    from msgraph import GraphRequestAdapter, GraphServiceClient
    from msgraph.generated.users.users_request_builder import UsersRequestBuilder

    adapter = GraphRequestAdapter(AnonymousAuthenticationProvider())
    adapter.base_url = graph_url
    client = GraphServiceClient(request_adapter=adapter)
    query = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(select=["id", "mail", "proxyAddresses"], top=top)
    users = 0
    start, cpu = time.perf_counter(), time.process_time()
    page = await client.users.get(request_configuration=RequestConfiguration(query_parameters=query))
    while page is not None:
        users += len(page.value or [])
        if users >= limit or not page.odata_next_link:
            break
        page = await client.users.with_url(page.odata_next_link).get()
    TYPED_CPU.append(time.process_time() - cpu)  # this process's CPU: the SDK's own cost (the emulator is another process)
    return users, time.perf_counter() - start


TYPED_CPU: list[float] = []


# --- the report ------------------------------------------------------------------------------------
HEADER = ("| N users | objects | full update s | no-change update s | peak RSS MB | Graph req | sync req "
          "| raw read µs/obj | full update µs/obj | typed SDK µs/user | typed/raw | typed/update |")


def report(n: int, first: UpdateRun, second: UpdateRun, raw: tuple[int, float], typed: tuple[int, float]) -> list[str]:
    """The table row (wall times; peak RSS is the larger of the two updates) and the details."""
    raw_us = raw[1] / raw[0] * 1e6
    update_us = first.wall_seconds / first.objects * 1e6
    typed_us = typed[1] / typed[0] * 1e6
    row = (f"| {n:,} | {first.objects:,} | {first.wall_seconds:.1f} | {second.wall_seconds:.1f} "
           f"| {max(first.peak_rss_mb, second.peak_rss_mb):.0f} "
           f"| {first.summary['graphRequests']} / {second.summary['graphRequests']} "
           f"| {first.summary['syncRequests']} / {second.summary['syncRequests']} "
           f"| {raw_us:.1f} | {update_us:.1f} | {typed_us:,.0f} | {typed_us / raw_us:,.0f}x | {typed_us / update_us:,.0f}x |")
    return [
        HEADER,
        "|" + " --- |" * (HEADER.count("|") - 1),
        row,
        "",
        f"full update: {first.summary['durationSeconds']:.2f} s in-process, {first.cpu_seconds:.2f} s CPU, peak RSS {first.peak_rss_mb:.0f} MB, "
        f"{first.changes:,} changes sent; no-change update: {second.summary['durationSeconds']:.2f} s in-process, {second.cpu_seconds:.2f} s CPU, "
        f"peak RSS {second.peak_rss_mb:.0f} MB, {second.changes:,} changes sent",
        f"raw read: {raw[0]:,} objects in {raw[1]:.2f} s; typed read: {typed[0]:,} users in {typed[1]:.1f} s",
        "summary (full update): " + json.dumps({k: v for k, v in first.summary.items() if k in ("datasets", "read")}),
    ]


def side_by_side(n: int, full: UpdateRun, delta: UpdateRun, churn: float, typed: tuple[int, float]) -> list[str]:
    """Issue 13's figures in one table: the full update's product CPU against the typed read."""
    typed_cpu = TYPED_CPU[-1] / typed[0] if TYPED_CPU else float("nan")
    typed_wall = typed[1] / typed[0]
    head = ("| N users | full update: product CPU s | wall s | in-process s | peak RSS MB | typed SDK CPU ms/user | × N: CPU s "
            "| typed CPU ÷ product CPU | typed SDK wall ms/user | × N: wall s | typed wall ÷ product CPU "
            f"| incremental ({churn * 100:g} % churn): in-process s | share of full (in-process) | share (wall) | Graph req | share |")
    row = (f"| {n:,} | {full.cpu_seconds:.2f} | {full.wall_seconds:.2f} | {full.summary['durationSeconds']:.2f} | {full.peak_rss_mb:.0f} "
           f"| {typed_cpu * 1e3:.2f} | {typed_cpu * n:,.0f} | {typed_cpu * n / full.cpu_seconds:,.0f}x "
           f"| {typed_wall * 1e3:.2f} | {typed_wall * n:,.0f} | {typed_wall * n / full.cpu_seconds:,.0f}x "
           f"| {delta.summary['durationSeconds']:.2f} | {100 * delta.summary['durationSeconds'] / full.summary['durationSeconds']:.1f} % "
           f"| {100 * delta.wall_seconds / full.wall_seconds:.1f} % "
           f"| {delta.summary['graphRequests']} / {full.summary['graphRequests']} "
           f"| {100 * delta.summary['graphRequests'] / full.summary['graphRequests']:.1f} % |")
    return [head, "|" + " --- |" * (head.count("|") - 1), row,
            f"incremental update: {delta.changes:,} changes sent, {delta.cpu_seconds:.2f} s CPU, {delta.wall_seconds:.2f} s wall, "
            f"peak RSS {delta.peak_rss_mb:.0f} MB"]


def interleaved(graph_url: str, receiver: list[str], tmp: Path, n: int, rounds: int, sample: int) -> list[str]:
    """The ratio again, ``rounds`` times, each full update (a fresh state and receiver) right
    before a typed read of ``sample`` users: on a shared machine whose speed drifts by tens of
    percent within minutes, a product run and a typed read taken far apart compare two
    machines. Returns the table: each round and the median of the rounds."""
    # No peak RSS here: after a typed read this process is large, and a child's ru_maxrss counts
    # the parent's pages it shared before exec (the first table's update runs before any).
    rows = ["| round | full update: product CPU s | typed SDK CPU ms/user | × N: CPU s | typed CPU ÷ product CPU | load |",
            "| --- | --- | --- | --- | --- | --- |"]
    ratios: list[float] = []
    for r in range(1, rounds + 1):
        state = tmp / f"round{r}"
        state.mkdir()
        with service(receiver, tmp / f"receiver{r}.err") as sync_url:
            full = run_update(graph_url, sync_url, state, tmp, f"round{r}")
        users, _ = asyncio.run(typed_read(graph_url, sample))
        per_user = TYPED_CPU[-1] / users
        ratios.append(per_user * n / full.cpu_seconds)
        rows.append(f"| {r} | {full.cpu_seconds:.2f} | {per_user * 1e3:.2f} | {per_user * n:,.0f} "
                    f"| {ratios[-1]:,.0f}x | {os.getloadavg()[0]:.1f} |")
        shutil.rmtree(state)
    rows.append(f"| median of {rounds} | | | | {statistics.median(ratios):,.0f}x | |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--typed-sample", type=int, default=5_000, help="users read through the typed models (~6 ms each)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds of emulator sleep per Graph request")
    parser.add_argument("--churn", type=float, default=0.01, help="fraction of the users changed before the incremental update")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory with the logs")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of (full update, typed read) for the ratio")
    parser.add_argument("--round-sample", type=int, default=2_997, help="users read through the typed models in each round")
    args = parser.parse_args(argv)
    import random

    from incremental_sync import mutate  # bench/: the same changes as the incremental benchmark

    user_ids, group_ids, _ = tenant_ids(args.users, args.seed)
    os.environ["DELETE_THRESHOLD_COUNT"], os.environ["DELETE_THRESHOLD_PERCENT"] = str(10**9), "100"

    tmp = Path(tempfile.mkdtemp(prefix="full_sync."))
    emulator = ["devstack.graph_emulator", "--port", "0", "--users", str(args.users), "--groups", str(args.users // 10),
                "--seed", str(args.seed), "--latency", str(args.latency)]
    receiver = ["devstack.sync_receiver", "--port", "0", "--domains", DOMAINS, "--credential", CREDENTIAL, "--no-log-bodies"]
    print(f"# python {platform.python_version()}, nproc {os.cpu_count()}, {platform.machine()}, "
          f"load average {os.getloadavg()[0]:.1f} at start; logs in {tmp}", flush=True)
    try:
        with service(emulator, tmp / "emulator.err") as graph_url, service(receiver, tmp / "receiver.err") as sync_url:
            state = tmp / "state"
            state.mkdir()
            first = run_update(graph_url, sync_url, state, tmp, "update1")
            second = run_update(graph_url, sync_url, state, tmp, "update2")
            if second.changes:
                print(f"WARNING: the no-change update sent {second.changes} changes", file=sys.stderr)
            mutate(graph_url, user_ids, group_ids, args.churn, random.Random(args.seed), "churn")
            delta = run_update(graph_url, sync_url, state, tmp, "update3")
            raw = asyncio.run(raw_read(graph_url))
            typed = asyncio.run(typed_read(graph_url, args.typed_sample))
            rounds = interleaved(graph_url, receiver, tmp, args.users, args.rounds, args.round_sample) if args.rounds else []
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(report(args.users, first, second, raw, typed)))
    print()
    print("\n".join(side_by_side(args.users, first, delta, args.churn, typed)))
    if rounds:
        print()
        print("\n".join(rounds))
    print(f"# load average {os.getloadavg()[0]:.1f} at the end (other processes share the 2 cores)")
    if not args.keep:
        shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
