"""The change-tracking state: atomic replacement, journal replay, and both backends."""

from __future__ import annotations

import gzip
import json

import pytest

from shared.errors import StateConflictError, StateError
from shared.state import FileStateStore, SyncState


def sample() -> SyncState:
    s = SyncState.new()
    s.datasets = {
        "addresses": {"a@x.com": (), "b@x.com": ()},
        "groups": {"g1": ("Sales", ("g2",)), "g2": ("All", ())},
        "users": {"u1": ("a@x.com", ("g1",))},
    }
    return s


def roundtrip(store) -> None:
    assert store.load() is None
    s = sample()
    store.save(s)
    loaded = store.load()
    assert loaded.datasets == s.datasets and loaded.lineage == s.lineage
    # a confirmed batch is journaled and replayed on the next load
    e = loaded.journal_entry("users", {"u2": ("b@x.com", ())}, ["u1"])
    store.append_journal(e)
    again = store.load()
    assert again.records("users") == {"u2": ("b@x.com", ())}
    assert again.seq == 1 and again.position.endswith(":0:1")
    # folding the journal into a new generation makes old entries stale
    store.save(again.advanced())
    final = store.load()
    assert final.generation == 1 and final.seq == 0
    assert final.records("users") == {"u2": ("b@x.com", ())}
    store.append_journal(e)  # a stale entry (generation 0) must not be applied twice
    assert store.load().records("users") == {"u2": ("b@x.com", ())}


def test_file_store_roundtrip(tmp_path):
    roundtrip(FileStateStore(tmp_path / "st"))


def test_blob_store_roundtrip(azurite):
    from azure.storage.blob import BlobServiceClient

    from shared.state import BlobStateStore

    svc = BlobServiceClient.from_connection_string(azurite.connection_string)
    roundtrip(BlobStateStore(svc, "state-roundtrip", "azurite"))


def test_blob_store_refuses_to_overwrite_a_state_written_by_someone_else(azurite):
    from azure.storage.blob import BlobServiceClient

    from shared.state import BlobStateStore

    svc = BlobServiceClient.from_connection_string(azurite.connection_string)
    a = BlobStateStore(svc, "state-conflict", "azurite")
    b = BlobStateStore(svc, "state-conflict", "azurite")
    a.save(sample())
    sa = a.load()
    sb = b.load()
    b.save(sb.advanced())
    with pytest.raises(StateConflictError):
        a.save(sa.advanced())


def test_torn_journal_line_is_ignored(tmp_path):
    store = FileStateStore(tmp_path)
    s = sample()
    store.save(s)
    e1 = s.journal_entry("addresses", {"c@x.com": ()}, [])
    store.append_journal(e1)
    with open(store.journal, "ab") as fh:
        fh.write(b'{"lineage": "' + s.lineage.encode() + b'", "generation": 0, "seq": 2, "dat')
    loaded = store.load()
    assert "c@x.com" in loaded.records("addresses") and loaded.seq == 1


def test_a_crash_while_writing_leaves_the_old_state(tmp_path, monkeypatch):
    store = FileStateStore(tmp_path)
    store.save(sample())
    before = store.path.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("shared.state.os.replace", boom)
    with pytest.raises(StateError, match="No space left"):
        store.save(sample())
    assert store.path.read_bytes() == before
    assert store.load().datasets == SyncState.from_bytes(before, "x").datasets


@pytest.mark.parametrize(
    "content, match",
    [
        (b"not gzip", "unreadable"),
        (gzip.compress(b"{not json"), "unreadable"),
        (gzip.compress(json.dumps({"format": "other"}).encode()), "not a sync state"),
        (gzip.compress(json.dumps({"format": "entra-dirsync-state", "version": 99}).encode()), "version 99"),
        (gzip.compress(json.dumps({"format": "entra-dirsync-state", "version": 1, "lineage": "x", "generation": 0,
                                   "datasets": {"users": {"u": "bad"}}}).encode()), "malformed"),
    ],
)
def test_bad_state_files_give_a_clear_error(tmp_path, content, match):
    store = FileStateStore(tmp_path)
    store.path.write_bytes(content)
    with pytest.raises(StateError, match=match) as info:
        store.load()
    assert "refresh" in str(info.value)
