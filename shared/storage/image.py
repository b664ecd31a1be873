"""The ``blob:`` state on the wire: the SQLite database as compressed, content-addressed parts
under ``<container>/state.parts/`` and one small manifest blob, ``<container>/state.manifest.json``, the
commit point.

Manifest (JSON): ``{"format": "entra-dirsync-state-image", "version": 1, "generation": int,
"schema": str, "length": int, "chunkSize": int, "chunks": [[sha256, bytes], ...], "logs":
[[sha256, bytes], ...], "legacy": true (only while the previous release's blob may remain)}``. ``chunks`` are the database file (the *base*) cut into
``chunkSize`` pieces (4 MiB; the last may be shorter), in order; ``logs`` are the change logs
of the runs since the base (``shared/storage/changelog.py``), in the order they replay. Each
part is stored Zstandard-compressed under ``state.parts/<sha256 of its raw bytes>``, written once
and never changed; ``bytes`` is its stored size. ``schema`` is the digest of the base's schema
(a log is only taken on an unchanged schema).

Writing (``upload`` then ``commit`` then ``collect_garbage``): the parts the manifest does not
name yet are uploaded first (in parallel, bounded), then the manifest, on the condition that
it is still the one this run read (``If-Match``; ``If-None-Match: *`` for the first), so a
concurrent writer is refused, and last the parts no manifest names any more are deleted (best
effort). A process killed between any two of these requests leaves the committed manifest
naming parts that all exist: before the manifest, new parts are only unnamed extras; after
it, garbage collection deletes only parts the new manifest does not name, and only those
written before it (a part another writer uploaded since is kept: it is newer than the
manifest), each on the ETag it was listed with.

Reading (``load``): the manifest, then every part (in parallel), each checked against its
name's hash before it is used; the chunks are written into a new file, the logs replayed onto
it, and only then is the file moved into place. A part that is missing or corrupt gives a
``StateError`` naming its blob, and nothing half-read is left behind. A part that vanished
because a writer committed meanwhile (a dry run reads without the lock) makes the read start
again from the new manifest."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from ..common.errors import StateConflictError, StateError
from . import changelog
from .blob import azure_reason, if_not_modified

MANIFEST_NAME = "state.manifest.json"
PARTS = "state.parts/"
FORMAT = "entra-dirsync-state-image"
VERSION = 1
CHUNK_SIZE = 4 * 1024 * 1024
WORKERS = 4  # parts downloading at once (each holds a chunk raw and compressed), or uploading (each compressed)
# Parts are Zstandard frames (python-zstandard): level 3 with a window of a whole chunk and
# long-distance matching. Measured on a 20,000-user state (bench/blob_state.py prints it at any
# size): 22 % of the database against zlib level 6's 31 %, compressing about 5x faster and
# inflating about 10x faster than zlib.
LEVEL = 3
WINDOW_LOG = 22  # 4 MiB: one chunk


def compressor() -> zstandard.ZstdCompressor:
    """The parts' compressor (one thread at a time; reusing it keeps one context for many parts)."""
    params = zstandard.ZstdCompressionParameters.from_level(LEVEL, window_log=WINDOW_LOG, enable_ldm=True)
    return zstandard.ZstdCompressor(compression_params=params)


def compress(raw: bytes | memoryview) -> bytes:
    """One part's stored bytes: ``raw`` as one Zstandard frame (its size in the header)."""
    return compressor().compress(raw)
MAX_LOG_BYTES = 256 * 1024 * 1024  # a change log larger than this when inflated is refused
READ_ATTEMPTS = 3


@dataclass(frozen=True)
class Manifest:
    generation: int
    schema: str
    length: int
    chunk_size: int
    chunks: tuple[tuple[str, int], ...]
    logs: tuple[tuple[str, int], ...] = ()
    legacy: bool = False  # the previous release's single blob may still be there: delete it
    facts: tuple[str, int] | None = None  # the part holding this generation's facts.read_facts (JSON), for status

    def names(self) -> set[str]:
        return {PARTS + h for h, _ in (*self.chunks, *self.logs, *((self.facts,) if self.facts else ()))}

    @property
    def stored(self) -> int:
        """Bytes of every part it names (the manifest itself aside)."""
        return sum(n for _, n in (*self.chunks, *self.logs, *((self.facts,) if self.facts else ())))

    def to_json(self) -> bytes:
        doc = {"format": FORMAT, "version": VERSION, "generation": self.generation, "schema": self.schema, "length": self.length,
               "chunkSize": self.chunk_size, "chunks": [list(c) for c in self.chunks], "logs": [list(g) for g in self.logs]}
        if self.legacy:
            doc["legacy"] = True
        if self.facts is not None:
            doc["facts"] = [list(self.facts)]
        return json.dumps(doc, separators=(",", ":")).encode("utf-8")

    @classmethod
    def parse(cls, data: bytes, where: str) -> Manifest:
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
                raise ValueError("not a state manifest of this version")
            def parts(key: str) -> tuple[tuple[str, int], ...]:
                out = tuple((str(h), int(n)) for h, n in doc[key])
                if not all(len(h) == 64 and all(c in "0123456789abcdef" for c in h) and n >= 0 for h, n in out):
                    raise ValueError(key)
                return out
            facts = parts("facts") if "facts" in doc else ()  # a manifest written before it was published: none
            if len(facts) > 1:
                raise ValueError("facts")
            m = cls(int(doc["generation"]), str(doc["schema"]), int(doc["length"]), int(doc["chunkSize"]), parts("chunks"), parts("logs"),
                    doc.get("legacy") is True, facts[0] if facts else None)
            if m.chunk_size <= 0 or m.length < 0 or len(m.chunks) != -(-m.length // m.chunk_size):
                raise ValueError("the chunks do not cover the length")
            return m
        except (ValueError, TypeError, KeyError):
            raise StateError(f"the state manifest {MANIFEST_NAME} at {where} is malformed; run 'refresh' to rebuild it from the service") from None


class _Missing(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def _inflate(data: bytes, limit: int, name: str, where: str) -> bytes:
    try:
        # One whole frame, whose content size (in its header) is at most ``limit``; anything
        # after the frame, a frame cut short, or a bigger frame is corrupt.
        if zstandard.frame_content_size(data) > limit:
            raise zstandard.ZstdError("bigger than the part can be")
        d = zstandard.ZstdDecompressor().decompressobj()
        raw = d.decompress(data)
        if not d.eof or d.unused_data or len(raw) > limit:
            raise zstandard.ZstdError("wrong length")
    except zstandard.ZstdError:
        raise StateError(f"the state part {name} at {where} is corrupt (not the data its name promises); run 'refresh' to rebuild it") from None
    return raw


def _read_exactly(fh: Any, into: memoryview, path: Path) -> int:
    """Fill ``into`` from the file; a file shorter than it was when measured is an error."""
    got = 0
    while got < len(into):
        n = fh.readinto(into[got:])
        if not n:
            raise StateError(f"the local state {path} changed while it was packed; nothing was published")
        got += n
    return got


class _Uploads:
    """Parts uploading in the background, at most ``limit`` at once. ``submit`` waits for a
    free slot; the first failure is raised (by ``submit`` or on leaving), and the uploads not
    started yet are cancelled."""

    def __init__(self, upload: Any, limit: int) -> None:
        self._upload = upload
        self._limit = max(1, limit)
        self._pool = cf.ThreadPoolExecutor(max_workers=self._limit, thread_name_prefix="state-part")
        self._pending: set[cf.Future[None]] = set()

    def submit(self, name: str, data: bytes) -> None:
        while len(self._pending) >= self._limit:
            self._reap(cf.FIRST_COMPLETED)
        self._pending.add(self._pool.submit(self._upload, name, data))

    def _reap(self, when: str) -> None:
        done, self._pending = cf.wait(self._pending, return_when=when)
        for f in done:
            f.result()

    def __enter__(self) -> _Uploads:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        try:
            if kind is None:
                self._reap(cf.ALL_COMPLETED)
        finally:
            for f in self._pending:
                f.cancel()
            self._pool.shutdown(wait=True)


def part_name(raw: bytes) -> str:
    return PARTS + hashlib.sha256(raw).hexdigest()


class Image:
    """The parts and the manifest of one container. ``counters`` (bytes and parts moved by
    this object: ``uploaded``, ``downloaded``, ``parts_uploaded``) is what the benchmark reads."""

    def __init__(self, container: Any, where: str, chunk_size: int = CHUNK_SIZE, workers: int = WORKERS) -> None:
        self.container = container
        self.where = where
        self.chunk_size = chunk_size
        self.workers = workers
        self.counters = {"uploaded": 0, "downloaded": 0, "parts_uploaded": 0}
        self._count_lock = threading.Lock()

    def _count(self, key: str, n: int) -> None:
        with self._count_lock:
            self.counters[key] += n

    # --- reading -------------------------------------------------------------------------------
    def read_manifest(self) -> tuple[Manifest | None, str | None, Any]:
        """(manifest, its ETag, its last-modified time), or (None, None, None) when there is none."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            stream = self.container.get_blob_client(MANIFEST_NAME).download_blob()
        except ResourceNotFoundError:
            return None, None, None
        data = stream.readall()
        self._count("downloaded", len(data))
        return Manifest.parse(data, self.where), stream.properties.etag, stream.properties.last_modified

    def _get(self, name: str, limit: int) -> bytes:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            data = self.container.get_blob_client(name).download_blob().readall()
        except ResourceNotFoundError:
            raise _Missing(name) from None
        self._count("downloaded", len(data))
        raw = _inflate(data, limit, name, self.where)
        if part_name(raw) != name:
            raise StateError(f"the state part {name} at {self.where} is corrupt (not the data its name promises); run 'refresh' to rebuild it")
        return raw

    def read_facts(self) -> tuple[Manifest, bytes | None] | None:
        """The manifest and the facts part it names (inflated, checked against its name; None
        when it names none), or ``None`` when there is no manifest. A part collected by a commit
        that came meanwhile is followed to the newer manifest, as ``load`` does."""
        for _ in range(READ_ATTEMPTS):
            manifest, etag, _ = self.read_manifest()
            if manifest is None:
                return None
            if manifest.facts is None:
                return manifest, None
            try:
                return manifest, self._get(PARTS + manifest.facts[0], MAX_LOG_BYTES)
            except _Missing as missing:
                if self.read_manifest()[1] == etag:
                    raise StateError(f"the state part {missing.name} at {self.where} is missing; run 'refresh' to rebuild the "
                                     "state from the service") from None
        raise StateError(f"the state at {self.where} kept changing while it was read; try again")

    def load(self, target: Path, read: tuple[Manifest, str] | None = None) -> tuple[Manifest, str] | None:
        """The database the manifest names, written to ``target`` (replaced only when whole);
        its manifest and ETag. ``None`` when there is no manifest. ``read``: the manifest and
        ETag the caller just read, used for the first attempt."""
        for attempt in range(READ_ATTEMPTS):
            manifest, etag = read if read is not None and attempt == 0 else self.read_manifest()[:2]
            if manifest is None:
                return None
            try:
                self._assemble(manifest, target)
                return manifest, str(etag)
            except _Missing as missing:
                _, now, _ = self.read_manifest()
                if now == etag:
                    raise StateError(f"the state part {missing.name} at {self.where} is missing; run 'refresh' to rebuild the state "
                                     "from the service") from None
        raise StateError(f"the state at {self.where} kept changing while it was read; try again")

    def _assemble(self, m: Manifest, target: Path) -> None:
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.ftruncate(fd, m.length)
                def chunk(i: int) -> None:
                    raw = self._get(PARTS + m.chunks[i][0], m.chunk_size)
                    if len(raw) != min(m.chunk_size, m.length - i * m.chunk_size):
                        raise StateError(f"the state part {PARTS + m.chunks[i][0]} at {self.where} has the wrong length; run 'refresh'")
                    os.pwrite(fd, raw, i * m.chunk_size)
                self._parallel(chunk, range(len(m.chunks)))
            finally:
                os.close(fd)
            if m.logs:
                logs: dict[int, bytes] = {}
                self._parallel(lambda i: logs.__setitem__(i, self._get(PARTS + m.logs[i][0], MAX_LOG_BYTES)), range(len(m.logs)))
                self._replay(tmp, m, [logs[i] for i in range(len(m.logs))])
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def _replay(self, path: Path, m: Manifest, logs: list[bytes]) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            if changelog.schema_digest(conn) != m.schema:
                raise StateError(f"the state at {self.where} does not match its manifest's schema; run 'refresh' to rebuild it")
            conn.execute("BEGIN")
            for (h, _), raw in zip(m.logs, logs, strict=True):
                try:
                    changelog.apply(conn, json.loads(raw))
                except (ValueError, TypeError, KeyError, AttributeError, sqlite3.Error) as exc:
                    raise StateError(f"the state part {PARTS + h} at {self.where} does not apply ({type(exc).__name__}); run 'refresh'") from None
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise StateError(f"the state at {self.where} is unreadable ({exc}); run 'refresh' to rebuild it from the service") from None
        finally:
            conn.close()

    def _parallel(self, fn: Any, items: Any) -> list[Any]:
        with cf.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="state-part") as pool:
            futures = [pool.submit(fn, i) for i in items]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    # --- writing -------------------------------------------------------------------------------
    def put(self, raw: bytes, data: bytes | None = None) -> tuple[str, int]:
        """Upload one part (``data``: ``raw`` compressed, when already done); its (hash, stored bytes)."""
        data = compress(raw) if data is None else data
        name = part_name(raw)
        self._upload(name, data)
        return name[len(PARTS):], len(data)

    def _upload(self, name: str, data: bytes) -> None:
        self.container.get_blob_client(name).upload_blob(data, overwrite=True)
        self._count("uploaded", len(data))
        self._count("parts_uploaded", 1)

    def put_base(self, path: Path, base: Manifest | None) -> tuple[int, tuple[tuple[str, int], ...]]:
        """Cut the committed database file into chunks and upload those ``base`` does not have
        (nor an earlier chunk of this file); (file length, chunks).

        Streamed: the chunks are read one after the other into one reused buffer, hashed, and
        compressed by one reused context, and each compressed part goes to the uploads, of which
        at most ``workers`` are in flight (the next chunk waits for a free slot). What this holds
        is one raw chunk, one context and at most ``workers`` + 1 compressed parts, whatever the
        size of the file. A failed upload stops the rest and is raised: the manifest is never
        written over a part that did not arrive."""
        have = dict(base.chunks) if base is not None and base.chunk_size == self.chunk_size else {}
        length = path.stat().st_size
        buf = memoryview(bytearray(min(self.chunk_size, length)))
        packer = compressor()
        chunks: list[tuple[str, int]] = []
        with open(path, "rb", buffering=0) as fh, _Uploads(self._upload, self.workers) as uploads:
            for offset in range(0, length, self.chunk_size):
                raw = buf[: _read_exactly(fh, buf[: min(self.chunk_size, length - offset)], path)]
                h = hashlib.sha256(raw).hexdigest()
                if h not in have:
                    data = packer.compress(raw)
                    have[h] = len(data)
                    uploads.submit(PARTS + h, data)
                    del data
                chunks.append((h, have[h]))
        return length, tuple(chunks)

    def commit(self, manifest: Manifest, etag: str | None) -> tuple[str, Any]:
        """Write the manifest if it is still the one read at ``etag`` (``None``: if there is
        none); its new (ETag, last-modified). ``StateConflictError`` when someone else wrote."""
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        blob = self.container.get_blob_client(MANIFEST_NAME)
        data = manifest.to_json()
        try:
            if etag is None:
                result = blob.upload_blob(data, overwrite=True, if_none_match="*")
            else:
                result = blob.upload_blob(data, overwrite=True, etag=etag, match_condition=if_not_modified())
        except (ResourceModifiedError, ResourceExistsError):
            raise StateConflictError(f"the state at {self.where} was changed by someone else during this run; nothing was overwritten") from None
        self._count("uploaded", len(data))
        return str(result.get("etag")), result.get("last_modified")

    def collect_garbage(self, manifest: Manifest, committed_at: Any, log: Any) -> int:
        """Delete the parts ``manifest`` does not name that were written before it; best
        effort (a failure is logged; the next commit tries again). Returns how many went."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        keep = manifest.names()
        gone = 0
        try:
            for b in self.container.list_blobs(name_starts_with=PARTS):
                if b.name in keep or committed_at is None or b.last_modified is None or b.last_modified >= committed_at:
                    continue
                try:
                    self.container.get_blob_client(b.name).delete_blob(etag=b.etag, match_condition=if_not_modified())
                    gone += 1
                except ResourceNotFoundError:
                    pass
        except AzureError as exc:
            log.warning("state %s: could not remove unused state parts (%s); the next commit tries again", self.where, azure_reason(exc))
        return gone
