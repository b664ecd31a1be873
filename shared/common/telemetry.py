"""Telemetry you can query: each run's summary as one structured log record whose fields are
real dimensions (``customDimensions`` in Application Insights), and spans for the phases of a
run (``read``, ``plan``, ``send``, ``commit``) under one ``sync <action>`` span.

Everything goes through the OpenTelemetry API, which does nothing until a provider is set:

* **In Azure** the Function app runs the Functions OpenTelemetry mode (``"telemetryMode":
  "OpenTelemetry"`` in host.json) and ``function_app.py`` calls ``configure_telemetry()``,
  Microsoft's manual route for Python (``configure_azure_monitor`` from
  ``azure-monitor-opentelemetry``). It is preferred to ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY``
  because the component accepts Entra-authenticated ingestion only, and here the credential
  is explicit: the user-assigned identity named by ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING``.
  Should a worker set its own provider first, this does nothing (no double export).
* **A CLI run** does the same when ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set, and says
  nothing about telemetry when it is not. ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING=
  Authorization=AAD`` (no ClientId) sends with ``DefaultAzureCredential`` (``az login``).

The record's dimensions are flat scalars (App Insights stores them as strings; queries use
``toint()``/``todouble()``). Their names are listed in ``summary_dimensions``; the workbook and
the alerts in infra/app/ query exactly these names."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import StatusCode

from ..model.records import DATASETS
from .summary import RunSummary

log = logging.getLogger("shared.telemetry")  # the name its log lines have always carried
tracer = trace.get_tracer("entra_dirsync")

SUMMARY_EVENT = "SyncRunSummary"
_DAYS = re.compile(r"\((-?\d+) days\)")
MAX_ERROR_CHARS = 2000
_configured = False


def summary_dimensions(summary: RunSummary, *, host: str = "cli") -> dict[str, str | int | float | bool]:
    """The run summary as flat dimensions (names are stable: KQL in infra/ depends on them).

    ``event`` SyncRunSummary; ``action``; ``ok``; ``host`` ("functions" for the Function app's
    timer and endpoints, set by function_app.py; "cli" otherwise);
    ``durationSeconds``; ``graphRequests``; ``graphRetries``; ``syncRequests``; ``readKind``
    ("full"/"delta", "" when no read ran); ``readReason``; ``objectsRead``; for each dataset D:
    ``D.added``, ``D.removed``, ``D.rejected``, ``D.excluded``, ``D.held``; ``heldDeletions``
    (all datasets); ``<phase>Seconds`` for read, plan, send, commit when the phase ran;
    ``secretExpiresInDays`` (days to the soonest expiry among the run's credential warnings,
    negative once expired; absent when none warned: ``shared/config/vault.py`` warns 30 days ahead);
    ``skipped`` (true when another run held the lock, so this one changed nothing: the timer
    does not count it as failed, nor does the failed-run alert in infra/app/alert.bicep);
    ``error`` (at most 2,000 characters, secrets already scrubbed)."""
    d = summary.as_dict()
    read = d.get("read") or {}
    held = d.get("heldDeletions") or {}
    out: dict[str, str | int | float | bool] = {
        "event": SUMMARY_EVENT,
        "action": summary.action,
        "ok": bool(summary.ok),
        "host": host,
        "durationSeconds": round(summary.duration, 3),
        "graphRequests": summary.graph_requests,
        "graphRetries": int(read.get("graphRetries") or 0),
        "syncRequests": summary.sync_requests,
        "readKind": str(read.get("kind") or ""),
        "readReason": str(read.get("reason") or ""),
        "objectsRead": int(sum((read.get("objects") or {}).values())),
        "skipped": bool(d.get("skipped")),
    }
    total_held = 0
    for name in DATASETS:
        c = summary.datasets[name]
        n_held = int((held.get(name) or {}).get("count") or 0)
        total_held += n_held
        out.update({f"{name}.added": c.added, f"{name}.removed": c.removed, f"{name}.rejected": c.rejected,
                    f"{name}.excluded": c.excluded, f"{name}.held": n_held})
    out["heldDeletions"] = total_held
    for phase, seconds in (d.get("phaseSeconds") or {}).items():
        out[f"{phase}Seconds"] = round(float(seconds), 3)
    days = [int(m.group(1)) for w in d.get("credentialWarnings") or () for m in [_DAYS.search(w)] if m]
    if days:
        out["secretExpiresInDays"] = min(days)
    if summary.error:
        out["error"] = summary.error[:MAX_ERROR_CHARS]
    return out


@contextmanager
def phase(summary: RunSummary, name: str) -> Iterator[Any]:
    """A span named ``name`` around one phase of the run; its duration also lands in the
    summary as ``phaseSeconds[name]`` (seconds, summed when a phase runs more than once)."""
    started = time.monotonic()
    # An exception's text is never recorded on the span (an SDK's text can echo a token
    # request): the span is only marked failed, by type; the summary carries the scrubbed error.
    with tracer.start_as_current_span(name, record_exception=False, set_status_on_exception=False) as span:
        try:
            yield span
        except BaseException as exc:
            span.set_status(StatusCode.ERROR)
            span.set_attribute("error.type", type(exc).__name__)
            raise
        finally:
            spent = summary.extra.setdefault("phaseSeconds", {})
            spent[name] = round(spent.get(name, 0.0) + time.monotonic() - started, 3)


def _credential(env: Mapping[str, str]) -> Any:
    auth = env.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "")
    parts = dict(p.split("=", 1) for p in auth.split(";") if "=" in p)
    if parts.get("Authorization", "").upper() != "AAD":
        return None
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    client_id = parts.get("ClientId")
    return ManagedIdentityCredential(client_id=client_id) if client_id else DefaultAzureCredential()


def configure_telemetry(env: Mapping[str, str] | None = None) -> bool:
    """Export to Application Insights when ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set and
    no OpenTelemetry provider is in place yet (the Functions worker sets its own in the
    OpenTelemetry mode). Returns whether this call configured the exporter. Silent when the
    connection string is unset; a malformed one is reported in one warning naming the setting,
    and the run goes on without telemetry."""
    global _configured
    env = os.environ if env is None else env
    conn = (env.get("APPLICATIONINSIGHTS_CONNECTION_STRING") or "").strip()
    if not conn or _configured:
        return False
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return False  # the host (Functions worker) configured OpenTelemetry already
    try:
        from azure.monitor.opentelemetry import configure_azure_monitor

        configure_azure_monitor(connection_string=conn, credential=_credential(env), logger_name="shared")
    except ValueError as exc:
        log.warning("APPLICATIONINSIGHTS_CONNECTION_STRING is not usable (%s); this run exports no telemetry", type(exc).__name__)
        return False
    _configured = True
    return True


def flush_telemetry(timeout_millis: int = 10_000) -> None:
    """Send what is buffered before a CLI process exits (no-op without a provider)."""
    from opentelemetry import _logs

    for provider in (trace.get_tracer_provider(), _logs.get_logger_provider()):
        flush = getattr(provider, "force_flush", None)
        if flush is not None:
            flush(timeout_millis)
