"""``blob:<container>`` state: the database travels as compressed parts and a manifest
(``shared/storage/image.py``), and an incremental run uploads only its change log.

The design, and why. The database (``shared/storage/state.py``) is worked on in a local copy,
kept between runs of a warm instance together with the ETag of the manifest it matches. A run
that commits uploads one of two things, then the manifest, on the condition that nobody else
wrote it since it was read (else ``StateConflictError``, nothing overwritten):

* its **change log** (``shared/storage/changelog.py``): the rows it changed, recorded by
  TEMP triggers on the run's own connection, appended to the manifest's list of logs. At
  100,000 users a 1 % churn changes well under 1 % of the rows, but the rows are spread over
  the file's B-trees, so fixed-size pieces of the file do not work: measured at 20,000 users,
  that churn rewrote 18 % of the 4 KiB pages and all of the 1 MiB chunks.
* or a **new base**: the file cut into 4 MiB chunks, compressed, of which only the chunks the
  manifest does not already have are uploaded. This happens when no complete log can be
  taken (the first commit, a converted or rebuilt state, a full read that rewrote more rows
  than the log's budget, a schema change) or when the logs since the base reach a quarter of
  its size or ``MAX_LOGS`` (a cold instance replays them all).

A warm instance whose copy matches the manifest downloads only the manifest; after its own
commit its copy is current. A cold instance (or one whose copy is stale) downloads the base
and the logs in parallel, checks every part's hash, replays the logs, and only then replaces
its copy. The database a cold instance opens holds the same rows, meta and schema as the
writer's, though not necessarily the same bytes. A dry run (``readonly``) reads its own copy.

Crash safety: see ``shared/storage/image.py``: until the manifest is written the previous
state is intact; after it, only unnamed parts are deleted. The journal (an append blob) is
unchanged: written before each batch is sent, replayed on open, deleted after a commit.

Converting earlier formats on first open: a state written by the previous release as one
block blob ``state.db`` is downloaded, published in this form (the journal kept: it still
names the same lineage and generation), and the old blob is deleted only after the manifest
was written; the manifest says so (``legacy``) until a later one is written, so a run killed in
between leaves a manifest that has the next run delete the old blob after its own commit. Run
one release at a time: an older release would keep writing ``state.db``, which this one no longer
reads once the manifest exists. The release before that (``state.json.gz``) is converted by ``shared/storage/legacy.py``."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..common.errors import StateConflictError, StateError
from ..common.localdir import default_base, private_dir
from . import changelog
from .blob import azure_reason, ensure_container, if_not_modified, storage_problem
from .facts import copy_facts
from .image import CHUNK_SIZE, MANIFEST_NAME, Image, Manifest, compress
from .legacy import convert_v1, load_v1
from .state import DB_NAME, JOURNAL_NAME, V1_NAME, StateDB, replay_journal

log = logging.getLogger("shared.state")  # the name its log lines have always carried

LEGACY_NAME = DB_NAME  # the previous release's single block blob, ``state.db``
MAX_LOGS = 32  # change logs on one base before the next commit writes a new base
MAX_LOG_SHARE = 0.25  # ... or when they reach this share of the base's stored bytes
MIN_BUDGET = 50_000  # keys a change log records at least (see ``_budget``)


def _stamp(path: Path, etag: str) -> str:
    """What the local copy must still show to be reused: the manifest's ETag it was published
    as, and the file's size and modification time then. Any later write to the file (a commit
    that was never published, a half-written one of a killed process) changes the latter."""
    st = path.stat()
    return f"{etag} {st.st_size} {st.st_mtime_ns}"


def _journal_of(path: Path) -> Path:
    """SQLite's rollback journal of the database at ``path``."""
    return path.with_name(path.name + "-journal")


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim`` (None where the C library has none, as on musl or Windows)."""
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):
        return None


def release_cache(conn: sqlite3.Connection) -> None:
    """Hand a committed connection's page cache back to the system before the image is packed,
    so the packing does not add to it: SQLite frees its clean pages (``PRAGMA shrink_memory``),
    then glibc returns the heap pages that are free to the system (``malloc_trim``: freed small
    blocks among live ones otherwise stay resident). The cache fills again as it is read."""
    conn.execute("PRAGMA shrink_memory")
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class BlobStateStore:
    """The state in ``container``: ``open`` → ``StateDB`` (or ``None`` for a dry run with no
    state), ``publish`` after ``db.commit()``, and the journal. ``chunk_size`` (bytes) is for
    tests; ``image.counters`` counts the bytes moved."""

    def __init__(self, service_client: Any, container: str, account_hint: str, local_dir: str | os.PathLike[str] | None = None,
                 *, chunk_size: int = CHUNK_SIZE) -> None:
        self.container = service_client.get_container_client(container)
        self.where = f"blob:{container} ({account_hint})"
        # The local copy is named by the blob endpoint and the container: two storage endpoints
        # with the same account name (two Azurites, two clouds) never share a copy. One
        # endpoint's container has one run at a time (the lease-based lock).
        endpoint = str(getattr(service_client, "url", None) or account_hint).rstrip("/").lower()
        tag = hashlib.sha256(f"{endpoint}/{container}".encode()).hexdigest()[:16]
        # a per-user 0700 directory, checked for owner and mode on every open (shared/common/localdir.py)
        self._local_base = None if local_dir else default_base()
        self.local = Path(local_dir or self._local_base) / f"dirsync-state-{tag}"
        self.image = Image(self.container, self.where, chunk_size)
        self._manifest: Manifest | None = None
        self._etag: str | None = None  # the manifest's ETag the open state extends (None: there is none)
        self._legacy_etag: str | None = None  # the previous release's blob, deleted after the first commit
        self._budget = 0  # > 0 while the open state records its change log
        self._journal_ready = False

    # --- opening ---------------------------------------------------------------------------------
    def open(self, *, readonly: bool = False, rebuild: bool = False) -> StateDB | None:
        """The state with the journal of an interrupted run folded in. ``readonly``: a copy of
        its own (``None`` when there is no state); ``rebuild`` (refresh): an unusable state is
        replaced by an empty one, written over the old on the next publish."""
        if readonly:
            return self._open_snapshot()
        if not rebuild:
            return self._open()
        try:
            return self._open()
        except StateConflictError:
            raise
        except StateError as exc:
            log.warning("refresh: the state is unusable (%s); starting a new one (the blob is replaced on success)", exc)
            with self._azure("read"):
                self._etag = self._etag_of(MANIFEST_NAME)
            self._manifest, self._budget = None, 0
            for stale in (self.local / DB_NAME, _journal_of(self.local / DB_NAME), self.local / "etag"):
                stale.unlink(missing_ok=True)
            return StateDB(self.local / DB_NAME, self.where, durable=False)

    def exists(self) -> bool:
        """Whether a state is there (a manifest, or the previous release's single blob); nothing
        is created, not even the container. Raises ``StateError`` when storage cannot be read."""
        with self._azure("read"):
            return self._etag_of(MANIFEST_NAME) is not None or self._etag_of(LEGACY_NAME) is not None

    def _open(self) -> StateDB:
        private_dir(self.local, self._local_base)
        path, stamp = self.local / DB_NAME, self.local / "etag"
        # A killed run's rollback journal belongs to the bytes it was written against: the copy
        # is reused only when untouched since its publish (the journal then undoes nothing), and
        # otherwise replaced by a download, onto which the journal must never be rolled back.
        _journal_of(path).unlink(missing_ok=True)
        v1 = None
        with self._azure("read"):
            ensure_container(self.container)
            found = self._fetch(path, stamp)
            if found is None:
                path.unlink(missing_ok=True)
                v1 = self._download(V1_NAME)
            journal = self._download(JOURNAL_NAME) or b""
            stamp.unlink(missing_ok=True)  # the local copy is about to diverge from the blob
        db = StateDB(path, self.where, durable=False)
        if found != "manifest":
            if v1 is not None:
                convert_v1(db, *load_v1(v1, journal, self.where))
                journal = b""
            # The lineage is durable before any batch is journaled; a converted state keeps its journal.
            self._publish(db, clear_journal=found is None)
        self._start_log(db)
        applied, torn = replay_journal(db, journal)
        if torn:
            # An append blob cannot be cut: fold the journal into a new generation instead.
            db.commit()
            self.publish(db)
        return db

    def _fetch(self, path: Path, stamp: Path) -> str | None:
        """Bring the local copy up to the blob: ``"manifest"``, ``"legacy"`` (the previous
        release's single blob, downloaded) or ``None`` (no state)."""
        self._manifest, self._etag, _ = self.image.read_manifest()
        if self._manifest is not None:
            if self._manifest.legacy:  # a conversion killed before it deleted the old blob
                self._legacy_etag = self._etag_of(LEGACY_NAME)
            if path.exists() and stamp.exists() and stamp.read_text() == _stamp(path, self._etag):
                return "manifest"  # a warm instance: its copy is this very generation, untouched since
            stamp.unlink(missing_ok=True)
            loaded = self.image.load(path, (self._manifest, str(self._etag)))
            if loaded is None:
                raise StateError(f"the state at {self.where} vanished while it was read; try again")
            self._manifest, self._etag = loaded
            return "manifest"
        self._legacy_etag = self._etag_of(LEGACY_NAME)
        if self._legacy_etag is None:
            return None
        tmp = self.local / f".{DB_NAME}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as fh:
                blob = self.container.get_blob_client(LEGACY_NAME)
                blob.download_blob(etag=self._legacy_etag, match_condition=if_not_modified()).readinto(fh)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        log.warning("state %s: converting the previous release's single state blob (%s) to compressed parts and a manifest (%s)",
                    self.where, LEGACY_NAME, MANIFEST_NAME)
        return "legacy"

    def facts(self) -> dict[str, Any] | None:
        """What ``status`` shows of the state (``facts.read_facts``), ``None`` when there is
        none: the manifest and the small facts part it names, not the database (at 100,000
        users its parts are 38 MB, which a copy downloads and inflates to 144 MB). From the copy
        a dry run reads when a journal is there to fold in (a run in flight or interrupted), the
        manifest predates the facts (an earlier release's), or its facts part is missing or
        damaged (the database's parts may be whole: the copy says whether they are)."""
        with self._azure("read"):
            try:
                read = self.image.read_facts() if self._etag_of(JOURNAL_NAME) is None else None
            except StateError as exc:
                log.warning("state %s: its figures for status cannot be read (%s); reading the whole state", self.where, exc)
                read = None
            if read is not None and read[1] is not None:
                manifest, raw = read
                try:
                    facts = json.loads(raw)
                except ValueError:
                    facts = None  # checked against its name, so written so: read the full way
                if isinstance(facts, dict) and facts.get("generation") == manifest.generation:
                    return facts
        return copy_facts(self._open_snapshot())

    def _open_snapshot(self) -> StateDB | None:
        """A dry run's own copy: it never touches the local copy a running update works on."""
        work = Path(tempfile.mkdtemp(prefix="dirsync-dry-")) / DB_NAME
        try:
            v1 = None
            with self._azure("read"):
                ensure_container(self.container)
                if self.image.load(work) is None and not self._download_to(LEGACY_NAME, work):
                    v1 = self._download(V1_NAME)
                    if v1 is None:
                        shutil.rmtree(work.parent, ignore_errors=True)
                        return None
                journal = self._download(JOURNAL_NAME) or b""
            db = StateDB(work, self.where, durable=False, discard=True)
        except BaseException:
            shutil.rmtree(work.parent, ignore_errors=True)
            raise
        if v1 is not None:
            convert_v1(db, *load_v1(v1, journal, self.where))
        replay_journal(db, journal)
        return db

    def _start_log(self, db: StateDB) -> None:
        """Record this run's changes from here on. The budget is twice the file's pages (a 1 %
        churn at 100,000 users records about a tenth of that), at least ``MIN_BUDGET`` keys.
        A state without a complete directory cache is not recorded: its run reads in full
        (docs/sync-rules.md), rewriting every row, so it writes a new base anyway, and the
        triggers would only cost time (about half again the database's share of a full load,
        measured at 20,000 users)."""
        self._budget = 0
        if db.directory_cache != "complete":
            return
        pages = db.conn.execute("PRAGMA main.page_count").fetchone()[0]
        budget = max(MIN_BUDGET, 2 * pages)
        self._budget = budget if changelog.install(db.conn, budget) else 0

    # --- publishing ------------------------------------------------------------------------------
    def publish(self, db: StateDB) -> None:
        """After ``db.commit()``: upload the change log or a new base, then the manifest (the
        commit point: ``StateConflictError`` if someone else wrote meanwhile), then clean up."""
        self._publish(db, clear_journal=True)

    def _publish(self, db: StateDB, *, clear_journal: bool) -> None:
        release_cache(db.conn)
        with self._azure("write"):
            manifest = self._next_manifest(db)
            self._etag, committed_at = self.image.commit(manifest, self._etag)
            self._manifest = manifest
        try:
            (self.local / "etag").write_text(_stamp(db.path, self._etag))
        except OSError as exc:  # committed: only the next open's reuse of the local copy is lost
            log.warning("state %s: could not record the local copy's generation (%s); the next run downloads it", self.where, exc.strerror)
        if self._budget:
            changelog.reset(db.conn)
        self.image.collect_garbage(manifest, committed_at, log)
        if self._legacy_etag is not None:
            self._delete(LEGACY_NAME, "the previous release's state blob", etag=self._legacy_etag)
            self._legacy_etag = None
        if clear_journal:
            self._delete(JOURNAL_NAME, "the journal; its entries are stale and will be ignored")
            self._journal_ready = False

    def _next_manifest(self, db: StateDB) -> Manifest:
        """Upload this generation's parts: its facts for ``status`` (``facts.read_facts``), and
        its change log when one is complete and the logs stay small, else the chunks of a new
        base that the current one lacks."""
        raw_facts = json.dumps(db.facts(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return dataclasses.replace(self._next_image(db), facts=self.image.put(raw_facts))

    def _next_image(self, db: StateDB) -> Manifest:
        base, legacy = self._manifest, self._legacy_etag is not None
        doc = changelog.collect(db.conn, self._budget, base.schema) if self._budget and base is not None else None
        if doc is not None and base is not None and len(base.logs) < MAX_LOGS:
            raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            data = compress(raw)
            chunks_bytes = sum(n for _, n in base.chunks)
            if sum(n for _, n in base.logs) + len(data) <= MAX_LOG_SHARE * chunks_bytes:
                part = self.image.put(raw, data)
                return Manifest(db.generation, base.schema, base.length, base.chunk_size, base.chunks, (*base.logs, part), legacy)
        length, chunks = self.image.put_base(db.path, base)
        return Manifest(db.generation, changelog.schema_digest(db.conn), length, self.image.chunk_size, chunks, (), legacy)

    # --- the journal -----------------------------------------------------------------------------
    def retract_journal(self, token: Any) -> None:
        """An append blob cannot be cut: the intent stays, and the next run sends its records
        again (idempotently) as if the process had died with the batch in flight."""

    def append_journal(self, entry: dict[str, Any], *, durable: bool = True) -> Any:
        """One line appended as a block (an append is durable once acknowledged, whatever ``durable``)."""
        from azure.core.exceptions import AzureError, ResourceExistsError

        blob = self.container.get_blob_client(JOURNAL_NAME)
        line = json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"
        try:
            if not self._journal_ready:
                try:
                    blob.create_append_blob(if_none_match="*")
                except ResourceExistsError:
                    pass
                self._journal_ready = True
            for start in range(0, len(line), 4 * 1024 * 1024):
                blob.append_block(line[start : start + 4 * 1024 * 1024])
        except AzureError as exc:
            raise StateError(f"cannot append to the journal at {self.where}: {azure_reason(exc)}") from None

    # --- small helpers ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _azure(self, doing: str) -> Iterator[None]:
        """Storage and local-disk errors as ``StateError`` naming the place (``doing``: read/write)."""
        from azure.core.exceptions import AzureError

        try:
            yield
        except AzureError as exc:
            raise StateError(f"cannot {doing} the state at {self.where}: {storage_problem(exc)}") from None
        except OSError as exc:
            raise StateError(f"cannot keep a local copy of the state at {self.local}: {exc.strerror}") from None

    def _etag_of(self, name: str) -> str | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return str(self.container.get_blob_client(name).get_blob_properties().etag)
        except ResourceNotFoundError:
            return None

    def _download(self, name: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.container.get_blob_client(name).download_blob().readall()
        except ResourceNotFoundError:
            return None

    def _download_to(self, name: str, path: Path) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            with open(path, "wb") as fh:
                self.container.get_blob_client(name).download_blob().readinto(fh)
            return True
        except ResourceNotFoundError:
            path.unlink(missing_ok=True)
            return False

    def _delete(self, name: str, what: str, etag: str | None = None) -> None:
        """Best effort: a blob that is already gone, or cannot be deleted now, is only logged."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            if etag is None:
                self.container.get_blob_client(name).delete_blob()
            else:
                self.container.get_blob_client(name).delete_blob(etag=etag, match_condition=if_not_modified())
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            log.warning("state %s: could not delete %s (%s)", self.where, what, azure_reason(exc))
