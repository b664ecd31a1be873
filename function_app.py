"""Azure Functions entry point (Python v2 programming model): a thin door into ``shared``.

The timer runs ``update`` on SYNC_SCHEDULE. A failed run raises, so the platform records a
failed execution and the failure alert fires; a run skipped because another run (say, one from
the command line) holds the lock is logged and is not a failure. The functions are synchronous
(the worker runs them on its thread pool); the engine's asyncio run lives inside each.

Operator endpoints (function-key auth, under the host's ``api/`` prefix), on the same engine:

* ``GET status[?limit=N]``: the last N runs (1-50, default 10) and the held deletions.
* ``POST test-update``: the preview of what an update would send; changes nothing.
* ``POST approve-deletions?expect=DIGEST[&dataset=NAME]``: approve the deletions the guard
  holds now, when they are the set reviewed (the digest ``status`` shows; else 409). With App
  Service authentication on, the caller needs the ``Deletions.Approve`` app role (else 403);
  the approver is recorded (``shared/plan/approval.py``).

Every answer is JSON, with any registered secret value scrubbed and every list bounded."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

import azure.functions as func

from shared.common.errors import GraphError, SecretError, SettingsError, SyncApiError, SyncError
from shared.common.logs import configure_logging
from shared.common.redact import register, scrub
from shared.common.shutdown import install_sigterm_handler, run_cancellable
from shared.common.summary import RunSummary
from shared.common.telemetry import configure_telemetry
from shared.config.settings import Settings, load_settings, progress_interval_seconds
from shared.engine import Options, run
from shared.model.records import DATASETS
from shared.operations import status
from shared.plan.approval import ApprovalForbiddenError, ApprovalMismatchError, http_approver
from shared.storage.history import bounded
from shared.storage.lock import RunLockedError

# The Functions OpenTelemetry mode (host.json telemetryMode): the Azure Monitor distro, with the
# managed identity as its credential; silent without APPLICATIONINSIGHTS_CONNECTION_STRING.
configure_telemetry()
app = func.FunctionApp()
log = logging.getLogger("sync")
install_sigterm_handler()  # a scale-in cancels a run, which still writes its report (shared/common/shutdown.py)

T = TypeVar("T")
STATUS_LIMIT_DEFAULT = 10
STATUS_LIMIT_MAX = 50
# What a run report holds beyond what status needs (with each dataset's rejections): record lists.
_BULKY_RUN_KEYS = ("changes", "exclusions")


class SyncRunFailed(RuntimeError):
    """Raised from the timer so the execution is recorded as failed."""


def _run_to_end(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, or the same on a fresh thread when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run_cancellable(coro))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, run_cancellable(coro)).result()


@app.function_name(name="sync_timer")
@app.timer_trigger(schedule="%SYNC_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def sync_timer(timer: func.TimerRequest) -> None:
    configure_logging()
    if timer is not None and getattr(timer, "past_due", False):
        log.warning("the sync timer is past due; running now")
    try:
        settings = load_settings()
        options = Options(progress_interval=progress_interval_seconds(), host="functions")
    except SyncError as exc:
        raise SyncRunFailed(str(exc)) from None
    summary = _run_to_end(run("update", settings, options=options))
    if isinstance(summary.exception, RunLockedError):
        log.warning("sync update skipped: %s", summary.error)
        return
    if not summary.ok:
        raise SyncRunFailed(f"sync update failed: {summary.error}")


# --- operator endpoints -------------------------------------------------------------------------
def _json(doc: dict[str, Any], status_code: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    """A bounded JSON answer; no registered secret value survives into it."""
    body = scrub(json.dumps(bounded(doc), ensure_ascii=False, default=str))
    return func.HttpResponse(body, status_code=status_code, mimetype="application/json", charset="utf-8", headers=headers)


def _problem(status_code: int, message: str, **detail: Any) -> func.HttpResponse:
    return _json({"ok": False, "error": message, **detail}, status_code)


def _failure_status(exc: BaseException | None) -> int:
    if isinstance(exc, (RunLockedError, ApprovalMismatchError)):
        return 409  # ApprovalMismatchError: the held set is not the one reviewed (shared/plan/approval.py)
    if isinstance(exc, SettingsError) and exc.setting == "--expect":
        return 400
    if isinstance(exc, (GraphError, SyncApiError, SecretError)):
        return 502  # a service the sync depends on failed or refused
    return 500


def _summary_response(summary: RunSummary) -> func.HttpResponse:
    return _json(summary.as_dict(), 200 if summary.ok else _failure_status(summary.exception))


def _start(req: func.HttpRequest, method: str) -> func.HttpResponse | None:
    """Logging, then a 405 answer unless the request uses ``method`` (the route allows only
    ``method``: this is a second guard behind the platform's)."""
    configure_logging()
    if req.method.upper() == method:
        return None
    return _json({"ok": False, "error": f"use {method}"}, 405, headers={"Allow": method})


def _settings() -> Settings | func.HttpResponse:
    for name in ("SYNC_API_CREDENTIAL", "GRAPH_CLIENT_SECRET"):  # scrub knows them before anything is read
        register(os.environ.get(name, "").strip())
    try:
        return load_settings()
    except SyncError as exc:
        message = scrub(str(exc))
        log.error("operator endpoint: %s", message)
        setting = {"setting": exc.setting} if isinstance(exc, SettingsError) else {}
        return _problem(500, message, **setting)


def _compact_run(report: dict[str, Any]) -> dict[str, Any]:
    """A run report as status shows it: counts and outcome, no per-record lists."""
    out = {k: v for k, v in report.items() if k not in _BULKY_RUN_KEYS}
    datasets = out.get("datasets")
    if isinstance(datasets, dict):
        out["datasets"] = {d: {k: v for k, v in c.items() if not k.startswith("rejections")} if isinstance(c, dict) else c
                           for d, c in datasets.items()}
    return out


@app.function_name(name="operator_status")
@app.route(route="status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def operator_status(req: func.HttpRequest) -> func.HttpResponse:
    """The last runs (their counts, without record lists) and the held deletions."""
    if (wrong := _start(req, "GET")) is not None:
        return wrong
    raw = (req.params.get("limit") or str(STATUS_LIMIT_DEFAULT)).strip()
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= STATUS_LIMIT_MAX):
        return _problem(400, f"limit must be a whole number from 1 to {STATUS_LIMIT_MAX}", parameter="limit")
    settings = _settings()
    if isinstance(settings, func.HttpResponse):
        return settings
    try:
        info = _run_to_end(status(settings, limit=int(raw)))
    except SyncError as exc:
        return _problem(_failure_status(exc), scrub(str(exc)))
    info["runs"] = [_compact_run(r) for r in info.get("runs", []) if isinstance(r, dict)]
    return _json(info)


@app.function_name(name="operator_test_update")
@app.route(route="test-update", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def operator_test_update(req: func.HttpRequest) -> func.HttpResponse:
    """The preview: what an update would add and remove, exclusions, held deletions."""
    if (wrong := _start(req, "POST")) is not None:
        return wrong
    settings = _settings()
    if isinstance(settings, func.HttpResponse):
        return settings
    return _summary_response(_run_to_end(run("test-update", settings, options=Options(host="functions"))))


def _requested_dataset(req: func.HttpRequest) -> str | func.HttpResponse | None:
    """``?dataset=NAME`` or a JSON body ``{"dataset": NAME}``; None approves every dataset."""
    from_query = req.params.get("dataset")
    from_body = None
    if req.get_body().strip():
        try:
            doc = req.get_json()
        except ValueError:
            return _problem(400, 'the body must be JSON: {"dataset": NAME}', parameter="dataset")
        if not isinstance(doc, dict) or set(doc) - {"dataset", "expect"}:
            return _problem(400, 'the body may only hold {"dataset": NAME, "expect": DIGEST}', parameter="dataset")
        from_body = doc.get("dataset")
    if from_query is not None and from_body is not None and from_query != from_body:
        return _problem(400, "the query and the body name different datasets", parameter="dataset")
    dataset = from_query if from_query is not None else from_body
    if dataset is not None and dataset not in DATASETS:
        return _problem(400, f"unknown dataset; use one of {', '.join(DATASETS)}", parameter="dataset")
    return dataset


@app.function_name(name="operator_approve_deletions")
@app.route(route="approve-deletions", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def operator_approve_deletions(req: func.HttpRequest) -> func.HttpResponse:
    """Approve the deletions held now (every dataset, or one); the next update sends them."""
    if (wrong := _start(req, "POST")) is not None:
        return wrong
    dataset = _requested_dataset(req)
    if isinstance(dataset, func.HttpResponse):
        return dataset
    expect = _requested_expect(req)
    if isinstance(expect, func.HttpResponse):
        return expect
    try:
        approver = http_approver(req.headers, req.params, os.environ)
    except ApprovalForbiddenError as exc:
        log.warning("approve-deletions refused: %s", exc)
        return _problem(403, str(exc))
    settings = _settings()
    if isinstance(settings, func.HttpResponse):
        return settings
    return _summary_response(_run_to_end(run("approve-deletions", settings, options=Options(host="functions"), dataset=dataset, expect=expect, approver=approver)))


def _requested_expect(req: func.HttpRequest) -> str | func.HttpResponse | None:
    """``?expect=DIGEST`` or the body's ``"expect"``: the digest of the reviewed held set."""
    from_query = req.params.get("expect")
    from_body = None
    if req.get_body().strip():
        doc = req.get_json()  # already checked by _requested_dataset
        from_body = doc.get("expect")
        if from_body is not None and not isinstance(from_body, str):
            return _problem(400, "expect must be the digest text that status shows", parameter="expect")
    if from_query is not None and from_body is not None and from_query.strip() != from_body.strip():
        return _problem(400, "the query and the body name different digests", parameter="expect")
    return from_query if from_query is not None else from_body
