"""SIGTERM ends a run cleanly: the run is cancelled, and ``shared.engine.run`` still writes its
report and its ``SyncRunSummary`` log line and releases the run lock (for ``blob:`` state, the
lease: the next run need not wait the 60 s for it to expire).

SIGTERM is what a service manager, ``docker stop`` or Kubernetes send before they kill a
process. The Functions host does not: it stops its language worker with ``Process.Kill``
(SIGKILL on Linux; azure-functions-host ``WorkerProcess.Dispose``), for instance when an
execution exceeds ``functionTimeout`` ("the language worker process restarts"), and then no
handler runs. Either way nothing is lost: what the service confirmed is already journaled
(``shared/storage/state.py``), so a cancel between two awaits, or a kill anywhere, leaves the
next run to replay the journal; a killed run's lease expires within 60 s, and a killed
preview shows ``failed`` in ``status`` (``shared/previews.py``).

* ``run_cancellable(coro)``: for ``python -m shared`` (the asyncio loop runs on the main
  thread): SIGTERM cancels the run's task from the loop itself.
* ``install_sigterm_handler()``: for the Functions worker, where the run's loop runs on a
  worker thread: the handler (on the main thread) cancels every registered run, waits up to
  ``GRACE_SECONDS`` for them to finish their report, then hands over to the previous handler
  (or exits with status 143, as the default action would end the process)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

log = logging.getLogger("shared.shutdown")
T = TypeVar("T")
GRACE_SECONDS = 20.0
CANCEL_MESSAGE = "SIGTERM (the host is stopping this instance)"
TIME_LIMIT_MESSAGE = ("it reached its time limit of {:g} s, set below functionTimeout so that it ends before the host "
                      "restarts the worker")

_lock = threading.Lock()
_running: dict[asyncio.Task[Any], tuple[asyncio.AbstractEventLoop, threading.Event]] = {}
_installed = False


@contextlib.contextmanager
def _registered(task: asyncio.Task[Any]) -> Iterator[threading.Event]:
    done = threading.Event()
    with _lock:
        _running[task] = (task.get_loop(), done)
    try:
        yield done
    finally:
        with _lock:
            _running.pop(task, None)
        done.set()


def cancel_all() -> int:
    """Cancel every registered run (thread-safe); returns how many were asked."""
    with _lock:
        items = list(_running.items())
    for task, (loop, _) in items:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(task.cancel, CANCEL_MESSAGE)
    return len(items)


async def run_cancellable(coro: Coroutine[Any, Any, T], time_limit: float | None = None) -> T:
    """Await ``coro`` as a registered task; on the main thread, SIGTERM cancels it. With
    ``time_limit`` (seconds) it is cancelled then too, as SIGTERM would (``TIME_LIMIT_MESSAGE``):
    the timer's run ends before the host's ``functionTimeout`` kills its worker."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    deadline = None if time_limit is None else loop.call_later(max(0.0, time_limit), task.cancel, TIME_LIMIT_MESSAGE.format(time_limit))
    handled = False
    if threading.current_thread() is threading.main_thread():
        try:
            loop.add_signal_handler(signal.SIGTERM, cancel_all)
            handled = True
        except (NotImplementedError, RuntimeError, ValueError) as exc:
            # Windows' event loops have no signal handlers (NotImplementedError); a closed or
            # foreign loop refuses them. SIGTERM then ends the process as the OS does, and the
            # journal makes the next run go on from what the service confirmed.
            log.debug("SIGTERM does not cancel this run on this event loop (%s)", type(exc).__name__)
    try:
        with _registered(task):
            return await task
    finally:
        if deadline is not None:
            deadline.cancel()
        if handled:
            loop.remove_signal_handler(signal.SIGTERM)


def install_sigterm_handler(grace_seconds: float = GRACE_SECONDS) -> bool:
    """For a process whose runs live on other threads (the Functions worker); False when not
    called on the main thread (signal handlers can only be set there)."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return _installed
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        cancel_all()
        with _lock:
            waits = [done for _, done in _running.values()]
        for done in waits:
            done.wait(grace_seconds)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    _installed = True
    return True
