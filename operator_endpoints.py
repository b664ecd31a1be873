"""The operator endpoints: a ``func.Blueprint`` that ``function_app.py`` registers; HTTP
functions with function-key auth under the host's ``api/`` prefix, each reaching the engine in
one call (``shared.engine.perform_blocking``):

* ``GET status[?limit=N][&preview=full]``: the last N runs (1-50, default 10), without their
  record lists, the held deletions, and ``preview``: the newest preview started by ``POST
  test-update`` (``running``, ``finished`` or ``failed``, with ``id``, ``startedAt``,
  ``endedAt``, ``error`` and ``result``, its run summary; without the record lists ``changes``
  and ``exclusions`` unless ``preview=full``).
* ``POST test-update``: starts the preview of what an update would send (it changes nothing)
  in the background and answers at once: 202 with ``{"ok": true, "action": "test-update",
  "preview": {"id", "state": "running", "startedAt"}, "resultIn": "GET /api/status"}``; 409
  with ``running: {"id", "startedAt"}`` while a preview runs, on any instance
  (``shared/previews.py``).
* ``POST approve-deletions?expect=DIGEST[&dataset=NAME]``: approve the deletions the guard
  holds now, when they are the set reviewed (the digest ``status`` shows; else 409). With App
  Service authentication on, the caller needs the ``Deletions.Approve`` app role (else 403);
  the approver is recorded (``shared/plan/approval.py``).

Every answer is JSON, with any registered secret value scrubbed and every list bounded."""

from __future__ import annotations

import functools
import json
import logging
import os
import traceback
from collections.abc import Callable
from typing import Any

import azure.functions as func

from shared.common.errors import SettingsError, SyncError
from shared.common.logs import configure_logging
from shared.common.redact import register, scrub
from shared.common.summary import RunSummary
from shared.common.textsafe import terminal_json
from shared.config.settings import Settings, load_settings
from shared.engine import Options, perform_blocking
from shared.model.records import DATASETS
from shared.plan.approval import ApprovalForbiddenError, http_approver
from shared.storage.history import bounded

operators = func.Blueprint()
log = logging.getLogger("sync")

STATUS_LIMIT_DEFAULT = 10
STATUS_LIMIT_MAX = 50
STATUS_PATH = "/api/status"


def _json(doc: dict[str, Any], status_code: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    """A bounded JSON answer; no registered secret value survives into it."""
    body = terminal_json(scrub(json.dumps(bounded(doc), ensure_ascii=False, default=str)))
    return func.HttpResponse(body, status_code=status_code, mimetype="application/json", charset="utf-8", headers=headers)


def _problem(status_code: int, message: str, **detail: Any) -> func.HttpResponse:
    return _json({"ok": False, "error": message, **detail}, status_code)


def _answers_every_failure(endpoint: Callable[[func.HttpRequest], func.HttpResponse]) -> Callable[[func.HttpRequest], func.HttpResponse]:
    """The endpoint, answering a failure the engine did not map (a bug, an SDK's own exception)
    with a 500 JSON answer naming its type. Raised, its text would go to the host (the worker
    sends it outside Python logging, unredacted) and an SDK's text can echo a request, secrets
    included: the log line has the type and the frames, never the text."""

    @functools.wraps(endpoint)
    def answered(req: func.HttpRequest) -> func.HttpResponse:
        try:
            return endpoint(req)
        except Exception as exc:
            name = type(exc).__name__
            frames = "".join(traceback.format_tb(exc.__traceback__))
            log.error("operator endpoint %s stopped unexpectedly (%s) at\n%s", endpoint.__name__, name, frames)
            return _problem(500, f"the endpoint stopped unexpectedly ({name}); its logs show where")

    return answered


def _failure_status(summary: RunSummary) -> int:
    """The HTTP status of a failed summary: its exception's ``http_status`` (shared/common/errors.py)."""
    exc = summary.exception
    return exc.http_status if isinstance(exc, SyncError) else 500


def _summary_response(summary: RunSummary) -> func.HttpResponse:
    return _json(summary.as_dict(), 200 if summary.ok else _failure_status(summary))


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


def _status_query(req: func.HttpRequest) -> tuple[int, bool] | func.HttpResponse:
    """``(limit, whether the preview's record lists are shown)`` or a 400 answer naming the parameter."""
    raw = (req.params.get("limit") or str(STATUS_LIMIT_DEFAULT)).strip()
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= STATUS_LIMIT_MAX):
        return _problem(400, f"limit must be a whole number from 1 to {STATUS_LIMIT_MAX}", parameter="limit")
    preview = req.params.get("preview")
    if preview not in (None, "full"):
        return _problem(400, "preview may only be 'full' (the preview's record lists too)", parameter="preview")
    return int(raw), preview == "full"


@operators.function_name(name="operator_status")
@operators.route(route="status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@_answers_every_failure
def operator_status(req: func.HttpRequest) -> func.HttpResponse:
    """The last runs (their counts, without record lists), the held deletions and the newest
    preview started in the background."""
    if (wrong := _start(req, "GET")) is not None:
        return wrong
    query = _status_query(req)
    if isinstance(query, func.HttpResponse):
        return query
    limit, full_preview = query
    settings = _settings()
    if isinstance(settings, func.HttpResponse):
        return settings
    summary = perform_blocking("status", settings, limit=limit, compact=True, full_preview=full_preview)
    if not summary.ok:
        return _problem(_failure_status(summary), summary.error or "status failed")
    return _json(summary.extra["status"])


@operators.function_name(name="operator_test_update")
@operators.route(route="test-update", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@_answers_every_failure
def operator_test_update(req: func.HttpRequest) -> func.HttpResponse:
    """Start the preview (what an update would add and remove, exclusions, held deletions) in
    the background: 202 at once, its result in ``GET status``; 409 while one runs."""
    if (wrong := _start(req, "POST")) is not None:
        return wrong
    settings = _settings()
    if isinstance(settings, func.HttpResponse):
        return settings
    summary = perform_blocking("test-update", settings, background=True, options=Options(host="functions"))
    if "running" in summary.extra:  # another preview runs (shared/previews.py): nothing was started
        return _problem(409, summary.error or "a preview is running", running=summary.extra["running"], resultIn=f"GET {STATUS_PATH}")
    if not summary.ok:
        return _summary_response(summary)
    doc = {"ok": True, "action": "test-update", "preview": summary.extra["preview"], "resultIn": f"GET {STATUS_PATH}"}
    return _json(doc, 202, headers={"Location": STATUS_PATH})


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


@operators.function_name(name="operator_approve_deletions")
@operators.route(route="approve-deletions", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@_answers_every_failure
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
        return _problem(exc.http_status, str(exc))
    settings = _settings()
    if isinstance(settings, func.HttpResponse):
        return settings
    return _summary_response(perform_blocking("approve-deletions", settings, options=Options(host="functions"), dataset=dataset,
                                              expect=expect, approver=approver))


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
