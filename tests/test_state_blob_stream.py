"""The ``blob:`` state's new base is packed as a stream (shared/storage/image.py, ``put_base``),
against Azurite: one chunk compressed at a time, at most ``workers`` uploads in flight, only the
chunks the stored base lacks uploaded (under the hash of their content), a failed upload
stopping the rest with the previous manifest left in force; and the local working copy, whose
rollback journal is a file (shared/storage/state.py), never has a killed run's journal rolled
back onto a copy downloaded since."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess  # noqa: S404 - a child process that dies mid-transaction, as a killed run does
import sys
import threading
from pathlib import Path

import pytest
import zstandard
from azure.core.exceptions import HttpResponseError

from shared.common.errors import StateError
from shared.storage import blob_store, image
from shared.storage.blob_store import BlobStateStore
from shared.storage.image import MANIFEST_NAME, PARTS
from shared.storage.state import DB_NAME
from tests.blobstate_helpers import client, container_name, parts, rows
from tests.test_state_blob import CHUNK, addresses, seeded, users


@pytest.fixture
def blob(azurite):
    return client(azurite)


def manifest_of(svc, name) -> dict:
    return json.loads(svc.get_container_client(name).get_blob_client(MANIFEST_NAME).download_blob().readall())


class Watch:
    """Counts, under one lock, the parts compressed and the uploads started and finished, and
    records at every step how many compressed parts were alive (compressed, not yet uploaded)
    and how many uploads were in flight. ``fail_at``: the upload with this index fails."""

    def __init__(self, store: BlobStateStore, monkeypatch, fail_at: int | None = None) -> None:
        self.lock = threading.Lock()
        self.compressed = self.started = self.finished = 0
        self.alive: list[int] = []
        self.in_flight: list[int] = []
        self.compressing = 0
        self.overlapping_compressions = 0
        self.fail_at = fail_at
        real_upload, real_compressor = store.image._upload, image.compressor

        def compressor():
            inner = real_compressor()
            watch = self

            class Counted:
                def compress(self, raw):
                    with watch.lock:
                        watch.compressing += 1
                        watch.overlapping_compressions = max(watch.overlapping_compressions, watch.compressing)
                    try:
                        return inner.compress(raw)
                    finally:
                        with watch.lock:
                            watch.compressing -= 1
                            watch.compressed += 1
                            watch.alive.append(watch.compressed - watch.finished)
            return Counted()

        def upload(name, data):
            with self.lock:
                index = self.started
                self.started += 1
                self.in_flight.append(self.started - self.finished)
            try:
                if index == self.fail_at:
                    raise HttpResponseError("the storage refused the part")
                real_upload(name, data)
            finally:
                with self.lock:
                    self.finished += 1

        monkeypatch.setattr(image, "compressor", compressor)
        monkeypatch.setattr(store.image, "_upload", upload)


def test_a_new_base_is_streamed_with_bounded_uploads_and_only_the_missing_chunks_go_up(blob, tmp_path, monkeypatch):
    svc, transport = blob
    name = container_name("stream")
    monkeypatch.setattr(blob_store, "MAX_LOGS", 0)  # every commit writes a new base
    store, db = seeded(svc, name, tmp_path / "a", n=4000)
    old = manifest_of(svc, name)
    assert len(old["chunks"]) >= 8  # enough chunks for the bound to matter
    store.image.workers = 2
    watch = Watch(store, monkeypatch)
    transport.reset()
    db.commit()  # a new generation: its meta rows (and the file header) change, the rest stays
    store.publish(db)
    new = manifest_of(svc, name)
    assert new["logs"] == [] and new["generation"] == old["generation"] + 1
    # only the chunks the stored base lacked were uploaded, each once, under its content's hash
    # (and the generation's facts for status)
    missing = [h for h, _ in new["chunks"] if h not in dict(old["chunks"])]
    put = [path for method, path in transport.writes if method == "PUT" and path.startswith(PARTS)]
    assert sorted(put) == sorted({PARTS + h for h in [*missing, new["facts"][0][0]]}) and 1 < len(put) < len(new["chunks"])
    assert watch.compressed == len(put)  # a chunk the base has is hashed, never compressed
    raw = (store.local / DB_NAME).read_bytes()
    for i, (h, size) in enumerate(new["chunks"]):
        piece = raw[i * CHUNK:(i + 1) * CHUNK]
        assert h == hashlib.sha256(piece).hexdigest()
        stored = svc.get_container_client(name).get_blob_client(PARTS + h).download_blob().readall()
        assert len(stored) == size and zstandard.ZstdDecompressor().decompress(stored) == piece
    # streamed: one compression at a time, at most ``workers`` uploads in flight, and at most
    # ``workers`` + 1 compressed parts alive (the uploading ones and the next, waiting for a slot)
    assert watch.overlapping_compressions == 1
    assert max(watch.in_flight) <= 2 and max(watch.alive) <= 3
    want = rows(db.conn)
    db.close()
    cold = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "cold", chunk_size=CHUNK).open()
    assert rows(cold.conn) == want
    cold.close()


def test_every_part_of_a_first_base_is_bounded_too(blob, tmp_path, monkeypatch):
    """The first commit uploads every chunk: the uploads still wait for a free slot, so the
    compressed parts alive never exceed the bound, however many chunks the file has."""
    svc, _ = blob
    store = BlobStateStore(svc, container_name("first"), "azurite", local_dir=tmp_path / "a", chunk_size=CHUNK)
    store.image.workers = 3
    watch = Watch(store, monkeypatch)
    db = store.open()
    db.replace_records("users", users(4000))
    db.replace_records("addresses", addresses(4000))
    db.commit()
    store.publish(db)
    db.close()
    assert watch.compressed >= 8 and watch.overlapping_compressions == 1
    assert max(watch.in_flight) <= 3 and max(watch.alive) <= 4


@pytest.mark.parametrize("fail_at", [0, 3])
def test_a_failed_part_upload_stops_the_rest_and_leaves_the_previous_manifest(blob, tmp_path, monkeypatch, fail_at):
    svc, _ = blob
    name = container_name("upfail")
    monkeypatch.setattr(blob_store, "MAX_LOGS", 0)
    store, db = seeded(svc, name, tmp_path / "a", n=2000)
    before, before_rows, before_parts = manifest_of(svc, name), rows(db.conn), set(parts(svc, name))
    store.image.workers = 1  # one upload at a time: the next waits for this one's outcome
    watch = Watch(store, monkeypatch, fail_at=fail_at)
    db.replace_records("users", users(2000, tag="-v2"))  # every chunk changes
    db.commit()
    with pytest.raises(StateError, match="cannot write the state"):
        store.publish(db)
    db.close()
    assert manifest_of(svc, name) == before  # the commit point was never reached
    assert set(parts(svc, name)) >= before_parts  # nothing the manifest names was removed
    assert watch.started == fail_at + 1  # no upload starts after a failed one
    cold = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "cold", chunk_size=CHUNK).open()
    assert rows(cold.conn) == before_rows
    cold.close()


KILLED_WRITER = """
import os, signal, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=TRUNCATE")
conn.execute("PRAGMA cache_size=8")  # a small cache: changed pages spill into the file
conn.execute("BEGIN")
conn.execute("DELETE FROM records")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_runs_rollback_journal_is_never_rolled_back_onto_a_downloaded_copy(blob, tmp_path, monkeypatch):
    svc, _ = blob
    name = container_name("hotjournal")
    monkeypatch.setattr(blob_store, "MIN_BUDGET", 100)
    store, db = seeded(svc, name, tmp_path / "a", n=2000)
    db.close()
    local = store.local / DB_NAME
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(local)], capture_output=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert local.with_name(DB_NAME + "-journal").stat().st_size > 0  # hot: the killed run's old page images
    # meanwhile another instance writes a new base: the killed instance's copy is stale
    other = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "b", chunk_size=CHUNK)
    odb = other.open()
    odb.replace_records("users", users(2000, tag="-b"))
    odb.commit()
    other.publish(odb)
    want = rows(odb.conn)
    odb.close()
    again = BlobStateStore(svc, name, "azurite", local_dir=tmp_path / "a", chunk_size=CHUNK).open()
    try:
        assert again.conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert rows(again.conn) == want
    finally:
        again.close()


SDK_CHILD = """
import sys
from types import SimpleNamespace
from shared.storage.blob import blob_service

svc, _ = blob_service(SimpleNamespace(storage_connection_string=sys.argv[1]))
assert "aiohttp" not in sys.modules, "the blob SDK loaded aiohttp"
container = svc.get_container_client(sys.argv[2])
container.create_container()
name = "state.parts/a b+c%d \\u00e9"  # a name whose shared-key signature depends on its encoding
container.upload_blob(name, b"part", overwrite=True)
assert container.download_blob(name).readall() == b"part"
from azure.core.pipeline.transport import AioHttpTransport  # anyone else can still import it
print("ok", AioHttpTransport.__name__)
"""


def test_the_blob_sdk_is_imported_without_aiohttp_and_signs_as_before(azurite):
    """A fresh process, as a run: the product's blob client loads no aiohttp (the SDK's probe
    for its async transport), signs requests with the shared key (a name with spaces, ``+``,
    ``%`` and non-ASCII letters round-trips), and leaves aiohttp importable for anything else."""
    child = subprocess.run([sys.executable, "-c", SDK_CHILD, azurite.connection_string, container_name("sdk")],
                           cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=120)
    assert child.returncode == 0 and child.stdout.split() == ["ok", "AioHttpTransport"], child.stderr[-2000:]
