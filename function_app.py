"""Azure Functions entry point (Python v2 programming model): a thin door into ``shared``.

The timer runs ``update`` on SYNC_SCHEDULE. A failed run raises, so the platform records a
failed execution and the failure alert fires."""

from __future__ import annotations

import logging

import azure.functions as func

from shared.cli import configure_logging
from shared.engine import run
from shared.errors import SyncError
from shared.settings import load_settings

app = func.FunctionApp()
log = logging.getLogger("sync")


class SyncRunFailed(RuntimeError):
    """Raised from the timer so the execution is recorded as failed."""


@app.function_name(name="sync_timer")
@app.timer_trigger(schedule="%SYNC_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
async def sync_timer(timer: func.TimerRequest) -> None:
    configure_logging()
    if timer.past_due:
        log.warning("the sync timer is past due; running now")
    try:
        settings = load_settings()
    except SyncError as exc:
        raise SyncRunFailed(str(exc)) from None
    summary = await run("update", settings)
    if not summary.ok:
        raise SyncRunFailed(f"sync update failed: {summary.error}")
