"""What ``status`` reads of the state (``StateStore.facts``): the held deletions, the last full
read, the last commit and the records per dataset, without copying the database when it can.

A ``file:`` state is read in place (one read transaction on the live WAL database); a ``blob:``
state publishes its figures as a small part named by each manifest, so that ``status`` on a cold
instance downloads the manifest and that part instead of the whole database (38 MB of parts at
100,000 users, 144 MB inflated). Whatever the path, the figures are the ones the full copy
gives: each test compares the two."""

from __future__ import annotations

import json
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.common.errors import StateError
from shared.storage import stores
from shared.storage.blob_store import BlobStateStore
from shared.storage.image import MANIFEST_NAME, Manifest
from shared.storage.state import DB_NAME
from shared.storage.stores import FileStateStore
from tests.blobstate_helpers import client, container_name

KEYS = st.text(alphabet="abcdefghij0123456789.@-", min_size=1, max_size=12)
# dataset -> {key: approved}: what the deletion guard holds, and which of it an administrator approved
HELD = st.dictionaries(st.sampled_from(["addresses", "groups", "users"]), st.dictionaries(KEYS, st.booleans(), max_size=6), max_size=3)


def _fill(db, n_users: int, held: dict[str, dict[str, bool]], full_at: str | None) -> None:
    db.replace_records("users", {f"u{i:05d}": (f"user{i}@contoso.com", ("g1",)) for i in range(n_users)})
    db.replace_records("addresses", {f"user{i}@contoso.com": () for i in range(n_users)})
    db.replace_records("groups", {"g1": ("Group 1", ())})
    for dataset, keys in held.items():
        db.set_held(dataset, keys)
    if full_at is not None:
        db.last_full_read = full_at
    db.commit()


def _copy_facts(store) -> dict:
    """The figures as the full copy gives them (what status read before)."""
    db = store.open(readonly=True)
    try:
        return db.facts()
    finally:
        db.close()


def _no_copy(monkeypatch) -> None:
    def refuse(*_a, **_k):
        raise AssertionError("status copied the database")

    monkeypatch.setattr(stores, "snapshot", refuse)


# --- file: ------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(held=HELD, n_users=st.integers(0, 40), full_at=st.sampled_from([None, "2026-11-30T10:00:00+00:00"]))
def test_a_file_state_is_read_in_place_with_the_figures_of_its_copy(tmp_path_factory, monkeypatch, held, n_users, full_at):
    store = FileStateStore(tmp_path_factory.mktemp("state"))
    db = store.open()
    _fill(db, n_users, held, full_at)
    db.close()
    want = _copy_facts(store)
    assert want["records"] == {"addresses": n_users, "groups": 1, "users": n_users}
    assert want["held"] == {d: k for d, k in held.items() if k} and want["lastFullRead"] == full_at and want["savedAt"]
    with monkeypatch.context() as m:
        _no_copy(m)
        assert store.facts() == want
    assert sorted(p.name for p in store.dir.iterdir()) == [DB_NAME]  # read in place: no -wal/-shm or copy left behind


def test_a_file_state_being_written_shows_its_last_commit_and_neither_waits(tmp_path, monkeypatch):
    """An update holds its transaction open for the whole run: status shows the generation
    committed before it, at once, and the update commits after status as if it were not there."""
    store = FileStateStore(tmp_path)
    db = store.open()
    _fill(db, 10, {"users": {"u00001": False}}, None)
    before = store.facts()
    db.replace_records("users", {f"x{i}": (f"x{i}@contoso.com", ()) for i in range(5000)})  # a large uncommitted write
    db.set_held("users", {})
    db.conn.execute("PRAGMA cache_spill=1")  # let SQLite write the uncommitted pages to the WAL, as a full read does
    _no_copy(monkeypatch)
    started = time.perf_counter()
    during = store.facts()
    assert during == before and during["records"]["users"] == 10 and during["held"] == {"users": {"u00001": False}}
    assert time.perf_counter() - started < 5  # not a busy wait: SQLite's busy handler would wait forever here
    db.commit()  # status left no lock behind
    assert store.facts()["records"]["users"] == 5000 and store.facts()["held"] == {}
    db.close()


def test_a_journal_to_fold_in_is_read_from_the_copy(tmp_path):
    """A run in flight or interrupted leaves journal entries the copy folds in: status then reads
    the copy, as before, and shows the confirmed batches."""
    store = FileStateStore(tmp_path)
    db = store.open()
    _fill(db, 3, {}, None)
    entry = db.intent_entry("users", ["u09999"])
    store.append_journal(entry)
    store.append_journal({**entry, "intent": None, "confirm": {"upsert": {"u09999": ["late@contoso.com", []]}, "delete": []}})
    db.close()
    copied = []
    real = stores.snapshot

    def counting(*a, **k):
        copied.append(a)
        return real(*a, **k)

    stores.snapshot, saved = counting, stores.snapshot
    try:
        facts = store.facts()
    finally:
        stores.snapshot = saved
    assert copied and facts == _copy_facts(store)


@pytest.mark.parametrize("content", [b"", b"not a database at all, just text" * 200])
def test_no_state_is_none_and_a_file_that_is_not_one_is_named(tmp_path, content):
    store = FileStateStore(tmp_path)
    assert store.facts() is None and not (tmp_path / DB_NAME).exists()  # nothing created
    (tmp_path / DB_NAME).write_bytes(content)
    if content:
        with pytest.raises(StateError, match="unreadable|not a sync state"):
            store.facts()


def test_a_state_of_another_version_is_refused_by_the_full_path(tmp_path):
    store = FileStateStore(tmp_path)
    db = store.open()
    _fill(db, 1, {}, None)
    db.conn.execute("UPDATE meta SET value='99' WHERE key='version'")
    db.conn.execute("COMMIT")
    db.conn.execute("BEGIN")
    db.close()
    with pytest.raises(StateError, match="version"):
        store.facts()


# --- blob: (Azurite) ----------------------------------------------------------------------------
@pytest.fixture
def blob(azurite):
    return client(azurite)


def _published(svc, name, local, held, n=3000):
    store = BlobStateStore(svc, name, "azurite", local_dir=local, chunk_size=64 * 1024)
    db = store.open()
    _fill(db, n, held, "2026-11-30T09:00:00+00:00")
    store.publish(db)
    db.close()
    return store


def _manifest(svc, name) -> dict:
    return json.loads(svc.get_container_client(name).get_blob_client(MANIFEST_NAME).download_blob().readall())


def test_status_of_a_blob_state_downloads_the_manifest_and_its_facts_only(blob, tmp_path):
    svc, _ = blob
    name = container_name("facts")
    held = {"users": {"u00007": True, "u00008": False}, "addresses": {"user7@contoso.com": False}}
    writer = _published(svc, name, tmp_path / "a", held)
    cold = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "b", chunk_size=64 * 1024)
    facts = cold.facts()
    assert cold.image.counters["downloaded"] < 4096, cold.image.counters  # the manifest and the facts part: not the parts of the database
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").rglob(DB_NAME))  # no copy assembled
    want = _copy_facts(writer)
    assert facts == want and facts["held"] == held and facts["records"]["users"] == 3000
    assert facts["generation"] == _manifest(svc, name)["generation"]
    # the next generation publishes its own facts; the old part is collected like any other
    db = writer.open()
    db.set_held("users", {})
    db.commit()
    writer.publish(db)
    db.close()
    assert cold.facts()["held"] == {"addresses": {"user7@contoso.com": False}}


def test_a_blob_state_without_facts_or_with_a_journal_is_read_from_the_copy(blob, tmp_path):
    svc, _ = blob
    name = container_name("facts-old")
    writer = _published(svc, name, tmp_path / "a", {"groups": {"g9": False}})
    want = _copy_facts(writer)
    container = svc.get_container_client(name)
    # a manifest an earlier release wrote: no facts part
    doc = _manifest(svc, name)
    del doc["facts"]
    container.get_blob_client(MANIFEST_NAME).upload_blob(json.dumps(doc).encode(), overwrite=True)
    reader = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "b", chunk_size=64 * 1024)
    assert reader.facts() == want and reader.image.counters["downloaded"] > 4096  # the parts of the database
    # a journal in the container (a run in flight or interrupted): the copy folds it in
    writer2 = _published(svc, container_name("facts-j"), tmp_path / "c", {})
    writer2.append_journal({"lineage": "x", "generation": 0, "seq": 1, "run": "r", "dataset": "users", "intent": []})
    reader2 = BlobStateStore(svc, writer2.container.container_name, "azurite", local_dir=tmp_path / "d", chunk_size=64 * 1024)
    assert reader2.facts() == _copy_facts(writer2) and reader2.image.counters["downloaded"] > 4096


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_missing_or_damaged_facts_part_is_read_from_the_copy(blob, tmp_path, damage):
    """The figures are a convenience: the database's parts may be whole, and the copy says."""
    svc, _ = blob
    name = container_name("facts-bad")
    writer = _published(svc, name, tmp_path / "a", {"users": {"u00001": True}})
    part = svc.get_container_client(name).get_blob_client("state.parts/" + _manifest(svc, name)["facts"][0][0])
    if damage == "missing":
        part.delete_blob()
    else:
        part.upload_blob(b"not zstandard", overwrite=True)
    reader = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "b", chunk_size=64 * 1024)
    assert reader.facts() == _copy_facts(writer) and reader.image.counters["downloaded"] > 4096


def test_facts_of_another_generation_are_not_believed(blob, tmp_path):
    """A manifest whose facts part names another generation (a hand-copied manifest) is read
    the full way rather than shown wrong."""
    svc, _ = blob
    name = container_name("facts-gen")
    writer = _published(svc, name, tmp_path / "a", {})
    doc = _manifest(svc, name)
    doc["generation"] += 5
    svc.get_container_client(name).get_blob_client(MANIFEST_NAME).upload_blob(json.dumps(doc).encode(), overwrite=True)
    reader = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "b", chunk_size=64 * 1024)
    facts = reader.facts()
    assert reader.image.counters["downloaded"] > 4096 and facts["records"] == _copy_facts(writer)["records"]


def test_a_manifest_names_at_most_one_facts_part_and_keeps_it_in_its_names():
    part = ("ab" * 32, 120)
    m = Manifest(3, "s", 10, 10, (("cd" * 32, 10),), (), False, part)
    again = Manifest.parse(m.to_json(), "here")
    assert again == m and "state.parts/" + part[0] in again.names() and again.stored == 130
    doc = json.loads(m.to_json())
    doc["facts"] = [list(part), list(part)]
    with pytest.raises(StateError, match="malformed"):
        Manifest.parse(json.dumps(doc).encode(), "here")
    del doc["facts"]
    assert Manifest.parse(json.dumps(doc).encode(), "here").facts is None  # an earlier release's manifest


def test_status_during_a_blob_publish_sees_one_generation_or_the_next(blob, tmp_path):
    """Facts go up before the manifest that names them: a status racing a publish reads the
    old generation's figures or the new one's, never a mix."""
    svc, _ = blob
    name = container_name("facts-race")
    writer = _published(svc, name, tmp_path / "a", {}, n=500)
    reader = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "b", chunk_size=64 * 1024)
    seen: list[tuple[int, int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            f = reader.facts()
            seen.append((f["generation"], f["records"]["users"]))

    t = threading.Thread(target=watch)
    t.start()
    try:
        for k in range(1, 4):
            db = writer.open()
            db.replace_records("users", {f"u{i:05d}": (f"user{i}@contoso.com", ()) for i in range(500 + k)})
            db.commit()
            writer.publish(db)
            db.close()
    finally:
        stop.set()
        t.join()
    first = seen[0][0]
    assert all(users == 500 + (gen - first) for gen, users in seen), seen
