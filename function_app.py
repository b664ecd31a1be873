"""Azure Functions entry point (Python v2 programming model): a thin door into ``shared``.

The timer runs ``update`` on SYNC_SCHEDULE (hourly when it is unset). A failed run raises, so the platform records a
failed execution and the failure alert fires; a run skipped because another run (say, one from
the command line) holds the lock is logged and is not a failure. The functions are synchronous
(the worker runs them on its thread pool); the engine's asyncio run lives inside each.

The operator endpoints (``GET status``, ``POST test-update``, ``POST approve-deletions``) are a
blueprint of their own, ``operator_endpoints.py``, registered here."""

from __future__ import annotations

import logging
import os

import azure.functions as func

from operator_endpoints import operators
from shared.common.errors import SyncError
from shared.common.logs import configure_logging
from shared.common.redact import scrub
from shared.common.shutdown import install_sigterm_handler
from shared.common.telemetry import configure_telemetry
from shared.config.host import run_time_limit
from shared.config.schedule import DEFAULT_SCHEDULE
from shared.config.settings import load_settings, progress_interval_seconds
from shared.engine import Options, perform_blocking
from shared.storage.lock import RunLockedError

# The Functions OpenTelemetry mode (host.json telemetryMode): the Azure Monitor distro, with the
# managed identity as its credential; silent without APPLICATIONINSIGHTS_CONNECTION_STRING.
configure_telemetry()
app = func.FunctionApp()
app.register_functions(operators)
log = logging.getLogger("sync")
install_sigterm_handler()  # a SIGTERM cancels a run, which still writes its report; the host's own kill is SIGKILL (shared/common/shutdown.py)


class SyncRunFailed(RuntimeError):
    """Raised from the timer so the execution is recorded as failed."""


# SYNC_SCHEDULE, resolved by the host; unset, the contract's hourly default (docs/sync-rules.md,
# Settings). The host cannot resolve "%SYNC_SCHEDULE%" without the app setting and would then
# run no timer at all; it indexes this module at start, with the app settings as environment.
TIMER_SCHEDULE = "%SYNC_SCHEDULE%" if os.environ.get("SYNC_SCHEDULE", "").strip() else DEFAULT_SCHEDULE


@app.function_name(name="sync_timer")
@app.timer_trigger(schedule=TIMER_SCHEDULE, arg_name="timer", run_on_startup=False, use_monitor=True)
def sync_timer(timer: func.TimerRequest) -> None:
    configure_logging()
    if timer is not None and getattr(timer, "past_due", False):
        log.warning("the sync timer is past due; running now")
    try:
        settings = load_settings()
        options = Options(progress_interval=progress_interval_seconds(), host="functions")
    except SyncError as exc:
        raise SyncRunFailed(scrub(str(exc))) from None
    try:
        # Ended before functionTimeout, whose kill would leave no report (shared/config/host.py).
        summary = perform_blocking("update", settings, options=options, time_limit=run_time_limit(os.environ))
    except Exception as exc:
        # A failure the engine did not map (a bug, an SDK's own exception). The worker sends a
        # raised exception's text to the host outside Python logging, so no log redaction sees
        # it, and an SDK's text can echo a request (secrets included): its type and frames go on.
        name = type(exc).__name__
        log.error("sync update stopped unexpectedly (%s)", name)
        raise SyncRunFailed(f"sync update stopped unexpectedly ({name}); the frames show where").with_traceback(exc.__traceback__) from None
    if isinstance(summary.exception, RunLockedError):
        log.warning("sync update skipped: %s", summary.error)
        return
    if not summary.ok:
        raise SyncRunFailed(f"sync update failed: {summary.error}")
