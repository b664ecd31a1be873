"""Kill points of the ``blob:`` state's writes, against Azurite (shared/storage/image.py, "crash
safety"). For each kind of commit, the process is cut off after k of its n write requests
(k = 0..n: after each part of a new base or the change log, after the manifest, during
garbage collection, after the old blob's or the journal's deletion): the transport refuses every
later write, as SIGKILL would. Then, at every k, the manifest names only parts that exist,
and the next open, by the same instance (its local copy is stale) and by a cold one, gives a
whole state: exactly the previous generation before the manifest was written, exactly the new
one after it; and the run after that leaves no blob of the previous release. Every k from 0 up to the first run that gets through uncut is visited (the test
checks that an uncut run's count of writes was reached)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.storage import blob_store
from shared.storage.blob_store import BlobStateStore
from shared.storage.image import MANIFEST_NAME, PARTS
from shared.storage.state import DB_NAME
from tests.blobstate_helpers import Killed, client, container_name, rows
from tests.test_state_blob import CHUNK, churn, legacy_state, seeded, users


@dataclass
class Case:
    act: Callable[[], Any]  # the commit that may be cut off
    before: dict | None  # the rows of the previous generation (None: there was none)
    after: Callable[[], dict]  # the rows of the new generation (known once act has run)
    close: Callable[[], None]


def new_base(svc, name, local: Path) -> Case:
    store, db = seeded(svc, name, local, n=2000)
    before = rows(db.conn)
    time.sleep(1.1)  # blob times have a one-second resolution: the old parts are older than the commit
    db.replace_records("users", users(2000, tag="-v2"))  # past the (lowered) budget: a new base, GC of the old
    db.commit()
    return Case(lambda: store.publish(db), before, lambda: rows(db.conn), db.close)


def change_log(svc, name, local: Path) -> Case:
    store, db = seeded(svc, name, local, n=2000)
    before = rows(db.conn)
    churn(db, n=2000)
    return Case(lambda: store.publish(db), before, lambda: rows(db.conn), db.close)


def conversion(svc, name, local: Path) -> Case:
    data, _, want = legacy_state(local.parent)
    svc.get_container_client(name).create_container()
    svc.get_container_client(name).upload_blob(DB_NAME, data)
    opened: list = []

    def act() -> None:
        opened.append(BlobStateStore(svc, name, "azurite", local_dir=local, chunk_size=CHUNK).open())
    return Case(act, want, lambda: want, lambda: [db.close() for db in opened])


def first_commit(svc, name, local: Path) -> Case:
    opened: list = []

    def act() -> None:
        opened.append(BlobStateStore(svc, name, "azurite", local_dir=local, chunk_size=CHUNK).open())
    return Case(act, None, lambda: rows(opened[0].conn), lambda: [db.close() for db in opened])


SCENARIOS = {"a new base": new_base, "a change log": change_log, "the previous release's blob converted": conversion,
             "the first commit": first_commit}


def check_manifest_names_only_existing_parts(svc, name) -> bool:
    container = svc.get_container_client(name)
    names = {b.name for b in container.list_blobs()} if container.exists() else set()
    if MANIFEST_NAME not in names:
        return False
    manifest = json.loads(container.get_blob_client(MANIFEST_NAME).download_blob().readall())
    missing = {PARTS + h for h, _ in (*manifest["chunks"], *manifest["logs"])} - names
    assert not missing, f"the manifest names parts that are gone: {sorted(missing)}"
    return True


def one_kill(azurite, tmp: Path, scenario: str, k: int | None) -> tuple[list, bool]:
    """Run the scenario cut off after ``k`` writes (``None``: not cut); check the next opens.
    Returns the writes made and whether the commit finished."""
    svc, transport = client(azurite)
    name = container_name("kill")
    case = SCENARIOS[scenario](svc, name, tmp / "a")
    transport.reset()
    transport.kill_after = k
    try:
        case.act()
        finished = True
    except Killed:
        finished = False
    writes = list(transport.writes)
    transport.kill_after = None
    after = case.after() if finished or scenario in ("a new base", "a change log") else None
    case.close()
    exists = check_manifest_names_only_existing_parts(svc, name)
    committed = ("PUT", MANIFEST_NAME) in writes  # this commit's manifest went out
    assert exists or case.before is None or DB_NAME in {b.name for b in svc.get_container_client(name).list_blobs()}
    for local in (tmp / "a", tmp / f"cold-{k}"):  # the same instance, then a cold one
        db = BlobStateStore(client(azurite)[0], name, "azurite", local_dir=local, chunk_size=CHUNK).open()
        try:
            got = rows(db.conn)
            if not committed:
                assert case.before is None or got == case.before, f"killed after {k} writes: not the previous generation"
            elif after is not None:
                assert got == after, f"killed after {k} writes {writes}: not the new generation"
            else:
                assert got == case.before or case.before is None
        finally:
            db.close()
    # the next run commits: afterwards no old single blob is left (a killed conversion is finished)
    store = BlobStateStore(client(azurite)[0], name, "azurite", local_dir=tmp / "a", chunk_size=CHUNK)
    db = store.open()
    db.commit()
    store.publish(db)
    db.close()
    assert check_manifest_names_only_existing_parts(svc, name)
    assert DB_NAME not in {b.name for b in svc.get_container_client(name).list_blobs()}
    return writes, finished


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_kill_point_between_blob_writes_leaves_a_whole_state(azurite, tmp_path, monkeypatch, scenario):
    monkeypatch.setattr(blob_store, "MIN_BUDGET", 100)
    writes, finished = one_kill(azurite, tmp_path / "uncut", scenario, None)
    assert finished
    state_writes = [w for w in writes if w[1].startswith("state.")]
    assert (MANIFEST_NAME in [p for _, p in state_writes]) and len(state_writes) >= 2
    if scenario == "a new base":
        assert sum(1 for m, p in writes if m == "DELETE" and p.startswith(PARTS)) >= 1  # GC is in the matrix
    if scenario == "the previous release's blob converted":
        assert ("DELETE", DB_NAME) in writes
    # Every k until a run gets through uncut. How many parts garbage collection finds old enough
    # to delete depends on the clock (blob times have one-second resolution), so each run's own
    # count decides where it ends: every write but those deletes comes in every run.
    collected = sum(1 for m, p in writes if m == "DELETE" and p.startswith(PARTS))
    for k in range(len(writes) + 5):
        cut, finished = one_kill(azurite, tmp_path / f"k{k}", scenario, k)
        assert len(cut) == k or (finished and len(cut) < k)
        if finished:
            break
    assert finished and k >= len(writes) - collected
