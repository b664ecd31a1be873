"""The ``blob:`` state on the wire (issue 13, part 3), against Azurite: the state of a synthetic
tenant built by the product itself (``python -m shared update`` on the Graph emulator, the sync
API receiver and ``SYNC_STATE=blob:``), then what each run moves. Prints numbers; not a timed
test.

    .venv/bin/python bench/blob_state.py --users 100000

Printed: the local database's size; the stored size (bytes of every state blob: the parts and
the manifest), and what compression alone gives at 1 and 4 MiB chunks; the bytes the full
run's commit uploaded; the bytes a warm instance's incremental run uploaded after 1 % of the
users changed (the same temp directory, so the CLI finds its local copy), as a share of the
stored size; a cold instance's open (a new local directory): bytes downloaded and time; what
``status`` on another cold instance downloads (the manifest and the small facts part); and
last a periodic full reconcile on the warm instance (``FULL_SYNC_INTERVAL_HOURS=0``: a full read
over the existing state, which rewrites its rows). Each update's peak RSS is its process's
``ru_maxrss`` (``os.wait4``). Bytes uploaded are read from the container as a user would: the
sizes of the parts a run added (parts are written once, under the hash of their content) plus
the manifest."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess  # noqa: S404 - the product's own CLI
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from full_sync import CREDENTIAL, DOMAINS, PYTHON, ROOT, BenchError, UpdateRun, service  # noqa: E402
from incremental_sync import mutate  # noqa: E402

from devstack.azurite import Azurite  # noqa: E402
from devstack.tenant import generate_tenant  # noqa: E402
from shared.storage.blob_store import BlobStateStore  # noqa: E402
from shared.storage.image import LEVEL, MANIFEST_NAME, PARTS, compress  # noqa: E402

CONTAINER = "bench-state"


def blobs(container) -> dict[str, int]:
    return {b.name: b.size for b in container.list_blobs() if b.name.startswith(PARTS) or b.name == MANIFEST_NAME}


def uploaded(before: dict[str, int], after: dict[str, int]) -> int:
    """Bytes a run wrote: the parts it added and its manifest."""
    return sum(n for name, n in after.items() if name.startswith(PARTS) and name not in before) + after.get(MANIFEST_NAME, 0)


def compressed(path: Path, chunk: int) -> int:
    total = 0
    with open(path, "rb") as fh:
        while data := fh.read(chunk):
            total += len(compress(data))
    return total


def blob_update(graph: str, sync: str, tmp: Path, env: dict[str, str], tag: str) -> UpdateRun:
    """``python -m shared update --json`` with ``blob:`` state, as a direct child (its own rusage)."""
    full_env = {**os.environ, "GRAPH_AUTH": "none", "GRAPH_BASE_URL": graph, "SYNC_API_URL": sync, "SYNC_API_CREDENTIAL": CREDENTIAL, **env}
    out_path, err_path = tmp / f"{tag}.out", tmp / f"{tag}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([PYTHON, "-m", "shared", "update", "--json"], cwd=ROOT, env=full_env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = out_path.read_text().strip().splitlines()
    if proc.returncode != 0 or not lines or not json.loads(lines[-1]).get("ok"):
        raise BenchError(f"update ({tag}) exited {proc.returncode}; see {err_path}")
    return UpdateRun(wall, usage.ru_maxrss / 1024, json.loads(lines[-1]), usage.ru_utime + usage.ru_stime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="blob_state."))
    (tmp / "instance").mkdir()
    groups_n = args.users // 10
    emulator = ["devstack.graph_emulator", "--port", "0", "--users", str(args.users), "--groups", str(groups_n), "--seed", str(args.seed)]
    receiver = ["devstack.sync_receiver", "--port", "0", "--domains", DOMAINS, "--credential", CREDENTIAL, "--no-log-bodies"]
    tenant = generate_tenant(args.users, groups=groups_n, seed=args.seed, domains=tuple(DOMAINS.split(",")))
    users, groups = [u["id"] for u in tenant["users"]], [g["id"] for g in tenant["groups"]]
    del tenant
    print(f"# {args.users:,} users, {groups_n:,} groups; load average {os.getloadavg()[0]:.1f} at start; logs in {tmp}", flush=True)
    os.environ.update(DELETE_THRESHOLD_COUNT=str(10**9), DELETE_THRESHOLD_PERCENT="100")
    from azure.storage.blob import BlobServiceClient

    azurite = Azurite().start()
    try:
        # SYNC_STATE=blob:...; TMPDIR is the instance's temp directory, where its local copy lives.
        env = {"SYNC_STATE": f"blob:{CONTAINER}", "AzureWebJobsStorage": azurite.connection_string, "TMPDIR": str(tmp / "instance")}
        svc = BlobServiceClient.from_connection_string(azurite.connection_string)
        container = svc.get_container_client(CONTAINER)
        with service(emulator, tmp / "emulator.err") as graph, service(receiver, tmp / "receiver.err") as sync:
            full = blob_update(graph, sync, tmp, env, "full")
            after_full = blobs(container)
            local = next((tmp / "instance").rglob("state.db"))
            size = local.stat().st_size
            one_mib, four_mib = compressed(local, 1 << 20), compressed(local, 4 << 20)
            changed = mutate(graph, users, groups, 0.01, random.Random(args.seed), "bench")
            incr = blob_update(graph, sync, tmp, env, "incremental")
            after_incr = blobs(container)
            manifest = json.loads(container.get_blob_client(MANIFEST_NAME).download_blob().readall())
            cold = BlobStateStore(svc, CONTAINER, "bench", local_dir=tmp / "cold")
            start = time.perf_counter()
            db = cold.open()
            cold_seconds = time.perf_counter() - start
            db.close()
            # status on another cold instance: the manifest and the facts part it names
            status_of = BlobStateStore(svc, CONTAINER, "bench", local_dir=tmp / "status")
            start = time.perf_counter()
            facts = status_of.facts()
            status_seconds = time.perf_counter() - start
            reconcile = blob_update(graph, sync, tmp, {**env, "FULL_SYNC_INTERVAL_HOURS": "0"}, "reconcile")
            after_reconcile = blobs(container)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        azurite.stop()
    stored_full, stored = sum(after_full.values()), sum(after_incr.values())
    up_incr = uploaded(after_full, after_incr)
    print("| what | bytes | note |")
    print("| --- | --- | --- |")
    print(f"| local database (state.db) | {size:,} | after the full update |")
    print(f"| compression alone, 1 MiB chunks | {one_mib:,} | {100 * one_mib / size:.1f} % of the database (Zstandard level {LEVEL}) |")
    print(f"| compression alone, 4 MiB chunks | {four_mib:,} | {100 * four_mib / size:.1f} % of the database |")
    print(f"| stored after the full update | {stored_full:,} | {len(after_full) - 1} parts and the manifest |")
    print(f"| uploaded by the full update's commit | {uploaded({}, after_full):,} | every part it added, and the manifest |")
    print(f"| uploaded by the incremental update (warm, {changed:,} users changed) | {up_incr:,} | "
          f"{100 * up_incr / stored:.2f} % of the {stored:,} bytes stored; {len(manifest['logs'])} change log(s) on the base |")
    print(f"| downloaded by a cold instance's open | {cold.image.counters['downloaded']:,} | {cold_seconds:.2f} s wall "
          "(download, check, replay; Azurite on loopback) |")
    print(f"| downloaded by status on a cold instance | {status_of.image.counters['downloaded']:,} | {status_seconds:.2f} s wall "
          f"(the manifest and the facts part; {sum((facts or {}).get('records', {}).values()):,} records counted) |")
    print(f"| uploaded by the periodic full reconcile (warm) | {uploaded(after_incr, after_reconcile):,} | "
          f"{len(after_reconcile) - 1} parts and the manifest stored after it |")
    print(f"\nfull update: {full.wall_seconds:.1f} s wall, {full.cpu_seconds:.1f} s CPU, peak RSS {full.peak_rss_mb:.0f} MB; "
          f"incremental: {incr.wall_seconds:.2f} s wall, {incr.cpu_seconds:.2f} s CPU, {incr.changes:,} changes sent")
    print(f"periodic full reconcile (warm, FULL_SYNC_INTERVAL_HOURS=0, read {reconcile.summary['read']['kind']}): "
          f"{reconcile.wall_seconds:.1f} s wall, {reconcile.cpu_seconds:.1f} s CPU, peak RSS {reconcile.peak_rss_mb:.0f} MB")
    print(f"# load average {os.getloadavg()[0]:.1f} at the end")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
