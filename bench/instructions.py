"""Issue 13's CPU ratio counted in instructions, which a busy machine does not move: the
product's full ``update`` of N users against the typed-SDK read of the same users, each run
under ``valgrind --tool=callgrind`` (``bench/full_sync.py`` measures the same ratio in CPU
seconds, which drift by tens of percent within minutes on this shared 2-core machine).

- **product**: every instruction of ``python -m shared update --json`` (start-up and imports
  included, as the CPU figure includes them), the emulator and the receiver being other
  processes;
- **typed SDK**: ``bench/full_sync.py``'s ``typed_read`` of one page of ``--typed-top`` users
  and of two; their difference, divided by the users it adds, is the SDK's cost per user
  without its imports and set-up (a page of 200 rather than the SDK's 999, which would take
  an hour under callgrind: the page's own overhead is one request per 200 users parsed);
- **ratio**: typed instructions per user × N ÷ the product's instructions.

Instructions are user-space work only. The kernel's share (socket and file system calls) is
not in them: the native update's system CPU share is printed beside (``os.wait4``, through
``bench/full_sync.py``'s ``run_update``). Hash seeds are fixed (``PYTHONHASHSEED=0``), so two runs of the same code agree
to about 0.01 %: an A/B of a change is one run of each.

    .venv/bin/python bench/instructions.py --users 100000      # about 20-30 minutes

The product's modules are compiled first (``compileall``), as they are after any first run of a
Python that may write its ``__pycache__``: this machine sets ``PYTHONDONTWRITEBYTECODE=1``, under
which every run would compile the package's ~100 modules again (about 0.6 billion instructions,
a cost a warm Function instance pays once, not per run).

Needs ``valgrind`` on PATH. Prints numbers; not a timed test.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from full_sync import CREDENTIAL, DOMAINS, PYTHON, ROOT, BenchError, run_update, service, update_env  # noqa: E402

TYPED = """import asyncio, sys
sys.path.insert(0, {bench!r})
from full_sync import typed_read
users, _ = asyncio.run(typed_read({url!r}, {limit}, top={top}))
print("USERS", users)
"""


def callgrind(cmd: list[str], env: dict[str, str], out: Path) -> tuple[int, str]:
    """Run ``cmd`` under callgrind; (instructions of the whole process, its standard output)."""
    proc = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
                          cwd=ROOT, env={**env, "PYTHONHASHSEED": "0"}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"{cmd[1:4]} under callgrind exited {proc.returncode}: {proc.stderr[-500:]}")
    found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(errors="replace"), re.M)
    if found is None:
        raise BenchError(f"no instruction total in {out}")
    return int(found.group(1)), proc.stdout


def typed(url: str, users: int, top: int, tmp: Path, tag: str) -> tuple[int, int]:
    """(instructions, users read) of one typed read of ``users`` users under callgrind."""
    code = TYPED.format(bench=str(ROOT / "bench"), url=url, limit=users, top=top)
    instructions, out = callgrind([PYTHON, "-c", code], dict(os.environ), tmp / f"typed.{tag}.out")
    read = int(out.split("USERS", 1)[1].split()[0])
    return instructions, read


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--typed-top", type=int, default=200, help="users per typed page; the typed reads take one page and two")
    parser.add_argument("--keep", action="store_true", help="keep the callgrind files")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("error: valgrind is not on PATH", file=sys.stderr)
        return 1
    subprocess.run([PYTHON, "-m", "compileall", "-q", "shared"], cwd=ROOT, check=True)
    tmp = Path(tempfile.mkdtemp(prefix="instructions."))
    emulator = ["devstack.graph_emulator", "--port", "0", "--users", str(args.users), "--groups", str(args.users // 10), "--seed", str(args.seed)]
    receiver = ["devstack.sync_receiver", "--port", "0", "--domains", DOMAINS, "--credential", CREDENTIAL, "--no-log-bodies"]
    print(f"# python {platform.python_version()}, nproc {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} at start; files in {tmp}", flush=True)
    try:
        with service(emulator, tmp / "emulator.err") as graph_url:
            # The guard must let a first full update through (as in bench/full_sync.py).
            os.environ["DELETE_THRESHOLD_COUNT"], os.environ["DELETE_THRESHOLD_PERCENT"] = str(10**9), "100"
            with service(receiver, tmp / "receiver.callgrind.err") as sync_url:
                (tmp / "state.callgrind").mkdir()
                env = update_env(graph_url, sync_url, tmp / "state.callgrind")
                product, _ = callgrind([PYTHON, "-m", "shared", "update", "--json"], env, tmp / "update.out")
            with service(receiver, tmp / "receiver.native.err") as sync_url:  # the same update without valgrind: its system CPU share
                (tmp / "state.native").mkdir()
                native = run_update(graph_url, sync_url, tmp / "state.native", tmp, "native")
            small = typed(graph_url, args.typed_top, args.typed_top, tmp, "small")
            large = typed(graph_url, 2 * args.typed_top, args.typed_top, tmp, "large")
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    per_user = (large[0] - small[0]) / (large[1] - small[1])
    print("| N users | product: instructions | typed SDK: instructions per user | × N | ratio | product system CPU share (native) |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| {args.users:,} | {product:,} | {per_user:,.0f} | {per_user * args.users:,.0f} | {per_user * args.users / product:,.0f}x "
          f"| {100 * native.system_seconds / native.cpu_seconds:.1f} % |")
    print(f"typed reads: {small[1]:,} users {small[0]:,} instructions, {large[1]:,} users {large[0]:,} instructions")
    print(f"# load average {os.getloadavg()[0]:.1f} at the end")
    if not args.keep:
        shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
