"""Hostile input bounded as a class (issue 14): hostile servers on loopback answer the Graph
reader and the sync API client; every outside string that reaches a log, a report or the
terminal is escaped and truncated; report files are capped; storage URIs with a query string
are refused; secrets stay out of repr.

Each test fails without the fix it covers: a Graph page that inflates past the cap or comes
from a redirect to another host is taken as data; a rejection's 20 MB message lands in the run
report and the log; a newline in a key forges a log line; a SAS in the storage URI is accepted."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from devstack.graph_emulator import GraphEmulator
from shared.common.errors import IncompleteReadError, SettingsError
from shared.common.redact import forget_all, scrub
from shared.common.textsafe import MAX_TEXT, safe_text
from shared.config.settings import load_settings
from shared.sources.graph import MAX_PAGE_BYTES, GraphSource
from shared.storage.history import MAX_REPORT_BYTES, FileReportStore, _document
from shared.text import format_status
from tests import launcher
from tests.loopback import Loopback
from tests.stack import DOMAINS, base_env

FORGED = "\n2026-01-01 00:00:00,000 ERROR sync: forged line \x1b[2J\x1b[31mred\u2028sep\x9b1m"
CONTROL = ("\n", "\r", "\x1b", "\u2028", "\x9b")


# --- a hostile HTTP server ------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length) if length else b""
        server: Hostile = self.server.owner  # type: ignore[attr-defined]
        server.requests.append(f"{self.command} {self.path}")
        status, headers, data = server.answer(self.command, self.path, body)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)  # a client that hangs up on an answer over its cap: tests/loopback.py

    do_GET = do_POST = _answer


class Hostile:
    """A loopback HTTP server; ``answer(method, path, body)`` → (status, headers, bytes)."""

    def __init__(self, answer: Callable[[str, str, bytes], tuple[int, dict[str, str], bytes]]) -> None:
        self.answer = answer
        self.requests: list[str] = []
        self._loopback = Loopback(_Handler, self)
        self.origin = self._loopback.origin

    def stop(self) -> None:
        self._loopback.stop()


@pytest.fixture
def servers() -> Iterator[list[Hostile]]:
    started: list[Hostile] = []
    yield started
    for s in started:
        s.stop()


def page(origin: str, collection: str, values: list[dict[str, Any]]) -> bytes:
    return json.dumps({"value": values, "@odata.deltaLink": f"{origin}/v1.0/{collection}/delta?$deltatoken=next"}).encode()


class Sink:
    """A round sink (``shared.sources.graph.RoundSink``) that keeps every entry it is handed."""

    def __init__(self) -> None:
        self.objects: list[dict[str, Any]] = []

    def take(self, collection: str, obj: dict[str, Any]) -> None:
        self.objects.append(obj)


def read(base_url: str) -> Sink:
    async def go() -> Sink:
        source = GraphSource(base_url, None, backoff_seconds=0.01, max_attempts=2)
        sink = Sink()
        try:
            await source.read_directory(sink)
        finally:
            await source.aclose()
        return sink

    return asyncio.run(go())


def graph_answering(users: Callable[[str], tuple[int, dict[str, str], bytes]], servers: list[Hostile]) -> Hostile:
    def answer(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        for collection in ("groups", "contacts"):
            if f"/{collection}/" in path:
                return 200, {"Content-Type": "application/json"}, page(server.origin, collection, [])
        return users(path)

    server = Hostile(answer)
    servers.append(server)
    return server


def gzip_bomb(inflated: int) -> bytes:
    """A gzip body of valid JSON (``{"value": [], "pad": "aaaa…"}``) that inflates to ``inflated`` bytes."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [comp.compress(b'{"value": [], "pad": "')]
    chunk = b"a" * (1 << 20)
    for _ in range(inflated // len(chunk)):
        parts.append(comp.compress(chunk))
    parts.append(comp.compress(b'"}'))
    parts.append(comp.flush())
    return b"".join(parts)


# --- Graph --------------------------------------------------------------------------------------
def test_a_graph_gzip_bomb_fails_the_page_after_the_inflated_cap(servers):
    bomb = gzip_bomb(MAX_PAGE_BYTES + (8 << 20))
    assert len(bomb) < MAX_PAGE_BYTES // 100  # a small answer on the wire
    graph = graph_answering(lambda path: (200, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, bomb), servers)
    with pytest.raises(IncompleteReadError, match=r"inflates to more than \d+ bytes"):
        read(f"{graph.origin}/v1.0")


def test_a_gzip_page_under_the_cap_is_still_read(servers):
    graph = graph_answering(lambda path: (200, {"Content-Type": "application/json", "Content-Encoding": "gzip"},
                                         gzip.compress(page(graph.origin, "users", [{"id": "u1", "mail": "a@contoso.com"}]))), servers)
    assert [o["id"] for o in read(f"{graph.origin}/v1.0").objects] == ["u1"]


def test_an_oversized_graph_body_fails_the_page(servers):
    big = b'{"value": [], "pad": "' + b"a" * (MAX_PAGE_BYTES + 1) + b'"}'
    graph = graph_answering(lambda path: (200, {"Content-Type": "application/json"}, big), servers)
    with pytest.raises(IncompleteReadError, match=r"larger than \d+ bytes"):
        read(f"{graph.origin}/v1.0")


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_graph_redirect_to_another_host_fails_the_page_and_is_not_followed(servers, status):
    elsewhere = Hostile(lambda m, path, b: (200, {"Content-Type": "application/json"},
                                            page(elsewhere.origin, "users", [{"id": "planted", "mail": "evil@contoso.com"}])))
    servers.append(elsewhere)
    graph = graph_answering(lambda path: (status, {"Location": f"{elsewhere.origin}{path}"}, b""), servers)
    with pytest.raises(IncompleteReadError, match=rf"HTTP {status}.*redirect.*not followed"):
        read(f"{graph.origin}/v1.0")
    assert elsewhere.requests == []


def test_a_next_link_to_another_port_of_the_same_host_fails_the_page(servers):
    elsewhere = Hostile(lambda m, path, b: (200, {"Content-Type": "application/json"}, page(elsewhere.origin, "users", [{"id": "planted"}])))
    servers.append(elsewhere)
    graph = graph_answering(lambda path: (200, {"Content-Type": "application/json"},
                                          json.dumps({"value": [], "@odata.nextLink": f"{elsewhere.origin}/v1.0/users/delta?$skiptoken=x"}).encode()), servers)
    with pytest.raises(IncompleteReadError):
        read(f"{graph.origin}/v1.0")
    assert elsewhere.requests == []


# --- the sync API: a hostile rejection --------------------------------------------------------------
HUGE = 20 * 1024 * 1024


def hostile_sync_api(servers: list[Hostile]) -> Hostile:
    def answer(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if method == "GET" and path.endswith("/domains"):
            return 200, {"Content-Type": "application/json"}, json.dumps({"domains": DOMAINS}).encode()
        if method == "GET":
            return 200, {"Content-Type": "application/json"}, json.dumps({"records": [], "nextPageToken": None}).encode()
        sent = json.loads(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body)
        count = len(sent.get("upsert", [])) + len(sent.get("delete", []))
        rejected = [{"key": "alice@contoso.com" + FORGED, "code": "invalid_record" + FORGED, "message": "x" * HUGE + FORGED}]
        return 200, {"Content-Type": "application/json"}, json.dumps({"applied": count, "rejected": rejected}).encode()

    server = Hostile(answer)
    servers.append(server)
    return server


def test_a_hostile_rejection_is_escaped_and_bounded_in_the_log_the_report_and_the_terminal(servers, tmp_path, monkeypatch, capsys, caplog):
    graph = GraphEmulator({"users": [{"id": "u-1", "displayName": "Alice", "mail": "alice@contoso.com", "proxyAddresses": []}], "groups": [], "contacts": []})
    graph.start()
    try:
        api = hostile_sync_api(servers)
        env = base_env(graph.base_url, f"{api.origin}/v1", f"file:{tmp_path / 'state'}")
        for key in list(os.environ):
            if key not in env:
                monkeypatch.delenv(key)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        with caplog.at_level(logging.INFO):
            code = launcher.main(["update", "--json"])
        out = capsys.readouterr()
    finally:
        graph.stop()
    assert code == 0, out.err
    summary = json.loads(out.out.strip().splitlines()[-1])
    rejections = [r for c in summary["datasets"].values() for r in c.get("rejections", [])]
    assert rejections
    for r in rejections:
        assert len(r["message"]) < MAX_TEXT + 100 and "more characters]" in r["message"]
        assert not any(c in r["key"] + r["code"] for c in CONTROL) and "\\x0a2026-01-01" in r["key"]
    reports = list((tmp_path / "state" / "runs").glob("*.json"))
    assert reports and all(p.stat().st_size < 1_000_000 for p in reports)
    report_text = reports[0].read_text()
    assert not any(c in report_text for c in ("\x1b", "\u2028", "\x9b"))  # JSON escapes \n; the rest by us
    messages = [r.getMessage() for r in caplog.records]
    assert all(len(m) < 70_000 for m in messages)
    assert not any(c in m for m in messages for c in CONTROL)
    assert "forged line" in " ".join(messages)  # escaped, not dropped: one line, visibly
    assert "\n2026-01-01" not in out.err and "\x1b" not in out.out + out.err


# --- the terminal --------------------------------------------------------------------------------
def test_status_text_escapes_held_keys_and_report_fields():
    runs = [{"finishedAt": "2026-01-01T00:00:00+00:00", "action": "update" + FORGED, "ok": False, "error": "boom" + FORGED,
             "datasets": {"users": {"added": 1, "removed": 0}}}]
    text = format_status(runs, {"users": ["u-1" + FORGED]})
    assert not any(c in text.replace("\n", "") for c in CONTROL[1:])
    assert all(not line.startswith("2026-01-01") for line in text.splitlines())
    assert "\\x1b[31m" in text


def test_safe_text_escapes_every_control_character_and_truncates():
    for code in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, 0x202E, 0x200F]:
        assert chr(code) not in safe_text(f"a{chr(code)}b")
    assert safe_text("a\\nb") == "a\\\\nb"  # an escaped text cannot pass for an escape
    assert safe_text("x" * 600) == "x" * 500 + "…[100 more characters]"
    assert safe_text("é and 日本") == "é and 日本"


# --- report files ---------------------------------------------------------------------------------
def test_a_report_over_the_byte_cap_leaves_out_its_record_lists(tmp_path):
    import datetime as dt

    report = {"action": "test-update", "ok": True, "datasets": {"users": {"added": 1, "rejections": [{"message": "m" * 400}] * 900}},
              "changes": {"users": {"added": [{"id": f"u{i}", "pad": "p" * 400} for i in range(900)]}}}
    doc, data = _document(report, dt.datetime(2026, 1, 1, tzinfo=dt.UTC), max_bytes=100_000)
    assert len(data) <= 100_000 and "changes" not in doc and doc["reportTruncated"]["maxBytes"] == 100_000
    assert doc["ok"] is True and doc["datasets"]["users"]["added"] == 1


def test_status_skips_a_report_file_over_the_cap(tmp_path):
    store = FileReportStore(tmp_path)
    store.write({"action": "update", "ok": True})
    (tmp_path / "runs" / "29991231T235959000000Z-update-0000abcd.json").write_bytes(b'{"pad": "' + b"a" * MAX_REPORT_BYTES + b'"}')
    recent = store.recent(10)
    assert [r.get("action") for r in recent] == ["update"]


# --- storage settings ---------------------------------------------------------------------------
SAS = "sv=2024-11-04&ss=b&srt=sco&sp=rwdlac&se=2030-01-01T00:00:00Z&sig=SECRETSIGNATURE0123456789abcdef%3D"


@pytest.mark.parametrize("setting", ["AzureWebJobsStorage__blobServiceUri", "AzureWebJobsStorage__serviceUri"])
def test_a_storage_uri_with_a_sas_is_refused_without_echoing_it(setting):
    env = {**base_env("http://127.0.0.1:1/v1.0", "http://127.0.0.1:2/v1", "blob:sync-state"), setting: f"https://acct.blob.core.windows.net/?{SAS}"}
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    assert caught.value.setting == setting and "query string" in str(caught.value)
    assert "SECRETSIGNATURE" not in str(caught.value)
    forget_all()


def test_a_connection_strings_account_key_is_out_of_repr_and_scrubbed():
    key = "QUNDT1VOVEtFWWFjY291bnRrZXlzZWNyZXQ0NTY3ODkwMTIzNDU2Nzg5MA=="
    conn = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={key};EndpointSuffix=core.windows.net"
    env = {**base_env("http://127.0.0.1:1/v1.0", "http://127.0.0.1:2/v1", "blob:sync-state"), "AzureWebJobsStorage": conn}
    try:
        settings = load_settings(env)
        assert settings.storage_connection_string == conn
        assert key not in repr(settings) and "AccountKey" not in repr(settings)
        assert key not in scrub(f"failed with {conn}")
    finally:
        forget_all()


# --- the blob state's local copy -------------------------------------------------------------------
@pytest.fixture
def blob_service(azurite):
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient.from_connection_string(azurite.connection_string)


def test_the_local_copy_lives_in_a_per_user_0700_directory(blob_service, tmp_path, monkeypatch):
    import stat

    from shared.storage.stores import BlobStateStore

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    store = BlobStateStore(blob_service, "state-private", "azurite")
    db = store.open()
    db.close()
    assert store.local.parent == tmp_path / f"dirsync-{os.getuid()}"
    for d in (store.local.parent, store.local):
        st = os.lstat(d)
        assert st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700


def test_the_local_copy_is_named_by_the_blob_endpoint_and_the_container(azurite, tmp_path, monkeypatch):
    """Two storage endpoints with the same account name (two Azurites on one machine, say two
    test sessions at once) never share a local copy: sharing one, the second run found the
    first's database locked. The same endpoint, however spelled, is one copy per container."""
    from azure.storage.blob import BlobServiceClient

    from shared.storage.stores import BlobStateStore

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    here = BlobServiceClient.from_connection_string(azurite.connection_string)
    url = here.url.rstrip("/")
    other_port = url.replace(f":{here.primary_hostname.split(':')[1].split('/')[0]}/", ":1/")
    assert other_port != url
    elsewhere = BlobServiceClient(other_port, credential=here.credential)
    spelled = BlobServiceClient(url.upper().replace("HTTP://", "http://") + "/", credential=here.credential)

    def local(svc, container):
        return BlobStateStore(svc, container, "devstoreaccount1").local

    assert local(here, "c1") != local(elsewhere, "c1")  # same account name and container, another endpoint
    assert local(here, "c1") != local(here, "c2")
    assert local(here, "c1") == local(spelled, "c1")


@pytest.mark.parametrize("plant", ["world-writable", "other-owner", "symlink"])
def test_a_planted_local_state_directory_is_refused(blob_service, tmp_path, monkeypatch, plant):
    from shared.common.errors import StateError
    from shared.storage.stores import BlobStateStore

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    store = BlobStateStore(blob_service, "state-planted", "azurite")
    base = store.local.parent
    if plant == "symlink":
        elsewhere = tmp_path / "attacker"
        elsewhere.mkdir(mode=0o700)
        base.symlink_to(elsewhere, target_is_directory=True)
    else:
        base.mkdir(mode=0o700)
        if plant == "world-writable":
            os.chmod(base, 0o777)  # noqa: S103 - the planted directory an attacker would leave
        elif os.getuid() == 0:
            os.chown(base, 4242, 4242)
        else:
            pytest.skip("changing a directory's owner needs root")
    with pytest.raises(StateError, match=r"local state directory .*(symbolic link|uid 4242|mode 777)"):
        store.open()


# --- SIGTERM ---------------------------------------------------------------------------------------
def test_sigterm_cancels_the_run_writes_its_report_and_summary_and_releases_the_lease(azurite, receiver, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from azure.storage.blob import BlobServiceClient

    from devstack.tenant import generate_tenant
    from tests.stack import ROOT

    # Every Graph request waits while the latency is an hour: the run is surely mid-read when
    # SIGTERM comes, however slowly it started; lowering the latency lets the next run through.
    graph = GraphEmulator(generate_tenant(300, groups=5, seed=5, domains=tuple(DOMAINS[:2])), latency=3600)
    graph.start()
    try:
        env = {**base_env(graph.base_url, receiver.base_url, "blob:sigterm-state"), "AzureWebJobsStorage": azurite.connection_string,
               "TMPDIR": str(tmp_path), "SYNC_TEST_MAX_ITEMS": "20"}
        proc = subprocess.Popen([sys.executable, "-m", "tests.launcher", "update", "--json", "-v"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while graph.request_count < 1 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, err
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["ok"] is False and "SIGTERM" in summary["error"]
        assert "SyncRunSummary" in err
        container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client("sigterm-state")
        reports = [b.name for b in container.list_blobs(name_starts_with="runs/")]
        assert len(reports) == 1 and "SIGTERM" in json.loads(container.get_blob_client(reports[0]).download_blob().readall())["error"]
        # the lease is released: the next run starts at once instead of waiting for it to expire
        graph.latency = 0.0
        again = subprocess.run([sys.executable, "-m", "tests.launcher", "update", "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
    finally:
        graph.stop()


def test_a_json_document_keeps_backslashes_exact_and_still_escapes_control_characters():
    """JSON escapes backslashes itself: a reason quoting a regular expression stays exact in a
    summary or report, while a newline or ANSI escape is still made visible."""
    from shared.common.textsafe import safe_tree

    doc = safe_tree({"reason": r"matches EXCLUDE_ADDRESS_PATTERNS pattern '^no\.reply@.*'", "key": "a\nb\x1b[31m"})
    assert doc["reason"] == r"matches EXCLUDE_ADDRESS_PATTERNS pattern '^no\.reply@.*'"
    assert doc["key"] == "a\\x0ab\\x1b[31m"


def test_a_loop_without_signal_handlers_still_runs_the_action(caplog):
    """Windows' event loops have no add_signal_handler (NotImplementedError): the run goes on
    without SIGTERM cancelling it, and says so at debug level (shared/common/shutdown.py)."""
    import asyncio as aio
    import logging as lg

    from shared.common.shutdown import run_cancellable

    class NoSignals(aio.SelectorEventLoop):
        def add_signal_handler(self, sig, callback, *args):
            raise NotImplementedError

    async def action() -> str:
        await aio.sleep(0)
        return "done"

    loop = NoSignals()
    try:
        with caplog.at_level(lg.DEBUG, logger="shared.shutdown"):
            assert loop.run_until_complete(run_cancellable(action())) == "done"
    finally:
        loop.close()
    assert "SIGTERM does not cancel this run on this event loop (NotImplementedError)" in caplog.text
