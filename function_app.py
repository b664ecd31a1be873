"""Azure Functions entry point (Python v2 programming model): a thin door into ``shared``.

The timer runs ``update`` on SYNC_SCHEDULE. A failed run raises, so the platform records a
failed execution and the failure alert fires. The function is synchronous (the worker runs it
on its thread pool); the engine's asyncio run lives inside it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Coroutine
from typing import Any

import azure.functions as func

from shared.cli import configure_logging
from shared.engine import run
from shared.errors import SyncError
from shared.settings import load_settings
from shared.summary import RunSummary

app = func.FunctionApp()
log = logging.getLogger("sync")


class SyncRunFailed(RuntimeError):
    """Raised from the timer so the execution is recorded as failed."""


def _run_to_end(coro: Coroutine[Any, Any, RunSummary]) -> RunSummary:
    """``asyncio.run``, or the same on a fresh thread when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


@app.function_name(name="sync_timer")
@app.timer_trigger(schedule="%SYNC_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def sync_timer(timer: func.TimerRequest) -> None:
    configure_logging()
    if timer is not None and getattr(timer, "past_due", False):
        log.warning("the sync timer is past due; running now")
    try:
        settings = load_settings()
    except SyncError as exc:
        raise SyncRunFailed(str(exc)) from None
    summary = _run_to_end(run("update", settings))
    if not summary.ok:
        raise SyncRunFailed(f"sync update failed: {summary.error}")
