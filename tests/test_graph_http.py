"""The Graph read's HTTP layer (shared/sources/graph_transport.py, ``GraphHttp``), against servers
on loopback: the app's token on every request and only there, one sign-in for the three
collections and a new one before the token expires, a fresh ``client-request-id`` per request,
every way a request can get no answer named (refused, dropped, cut short, not HTTP, stalled) and
retried before the read fails, and an error answer's OData body read whatever it holds."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.common.aio import USER_AGENT
from shared.common.errors import IncompleteReadError
from shared.common.textsafe import _UNSAFE_LOG
from shared.sources.graph import GraphSource
from shared.sources.graph_transport import GraphHttp, GraphHttpError, _RefusedAnswer
from tests.loopback import Loopback, closed_port
from tests.test_graph_gzip import Answer, page_bytes, serve  # noqa: F401 - serve: the fixture

SCOPE = "https://graph.microsoft.com/.default"


def empty_graph(holder: dict[str, Any]) -> Any:
    """Every collection one page of one object, then its deltaLink."""

    def answer(path: str) -> Answer:
        collection = path.split("/")[2]
        body = page_bytes(holder["server"].origin, collection, [{"id": f"{collection}-1"}])
        return 200, {"Content-Type": "application/json"}, body

    return answer


class Tokens:
    """A token getter that counts its sign-ins; each token lives ``lifetime`` seconds."""

    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self.asked: list[str] = []

    async def __call__(self, scope: str) -> tuple[str, float]:
        self.asked.append(scope)
        await asyncio.sleep(0.01)  # a sign-in takes a while: the other collections wait for it
        return f"token-{len(self.asked)}", time.time() + self.lifetime


def read(origin: str, tokens: Tokens | None = None, **kwargs: Any) -> GraphSource:
    class Sink:
        def take(self, collection: str, obj: dict[str, Any]) -> None:
            pass

    async def go() -> GraphSource:
        source = GraphSource(f"{origin}/v1.0", tokens, scope=SCOPE, backoff_seconds=0.01, **kwargs)
        try:
            await source.read_directory(Sink())
        finally:
            await source.aclose()
        return source

    return asyncio.run(go())


def test_one_sign_in_serves_the_round_and_every_request_carries_its_token(serve) -> None:  # noqa: F811
    holder: dict[str, Any] = {}
    holder["server"] = server = serve(empty_graph(holder))
    tokens = Tokens(3600)
    read(server.origin, tokens)
    assert tokens.asked == [SCOPE]  # three collections started together, one sign-in
    assert len(server.asked) == 3
    assert {h["Authorization"] for h in server.asked} == {"Bearer token-1"}
    assert {h["User-Agent"] for h in server.asked} == {USER_AGENT} and USER_AGENT.startswith("entra-dirsync/")
    ids = [h["client-request-id"] for h in server.asked]
    assert len(set(ids)) == 3 and all(uuid.UUID(i).version == 4 for i in ids)


@pytest.mark.parametrize("lifetime,renews", [(-60, True), (0, True), (299, True), (301, False), (3600, False)])
def test_a_token_is_renewed_before_it_expires(serve, lifetime: float, renews: bool) -> None:  # noqa: F811
    """A token within 300 s of its expiry is not sent: a page could be refused halfway."""
    holder: dict[str, Any] = {}
    holder["server"] = server = serve(empty_graph(holder))
    tokens = Tokens(lifetime)
    read(server.origin, tokens, concurrent=False)
    assert len(tokens.asked) == (3 if renews else 1)
    assert [h["Authorization"] for h in server.asked] == ([f"Bearer token-{n}" for n in (1, 2, 3)] if renews else ["Bearer token-1"] * 3)


def test_without_a_token_getter_no_authorization_header_is_sent(serve) -> None:  # noqa: F811
    holder: dict[str, Any] = {}
    holder["server"] = server = serve(empty_graph(holder))
    read(server.origin)
    assert len(server.asked) == 3 and all("Authorization" not in h for h in server.asked)


@pytest.mark.parametrize("url", [
    "https://127.0.0.1:{port}/v1.0/users", "http://127.0.0.1:1/v1.0/users",
    "http://user:pw@127.0.0.1:{port}/v1.0/users", "http://graph.example/v1.0/users",
])
def test_the_token_never_leaves_the_origin(serve, url: str) -> None:  # noqa: F811
    """A request off GRAPH_BASE_URL's origin is refused before a connection or a sign-in."""
    holder: dict[str, Any] = {}
    holder["server"] = server = serve(empty_graph(holder))
    tokens = Tokens(3600)

    async def go() -> None:
        http = GraphHttp(f"{server.origin}/v1.0", tokens, SCOPE)
        try:
            await http.get(url.format(port=server.origin.rsplit(":", 1)[1]))
        finally:
            await http.aclose()

    with pytest.raises(_RefusedAnswer, match="was refused: Graph reads stay on"):
        asyncio.run(go())
    assert tokens.asked == [] and server.asked == []


# --- no answer: every kind is named, retried, and fails the read --------------------------------
class _RawHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        owner = self.server.owner  # type: ignore[attr-defined]
        owner["asked"] += 1
        fault = owner["fault"]
        if fault == "stall":
            time.sleep(1.0)
        elif fault == "cut_body":
            self.wfile.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"value": [')
        elif fault == "not_http":
            self.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        elif fault == "bad_chunks":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        self.wfile.flush()
        self.close_connection = True  # "drop": closed without a byte


@pytest.fixture
def raw() -> Iterator[tuple[str, dict[str, Any]]]:
    owner: dict[str, Any] = {"asked": 0, "fault": "drop"}
    server = Loopback(_RawHandler, owner)
    yield server.origin, owner
    server.stop()


FAULTS = [("refused", "ConnectError"), ("drop", "RemoteProtocolError"), ("cut_body", "RemoteProtocolError"),
          ("not_http", "RemoteProtocolError"), ("bad_chunks", "RemoteProtocolError"), ("stall", "ReadTimeout")]


@pytest.mark.parametrize("fault,name", FAULTS, ids=[f for f, _ in FAULTS])
def test_a_request_without_an_answer_is_named_retried_and_fails_the_read(raw, fault: str, name: str) -> None:
    origin, owner = raw
    owner["fault"] = fault
    if fault == "refused":
        origin = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(IncompleteReadError, match=rf"after 2 attempts \({name}\); nothing was sent"):
        read(origin, max_attempts=2, timeout_seconds=0.2, concurrent=False)
    # The users page, twice, nothing after it. A dropped connection is sent again once at once
    # by aiohttp, for a GET (RFC 9112, 9.3.1.1: a keep-alive connection the server closed).
    assert owner["asked"] == {"refused": 0, "drop": 4}.get(fault, 2)


# --- an error answer's body ----------------------------------------------------------------------
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


@given(st.one_of(
    st.binary(max_size=200),
    JSON.map(lambda doc: json.dumps(doc).encode()),
    st.fixed_dictionaries({"error": JSON}).map(lambda doc: json.dumps(doc).encode()),
    st.fixed_dictionaries({"error": st.fixed_dictionaries({"code": JSON, "message": JSON})}).map(lambda doc: json.dumps(doc).encode()),
))
def test_any_error_body_gives_a_code_and_a_text_or_none(body: bytes) -> None:
    exc = GraphHttpError(400, body, None)
    assert exc.code is None or isinstance(exc.code, str)
    assert exc.message is None or isinstance(exc.message, str)
    text = exc.text()
    # No character that moves or forges text (shared/common/textsafe.py escapes them), and short.
    assert text and _UNSAFE_LOG.search(text) is None and len(text) <= 340


def test_an_odata_error_body_names_its_code_and_message() -> None:
    body = json.dumps({"error": {"code": "Request_ResourceNotFound", "message": "Resource 'x' does not exist.\n"}}).encode()
    exc = GraphHttpError(404, body, 5.0)
    assert (exc.status, exc.code, exc.retry_after) == (404, "Request_ResourceNotFound", 5.0)
    assert exc.text() == "Request_ResourceNotFound: Resource 'x' does not exist.\\x0a"
    assert GraphHttpError(500, b"<html>", None).text() == "HTTP 500"


# --- the environment's proxy ---------------------------------------------------------------------
def _proxied_graph(path: str) -> Answer:
    collection = urlsplit(path).path.split("/")[2]
    return 200, {"Content-Type": "application/json"}, page_bytes("http://graph.invalid", collection, [{"id": f"{collection}-1"}])


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def test_the_proxy_the_environment_names_carries_every_request(serve, no_proxy_env) -> None:  # noqa: F811
    """HTTP_PROXY/HTTPS_PROXY are honoured as httpx and azure-core honour them (looked up once
    per session: every request goes to one origin)."""
    proxy = serve(_proxied_graph)
    no_proxy_env.setenv("HTTP_PROXY", proxy.origin)
    read("http://graph.invalid")
    assert sorted(urlsplit(p).netloc for p in proxy.paths) == ["graph.invalid"] * 3  # absolute-form, through the proxy


def test_no_proxy_sends_the_requests_direct(serve, no_proxy_env) -> None:  # noqa: F811
    holder: dict[str, Any] = {}
    holder["server"] = server = serve(empty_graph(holder))
    no_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    no_proxy_env.setenv("NO_PROXY", "127.0.0.1")
    read(server.origin)
    assert len(server.paths) == 3 and all(p.startswith("/v1.0/") for p in server.paths)
