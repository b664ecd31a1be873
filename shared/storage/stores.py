"""The state stores: where the state database and its journal live. ``file:<directory>``
(the database lives there, the journal is a file written with fsync) and ``blob:<container>``
(the database is a block blob, downloaded to a local file, committed there, then uploaded with
a condition on the ETag it was read at; the journal is an append blob). Each converts a state
of the previous release on first open (shared/storage/legacy.py). Built by
shared/storage/backend.py."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, Protocol

from ..common.errors import StateConflictError, StateError
from ..common.localdir import default_base, private_dir
from .blob import azure_reason, ensure_container, if_not_modified
from .legacy import convert_v1, load_v1
from .state import DB_NAME, JOURNAL_NAME, V1_NAME, StateDB, good_prefix, replay_journal, snapshot

log = logging.getLogger("shared.state")  # the name its log lines have always carried


class StateStore(Protocol):
    where: str

    def open(self, *, readonly: bool = False, rebuild: bool = False) -> StateDB | None: ...
    def append_journal(self, entry: dict[str, Any]) -> Any: ...
    def retract_journal(self, token: Any) -> None: ...
    def publish(self, db: StateDB) -> None: ...


# --- file: ----------------------------------------------------------------------------------
class FileStateStore:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.where = f"file:{self.dir}"
        self.path = self.dir / DB_NAME
        self.journal = self.dir / JOURNAL_NAME

    def open(self, *, readonly: bool = False, rebuild: bool = False) -> StateDB | None:
        """The state, with the journal of an interrupted run folded in; ``None`` when there is
        none and ``readonly`` (a dry run creates nothing). ``rebuild`` (refresh) sets an
        unreadable state aside instead of failing."""
        if rebuild:
            try:
                return self.open()
            except StateError as exc:
                aside = self.dir / f"{DB_NAME}.unreadable-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
                log.warning("refresh: the state is unusable (%s); keeping it as %s and starting a new one", exc, aside.name)
                for name in (DB_NAME, V1_NAME, JOURNAL_NAME):
                    if (self.dir / name).exists():
                        (self.dir / name).rename(aside if name == DB_NAME else self.dir / f"{name}.unreadable")
                return self.open()
        v1 = self.dir / V1_NAME
        exists = self.path.exists()
        if not exists and readonly and not v1.exists():
            return None
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the state directory {self.where}: {exc.strerror}") from None
        if readonly:
            # A dry run works on a snapshot, so it never holds a lock a running update needs.
            tmp = Path(tempfile.mkdtemp(prefix="dirsync-dry-")) / DB_NAME
            if exists:
                snapshot(self.path, tmp, self.where)
            db = StateDB(tmp, self.where, durable=False, discard=True)
            if not exists:
                convert_v1(db, *load_v1(v1.read_bytes(), self._journal_bytes(), self.where))
            replay_journal(db, self._journal_bytes())
            return db
        old = load_v1(v1.read_bytes(), self._journal_bytes(), self.where) if not exists and v1.exists() else None
        db = StateDB(self.path, self.where)
        if old is not None:
            convert_v1(db, *old)
            self.journal.unlink(missing_ok=True)
            v1.rename(self.dir / (V1_NAME + ".converted"))
        data = self._journal_bytes()
        applied, torn = replay_journal(db, data)  # in the open transaction, committed at the run's end
        if torn:
            # Appending after a torn line would hide every later entry: cut it off first.
            good = good_prefix(data)
            try:
                os.truncate(self.journal, good)
            except OSError as exc:
                raise StateError(f"cannot repair the journal at {self.where}: {exc.strerror}") from None
        elif not applied and self.journal.exists():
            self._clear_journal()  # only stale entries
        return db

    def _journal_bytes(self) -> bytes:
        try:
            return self.journal.read_bytes()
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise StateError(f"cannot read the journal at {self.where}: {exc.strerror}") from None

    def publish(self, db: StateDB) -> None:
        """After ``db.commit()``: the database is the durable copy, so the journal is stale."""
        self._clear_journal()

    def _clear_journal(self) -> None:
        try:
            self.journal.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("state %s: could not clear the journal (%s); its entries are stale and will be ignored", self.where, exc.strerror)

    def append_journal(self, entry: dict[str, Any]) -> Any:
        """Returns a token for ``retract_journal`` (the journal's length before)."""
        line = json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"
        try:
            with open(self.journal, "ab") as fh:
                before = fh.tell()
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise StateError(f"cannot append to the journal at {self.where}: {exc.strerror}") from None
        return before

    def retract_journal(self, token: Any) -> None:
        """Take back the last entry (an intent whose batch failed with an answer, while this
        process lived to see it): the state is left as it was before the batch."""
        try:
            if token == 0:
                self.journal.unlink(missing_ok=True)
            else:
                os.truncate(self.journal, token)
        except OSError as exc:
            log.warning("state %s: could not take back an intent entry (%s); the next run sends its records again", self.where, exc.strerror)


# --- blob: ----------------------------------------------------------------------------------
class BlobStateStore:
    """The database as a block blob. It is worked on in a local copy (kept between runs of a
    warm instance and reused while the blob's ETag is unchanged) and uploaded after the commit,
    on the condition that nobody else wrote it meanwhile."""

    def __init__(self, service_client: Any, container: str, account_hint: str, local_dir: str | os.PathLike[str] | None = None) -> None:
        self.container = service_client.get_container_client(container)
        self.where = f"blob:{container} ({account_hint})"
        tag = hashlib.sha256(f"{account_hint}/{container}".encode()).hexdigest()[:16]
        # a per-user 0700 directory, checked for owner and mode on every open (shared/common/localdir.py)
        self._local_base = None if local_dir else default_base()
        self.local = Path(local_dir or self._local_base) / f"dirsync-state-{tag}"
        self._etag: str | None = None
        self._journal_ready = False

    def open(self, *, readonly: bool = False, rebuild: bool = False) -> StateDB | None:
        if rebuild:
            try:
                return self.open()
            except StateConflictError:
                raise
            except StateError as exc:
                log.warning("refresh: the state is unusable (%s); starting a new one (the blob is replaced on success)", exc)
                path = self.local / DB_NAME
                path.unlink(missing_ok=True)
                (self.local / "etag").unlink(missing_ok=True)
                return StateDB(path, self.where, durable=False)
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        private_dir(self.local, self._local_base)
        path, stamp = self.local / DB_NAME, self.local / "etag"
        try:
            ensure_container(self.container)
            blob = self.container.get_blob_client(DB_NAME)
            try:
                props = blob.get_blob_properties()
                self._etag = props.etag
            except ResourceNotFoundError:
                self._etag = None
            if readonly:
                # A dry run never touches the local copy a running update may be working on:
                # it downloads its own snapshot.
                v1 = self._download(V1_NAME) if self._etag is None else None
                if self._etag is None and v1 is None:
                    return None
                work = Path(tempfile.mkdtemp(prefix="dirsync-dry-")) / DB_NAME
                if self._etag is not None:
                    with open(work, "wb") as fh:
                        blob.download_blob(etag=self._etag, match_condition=if_not_modified()).readinto(fh)
                journal = self._download(JOURNAL_NAME) or b""
            elif self._etag is None:
                v1 = self._download(V1_NAME)
                path.unlink(missing_ok=True)
                stamp.unlink(missing_ok=True)
            elif not (path.exists() and stamp.exists() and stamp.read_text() == self._etag):
                stamp.unlink(missing_ok=True)
                tmp = self.local / f".{DB_NAME}.{uuid.uuid4().hex}.tmp"
                with open(tmp, "wb") as fh:
                    downloader = blob.download_blob(etag=self._etag, match_condition=if_not_modified())
                    downloader.readinto(fh)
                os.replace(tmp, path)
                stamp.write_text(self._etag)
            if not readonly:
                journal = self._download(JOURNAL_NAME) or b""
        except AzureError as exc:
            raise StateError(f"cannot read the state at {self.where}: {azure_reason(exc)}") from None
        except OSError as exc:
            raise StateError(f"cannot keep a local copy of the state at {self.local}: {exc.strerror}") from None
        if readonly:
            db = StateDB(work, self.where, durable=False, discard=True)
            if self._etag is None and v1 is not None:
                convert_v1(db, *load_v1(v1, journal, self.where))
            replay_journal(db, journal)
            return db
        stamp.unlink(missing_ok=True)  # the local copy is about to diverge from the blob
        db = StateDB(path, self.where, durable=False)
        if self._etag is None:
            if v1 is not None:
                convert_v1(db, *load_v1(v1, journal, self.where))
                journal = b""
            self.publish(db)  # the lineage is durable before any batch is journaled
        applied, torn = replay_journal(db, journal)
        if torn:
            # An append blob cannot be cut: fold the journal into a new generation instead.
            db.commit()
            self.publish(db)
        return db

    def _download(self, name: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.container.get_blob_client(name).download_blob().readall()
        except ResourceNotFoundError:
            return None

    def publish(self, db: StateDB) -> None:
        """Upload the committed database (atomic: the block list is committed at the end)."""
        from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

        blob = self.container.get_blob_client(DB_NAME)
        try:
            with open(db.path, "rb") as fh:
                if self._etag is None:
                    result = blob.upload_blob(fh, overwrite=True, if_none_match="*", max_concurrency=4)
                else:
                    result = blob.upload_blob(fh, overwrite=True, etag=self._etag, match_condition=if_not_modified(), max_concurrency=4)
            self._etag = result.get("etag")
            (self.local / "etag").write_text(str(self._etag))
        except (ResourceModifiedError, ResourceExistsError):
            raise StateConflictError(f"the state at {self.where} was changed by someone else during this run; nothing was overwritten") from None
        except AzureError as exc:
            raise StateError(f"cannot write the state at {self.where}: {azure_reason(exc)}") from None
        try:
            self.container.get_blob_client(JOURNAL_NAME).delete_blob()
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            log.warning("state %s: could not clear the journal (%s); its entries are stale and will be ignored", self.where, azure_reason(exc))
        self._journal_ready = False

    def retract_journal(self, token: Any) -> None:
        """An append blob cannot be cut: the intent stays, and the next run sends its records
        again (idempotently) as if the process had died with the batch in flight."""

    def append_journal(self, entry: dict[str, Any]) -> Any:
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
