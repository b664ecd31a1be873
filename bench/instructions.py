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
not in them: the native update's system CPU share is printed beside (``os.wait4``). Hash seeds are fixed (``PYTHONHASHSEED=0``), so two runs of the same code agree
to about 0.01 %: an A/B of a change is one run of each.

    .venv/bin/python bench/instructions.py --users 100000      # about 20-30 minutes

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

from full_sync import CREDENTIAL, DOMAINS, PYTHON, ROOT, BenchError, service  # noqa: E402

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


def native_update(env: dict[str, str]) -> tuple[float, float]:
    """The same update without valgrind: (user, system) CPU seconds (``os.wait4``)."""
    proc = subprocess.Popen([PYTHON, "-m", "shared", "update", "--json"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise BenchError(f"the native update exited {proc.returncode}")
    return usage.ru_utime, usage.ru_stime


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
    tmp = Path(tempfile.mkdtemp(prefix="instructions."))
    emulator = ["devstack.graph_emulator", "--port", "0", "--users", str(args.users), "--groups", str(args.users // 10), "--seed", str(args.seed)]
    receiver = ["devstack.sync_receiver", "--port", "0", "--domains", DOMAINS, "--credential", CREDENTIAL, "--no-log-bodies"]
    print(f"# python {platform.python_version()}, nproc {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} at start; files in {tmp}", flush=True)
    try:
        with service(emulator, tmp / "emulator.err") as graph_url:
            base = {**os.environ, "GRAPH_AUTH": "none", "GRAPH_BASE_URL": graph_url, "SYNC_API_CREDENTIAL": CREDENTIAL,
                    "DELETE_THRESHOLD_COUNT": str(10**9), "DELETE_THRESHOLD_PERCENT": "100"}
            runs = {}
            for tag in ("callgrind", "native"):  # each update: a fresh state and receiver
                state = tmp / f"state.{tag}"
                state.mkdir()
                with service(receiver, tmp / f"receiver.{tag}.err") as sync_url:
                    env = {**base, "SYNC_API_URL": sync_url, "SYNC_STATE": f"file:{state}"}
                    runs[tag] = callgrind([PYTHON, "-m", "shared", "update", "--json"], env, tmp / "update.out") if tag == "callgrind" else native_update(env)
            product = runs["callgrind"][0]
            user, system = runs["native"]
            small = typed(graph_url, args.typed_top, args.typed_top, tmp, "small")
            large = typed(graph_url, 2 * args.typed_top, args.typed_top, tmp, "large")
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    per_user = (large[0] - small[0]) / (large[1] - small[1])
    print("| N users | product: instructions | typed SDK: instructions per user | × N | ratio | product system CPU share (native) |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| {args.users:,} | {product:,} | {per_user:,.0f} | {per_user * args.users:,.0f} | {per_user * args.users / product:,.0f}x "
          f"| {100 * system / (user + system):.1f} % |")
    print(f"typed reads: {small[1]:,} users {small[0]:,} instructions, {large[1]:,} users {large[0]:,} instructions")
    print(f"# load average {os.getloadavg()[0]:.1f} at the end")
    if not args.keep:
        shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
