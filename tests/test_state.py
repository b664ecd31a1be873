"""The change-tracking state: atomic commits, journal replay, both backends, bad files."""

from __future__ import annotations

import gzip
import json
import sqlite3

import pytest

from shared.common.errors import StateConflictError, StateError
from shared.storage.state import DB_NAME
from shared.storage.stores import FileStateStore

SAMPLE = {
    "addresses": {"a@x.com": (), "b@x.com": ()},
    "groups": {"g1": ("Sales", ("g2",)), "g2": ("All", ())},
    "users": {"u1": ("a@x.com", ("g1",))},
}


def fill(db) -> None:
    for d, recs in SAMPLE.items():
        db.replace_records(d, recs)


def roundtrip(store) -> None:
    db = store.open()
    lineage = db.lineage
    fill(db)
    db.commit()
    store.publish(db)
    db.close()
    db = store.open()
    assert {d: db.records(d) for d in SAMPLE} == SAMPLE and db.lineage == lineage
    # a confirmed batch is journaled and replayed on the next open, at the same position
    e = db.journal_entry("users", {"u2": ("b@x.com", ())}, ["u1"])
    store.append_journal(e)
    db.close()  # a crash: nothing committed
    again = store.open()
    assert again.records("users") == {"u2": ("b@x.com", ())}
    assert again.seq == 1 and again.position.endswith(":1:1")
    # committing makes a new generation; the old entry is stale
    again.commit()
    store.publish(again)
    again.close()
    store.append_journal(e)  # a stale entry (generation 1) must not be applied twice
    final = store.open()
    assert final.generation == 2 and final.seq == 0
    assert final.records("users") == {"u2": ("b@x.com", ())}
    final.close()


def test_file_store_roundtrip(tmp_path):
    roundtrip(FileStateStore(tmp_path / "st"))


def test_blob_store_roundtrip(azurite, tmp_path):
    from azure.storage.blob import BlobServiceClient

    from shared.storage.stores import BlobStateStore

    svc = BlobServiceClient.from_connection_string(azurite.connection_string)
    roundtrip(BlobStateStore(svc, "state-roundtrip", "azurite", local_dir=tmp_path / "local"))


def test_blob_store_refuses_to_overwrite_a_state_written_by_someone_else(azurite, tmp_path):
    from azure.storage.blob import BlobServiceClient

    from shared.storage.stores import BlobStateStore

    svc = BlobServiceClient.from_connection_string(azurite.connection_string)
    a = BlobStateStore(svc, "state-conflict", "azurite", local_dir=tmp_path / "a")
    b = BlobStateStore(svc, "state-conflict", "azurite", local_dir=tmp_path / "b")
    da = a.open()
    da.close()
    da = a.open()
    db = b.open()
    fill(db)
    db.commit()
    b.publish(db)
    fill(da)
    da.commit()
    with pytest.raises(StateConflictError):
        a.publish(da)
    db.close()
    da.close()


def test_blob_local_copy_is_reused_only_while_the_etag_matches(azurite, tmp_path):
    from azure.storage.blob import BlobServiceClient

    from shared.storage.stores import BlobStateStore

    svc = BlobServiceClient.from_connection_string(azurite.connection_string)
    a = BlobStateStore(svc, "state-etag", "azurite", local_dir=tmp_path / "a")
    d = a.open()
    fill(d)
    d.commit()
    a.publish(d)
    d.close()
    # someone else writes a newer state; our local copy must not be used
    b = BlobStateStore(svc, "state-etag", "azurite", local_dir=tmp_path / "b")
    d = b.open()
    d.replace_records("users", {})
    d.commit()
    b.publish(d)
    d.close()
    d = a.open()
    assert d.records("users") == {}
    d.close()


def test_torn_journal_line_is_cut_and_later_entries_survive(tmp_path):
    store = FileStateStore(tmp_path)
    db = store.open()
    e1 = db.journal_entry("addresses", {"c@x.com": ()}, [])
    store.append_journal(e1)
    with open(store.journal, "ab") as fh:
        fh.write(b'{"lineage": "' + db.lineage.encode() + b'", "generation": 0, "seq": 2, "dat')
    db.close()
    loaded = store.open()
    assert "c@x.com" in loaded.records("addresses") and loaded.seq == 1
    # the torn tail is gone, so the next confirmed batch is readable after a crash
    loaded.seq = 1
    e2 = loaded.journal_entry("addresses", {"d@x.com": ()}, [])
    store.append_journal(e2)
    loaded.close()
    again = store.open()
    assert {"c@x.com", "d@x.com"} <= set(again.records("addresses")) and again.seq == 2
    again.close()


def test_an_uncommitted_run_leaves_the_last_commit(tmp_path):
    store = FileStateStore(tmp_path)
    db = store.open()
    fill(db)
    db.commit()
    db.replace_records("users", {})
    db.close()  # killed before the commit
    db = store.open()
    assert db.records("users") == SAMPLE["users"]
    db.close()


def test_a_plan_that_failed_is_never_committed(tmp_path):
    """A delta round merged while planning, then a failure (a scope id that names no group, a
    malformed entry): the state refuses to commit the run, and closing it leaves the last
    commit, what the run did before planning (a replayed batch) included."""
    store = FileStateStore(tmp_path)
    db = store.open()
    fill(db)
    db.commit()
    store.publish(db)
    store.append_journal(db.journal_entry("users", {"u2": ("b@x.com", ())}, []))  # a batch confirmed, then a crash
    db.close()
    db = store.open()  # the batch is replayed into the run's transaction
    assert "u2" in db.records("users")
    with pytest.raises(ValueError), db.planning():
        db.replace_records("addresses", {})  # what a merge writes before it fails
        raise ValueError("the round cannot be planned")
    with pytest.raises(StateError, match="plan failed"):
        db.commit()
    db.close()
    db = store.open()
    assert db.records("addresses") == SAMPLE["addresses"] and db.generation == 1
    db.close()


def test_a_dry_run_never_writes_and_never_blocks_a_writer(tmp_path):
    store = FileStateStore(tmp_path)
    assert store.open(readonly=True) is None and not (tmp_path / DB_NAME).exists()
    db = store.open()
    fill(db)
    db.commit()
    before = (tmp_path / DB_NAME).read_bytes()
    dry = store.open(readonly=True)
    assert dry.records("users") == SAMPLE["users"]
    dry.replace_records("users", {})
    db.replace_records("groups", {})
    db.commit()  # the writer commits while the dry run is open
    dry.close()
    db.close()
    assert (tmp_path / DB_NAME).read_bytes() != before
    db = store.open()
    assert db.records("users") == SAMPLE["users"] and db.records("groups") == {}
    db.close()


@pytest.mark.parametrize(
    "content, match",
    [
        (b"not a database at all" * 50, "unreadable"),
        (None, "not a sync state"),
        ("version", "version 99"),
    ],
)
def test_bad_state_files_give_a_clear_error(tmp_path, content, match):
    store = FileStateStore(tmp_path)
    path = tmp_path / DB_NAME
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        if content is None:
            conn.execute("INSERT INTO meta VALUES ('format', '\"something else\"')")
        else:
            conn.execute("INSERT INTO meta VALUES ('format', '\"entra-dirsync-state\"')")
            conn.execute("INSERT INTO meta VALUES ('version', '99')")
        conn.commit()
        conn.close()
    before = path.read_bytes()
    with pytest.raises(StateError, match=match) as info:
        store.open()
    assert "refresh" in str(info.value)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "content, match",
    [
        (b"not gzip", "unreadable"),
        (gzip.compress(b"{not json"), "unreadable"),
        (gzip.compress(json.dumps({"format": "entra-dirsync-state", "version": 1, "lineage": "x", "generation": 0,
                                   "datasets": {"users": {"u": "bad"}}}).encode()), "unreadable"),
    ],
)
def test_a_broken_previous_release_state_gives_a_clear_error(tmp_path, content, match):
    (tmp_path / "state.json.gz").write_bytes(content)
    with pytest.raises(StateError, match=match) as info:
        FileStateStore(tmp_path).open()
    assert "refresh" in str(info.value)


# --- the recheck list (issue 9) -------------------------------------------------------------------
def test_every_key_a_replayed_batch_names_is_kept_for_recheck_until_a_commit_clears_it(tmp_path):
    store = FileStateStore(tmp_path / "st")
    db = store.open()
    fill(db)
    db.commit()
    store.publish(db)
    db.close()
    db = store.open()
    # a confirmed batch, then a batch sent without an answer; the process dies
    store.append_journal(db.intent_entry("users", ["u2", "u1"]))
    store.append_journal(db.journal_entry("users", {"u2": ("b@x.com", ())}, ["u1"]))
    db.seq += 1
    store.append_journal(db.intent_entry("addresses", ["c@x.com", "a@x.com"]))
    db.close()
    again = store.open()
    assert sorted(again.recheck_keys("users")) == ["u1", "u2"]
    assert sorted(again.recheck_keys("addresses")) == ["a@x.com", "c@x.com"]
    assert again.recheck_keys("groups") == []
    again.close()  # killed again: the list comes back from the same journal
    third = store.open()
    assert sorted(third.recheck_keys("users")) == ["u1", "u2"]
    third.clear_recheck("users")
    third.commit()
    store.publish(third)
    third.close()
    last = store.open()  # committed: the addresses still wait for their recheck, the users do not
    assert last.recheck_keys("users") == [] and sorted(last.recheck_keys("addresses")) == ["a@x.com", "c@x.com"]
    last.clear_recheck()
    assert last.recheck_keys("addresses") == []
    last.close()


def test_a_state_written_before_the_recheck_list_gets_one(tmp_path):
    store = FileStateStore(tmp_path / "st")
    db = store.open()
    fill(db)
    db.commit()
    store.publish(db)
    db.close()
    conn = sqlite3.connect(tmp_path / "st" / DB_NAME)
    conn.execute("DROP TABLE recheck")
    conn.commit()
    conn.close()
    again = store.open()
    assert again.recheck_keys("users") == [] and again.records("users") == SAMPLE["users"]
    again.close()


def test_the_state_journals_an_intent_and_a_confirmation_around_a_request(tmp_path):
    """The journal protocol as the sending stage uses it (shared/storage/state.py): an intent
    before the request, then the confirmation, which applies the records and moves the
    position; a withdrawn intent leaves nothing behind."""
    store = FileStateStore(tmp_path)
    db = store.open()
    start = db.position
    token = db.record_intent(store, "users", ["u1"])
    db.withdraw_intent(store, token)
    assert db.position == start and (store.journal.read_bytes() if store.journal.exists() else b"") == b""
    db.record_intent(store, "users", ["u1"])
    db.confirm(store, "users", {"u1": ("a@x.com", ())}, [])
    assert db.records("users") == {"u1": ("a@x.com", ())} and db.seq == 1 and db.position != start
    db.close()  # a crash before the commit: the journal carries the confirmed batch
    again = store.open()
    assert again.records("users") == {"u1": ("a@x.com", ())} and again.position.endswith(":1")
    again.close()
