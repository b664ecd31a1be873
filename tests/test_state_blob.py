"""The ``blob:`` state on the wire, against Azurite (shared/storage/blob_store.py,
shared/storage/image.py): compressed parts and a manifest, a warm instance's incremental run
uploading only its change log, a cold instance opening the same rows, conflicts, damaged
parts, and the conversion of the previous release's single ``state.db`` blob."""

from __future__ import annotations

import json
import threading
import time

import pytest

from shared.common.errors import StateConflictError, StateError
from shared.storage import blob_store
from shared.storage.blob_store import BlobStateStore
from shared.storage.image import MANIFEST_NAME, PARTS, compress
from shared.storage.state import DB_NAME, JOURNAL_NAME, StateDB
from tests.blobstate_helpers import client, container_name, parts, rows, stored_bytes

CHUNK = 64 * 1024  # small chunks, so that a test database has several


def users(n: int, tag: str = "") -> dict[str, tuple]:
    return {f"u{i:06d}": (f"user{i}{tag}@contoso.com", (f"g{i % 17}", f"g{i % 5}")) for i in range(n)}


def addresses(n: int, tag: str = "") -> dict[str, tuple]:
    return {f"user{i}{tag}@contoso.com": () for i in range(n)}


def seeded(svc, container, local, n=4000):
    """A store whose state holds ``n`` users and their addresses and a complete directory cache,
    committed and published, and opened again (as the next run would)."""
    store = BlobStateStore(svc, container, "azurite", local_dir=local, chunk_size=CHUNK)
    db = store.open()
    db.replace_records("users", users(n))
    db.replace_records("addresses", addresses(n))
    db.directory_cache = "complete"  # as after a full read: later runs are delta rounds, recorded in change logs
    db.commit()
    store.publish(db)
    db.close()
    return store, store.open()


def churn(db, n=4000, share=0.01, tag="x"):
    """Change ``share`` of the users: a new address for each, the old one deleted."""
    k = max(1, int(n * share))
    changed = {f"u{i:06d}": (f"user{i}{tag}@contoso.com", ("g1",)) for i in range(0, n, n // k)}
    db.apply("users", changed, [])
    db.apply("addresses", {v[0]: () for v in changed.values()}, [f"user{i}@contoso.com" for i in range(0, n, n // k)])
    db.commit()


@pytest.fixture
def blob(azurite):
    return client(azurite)


def test_round_trip_compressed_parts_and_a_cold_instance_opens_the_same_rows(blob, tmp_path):
    svc, _ = blob
    name = container_name("rt")
    store, db = seeded(svc, name, tmp_path / "a")
    db.commit()
    store.publish(db)  # nothing changed but the generation: a change log on the base
    db.close()
    db = store.open()
    db.conn.execute("CREATE TABLE extra (k TEXT PRIMARY KEY) WITHOUT ROWID")  # a schema change: a new base, no logs
    db.commit()
    store.publish(db)
    want = rows(db.conn)
    size = db.path.stat().st_size
    db.close()
    manifest = json.loads(svc.get_container_client(name).get_blob_client(MANIFEST_NAME).download_blob().readall())
    assert manifest["format"] == "entra-dirsync-state-image" and manifest["length"] == size and len(manifest["chunks"]) == -(-size // CHUNK)
    # every part it names is there (earlier ones written within the same second as this commit
    # stay until a later commit: garbage collection removes only parts older than the manifest)
    assert {PARTS + h for h, _ in manifest["chunks"]} <= set(parts(svc, name)) and manifest["logs"] == []
    assert stored_bytes(svc, name) < size / 2  # compressed on the wire
    cold = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "b", chunk_size=CHUNK)
    again = cold.open()
    assert rows(again.conn) == want and again.generation == 3
    assert again.records("users") == users(4000)
    again.close()
    # a base without logs comes back byte for byte
    assert (cold.local / DB_NAME).read_bytes() == (store.local / DB_NAME).read_bytes()


def test_a_warm_instance_uploads_only_its_change_log_and_downloads_only_the_manifest(blob, tmp_path):
    svc, transport = blob
    name = container_name("warm")
    store, db = seeded(svc, name, tmp_path / "a")
    db.commit()
    store.publish(db)  # a run that ends as runs do: committed and published
    db.close()
    before, stored = parts(svc, name), stored_bytes(svc, name)
    base = {PARTS + h for h, _ in json.loads(svc.get_container_client(name).get_blob_client(MANIFEST_NAME).download_blob().readall())["chunks"]}
    transport.reset()
    store.image.counters.update(uploaded=0, downloaded=0, parts_uploaded=0)
    db = store.open()  # the same instance: its copy matches the manifest
    assert store.image.counters["downloaded"] < 2000  # the manifest alone
    churn(db)
    store.publish(db)
    db.close()
    after = parts(svc, name)
    new = set(after) - set(before)
    written = [path for method, path in transport.writes if method == "PUT" and path.startswith("state.")]
    # two new parts (the change log and the facts status reads), the manifest, and nothing else
    # (the container's own PUT aside)
    manifest = json.loads(svc.get_container_client(name).get_blob_client(MANIFEST_NAME).download_blob().readall())
    assert len(new) == 2 and PARTS + manifest["facts"][0][0] in new and sorted(written) == sorted([*new, MANIFEST_NAME])
    assert base <= set(after)  # no chunk of the base rewritten or deleted (only the first commit's leftover may go)
    assert transport.sent <= 0.05 * stored, (transport.sent, stored)
    cold = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "b", chunk_size=CHUNK).open()
    warm = store.open()
    assert rows(cold.conn) == rows(warm.conn) and cold.records("users")["u000000"] == ("user0x@contoso.com", ("g1",))
    cold.close()
    warm.close()


def test_a_cold_instance_replays_every_log_and_a_later_writer_continues_from_it(blob, tmp_path):
    svc, _ = blob
    name = container_name("logs")
    store, db = seeded(svc, name, tmp_path / "a")
    for r in range(4):
        churn(db, tag=f"r{r}")
        store.publish(db)
    manifest = json.loads(svc.get_container_client(name).get_blob_client(MANIFEST_NAME).download_blob().readall())
    assert len(manifest["logs"]) == 4
    want = rows(db.conn)
    db.close()
    other = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "b", chunk_size=CHUNK)
    cold = other.open()
    assert rows(cold.conn) == want
    cold.apply("users", {"u999999": ("late@contoso.com", ())}, [])
    cold.commit()
    other.publish(cold)  # the cold instance's own change log, on top of the others
    want = rows(cold.conn)
    cold.close()
    third = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "c", chunk_size=CHUNK).open()
    assert rows(third.conn) == want
    third.close()
    first = store.open()  # the first instance's copy is stale now: it downloads
    assert rows(first.conn) == want
    first.close()


def test_a_concurrent_writer_is_refused_and_nothing_is_overwritten(blob, tmp_path):
    svc, _ = blob
    name = container_name("conflict")
    a, da = seeded(svc, name, tmp_path / "a")
    da.close()
    da = a.open()
    b = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "b", chunk_size=CHUNK)
    dbb = b.open()
    dbb.replace_records("users", {"only": ("b@contoso.com", ())})
    dbb.commit()
    b.publish(dbb)
    winner = rows(dbb.conn)
    dbb.close()
    churn(da)
    with pytest.raises(StateConflictError, match="nothing was overwritten"):
        a.publish(da)
    da.close()
    check = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "c", chunk_size=CHUNK).open()
    assert rows(check.conn) == winner
    check.close()


def test_a_new_base_is_written_when_the_log_budget_runs_out_or_the_schema_changes(blob, tmp_path, monkeypatch):
    svc, _ = blob
    name = container_name("base")
    monkeypatch.setattr(blob_store, "MIN_BUDGET", 100)
    store, db = seeded(svc, name, tmp_path / "a", n=2000)
    db.replace_records("users", users(2000, tag="-renamed"))  # thousands of rows: past the budget
    db.commit()
    store.publish(db)
    manifest = json.loads(svc.get_container_client(name).get_blob_client(MANIFEST_NAME).download_blob().readall())
    assert manifest["logs"] == []
    db.conn.execute("CREATE TABLE extra (k TEXT PRIMARY KEY, v)")  # a schema change (DDL autocommits nothing here)
    db.conn.execute("INSERT INTO extra VALUES ('a', 1)")
    db.commit()
    store.publish(db)
    manifest = json.loads(svc.get_container_client(name).get_blob_client(MANIFEST_NAME).download_blob().readall())
    assert manifest["logs"] == []
    want = rows(db.conn)
    db.close()
    cold = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "b", chunk_size=CHUNK).open()
    assert rows(cold.conn) == want
    cold.close()


@pytest.mark.parametrize("damage", ["missing", "corrupt", "not zstd", "cut short"])
@pytest.mark.parametrize("part", ["chunk", "log"])
def test_a_damaged_part_gives_a_clear_error_naming_the_blob_and_no_half_state(blob, tmp_path, damage, part):
    svc, _ = blob
    name = container_name("damage")
    store, db = seeded(svc, name, tmp_path / "a")
    churn(db)
    store.publish(db)
    db.close()
    manifest = json.loads(svc.get_container_client(name).get_blob_client(MANIFEST_NAME).download_blob().readall())
    victim = PARTS + (manifest["chunks"][1][0] if part == "chunk" else manifest["logs"][0][0])
    blob_client = svc.get_container_client(name).get_blob_client(victim)
    if damage == "missing":
        blob_client.delete_blob()
    elif damage == "corrupt":
        blob_client.upload_blob(compress(b"something else"), overwrite=True)  # a valid frame, the wrong content
    elif damage == "cut short":
        whole = blob_client.download_blob().readall()
        blob_client.upload_blob(whole[: len(whole) // 2], overwrite=True)  # an upload that stopped halfway
    else:
        blob_client.upload_blob(b"\x00garbage" * 10, overwrite=True)
    local = tmp_path / "b"
    for readonly in (False, True):
        with pytest.raises(StateError) as info:
            BlobStateStore(svc, name, "azurite", local_dir=local, chunk_size=CHUNK).open(readonly=readonly)
        assert victim in str(info.value) and "refresh" in str(info.value)
    leftovers = [p.name for p in local.rglob("*") if p.is_file()]
    assert DB_NAME not in leftovers and not any(n.endswith(".tmp") for n in leftovers)


def test_refresh_replaces_a_state_with_a_missing_part(blob, tmp_path):
    svc, _ = blob
    name = container_name("refresh")
    store, db = seeded(svc, name, tmp_path / "a")
    db.close()
    manifest = json.loads(svc.get_container_client(name).get_blob_client(MANIFEST_NAME).download_blob().readall())
    svc.get_container_client(name).delete_blob(PARTS + manifest["chunks"][0][0])
    other = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "b", chunk_size=CHUNK)
    db = other.open(rebuild=True)
    assert db.records("users") == {}
    db.replace_records("users", {"u1": ("a@contoso.com", ())})
    db.commit()
    other.publish(db)
    db.close()
    again = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "c", chunk_size=CHUNK).open()
    assert again.records("users") == {"u1": ("a@contoso.com", ())}
    again.close()


def legacy_state(tmp_path):
    """A database as the previous release kept it in the single blob ``state.db``."""
    path = tmp_path / "legacy" / DB_NAME
    path.parent.mkdir(parents=True)
    db = StateDB(path, "legacy", durable=False)
    db.replace_records("users", users(300))
    db.replace_records("addresses", addresses(300))
    db.commit()
    entry = db.journal_entry("users", {"u000001": ("moved@contoso.com", ())}, [])  # a confirmed batch of a killed run
    want = rows(db.conn)
    db.close()
    return path.read_bytes(), entry, want


def test_the_previous_releases_single_blob_is_converted_and_removed_after_the_manifest(blob, tmp_path):
    svc, transport = blob
    name = container_name("legacy")
    data, entry, want = legacy_state(tmp_path)
    container = svc.get_container_client(name)
    container.create_container()
    container.upload_blob(DB_NAME, data)
    container.get_blob_client(JOURNAL_NAME).create_append_blob()
    container.get_blob_client(JOURNAL_NAME).append_block(json.dumps(entry).encode() + b"\n")
    dry = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "d", chunk_size=CHUNK).open(readonly=True)
    assert dry.records("users")["u000001"] == ("moved@contoso.com", ()) and DB_NAME in [b.name for b in container.list_blobs()]
    dry.close()
    transport.reset()
    store = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "a", chunk_size=CHUNK)
    db = store.open()
    order = [path for _, path in transport.writes]
    assert order.index(MANIFEST_NAME) < order.index(DB_NAME)  # the old blob goes only after the manifest
    names = [b.name for b in container.list_blobs()]
    assert DB_NAME not in names and MANIFEST_NAME in names and JOURNAL_NAME in names  # the journal still applies
    assert db.records("users")["u000001"] == ("moved@contoso.com", ())  # the journal, replayed
    db.commit()
    store.publish(db)
    db.close()
    cold = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "b", chunk_size=CHUNK).open()
    assert cold.records("users")["u000001"] == ("moved@contoso.com", ())
    assert cold.records("addresses") == addresses(300)
    assert rows(cold.conn)["records"] == sorted([r for r in want["records"] if r[:2] != ("users", "u000001")]
                                                + [("users", "u000001", '["moved@contoso.com",[]]')], key=repr)
    cold.close()


def test_garbage_collection_removes_only_parts_no_manifest_names(blob, tmp_path, monkeypatch):
    svc, _ = blob
    name = container_name("gc")
    monkeypatch.setattr(blob_store, "MIN_BUDGET", 100)
    store, db = seeded(svc, name, tmp_path / "a", n=2000)
    first = set(parts(svc, name))
    time.sleep(1.1)  # blob times have a resolution of one second: the next commit is strictly later
    db.replace_records("users", users(2000, tag="-v2"))  # past the budget: a new base
    db.commit()
    store.publish(db)
    manifest = json.loads(svc.get_container_client(name).get_blob_client(MANIFEST_NAME).download_blob().readall())
    named = {PARTS + h for h, _ in (*manifest["chunks"], *manifest["facts"])}
    assert set(parts(svc, name)) == named and first - named  # the old base's own chunks and facts are gone
    db.close()


def test_a_dry_run_whose_parts_are_collected_meanwhile_reads_the_new_generation(blob, tmp_path, monkeypatch):
    """A dry run reads without the lock: when a writer commits a new base and removes the old
    parts while it reads, it starts again from the new manifest rather than failing."""
    svc, _ = blob
    name = container_name("race")
    monkeypatch.setattr(blob_store, "MIN_BUDGET", 100)
    store, db = seeded(svc, name, tmp_path / "a", n=2000)
    reader = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "r", chunk_size=CHUNK)
    real_get = reader.image._get
    raced: list[str] = []
    once = threading.Lock()

    def get(part: str, limit: int) -> bytes:
        with once:  # the first fetch (whichever thread) lets the writer commit first
            if not raced:
                raced.append(part)
                time.sleep(1.1)  # the writer's commit is a second later than the parts it removes
                db.replace_records("users", users(2000, tag="-v2"))  # every row changes: no chunk is reused
                db.replace_records("addresses", addresses(2000, tag="-v2"))
                db.commit()
                store.publish(db)
                assert part not in parts(svc, name)  # the part this reader was about to fetch is gone
        return real_get(part, limit)

    monkeypatch.setattr(reader.image, "_get", get)
    snapshot = reader.open(readonly=True)
    assert raced and snapshot.records("users") == users(2000, tag="-v2")
    snapshot.close()
    db.close()


def test_a_new_base_is_written_once_the_logs_reach_their_limit(blob, tmp_path, monkeypatch):
    svc, _ = blob
    name = container_name("maxlogs")
    monkeypatch.setattr(blob_store, "MAX_LOGS", 2)
    store, db = seeded(svc, name, tmp_path / "a")
    counts = []
    for r in range(3):
        churn(db, tag=f"m{r}")
        store.publish(db)
        counts.append(len(json.loads(svc.get_container_client(name).get_blob_client(MANIFEST_NAME).download_blob().readall())["logs"]))
    assert counts == [1, 2, 0]
    want = rows(db.conn)
    db.close()
    cold = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "b", chunk_size=CHUNK).open()
    assert rows(cold.conn) == want
    cold.close()
