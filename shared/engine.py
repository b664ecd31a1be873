"""One run of an action, sequenced: settings → the run lock and the state → the action's
stages (``shared/actions/``: reads, update, preview, replace and refresh) → the summary, its log
record and span, and the run report. Every door reaches the engine through ``perform``:
``python -m shared`` (``shared/cli.py``), the timer (``function_app.py``) and the operator
endpoints (``operator_endpoints.py``).

In: an action and the plain ``Settings``. Out: a ``RunSummary`` (``status``: the status
document in ``summary.extra["status"]``; a preview started in the background: its id in
``summary.extra["preview"]``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from opentelemetry.trace import Span, StatusCode
from opentelemetry.trace import use_span as trace_use_span

from .actions.base import Options
from .actions.preview import PreviewStage
from .actions.replace import REPLACE_ORDER, ReplaceStage
from .common import collector
from .common.errors import DeletionsHeldError, RunCancelledError, StateError, SyncError
from .common.progress import Progress, ticking
from .common.redact import scrub
from .common.shutdown import run_cancellable
from .common.summary import RunSummary
from .common.telemetry import SUMMARY_EVENT, summary_dimensions, tracer
from .config.settings import Settings
from .config.vault import Secrets, load_secrets
from .operations import approve_deletions, held_counts, status
from .plan.approval import Approver, cli_approver
from .previews import PreviewRunningError, start_preview
from .storage.backend import Storage, open_storage
from .storage.history import ReportStore
from .storage.lock import RunLock, RunLockedError, default_holder
from .storage.state import StateDB
from .storage.stores import StateStore
from .target.syncapi import SyncApiClient

log = logging.getLogger(__name__)

ACTIONS = ("test-update", "update", "replace", "refresh", "approve-deletions")
LOCKED_ACTIONS = ("update", "replace", "refresh", "approve-deletions")
OPERATIONS = (*ACTIONS, "status")  # everything a door may ask ``perform`` for
STATUS_LIMIT = 10
T = TypeVar("T")


async def perform(action: str, settings: Settings, *, limit: int = STATUS_LIMIT, compact: bool = False, full_preview: bool = False,
                  background: bool = False, **run_args: Any) -> RunSummary:
    """The one entry point of every door. Never raises for an expected failure: the summary
    says ``ok: false``, carries the error, and ``summary.exception`` the exception.

    * ``status``: the last ``limit`` run reports, the held deletions and the newest preview
      started in the background (``shared/operations.py``), in ``summary.extra["status"]``; it
      reads a snapshot, takes no lock, writes no report and logs no summary record. With
      ``compact`` the runs come without their record lists, and so does the preview's result
      unless ``full_preview`` (``operations.status``).
    * ``test-update`` with ``background=True``: starts the preview on a worker thread and
      returns at once (``shared/previews.py``): ``summary.extra["preview"]`` is ``{"id",
      "state": "running", "startedAt"}``; its outcome appears in ``status``. When one runs
      already, ``summary.exception`` is ``PreviewRunningError`` naming it, and
      ``summary.extra["running"]`` is ``{"id", "startedAt"}`` of the running one.
    * anything else: ``run(action, settings, **run_args)``."""
    if action == "status":
        return await _status(settings, limit, compact=compact, full_preview=full_preview)
    if background and action == "test-update":
        options = run_args.pop("options", None) or Options(host="functions")
        storage = open_storage(settings)  # the previews' lock and records and the run's state: one client
        return _started(storage, lambda: run("test-update", settings, options=options, storage=storage, **run_args))
    if background:
        raise ValueError(f"only test-update runs in the background, not {action!r}")
    return await run(action, settings, **run_args)


def perform_blocking(action: str, settings: Settings, *, time_limit: float | None = None, **kwargs: Any) -> RunSummary:
    """``perform`` for a synchronous caller (the Functions worker runs its functions on a thread
    pool): the same arguments and result. ``time_limit`` (seconds): the run is cancelled then,
    as by SIGTERM (it fails with ``RunCancelledError`` and still writes its report)."""
    return run_to_end(perform(action, settings, **kwargs), time_limit=time_limit)


def run_to_end(coro: Coroutine[Any, Any, T], *, time_limit: float | None = None) -> T:
    """``asyncio.run`` of a cancellable task (SIGTERM, or ``time_limit``, cancels it:
    shared/common/shutdown.py), or the same on a fresh thread when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run_cancellable(coro, time_limit))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, run_cancellable(coro, time_limit)).result()


async def _status(settings: Settings, limit: int, *, compact: bool, full_preview: bool) -> RunSummary:
    summary = RunSummary("status")
    try:
        summary.extra["status"] = await status(settings, limit=limit, compact=compact, full_preview=full_preview)
        return summary.finish(True)
    except SyncError as exc:
        summary.exception = exc
        return summary.finish(False, scrub(str(exc)))


def _started(storage: Storage, work: Any) -> RunSummary:
    summary = RunSummary("test-update")
    try:
        summary.extra["preview"] = start_preview(storage, work)
        return summary.finish(True)
    except SyncError as exc:
        summary.exception = exc
        if isinstance(exc, PreviewRunningError):
            summary.extra["running"] = {"id": exc.preview_id, "startedAt": exc.started}
        return summary.finish(False, scrub(str(exc)))


async def run(
    action: str,
    settings: Settings,
    *,
    env: Mapping[str, str] | None = None,
    secrets: Secrets | None = None,
    store: StateStore | None = None,
    options: Options | None = None,
    lock: RunLock | None = None,
    reports: ReportStore | None = None,
    dataset: str | None = None,
    expect: str | None = None,
    approver: Approver | None = None,
    storage: Storage | None = None,
) -> RunSummary:
    """Run one action; never raises for an expected failure: the summary says ``ok: false``
    and carries the error (``summary.exception`` keeps the exception for exit codes).

    Every action but ``test-update`` holds the run lock from before the state is read until
    the end, so a second run fails at once and changes nothing. Every run leaves a report
    next to the state and one ``SyncRunSummary`` log record (Application Insights).
    ``storage``: the storage of ``settings.state`` when the caller has it open already (a
    background preview: one blob client for its lock, its records and its run)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
    summary = RunSummary(action)
    options = options or Options()
    root = tracer.start_span(f"sync {action}")
    storage = storage or open_storage(settings)  # the store, the lock and the reports over one client
    with collector.during_run():  # fewer collector scans while the run allocates (shared/common/collector.py)
        report = await _attempt(action, settings, summary, storage, root, env=env, secrets=secrets, store=store, options=options,
                                lock=lock, reports=reports, dataset=dataset, expect=expect, approver=approver)
    _record(summary, root, options.host)
    if report:
        _write_report(summary, reports or storage.reports())
    return summary


async def _attempt(action: str, settings: Settings, summary: RunSummary, storage: Storage, root: Span, *, env: Mapping[str, str] | None,
                   secrets: Secrets | None, store: StateStore | None, options: Options, lock: RunLock | None,
                   reports: ReportStore | None, dataset: str | None, expect: str | None, approver: Approver | None) -> bool:
    """The action inside the run lock, its outcome in ``summary``; returns whether a run report
    is due (a dry run over no state leaves nothing behind)."""
    taken: RunLock | None = None
    report = action != "test-update"
    try:
        reports = reports or storage.reports()
        if action in LOCKED_ACTIONS:
            candidate = lock or storage.lock(default_holder(action))
            candidate.acquire()
            taken = candidate
        store = _LockedStore(store or storage.store(), taken)
        if action == "approve-deletions":
            who = approver or cli_approver()
            summary.extra["approver"] = who.as_dict()
            summary.extra["approved"] = approve_deletions(store, dataset, expect=expect, approver=who)
            if dataset is not None:  # what the approval was limited to, and what stays held beside it
                summary.extra["dataset"] = dataset
                if not summary.extra["approved"]:
                    summary.extra["heldElsewhere"] = held_counts(store)
        else:
            secrets = secrets or load_secrets(settings, env)
            if secrets.expiry_warnings:
                summary.extra["credentialWarnings"] = secrets.expiry_warnings
            runner = _Run(action, settings, secrets, store, summary, options, reports)
            try:
                with trace_use_span(root, record_exception=False, set_status_on_exception=False):
                    await runner.go()
            finally:
                report = report or runner.found_state
            if runner.held_error is not None:
                raise runner.held_error
        summary.finish(True)
    except SyncError as exc:
        summary.exception = exc
        if isinstance(exc, RunLockedError) and taken is None:  # another run holds the lock: this one changed nothing
            summary.extra["skipped"] = True
        summary.finish(False, scrub(str(exc)))
    except asyncio.CancelledError as exc:  # SIGTERM (shared/common/shutdown.py): report, summary and lock release still happen
        summary.exception = RunCancelledError(f"the run was cancelled: {exc.args[0] if exc.args else 'cancelled'}; "
                                              "what the service confirmed is journaled and the next run goes on from there")
        summary.finish(False, str(summary.exception))
        report = report or action != "test-update"
    finally:
        if taken is not None:
            taken.release()
    return report


def _record(summary: RunSummary, root: Span, host: str) -> None:
    """The summary assembled for its readers: sanitized, logged as one record, set on the span."""
    summary.sanitize()  # every outside string escaped and bounded before the log, report and terminal
    # One structured record per run: the message keeps the JSON for humans; the same fields are
    # record attributes, which the OpenTelemetry mode turns into customDimensions (shared/common/telemetry.py).
    dims = summary_dimensions(summary, host=host)
    log.info("%s %s", SUMMARY_EVENT, summary.to_json(compact=True), extra=dims)
    root.set_attributes({k: v for k, v in dims.items() if k != "event"})
    if not summary.ok:
        root.set_status(StatusCode.ERROR)
    root.end()


def _write_report(summary: RunSummary, reports: ReportStore) -> None:
    try:
        reports.write(summary.as_dict())
    except SyncError as exc:
        log.warning("could not write the run report: %s", scrub(str(exc)))
    except Exception as exc:  # noqa: BLE001 - a report must never fail a run that worked
        log.warning("could not write the run report (%s)", type(exc).__name__)



class _LockedStore:
    """The state store, refusing to write once the run lock was lost (a long run whose lease
    could not be renewed may no longer be the only writer)."""

    def __init__(self, inner: StateStore, lock: RunLock | None) -> None:
        self.inner = inner
        self.lock = lock
        self.where = inner.where

    def _check(self) -> None:
        if self.lock is not None and self.lock.lost:
            raise StateError(f"the run lock on {self.where} was lost during this run; the state was not written")

    def open(self, *, readonly: bool = False, rebuild: bool = False) -> StateDB | None:
        return self.inner.open(readonly=readonly, rebuild=rebuild)

    def exists(self) -> bool:
        return self.inner.exists()

    def facts(self) -> dict[str, Any] | None:
        return self.inner.facts()

    def append_journal(self, entry: dict[str, Any], *, durable: bool = True) -> Any:
        self._check()
        return self.inner.append_journal(entry, durable=durable)

    def retract_journal(self, token: Any) -> None:
        self.inner.retract_journal(token)

    def publish(self, db: StateDB) -> None:
        self._check()
        self.inner.publish(db)



class _Run(PreviewStage, ReplaceStage):
    """One run of an action other than approve-deletions: its stages (``shared/actions/``) in order."""

    def __init__(self, action: str, settings: Settings, secrets: Secrets, store: StateStore, summary: RunSummary, options: Options,
                 reports: ReportStore | None = None) -> None:
        self.reports = reports
        self.action = action
        self.settings = settings
        self.secrets = secrets
        self.store = store
        self.summary = summary
        self.options = options
        self.datasets = settings.datasets
        self.api = SyncApiClient(settings.sync_api_url, secrets.sync_api_credential, backoff_seconds=options.sync_backoff_seconds)
        self.held_error: DeletionsHeldError | None = None
        self.graph_requests = 0
        self.graph_retries = 0
        self.exo_requests = 0
        self.exo_retries = 0
        self.snapshots = []
        self.found_state = False
        self.progress = Progress(options.progress_interval)

    async def go(self) -> None:
        api = self.api
        db: StateDB | None = None
        try:
            # The state is opened first: a broken state fails the run before any Graph request.
            db = self.store.open(readonly=self.action == "test-update", rebuild=self.action == "refresh")
            self.found_state = db is not None
            await self._go(db)
        finally:
            self.summary.sync_requests = api.requests
            self.summary.graph_requests = self.graph_requests
            self.summary.exo_requests = self.exo_requests
            await api.aclose()
            if db is not None:
                db.close()

    async def _go(self, db: StateDB | None) -> None:
        async with ticking(self.progress):
            if self.action == "test-update":
                await self._test_update(db, await self._provisioned())
                return
            if db is None:
                raise StateError(f"internal error: no state opened at {self.store.where}")
            if self.action == "refresh":
                await self._refresh(db)
            elif self.action == "update":
                await self._update(db, await self._provisioned())
            else:
                await self._replace(db, await self._provisioned())


__all__ = ["ACTIONS", "OPERATIONS", "REPLACE_ORDER", "Options", "perform", "perform_blocking", "run", "run_to_end"]
