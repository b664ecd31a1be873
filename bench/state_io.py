"""State format benchmark (issue 4, section 4): what the state costs at N users, in the format
the product uses (SQLite) and in the JSON document of the previous release holding the same
data, so the choice is made on numbers. Prints a table; not a timed test.

    .venv/bin/python bench/state_io.py --users 100000

Measured, for each format: the size on disk, writing the whole state (a full read's commit),
opening it, and what a delta round touching 1 % of the users costs (SQLite: update the rows
and commit; JSON: there is no partial write, so parse and rewrite the whole document).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack.tenant import generate_tenant  # noqa: E402
from shared.model.directory import Affected, Round  # noqa: E402
from shared.storage.stores import FileStateStore  # noqa: E402

DOMAINS = ("contoso.com", "fabrikam.com")


def _member_type(mid: str, tenant: dict) -> str:
    return "#microsoft.graph.group" if mid in _group_ids(tenant) else "#microsoft.graph.user"


_GROUP_IDS: dict[int, set[str]] = {}


def _group_ids(tenant: dict) -> set[str]:
    key = id(tenant)
    if key not in _GROUP_IDS:
        _GROUP_IDS[key] = {g["id"] for g in tenant["groups"]}
    return _GROUP_IDS[key]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    args = parser.parse_args(argv)
    tenant = generate_tenant(args.users, groups=args.users // 10, seed=1, domains=DOMAINS)
    # The tenant as a first delta round (a group's members as its members@delta entries).
    rnd = Round()
    for u in tenant["users"]:
        rnd.take("users", u)
    for c in tenant["contacts"]:
        rnd.take("contacts", c)
    for g in tenant["groups"]:
        rnd.take("groups", {**{k: v for k, v in g.items() if k != "members"},
                            "members@delta": [{"@odata.type": _member_type(m, tenant), "id": m} for m in g.get("members") or ()]})
    changed = tenant["users"][: max(1, args.users // 100)]
    out: list[str] = []

    with tempfile.TemporaryDirectory(prefix="state_io.") as tmp:
        # --- SQLite, as the product writes it --------------------------------------------------
        store = FileStateStore(Path(tmp) / "sqlite")
        db = store.open()

        def write_all() -> dict:
            cache = db.cache(frozenset(DOMAINS))
            cache.clear()
            cache.apply_round(rnd, None)
            records = {d: cache.records(d) for d in ("addresses", "groups", "users")}
            for d, recs in records.items():
                db.replace_records(d, recs)
            db.commit()
            return records

        records, t_write = timed(write_all)
        n_records = sum(len(r) for r in records.values())
        counts = {t: db.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("objects", "members", "kept")}  # noqa: S608
        print(f"# {args.users:,} users: {n_records:,} records, {counts['objects']:,} cached objects, {counts['members']:,} memberships, "
              f"{counts['kept']:,} kept addresses", flush=True)
        db.close()
        size = sum(f.stat().st_size for f in (Path(tmp) / "sqlite").iterdir()) / 1e6
        db, t_open = timed(store.open)

        def delta_round() -> None:
            cache = db.cache(frozenset(DOMAINS))
            affected = Affected()
            cache.apply("users", [{"id": u["id"], "mail": f"moved.{i}@contoso.com"} for i, u in enumerate(changed)], affected)
            want = cache.desired("users", sorted(affected.users))
            db.apply("users", {k: v for k, v in want.items() if v is not None}, [])
            db.commit()

        _, t_delta = timed(delta_round)
        _, t_all = timed(lambda: {d: db.records(d) for d in records})
        rows = {t: db.conn.execute(f"SELECT * FROM {t}").fetchall() for t in ("objects", "kept", "users", "members")}  # noqa: S608
        db.close()
        out.append(f"| SQLite (state.db, this release) | {size:.1f} | {t_write:.2f} | {t_open * 1000:.0f} ms | {t_delta:.2f} | {t_all:.2f} |")

        # --- the previous release's JSON document, with the same cache in it ---------------------
        doc = {
            "records": {d: (sorted(r) if d == "addresses" else {k: [v[0], list(v[1])] for k, v in r.items()}) for d, r in records.items()},
            **rows,
        }
        path = Path(tmp) / "state.json.gz"

        def json_write() -> None:
            raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
            tmpf = path.with_suffix(".tmp")
            tmpf.write_bytes(gzip.compress(raw, compresslevel=1, mtime=0))
            os.replace(tmpf, path)

        _, t_jwrite = timed(json_write)
        jsize = path.stat().st_size / 1e6
        loaded, t_jload = timed(lambda: json.loads(gzip.decompress(path.read_bytes())))
        del loaded
        out.append(f"| gzip'd JSON document (release 1 style) | {jsize:.1f} | {t_jwrite:.2f} | {t_jload * 1000:.0f} ms | "
                   f"{t_jload + t_jwrite:.2f} (load + rewrite) | {t_jload:.2f} |")

    print("| format | size MB | write all s | open | a 1 % delta round s | read all records s |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
