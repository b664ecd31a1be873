"""The full read's load into the directory cache (``shared/model/loading.py``), alone: the CPU
seconds of streaming a generated tenant's first delta round into an emptied cache (fold, merge,
candidate rows, indexes), on a file database with the state's settings. Prints a line per
repetition and the best; not a timed test.

    .venv/bin/python bench/stream_load.py --users 30000 --repeat 3

Entries come in Graph's shapes (the selected properties; a group in slices of at most
``--slice`` members, each repeating its properties), users, then groups, then contacts. The
whole update's CPU, the HTTP read included, is bench/full_sync.py's."""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack.tenant import generate_tenant  # noqa: E402
from shared.model.directory import SCHEMA, Cache  # noqa: E402

DOMAINS = ("contoso.com", "fabrikam.com")
SELECTED = {"users": ("id", "mail", "proxyAddresses", "userType"), "groups": ("id", "displayName", "mail", "proxyAddresses"),
            "contacts": ("id", "mail", "proxyAddresses")}


def entries(tenant: dict[str, list[dict[str, Any]]], slice_size: int) -> Iterator[tuple[str, dict[str, Any]]]:
    kinds = {g["id"]: "#microsoft.graph.group" for g in tenant["groups"]} | {u["id"]: "#microsoft.graph.user" for u in tenant["users"]}
    for collection in ("users", "groups", "contacts"):
        for obj in tenant[collection]:
            entry = {k: obj[k] for k in SELECTED[collection] if k in obj}
            if collection != "groups":
                yield collection, entry
                continue
            ops = [{"@odata.type": kinds.get(m, "#microsoft.graph.device"), "id": m} for m in obj["members"]]
            for i in range(0, max(len(ops), 1), slice_size):
                yield collection, {**entry, "members@delta": ops[i : i + slice_size]}


def load_once(round_entries: list[tuple[str, dict[str, Any]]], folder: Path) -> tuple[float, float, dict[str, int]]:
    conn = sqlite3.connect(folder / "state.db", isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "cache_size=-32768"):
        conn.execute(f"PRAGMA {pragma}")
    conn.executescript(SCHEMA)
    conn.execute("BEGIN")
    cache = Cache(conn, frozenset(DOMAINS), empty=True)
    start = time.process_time()
    load = cache.load()
    for collection, obj in round_entries:
        load.take(collection, obj)
    merged = time.process_time()
    counts = cache.finish_load()
    done = time.process_time()
    conn.execute("COMMIT")
    conn.close()
    return merged - start, done - merged, counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=30000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--slice", type=int, default=1000, help="members per group slice")
    args = parser.parse_args()
    tenant = generate_tenant(args.users, groups=args.users // 10, seed=1, domains=DOMAINS)
    round_entries = list(entries(tenant, args.slice))
    del tenant
    best = float("inf")
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="stream_load.") as folder:
            merge, finish, counts = load_once(round_entries, Path(folder))
        best = min(best, merge + finish)
        print(f"run {i + 1}: {len(round_entries):,} entries, merge {merge:.2f} s + finish {finish:.2f} s = {merge + finish:.2f} s CPU, objects {counts}")
    print(f"best: {best:.2f} s CPU for {args.users:,} users")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
