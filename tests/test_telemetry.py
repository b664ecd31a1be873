"""Telemetry you can query: the run summary as a structured OpenTelemetry log record (its
fields become customDimensions in Application Insights) and spans for read, plan, send and
commit, checked with the OpenTelemetry SDK's in-memory exporters around real runs of the
engine against the Graph emulator and the strict receiver. A CLI run with
APPLICATIONINSIGHTS_CONNECTION_STRING exports through the Azure Monitor exporter to an
ingestion endpoint on loopback."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.logging.handler import LoggingHandler  # the handler configure_azure_monitor installs
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs import export as _log_export
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared import engine
from shared.common import telemetry
from shared.common.summary import RunSummary
from shared.config.settings import load_settings
from shared.engine import Options
from shared.model.records import DATASETS
from tests.stack import U, base_env, run_cli

_SPANS = InMemorySpanExporter()
InMemoryLogExporter = getattr(_log_export, "InMemoryLogRecordExporter", None) or _log_export.InMemoryLogExporter


@pytest.fixture(scope="module", autouse=True)
def _tracer_provider():
    """The process-wide tracer provider, once (OpenTelemetry allows one per process)."""
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_SPANS))
        trace.set_tracer_provider(provider)
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        pytest.skip("another tracer provider was installed in this process")
    yield


@pytest.fixture
def exported():
    """OpenTelemetry log records of the ``shared`` loggers, as the Azure Monitor distro's
    handler sees them (configure_azure_monitor(logger_name="shared"))."""
    _SPANS.clear()
    logs = InMemoryLogExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    handler = LoggingHandler(level=logging.INFO, logger_provider=provider)
    logger = logging.getLogger("shared")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield logs
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        provider.shutdown()


@pytest.fixture
def graph(nasty_graph):
    return nasty_graph


def _run(env: dict[str, str], action: str = "update") -> RunSummary:
    return asyncio.run(engine.run(action, load_settings(env), env=env, options=Options(graph_backoff_seconds=0.01, sync_backoff_seconds=0.01)))


def _summary_records(logs: Any) -> list[dict[str, Any]]:
    out = []
    for item in logs.get_finished_logs():
        record = getattr(item, "log_record", item)
        attrs = dict(record.attributes or {})
        if attrs.get("event") == "SyncRunSummary":
            out.append({"body": record.body, **attrs})
    return out


def test_the_run_summary_is_one_record_with_real_dimensions(exported, graph, receiver, tmp_path) -> None:
    env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    summary = _run(env)
    assert summary.ok, summary.error
    [rec] = _summary_records(exported)
    assert rec["body"].startswith("SyncRunSummary {")
    assert rec["action"] == "update" and rec["ok"] is True and rec["host"] == "cli"
    assert rec["readKind"] == "full" and rec["readReason"]
    assert rec["graphRequests"] == summary.graph_requests > 0
    assert rec["syncRequests"] == summary.sync_requests > 0
    assert rec["objectsRead"] == sum(summary.extra["read"]["objects"].values()) > 0
    for d in DATASETS:
        c = summary.datasets[d]
        assert (rec[f"{d}.added"], rec[f"{d}.removed"], rec[f"{d}.rejected"], rec[f"{d}.excluded"], rec[f"{d}.held"]) == (
            c.added, c.removed, c.rejected, c.excluded, 0)
    assert rec["heldDeletions"] == 0 and "secretExpiresInDays" not in rec
    for phase in ("read", "plan", "send", "commit"):
        assert rec[f"{phase}Seconds"] >= 0
    assert rec["durationSeconds"] >= rec["readSeconds"]
    assert "error" not in rec
    # Every value is a scalar that Application Insights can keep as a dimension.
    assert all(isinstance(v, (str, int, float, bool)) for v in rec.values())

    # The second run reads a delta round; the record says so.
    exported.clear()
    graph.delete_user(U(1))
    again = _run(env)
    assert again.ok
    [rec] = _summary_records(exported)
    assert rec["readKind"] == "delta" and rec["users.removed"] == again.datasets["users"].removed >= 1


def test_spans_for_read_plan_send_commit_under_the_run(exported, graph, receiver, tmp_path) -> None:
    env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    assert _run(env).ok
    spans = {s.name: s for s in _SPANS.get_finished_spans()}
    root = spans["sync update"]
    for name in ("read", "plan", "send", "commit"):
        assert spans[name].parent is not None and spans[name].parent.span_id == root.context.span_id, name
        assert spans[name].context.trace_id == root.context.trace_id
    assert spans["read"].end_time <= spans["plan"].start_time <= spans["send"].start_time <= spans["commit"].start_time
    assert root.attributes["ok"] is True and root.attributes["action"] == "update"


def test_a_failed_and_a_held_run_carry_their_error_and_held_counts(exported, graph, receiver, tmp_path) -> None:
    env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    assert _run(env).ok
    exported.clear()
    env.update(DELETE_THRESHOLD_PERCENT="0", DELETE_THRESHOLD_COUNT="0")
    graph.delete_user(U(1))
    held = _run(env)
    assert not held.ok
    [rec] = _summary_records(exported)
    assert rec["ok"] is False and rec["heldDeletions"] >= 1
    assert rec["users.held"] == held.extra["heldDeletions"]["users"]["count"]
    assert rec["error"] == held.error

    exported.clear()
    graph.inject_fault("503", path_contains="/users", times=1000, retry_after=0)
    failed = _run({**env, "FULL_SYNC_INTERVAL_HOURS": "0"})
    assert not failed.ok
    [rec] = _summary_records(exported)
    assert rec["ok"] is False and "nothing was sent" in rec["error"]


@pytest.mark.parametrize(
    ("warnings", "days"),
    [([], None), (["Key Vault secret graph-client-secret expires 2027-01-01 (29 days); rotate it"], 29),
     (["a expires 2027-01-01 (12 days); x", "b expires 2026-12-01 (-3 days); y"], -3)],
)
def test_secret_expiry_days_come_from_the_runs_warnings(warnings: list[str], days: int | None) -> None:
    summary = RunSummary("update")
    if warnings:
        summary.extra["credentialWarnings"] = warnings
    assert telemetry.summary_dimensions(summary.finish(True)).get("secretExpiresInDays") == days


# --- a CLI run exports to Application Insights (an ingestion endpoint on loopback) -------------------
class _Ingestion(BaseHTTPRequestHandler):
    envelopes: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        items = json.loads(body)
        _Ingestion.envelopes.extend(items if isinstance(items, list) else [items])
        answer = json.dumps({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def ingestion():
    _Ingestion.envelopes = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ingestion)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_cli_run_exports_its_summary_when_a_connection_string_is_set(ingestion, graph, receiver, tmp_path) -> None:
    env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    env.update(
        APPLICATIONINSIGHTS_CONNECTION_STRING=f"InstrumentationKey=00000000-0000-0000-0000-000000000001;IngestionEndpoint={ingestion}",
        APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL="true",  # nothing leaves loopback
        OTEL_TRACES_SAMPLER="always_on",
    )
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    messages = [e for e in _Ingestion.envelopes if e.get("data", {}).get("baseType") == "MessageData"]
    summaries = [e["data"]["baseData"] for e in messages if e["data"]["baseData"]["message"].startswith("SyncRunSummary")]
    assert len(summaries) == 1, [m["data"]["baseData"]["message"][:60] for m in messages]
    dims = summaries[0]["properties"]  # customDimensions
    assert dims["action"] == "update" and dims["ok"] == "True" and dims["readKind"] == "full"
    assert int(dims["users.added"]) == r.summary["datasets"]["users"]["added"]
    spans = {e["data"]["baseData"].get("name") for e in _Ingestion.envelopes if e.get("data", {}).get("baseType") in ("RemoteDependencyData", "RequestData")}
    assert {"read", "plan", "send", "commit"} <= spans


@pytest.mark.parametrize("days_ahead", [29.5, 12.2, 3.0, -2.0])
def test_the_vaults_own_expiry_warning_becomes_the_dimension(days_ahead: float) -> None:
    """The dimension is read from the warning text shared/config/vault.py writes: the two must agree."""
    import datetime as dt

    from shared.config import vault

    now = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    warnings: list[str] = []
    vault._check_expiry("Key Vault secret graph-client-secret", now + dt.timedelta(days=days_ahead), warnings, now=now)
    summary = RunSummary("update")
    summary.extra["credentialWarnings"] = warnings
    assert telemetry.summary_dimensions(summary.finish(True))["secretExpiresInDays"] == round(days_ahead)


def test_no_exception_text_reaches_a_span(exported, graph, receiver, tmp_path, monkeypatch) -> None:
    """An SDK exception's text can echo a token request; spans carry only its type."""
    from shared.sources import graph as graph_module

    canary = "client_secret=Canary-Span-Secret-91f3"

    async def explode(self, sink):
        raise RuntimeError(f"token request failed: {canary}")

    monkeypatch.setattr(graph_module.GraphSource, "read_directory", explode)
    env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    summary = _run(env)
    assert not summary.ok
    spans = {s.name: s for s in _SPANS.get_finished_spans()}
    assert spans["read"].status.status_code.name == "ERROR" and spans["read"].attributes["error.type"] == "RuntimeError"
    assert spans["sync update"].status.status_code.name == "ERROR"
    for span in spans.values():
        text = repr((span.attributes, span.status.description, [(e.name, e.attributes) for e in span.events]))
        assert "Canary-Span-Secret" not in text, span.name
    [rec] = _summary_records(exported)
    assert "Canary-Span-Secret" not in repr(rec)


def test_a_timer_run_is_recorded_as_host_functions(exported, graph, receiver, tmp_path, monkeypatch) -> None:
    """The missed-run alert counts only records with host == 'functions' (the timer's door)."""
    import function_app
    from tests.test_function_app import _timer

    for k, v in base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}").items():
        monkeypatch.setenv(k, v)
    function_app.sync_timer(_timer())
    [rec] = _summary_records(exported)
    assert (rec["host"], rec["action"], rec["ok"]) == ("functions", "update", True)
