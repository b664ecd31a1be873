"""The one storage factory: ``SYNC_STATE`` (``file:<dir>`` or ``blob:<container>``) → the
state store, the run lock and the run reports of one run, all over the same place. For
``blob:`` the three share ONE blob service client and so one credential, built on first use
(a ``file:`` run never imports the Azure SDK).

Input: the plain ``Settings`` (``state``, and for ``blob:`` ``AzureWebJobsStorage``).
Output: ``Storage.store()`` (``StateStore``), ``Storage.lock(holder)`` (``RunLock``, not yet
acquired), ``Storage.reports()`` (``ReportStore``)."""

from __future__ import annotations

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

    def lock(self, holder: str) -> RunLock:
        """The lock that guards the state (not yet acquired)."""
        if self.kind == "file":
            return FileRunLock(self.where, holder)
        return BlobRunLock(self._blob()[0].get_container_client(self.where), holder)

    def reports(self, max_age_days: float = DEFAULT_MAX_AGE_DAYS, max_count: int = DEFAULT_MAX_COUNT) -> ReportStore:
        """The report store next to the state."""
        if self.kind == "file":
            return FileReportStore(self.where, max_age_days, max_count)
        service, hint = self._blob()
        return BlobReportStore(service.get_container_client(self.where), f"blob:{self.where}/{RUNS_PREFIX} ({hint})", max_age_days, max_count)


def open_storage(settings: Any) -> Storage:
    """The storage of ``settings.state``; nothing is contacted until a part is used."""
    return Storage(settings)


def open_store(settings: Any) -> StateStore:
    """The state store alone (its own client: for a caller that needs nothing else)."""
    return Storage(settings).store()


def open_run_lock(settings: Any, holder: str) -> RunLock:
    """The run lock alone (its own client: for a caller that needs nothing else)."""
    return Storage(settings).lock(holder)


def open_reports(settings: Any, max_age_days: float = DEFAULT_MAX_AGE_DAYS, max_count: int = DEFAULT_MAX_COUNT) -> ReportStore:
    """The run reports alone (its own client: for a caller that needs nothing else)."""
    return Storage(settings).reports(max_age_days, max_count)
