"""The sending stage's CPU per part (issue 13), on synthetic batches of the shape a full update
sends (1,000 records each: groups with a parent, users with two groups, addresses): building the
body, encoding it (the stdlib ``json`` against the product's orjson path, byte for byte the same),
gzip at levels 1 to 6 against ISA-L's igzip at levels 0 to 3 (CPU and size), the Idempotency-Key, and the state's side (journal line and
``StateDB.apply``). Best of ``--repeat`` runs of each part, in CPU seconds for all batches; on a
shared machine only ratios within one run are comparable. It prints numbers; it is not a timed test.

    .venv/bin/python bench/send_encoding.py --users 30000
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from isal import igzip

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.common import fastjson  # noqa: E402
from shared.model.records import AddressRecord, GroupRecord, UserRecord  # noqa: E402
from shared.plan.diff import Batch  # noqa: E402
from shared.send import idempotency_key  # noqa: E402
from shared.storage.state import StateDB  # noqa: E402
from shared.target.syncapi import changes_body, request_body  # noqa: E402


def batches(users: int, seed: int = 1) -> list[Batch]:
    """Groups (users / 10), users and their addresses (plus a third more aliases), shuffled."""
    rnd = random.Random(seed)

    def oid() -> str:
        a, b, c, d, e = (rnd.getrandbits(bits) for bits in (32, 16, 12, 12, 48))
        return f"{a:08x}-{b:04x}-4{c:03x}-8{d:03x}-{e:012x}"

    groups = [oid() for _ in range(max(1, users // 10))]
    people = [(oid(), f"first.last{i}@contoso.com") for i in range(users)]
    addresses = [a for _, a in people] + [f"alias{i}@fabrikam.com" for i in range(users // 3)]
    rnd.shuffle(addresses)
    out = [Batch("groups", [(g, GroupRecord(f"Group {g[:6]} – Zürich", (rnd.choice(groups),))) for g in groups[i : i + 1000]])
           for i in range(0, len(groups), 1000)]
    out += [Batch("users", [(u, UserRecord(a, tuple(sorted(rnd.sample(groups, min(2, len(groups))))))) for u, a in people[i : i + 1000]])
            for i in range(0, len(people), 1000)]
    out += [Batch("addresses", [(a, AddressRecord()) for a in addresses[i : i + 1000]]) for i in range(0, len(addresses), 1000)]
    return out


def best(repeat: int, work: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        work()
        times.append(time.process_time() - start)
    return min(times)


def apply_all(plan: list[Batch]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = StateDB(Path(tmp) / "state.db", "bench")
        try:
            for b in plan:
                db.apply(b.dataset, dict(b.upserts), b.deletes)
        finally:
            db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=30000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    plan = batches(args.users)
    docs = [changes_body(b.dataset, b.upserts, b.deletes) for b in plan]
    raws = [fastjson.dumps_bytes(d) for d in docs]
    assert raws == [json.dumps(d, ensure_ascii=False, separators=(",", ":")).encode() for d in docs]
    size = sum(map(len, raws))
    print(f"{len(plan)} batches, {size / 1e6:.1f} MB of JSON; CPU seconds for all of them (best of {args.repeat})")
    rows: list[tuple[str, float, str]] = [
        ("changes_body (the records as API objects)", best(args.repeat, lambda: [changes_body(b.dataset, b.upserts, b.deletes) for b in plan]), ""),
        ("encode: json.dumps (before)", best(args.repeat, lambda: [json.dumps(d, ensure_ascii=False, separators=(",", ":")).encode() for d in docs]), ""),
        ("encode: orjson (fastjson.dumps_bytes)", best(args.repeat, lambda: [fastjson.dumps_bytes(d) for d in docs]), ""),
        ("key: sorted second dump + SHA-256 (before)", best(args.repeat, lambda: [idempotency_key("p", "d", fastjson.dumps_sorted_bytes(d)) for d in docs]), ""),
        ("key: SHA-256 of the bytes sent", best(args.repeat, lambda: [idempotency_key("p", "d", r) for r in raws]), ""),
    ]
    for level in range(1, 7):
        cpu = best(args.repeat, lambda level=level: [gzip.compress(r, compresslevel=level, mtime=0) for r in raws])
        packed = sum(len(gzip.compress(r, compresslevel=level, mtime=0)) for r in raws)
        rows.append((f"gzip level {level}", cpu, f"{packed / size:.1%} of the JSON"))
    for level in range(4):
        cpu = best(args.repeat, lambda level=level: [igzip.compress(r, compresslevel=level, mtime=0) for r in raws])
        packed = sum(len(igzip.compress(r, compresslevel=level, mtime=0)) for r in raws)
        rows.append((f"isal igzip level {level}", cpu, f"{packed / size:.1%} of the JSON"))
    rows.append(("request_body (encode + igzip 1)", best(args.repeat, lambda: [request_body(d) for d in docs]), ""))
    rows.append(("journal lines of the confirmations", best(args.repeat, lambda: [fastjson.dumps(
        {"seq": 1, "dataset": b.dataset, "upsert": dict(b.upserts), "delete": b.deletes}) for b in plan]), ""))
    rows.append(("StateDB.apply (SQLite, a fresh state)", best(max(1, args.repeat // 2), lambda: apply_all(plan)), ""))
    for name, cpu, note in rows:
        print(f"  {name:46s} {cpu:7.3f} s  {note}")


if __name__ == "__main__":
    main()
