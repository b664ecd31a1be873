"""The state stores: where the state database and its journal live. ``file:<directory>``
(the database lives there, the journal is a file written with fsync) and ``blob:<container>``
(``shared/storage/blob_store.py``: the database travels as compressed parts and a manifest
written on a condition on the ETag it was read at, an incremental run uploading only its
change log; the journal is an append blob). Each converts the formats of earlier releases on
first open (shared/storage/legacy.py). Built by shared/storage/backend.py."""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from ..common import fastjson
from ..common.errors import StateError
from .blob_store import BlobStateStore
from .facts import copy_facts, live_facts
from .legacy import convert_v1, load_v1
from .state import DB_NAME, FORMAT, JOURNAL_NAME, V1_NAME, VERSION, StateDB, good_prefix, replay_journal, snapshot

log = logging.getLogger("shared.state")  # the name its log lines have always carried


class StateStore(Protocol):
    where: str

    def open(self, *, readonly: bool = False, rebuild: bool = False) -> StateDB | None: ...
    def exists(self) -> bool: ...
    def facts(self) -> dict[str, Any] | None: ...
    def append_journal(self, entry: dict[str, Any], *, durable: bool = True) -> Any: ...
    def retract_journal(self, token: Any) -> None: ...
    def publish(self, db: StateDB) -> None: ...


# --- file: ----------------------------------------------------------------------------------
class FileStateStore:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.where = f"file:{self.dir}"
        self.path = self.dir / DB_NAME
        self.journal = self.dir / JOURNAL_NAME

    def exists(self) -> bool:
        """Whether a state is there (this release's database or the previous release's file);
        nothing is created."""
        return self.path.exists() or (self.dir / V1_NAME).exists()

    def facts(self) -> dict[str, Any] | None:
        """What ``status`` shows of the state (``facts.read_facts``), ``None`` when there is none.
        Read in place (``facts.live_facts``: no copy of the database, which is 144 MB at 100,000
        users) unless a journal is there to fold in (a run in flight or interrupted) or the state
        is an earlier release's; then from the copy a dry run reads."""
        try:
            journal = self.journal.stat().st_size
        except FileNotFoundError:
            journal = 0
        except OSError as exc:
            raise StateError(f"cannot read the journal at {self.where}: {exc.strerror}") from None
        if not journal and (facts := live_facts(self.path, (FORMAT, VERSION))) is not None:
            return facts
        return copy_facts(self.open(readonly=True))

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

    def append_journal(self, entry: dict[str, Any], *, durable: bool = True) -> Any:
        """Returns a token for ``retract_journal`` (the journal's length before).

        ``durable``: fsync before returning (an intent, which must be on disk before its
        request is sent). A confirmation is appended without its own fsync: a killed process
        loses nothing (the write is in the OS's cache), and the next intent's fsync makes it
        durable with its own line. Only an OS crash in between can lose it, and then its intent
        stands alone, which the next run already repairs: those keys are marked unknown,
        rechecked and sent again as the directory then implies (shared/storage/journal.py)."""
        line = fastjson.dumps_bytes(entry) + b"\n"  # json.dumps(entry, separators=(",", ":"), ensure_ascii=False), UTF-8
        try:
            with open(self.journal, "ab") as fh:
                before = fh.tell()
                fh.write(line)
                fh.flush()
                if durable:
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


__all__ = ["BlobStateStore", "FileStateStore", "StateStore"]
