"""The change-tracking state: what the service is known to hold, per dataset.

The state is one gzip'd JSON document, replaced atomically (a crash leaves the old or the new
one), plus an append-only journal of the batches the service has confirmed since. Each
confirmed batch is journaled before the next one is sent, so a run killed between two batches
loses nothing: the next load replays the journal and carries on from there. Journal entries
name the state they extend (lineage, generation, sequence), so a stale or torn entry is
ignored rather than applied twice.

Backends: ``file:<directory>`` and ``blob:<container>`` (azure-storage-blob)."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import StateConflictError, StateError
from .projection import DATASETS, Records

log = logging.getLogger(__name__)

FORMAT = "entra-dirsync-state"
VERSION = 1
STATE_NAME = "state.json.gz"
JOURNAL_NAME = "state.journal.jsonl"


@dataclass
class SyncState:
    lineage: str
    generation: int = 0
    seq: int = 0  # journal entries applied on top of ``generation``
    datasets: dict[str, Records] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(cls) -> SyncState:
        return cls(lineage=uuid.uuid4().hex)

    @property
    def position(self) -> str:
        """Where this state stands; part of every Idempotency-Key so that a key is never
        reused for a different intention, even when the same body is sent again later."""
        return f"{self.lineage}:{self.generation}:{self.seq}"

    def records(self, dataset: str) -> Records:
        return self.datasets.get(dataset, {})

    def apply(self, dataset: str, upsert: dict[str, tuple], delete: Iterable[str]) -> None:
        recs = self.datasets.setdefault(dataset, {})
        for key in delete:
            recs.pop(key, None)
        recs.update(upsert)

    def journal_entry(self, dataset: str, upsert: dict[str, tuple], delete: list[str]) -> dict[str, Any]:
        return {
            "lineage": self.lineage,
            "generation": self.generation,
            "seq": self.seq + 1,
            "dataset": dataset,
            "upsert": {k: list(_jsonable(v)) for k, v in upsert.items()},
            "delete": list(delete),
        }

    def replay(self, entry: dict[str, Any]) -> bool:
        """Apply a journal entry if it is the next one for this state."""
        if (
            entry.get("lineage") != self.lineage
            or entry.get("generation") != self.generation
            or entry.get("seq") != self.seq + 1
            or entry.get("dataset") not in DATASETS
        ):
            return False
        dataset = entry["dataset"]
        upsert = {k: _value_from_json(dataset, v) for k, v in entry["upsert"].items()}
        self.apply(dataset, upsert, entry["delete"])
        self.seq += 1
        return True

    def advanced(self) -> SyncState:
        """The same content as the next generation, with the journal folded in."""
        return SyncState(self.lineage, self.generation + 1, 0, self.datasets, dict(self.meta))

    # --- serialization -------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "lineage": self.lineage,
            "generation": self.generation,
            "savedAt": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "meta": self.meta,
            "datasets": {
                name: (sorted(recs) if name == "addresses" else {k: _jsonable(v) for k, v in recs.items()})
                for name, recs in self.datasets.items()
            },
        }
        raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return gzip.compress(raw, compresslevel=1, mtime=0)  # level 1: 3x faster, ~7% larger

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> SyncState:
        try:
            doc = json.loads(gzip.decompress(data))
        except (OSError, EOFError, ValueError) as exc:
            raise StateError(f"the state at {where} is unreadable ({type(exc).__name__}); run 'refresh' to rebuild it from the service") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise StateError(f"the state at {where} is not a sync state document; run 'refresh' to rebuild it")
        if doc.get("version") != VERSION:
            raise StateError(
                f"the state at {where} has version {doc.get('version')!r}, this release reads version {VERSION}; "
                "run 'refresh' to rebuild it from the service"
            )
        try:
            datasets: dict[str, Records] = {}
            for name, recs in doc["datasets"].items():
                if name not in DATASETS:
                    raise ValueError(name)
                if name == "addresses":
                    datasets[name] = dict.fromkeys(recs, ())
                else:
                    datasets[name] = {k: _value_from_json(name, v) for k, v in recs.items()}
            return cls(str(doc["lineage"]), int(doc["generation"]), 0, datasets, dict(doc.get("meta") or {}))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise StateError(f"the state at {where} is malformed; run 'refresh' to rebuild it from the service") from None


def _jsonable(value: tuple) -> list[Any]:
    return [list(v) if isinstance(v, tuple) else v for v in value]


def _value_from_json(dataset: str, value: Any) -> tuple:
    if dataset == "addresses":
        return ()
    first, ids = value
    if not isinstance(first, str) or not isinstance(ids, list):
        raise ValueError("bad record")
    return (first, tuple(ids))


def _parse_journal(data: bytes) -> list[dict[str, Any]]:
    entries = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            break  # a torn last write: that batch was never recorded as confirmed
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def _with_journal(state: SyncState, entries: list[dict[str, Any]], where: str) -> SyncState:
    applied = sum(1 for e in entries if state.replay(e))
    if applied:
        log.info("state %s: replayed %d confirmed batch(es) from the journal of an interrupted run", where, applied)
    return state


class StateStore(Protocol):
    where: str

    def load(self) -> SyncState | None: ...
    def save(self, state: SyncState) -> None: ...
    def append_journal(self, entry: dict[str, Any]) -> None: ...


# --- file: ----------------------------------------------------------------------------------
class FileStateStore:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.where = f"file:{self.dir}"
        self.path = self.dir / STATE_NAME
        self.journal = self.dir / JOURNAL_NAME

    def load(self) -> SyncState | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read the state at {self.where}: {exc.strerror}") from None
        state = SyncState.from_bytes(data, self.where)
        try:
            journal = self.journal.read_bytes()
        except FileNotFoundError:
            journal = b""
        return _with_journal(state, _parse_journal(journal), self.where)

    def save(self, state: SyncState) -> None:
        data = state.to_bytes()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / f".{STATE_NAME}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.dir)
            # The journal only extends the old generation; once the new state is durable,
            # its entries are stale (and would be ignored anyway).
            self.journal.unlink(missing_ok=True)
        except OSError as exc:
            raise StateError(f"cannot write the state at {self.where}: {exc.strerror}") from None

    def append_journal(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(self.journal, "ab") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise StateError(f"cannot append to the journal at {self.where}: {exc.strerror}") from None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- blob: ----------------------------------------------------------------------------------
class BlobStateStore:
    """State in a blob container. A block-blob upload is atomic; writes are conditional on the
    ETag this run read, so two writers cannot silently overwrite each other."""

    def __init__(self, service_client: Any, container: str, account_hint: str) -> None:
        self.container = service_client.get_container_client(container)
        self.where = f"blob:{container} ({account_hint})"
        self._etag: str | None = None
        self._journal_ready = False

    def _ensure_container(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        try:
            self.container.create_container()
        except ResourceExistsError:
            pass

    def load(self) -> SyncState | None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            self._ensure_container()
            blob = self.container.get_blob_client(STATE_NAME)
            downloader = blob.download_blob()
            data = downloader.readall()
            self._etag = downloader.properties.etag
        except ResourceNotFoundError:
            self._etag = None
            return None
        except AzureError as exc:
            raise StateError(f"cannot read the state at {self.where}: {_azure_reason(exc)}") from None
        state = SyncState.from_bytes(data, self.where)
        try:
            journal = self.container.get_blob_client(JOURNAL_NAME).download_blob().readall()
        except ResourceNotFoundError:
            journal = b""
        except AzureError as exc:
            raise StateError(f"cannot read the journal at {self.where}: {_azure_reason(exc)}") from None
        return _with_journal(state, _parse_journal(journal), self.where)

    def save(self, state: SyncState) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

        blob = self.container.get_blob_client(STATE_NAME)
        data = state.to_bytes()
        try:
            self._ensure_container()
            if self._etag is None:
                result = blob.upload_blob(data, overwrite=True, if_none_match="*")
            else:
                result = blob.upload_blob(data, overwrite=True, etag=self._etag, match_condition=MatchConditions.IfNotModified)
            self._etag = result.get("etag")
        except (ResourceModifiedError, ResourceExistsError):
            raise StateConflictError(f"the state at {self.where} was changed by someone else during this run; nothing was overwritten") from None
        except AzureError as exc:
            raise StateError(f"cannot write the state at {self.where}: {_azure_reason(exc)}") from None
        try:
            self.container.get_blob_client(JOURNAL_NAME).delete_blob()
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            log.warning("state %s: could not clear the journal (%s); its entries are stale and will be ignored", self.where, _azure_reason(exc))
        self._journal_ready = False

    def append_journal(self, entry: dict[str, Any]) -> None:
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
            raise StateError(f"cannot append to the journal at {self.where}: {_azure_reason(exc)}") from None


def _azure_reason(exc: Exception) -> str:
    code = getattr(exc, "error_code", None) or getattr(exc, "status_code", None)
    return f"{type(exc).__name__}{f' ({code})' if code else ''}"


def open_store(settings: Any) -> StateStore:
    """The store named by SYNC_STATE."""
    loc = settings.state
    if loc.kind == "file":
        return FileStateStore(loc.where)
    from azure.storage.blob import BlobServiceClient

    if settings.storage_connection_string:
        service = BlobServiceClient.from_connection_string(settings.storage_connection_string)
        hint = service.account_name or "connection string"
    else:
        from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

        if settings.storage_client_id:
            credential = ManagedIdentityCredential(client_id=settings.storage_client_id)
        else:
            credential = DefaultAzureCredential(managed_identity_client_id=settings.managed_identity_client_id)
        service = BlobServiceClient(settings.storage_blob_uri, credential=credential)
        hint = settings.storage_blob_uri
    return BlobStateStore(service, loc.where, hint)
