"""The pages a delta round writes, per B-tree: what its commit (write-ahead log, sync,
checkpoint) costs in, on a ``file:`` state. Prints numbers; not a timed test.

    .venv/bin/python bench/round_pages.py --users 100000 --fraction 0.01

One warm process (``bench/warm_runs.py``'s ``Warm``): a full update, then one delta round after
``--fraction`` of the users changed (``bench/incremental_sync.py``'s mix: a new ``mail``, a
group joined, a user deleted). The state's database is copied after the full update's run has
closed it (so checkpointed) and again after the round's; the two copies are compared page by
page, and each changed page is named by the B-tree that owns it in the later copy (SQLite's
``dbstat`` virtual table, in the ``sqlite3`` module's SQLite). A page the round freed or
reused for another B-tree counts under its new owner, or ``(free)``.

Printed: the round's wall and CPU seconds, its ``phaseSeconds``, and the changed pages, in all
and per B-tree. docs/performance.md, *What the two open bars are made of*, reads
them."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from full_sync import CREDENTIAL, DOMAINS, BenchError, service, tenant_ids  # noqa: E402
from incremental_sync import mutate  # noqa: E402
from warm_runs import Warm  # noqa: E402

from shared.storage.state import DB_NAME  # noqa: E402 - the file: state's database


def changed_pages(before: Path, after: Path) -> Counter[str]:
    """Pages whose bytes differ between two copies of one database, per owning B-tree of
    ``after`` (pages past the end of the shorter copy count as changed)."""
    with sqlite3.connect(f"file:{after}?mode=ro", uri=True) as conn:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        owner = dict(conn.execute("SELECT pageno, name FROM dbstat"))
    old, new = before.read_bytes(), after.read_bytes()
    out: Counter[str] = Counter()
    for start in range(0, max(len(old), len(new)), size):
        if old[start : start + size] != new[start : start + size]:
            out[owner.get(start // size + 1, "(free)")] += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fraction", type=float, default=0.01)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="round_pages."))
    groups_n = args.users // 10
    emulator = ["devstack.graph_emulator", "--port", "0", "--users", str(args.users), "--groups", str(groups_n), "--seed", str(args.seed)]
    receiver = ["devstack.sync_receiver", "--port", "0", "--domains", DOMAINS, "--credential", CREDENTIAL, "--no-log-bodies"]
    print(f"# {args.users:,} users, {args.fraction:g} of them changed; load average {os.getloadavg()[0]:.1f} at start", flush=True)
    users, groups, _ = tenant_ids(args.users, args.seed)
    try:
        with service(emulator, tmp / "emulator.err") as graph_url, service(receiver, tmp / "receiver.err") as sync_url:
            state = tmp / "state"
            state.mkdir()
            warm = Warm(graph_url, sync_url, state)
            full = warm.update()
            shutil.copyfile(state / DB_NAME, tmp / "before.db")
            changed = mutate(graph_url, users, groups, args.fraction, random.Random(args.seed), "pages")
            r = warm.update()
            shutil.copyfile(state / DB_NAME, tmp / "after.db")
            pages = changed_pages(tmp / "before.db", tmp / "after.db")
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = sum(pages.values())
    print(f"full update: {full['_wall']:.2f} s wall, {full['_cpu']:.2f} s CPU")
    print(f"round: {changed:,} users changed, {r['_wall']:.3f} s wall ({100 * r['_wall'] / full['_wall']:.1f} % of the full update), "
          f"{r['_cpu']:.3f} s CPU; phases {r.get('phaseSeconds')}")
    print(f"pages the round changed: {total:,}\n")
    print("| B-tree | pages | share |\n| --- | --- | --- |")
    for name, n in pages.most_common():
        print(f"| `{name}` | {n:,} | {100 * n / max(total, 1):.1f} % |")
    print(f"\n# load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
