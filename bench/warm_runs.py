"""Warm-process benchmark: the full update and the incremental updates that follow it, all in
ONE long-lived Python process, the way the Functions host runs them (a warm worker imports the
package once and then runs one ``update`` per timer invocation). The CLI benchmarks
(``bench/full_sync.py``, ``bench/incremental_sync.py``) start a new interpreter per update, so
their small runs are dominated by start-up and imports; this one measures what a warm
invocation waits for. It prints numbers; it is not a timed test, and on a shared machine only
ratios within one run are comparable.

    .venv/bin/python bench/warm_runs.py --users 100000
    .venv/bin/python bench/warm_runs.py --users 1000000 --fractions 0.001
    .venv/bin/python bench/warm_runs.py --users 100000 --state blob   # the deployed Function's state, on Azurite

Per run: wall seconds (``time.perf_counter`` around the engine call), CPU seconds of this
process (``time.process_time``: the product's only; the emulator and the receiver are other
processes), the peak RSS so far (``ru_maxrss``, so it is the running maximum), Graph and sync
requests, records sent, and each run's share of the full update's wall and CPU time. The
changes between runs are those of ``bench/incremental_sync.py`` (new ``mail``, a group joined,
a user deleted).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from full_sync import CREDENTIAL, DOMAINS, BenchError, service, tenant_ids  # noqa: E402
from incremental_sync import mutate  # noqa: E402

from devstack.azurite import Azurite  # noqa: E402

HEADER = ("| run | changed users | read | wall s | CPU s | peak RSS MB (so far) | Graph req | sync req | records sent "
          "| wall vs full | CPU vs full | Graph req vs full |")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Warm:
    """The engine, imported once, run again and again in this process."""

    def __init__(self, graph_url: str, sync_url: str, state: Path, blob: str | None = None) -> None:
        """``state``: the ``file:`` state's directory; ``blob``: Azurite's connection string for a
        ``blob:`` state instead (the deployed Function's), its local copy in this process's
        temp directory, kept from run to run as on a warm instance."""
        env = {
            "GRAPH_AUTH": "none",
            "GRAPH_BASE_URL": graph_url,
            "SYNC_API_URL": sync_url,
            "SYNC_API_CREDENTIAL": CREDENTIAL,
            **({"SYNC_STATE": "blob:sync-state", "AzureWebJobsStorage": blob} if blob else {"SYNC_STATE": f"file:{state}"}),
            "DELETE_THRESHOLD_COUNT": str(10**9),
            "DELETE_THRESHOLD_PERCENT": "100",
        }
        from shared.config.settings import load_settings
        from shared.engine import run

        self.settings = load_settings(env)
        self.env = env
        self._run = run

    def update(self) -> dict:
        wall, cpu = time.perf_counter(), time.process_time()
        summary = asyncio.run(self._run("update", self.settings, env=self.env))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        out = summary.as_dict()
        if not out.get("ok"):
            raise BenchError(f"update failed: {out.get('error')}")
        out["_wall"], out["_cpu"], out["_rss"] = wall, cpu, _rss_mb()
        return out


def row(name: str, changed: int | str, r: dict, full: dict) -> str:
    sent = sum(c["added"] + c["removed"] for c in r["datasets"].values())
    return (f"| {name} | {changed} | {r.get('read', {}).get('kind', '?')} | {r['_wall']:.2f} | {r['_cpu']:.2f} | {r['_rss']:.0f} "
            f"| {r['graphRequests']} | {r['syncRequests']} | {sent:,} "
            f"| {100 * r['_wall'] / full['_wall']:.1f} % | {100 * r['_cpu'] / full['_cpu']:.1f} % "
            f"| {100 * r['graphRequests'] / full['graphRequests']:.1f} % |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fractions", default="0.001,0.01")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, state)")
    parser.add_argument("--state", choices=("file", "blob"), default="file",
                        help="file: a state directory (WAL, fsync); blob: a blob container on Azurite, as the deployed Function keeps it")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="warm_runs."))
    groups_n = args.users // 10
    emulator = ["devstack.graph_emulator", "--port", "0", "--users", str(args.users), "--groups", str(groups_n), "--seed", str(args.seed)]
    receiver = ["devstack.sync_receiver", "--port", "0", "--domains", DOMAINS, "--credential", CREDENTIAL, "--no-log-bodies"]
    print(f"# python {platform.python_version()}, nproc {os.cpu_count()}, {platform.machine()}, one warm process, "
          f"{args.state}: state, load average {os.getloadavg()[0]:.1f} at start; logs in {tmp}", flush=True)
    users, groups, _ = tenant_ids(args.users, args.seed)  # built in a child: this process holds only the ids
    rng = random.Random(args.seed)
    lines = [HEADER, "|" + " --- |" * (HEADER.count("|") - 1)]
    azurite = Azurite().start() if args.state == "blob" else None
    try:
        with service(emulator, tmp / "emulator.err") as graph_url, service(receiver, tmp / "receiver.err") as sync_url:
            state = tmp / "state"
            state.mkdir()
            warm = Warm(graph_url, sync_url, state, azurite.connection_string if azurite else None)
            print(f"# imports done, RSS {_rss_mb():.0f} MB", flush=True)
            full = warm.update()
            lines.append(row("full (first run)", "all", full, full))
            print(lines[-1], flush=True)
            same = warm.update()
            lines.append(row("delta, no change", 0, same, full))
            print(lines[-1], flush=True)
            for f in (float(x) for x in args.fractions.split(",")):
                changed = mutate(graph_url, users, groups, f, rng, f"r{f}")
                r = warm.update()
                lines.append(row(f"delta, {f * 100:g} % of users changed", f"{changed:,}", r, full))
                print(lines[-1], flush=True)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if azurite is not None:
            azurite.stop()
    print()
    print("\n".join(lines))
    print(f"# load average {os.getloadavg()[0]:.1f} at the end")
    if not args.keep:
        shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
