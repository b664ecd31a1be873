"""A preview (``test-update``) started from ``POST test-update`` and run in the background.

A preview reads the whole directory, which can take longer than an HTTP request may last, so
the endpoint starts it and answers at once (202); the preview runs on a worker thread of the
same process (the same engine action as ``python -m shared test-update``) and its outcome is
recorded where ``status`` reads it. One preview runs at a time, across every instance.

**Its own lock.** The preview holds the project's run lock (``shared/storage/lock.py``: an OS
lock for ``file:``, a renewed 60 s blob lease for ``blob:``) on a lock of its own,
``preview/run.lock`` beside the state's ``run.lock``. Not the update's lock: a preview never
writes the state (it reads a snapshot), so it must not skip the timer's ``update`` for the
minutes a full read takes, and a running update must not refuse a preview. The lock is taken
before the answer, so a second ``POST`` finds it held and gets 409 with the running preview's
id and start (``PreviewRunningError``); it is released after the outcome is recorded. A worker
that dies without a word leaves no held lock for long (the kernel drops an OS lock, a lease
expires), and its ``running`` record with it: ``status`` shows such a record ``failed``
(``preview_status``), since a live preview holds its lock until its outcome is recorded. On
Azure the host stops a language worker with a kill (no signal handler runs) and a thread left
running after its request was answered keeps no instance alive, so a scale-in ends a preview
this way.

**Its records.** The run reports (``shared/storage/history.py``) of the previews, kept apart
from the runs' own reports in ``preview/runs/`` (so they never count as an earlier run of the
state): one record when a preview starts (``state: running``) and one when it ends
(``finished``, or ``failed`` with its error), each with ``id``, ``startedAt`` (UTC, ISO 8601,
seconds) and, at the end, ``endedAt`` and ``result``: the preview's run summary, whose lists
the report store bounds (``bounded``: at most 1,000 entries each; 4 MiB a record). The engine's
own run report of the preview is written as for any ``test-update``.

Shapes: ``start_preview`` → ``{"id": str (16 hex), "state": "running", "startedAt": str}``;
``newest_preview`` → the newest record (as above) or ``None``."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from .common.errors import StateError
from .common.shutdown import run_cancellable
from .common.summary import RunSummary
from .storage.backend import Storage
from .storage.history import ReportStore
from .storage.lock import UNNAMED, RunLock, RunLockedError, default_holder

log = logging.getLogger("shared.previews")

PREVIEW_DIR = "preview"  # beside the state: the preview's lock and its records
MAX_RECORDS = 50  # previews' records kept (and 30 days at most, as run reports)
_ENDING_TRIES = 5  # an ended preview's lock is given back right after its record is written
_ENDING_WAIT_SECONDS = 0.2
STOPPED_UNRECORDED = ("the preview stopped before it recorded its outcome (its worker or instance was stopped or recycled "
                      "while it ran, or its last record could not be written); nothing was changed; start it again with "
                      "POST test-update")
_ID = re.compile(r"\btest-update ([0-9a-f]{16})\b")

Work = Callable[[], Coroutine[Any, Any, RunSummary]]


class PreviewRunningError(StateError):
    """A preview is running already (here or on another instance); nothing was started."""

    exit_code = 3
    http_status = 409

    def __init__(self, preview_id: str | None, started: str | None, holder: str) -> None:
        self.preview_id = preview_id
        self.started = started
        self.holder = holder
        what = f"preview {preview_id}" if preview_id else f'"{holder}"'
        super().__init__(f"a preview is running already: {what}" + (f" since {started}" if started else "")
                         + "; its result appears in GET status; start another when it ends")


def preview_lock(storage: Storage, holder: str) -> RunLock:
    """The previews' own lock (not acquired), beside the state's run lock."""
    return storage.lock(holder, prefix=f"{PREVIEW_DIR}/")


def preview_records(storage: Storage) -> ReportStore:
    """The previews' records, beside the state's run reports."""
    return storage.reports(max_count=MAX_RECORDS, prefix=f"{PREVIEW_DIR}/")


def newest_preview(storage: Storage) -> dict[str, Any] | None:
    """The newest preview's record (running, finished or failed), or ``None`` if none ever
    started. Raises ``StateError`` when the records cannot be read."""
    found = preview_records(storage).recent(1)
    if not found:
        return None
    record = {k: v for k, v in found[0].items() if k != "finishedAt"}  # the store's write time, not the preview's end
    return record


def preview_status(storage: Storage) -> dict[str, Any] | None:
    """The newest preview as ``status`` shows it: ``newest_preview``, except that a ``running``
    record whose lock nobody holds any more is shown ``failed`` with ``STOPPED_UNRECORDED``.
    A preview records its outcome before it gives its lock back, so that pair means it never
    will: its worker was killed (the host stops a language worker with a kill, no signal handler
    runs), or its instance was recycled (a preview runs after its request was answered, so no
    execution keeps that instance alive), or its final record could not be written. While the
    lock cannot be probed (``None``) the record is shown as it is. Raises ``StateError`` as
    ``newest_preview``; writes nothing."""
    record = newest_preview(storage)
    if record is None or record.get("state") != "running":
        return record
    if preview_lock(storage, UNNAMED).held_by_anyone() is not False:
        return record
    again = newest_preview(storage)  # it may have ended, or another started, since the first read
    if again is None or again.get("id") != record.get("id") or again.get("state") != "running":
        return again
    return {**again, "state": "failed", "error": STOPPED_UNRECORDED}


def start_preview(storage: Storage, work: Work) -> dict[str, Any]:
    """Take the previews' lock, record the preview as running and start ``work`` (the engine's
    ``test-update``) on a daemon thread; returns at once. Raises ``PreviewRunningError`` when
    a preview holds the lock, ``StateError`` when the lock or the record cannot be written
    (then nothing runs)."""
    preview_id = secrets.token_hex(8)
    lock = preview_lock(storage, default_holder(f"test-update {preview_id}"))
    _acquire(lock, storage)
    started = getattr(lock, "since", None) or _now()
    running = {"action": "test-update", "id": preview_id, "state": "running", "startedAt": started}
    records = preview_records(storage)
    try:
        records.write(running)
        thread = threading.Thread(target=_background, args=(lock, records, running, work), name=f"preview {preview_id}", daemon=True)
        thread.start()
    except BaseException:
        lock.release()
        raise
    log.info("preview %s started at %s; its result appears in GET status", preview_id, started)
    return {"id": preview_id, "state": "running", "startedAt": started}


def _acquire(lock: RunLock, storage: Storage) -> None:
    """Take the previews' lock, or raise ``PreviewRunningError`` naming the preview that holds
    it. A preview records its outcome before it gives the lock back, so a holder whose record
    already says it ended is releasing it now: that one is waited for, briefly."""
    for attempt in range(_ENDING_TRIES):
        try:
            lock.acquire()
            return
        except RunLockedError as exc:
            m = _ID.search(exc.holder)
            holder_id = m.group(1) if m else None
            if holder_id is None or attempt == _ENDING_TRIES - 1 or not _has_ended(storage, holder_id):
                raise PreviewRunningError(holder_id, exc.since, exc.holder) from None
        time.sleep(_ENDING_WAIT_SECONDS)


def _has_ended(storage: Storage, preview_id: str) -> bool:
    try:
        newest = newest_preview(storage)
    except StateError:
        return False
    return newest is not None and newest.get("id") == preview_id and newest.get("state") != "running"


def _background(lock: RunLock, records: ReportStore, running: dict[str, Any], work: Work) -> None:
    """The preview itself; its outcome is recorded before the lock is released, whatever happens."""
    record = dict(running)
    try:
        summary = asyncio.run(run_cancellable(work()))
        record.update(state="finished" if summary.ok else "failed", result=summary.as_dict())
        if not summary.ok:
            record["error"] = summary.error
    except BaseException as exc:  # noqa: BLE001 - a preview that broke must still say so in status
        record.update(state="failed", error=f"the preview stopped unexpectedly ({type(exc).__name__})")
        # The type alone: an SDK's exception text can echo request details (secrets included).
        log.error("preview %s stopped unexpectedly (%s)", running["id"], type(exc).__name__)
    record["endedAt"] = _now()
    try:
        records.write(record)
    except Exception as exc:  # noqa: BLE001 - the lock must be released in any case
        log.error("preview %s: could not record its outcome (%s)", running["id"], type(exc).__name__)
    finally:
        lock.release()
    log.info("preview %s %s", running["id"], record["state"])


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
