"""The one storage factory: ``SYNC_STATE`` (``file:<dir>`` or ``blob:<container>``) → the
state store, the run lock and the run reports of one run, all over the same place. For
``blob:`` the three share ONE blob service client and so one credential, built on first use
(a ``file:`` run never imports the Azure SDK).

Input: the plain ``Settings`` (``state``, and for ``blob:`` ``AzureWebJobsStorage``).
Output: ``Storage.store()`` (``StateStore``), ``Storage.lock(holder)`` (``RunLock``, not yet
acquired), ``Storage.reports()`` (``ReportStore``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .blob import blob_service
from .history import (
    DEFAULT_MAX_AGE_DAYS,
    DEFAULT_MAX_COUNT,
    RUNS_PREFIX,
    BlobReportStore,
    FileReportStore,
    ReportStore,
)
from .lease_lock import BlobRunLock
from .lock import FileRunLock, RunLock
from .stores import BlobStateStore, FileStateStore, StateStore


class Storage:
    """The state, the lock and the reports named by ``settings.state``, over one client."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.kind: str = settings.state.kind
        self.where: str = settings.state.where
        if self.kind not in ("file", "blob"):
            raise ValueError(f"unknown state kind {self.kind!r}")
        self._service: tuple[Any, str] | None = None

    def _blob(self) -> tuple[Any, str]:
        """The one blob service client of this run and its account hint."""
        if self._service is None:
            self._service = blob_service(self.settings)
        return self._service

    def store(self) -> StateStore:
        """The state store named by SYNC_STATE."""
        if self.kind == "file":
            return FileStateStore(self.where)
        service, hint = self._blob()
        return BlobStateStore(service, self.where, hint)

    def lock(self, holder: str, *, prefix: str = "") -> RunLock:
        """The lock that guards the state (not yet acquired). ``prefix`` (e.g. ``preview/``):
        another lock of the same kind, kept under that folder beside the state's."""
        if self.kind == "file":
            return FileRunLock(Path(self.where) / prefix if prefix else self.where, holder)
        return BlobRunLock(self._container(prefix), holder)

    def reports(self, max_age_days: float = DEFAULT_MAX_AGE_DAYS, max_count: int = DEFAULT_MAX_COUNT, *, prefix: str = "") -> ReportStore:
        """The report store next to the state (``prefix``: another one, under that folder)."""
        if self.kind == "file":
            return FileReportStore(Path(self.where) / prefix if prefix else self.where, max_age_days, max_count)
        hint = self._blob()[1]
        return BlobReportStore(self._container(prefix), f"blob:{self.where}/{prefix}{RUNS_PREFIX} ({hint})", max_age_days, max_count)

    def _container(self, prefix: str) -> Any:
        container = self._blob()[0].get_container_client(self.where)
        return PrefixedContainer(container, prefix) if prefix else container


class PrefixedContainer:
    """A blob container seen through a name prefix, so that the lock and the report store keep
    their ``run.lock`` and ``runs/`` under a folder of the state's container, over the same
    client (only the calls they make are passed on)."""

    def __init__(self, container: Any, prefix: str) -> None:
        self._container = container
        self._prefix = prefix
        self.container_name = container.container_name
        self.account_name = getattr(container, "account_name", None)

    def get_blob_client(self, name: str) -> Any:
        return self._container.get_blob_client(self._prefix + name)

    def list_blobs(self, name_starts_with: str = "") -> Iterator[Any]:
        for blob in self._container.list_blobs(name_starts_with=self._prefix + name_starts_with):
            yield SimpleNamespace(name=blob.name[len(self._prefix):])

    def create_container(self) -> Any:
        return self._container.create_container()


def open_storage(settings: Any) -> Storage:
    """The storage of ``settings.state``; nothing is contacted until a part is used."""
    return Storage(settings)
