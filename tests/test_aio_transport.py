"""What the aiohttp session both hot clients share (shared/common/aio.py) must keep from the httpx
clients it replaced, driven through the real clients against servers on loopback:

* a peer that stops reading a request body: the request times out after ``timeout_seconds``
  without progress and is retried (httpx had a write timeout; aiohttp arms its read timeout only
  once the whole body is written, so without one the run would wait for ever); a 413 answered
  while the body is still going out is read as the 413; the body keeps its Content-Length;
* the environment's proxy as httpx took it: NO_PROXY naming the host, the host and its port, or
  holding ``*``; ALL_PROXY; an ``https://`` proxy spoken to over TLS, its certificate verified
  (aiohttp's own lookup drops an https proxy with a warning, and the requests would go direct,
  past the proxy); a proxy that refuses the tunnel named as such, the request known unsent;
* TLS verified for an origin, whichever client;
* a configured URL with an IDN host or a non-ASCII path sent encoded, and one with a fragment
  refused where it is configured."""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

import pytest

from shared.common.aio import TimedBody
from shared.common.errors import IncompleteReadError, PayloadTooLargeError, SyncApiUnavailableError
from shared.common.netutil import tls_context
from shared.common.redact import Secret
from shared.target.syncapi import RequestBody, SyncApiClient, request_body
from tests.loopback import Loopback, closed_port, self_signed_pair
from tests.test_graph_gzip import Answer, Server, _Handler, serve  # noqa: F401 - serve: the fixture
from tests.test_graph_http import _proxied_graph, empty_graph, no_proxy_env, read  # noqa: F401 - no_proxy_env: the fixture


# --- a peer that stops reading the request body ---------------------------------------------------
class _NoReader(BaseHTTPRequestHandler):
    """Takes the request line and headers, then never reads the body (a stuck service or
    gateway): the client's writes stall once the socket buffers are full."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        owner = self.server.owner  # type: ignore[attr-defined]
        owner["posts"] += 1
        owner["release"].wait(30)
        self.close_connection = True


@pytest.fixture
def no_reader() -> Iterator[tuple[str, dict[str, Any]]]:
    owner: dict[str, Any] = {"posts": 0, "release": threading.Event()}
    server = Loopback(_NoReader, owner)
    yield server.origin, owner
    owner["release"].set()
    server.stop()


async def test_a_peer_that_stops_reading_the_body_times_out_and_is_retried(no_reader) -> None:
    origin, owner = no_reader
    # 1,000 users in 250 groups each: a changes body within the contract (under 10 MB as JSON),
    # larger on the wire (gzip) than the socket buffers hold.
    upserts = [{"id": f"{n:08x}-0000-4000-8000-{n:012x}", "address": f"user{n}@contoso.com",
                "groupIds": [os.urandom(16).hex() for _ in range(250)]} for n in range(1000)]
    body = request_body({"upsert": upserts, "delete": []})
    assert body.raw is not None and body.content is not None
    assert (len(body.raw) < 10_000_000, len(body.content) > 4_000_000) == (True, True)
    api = SyncApiClient(f"{origin}/v1", Secret("sync:secret", "SYNC_API_CREDENTIAL"), max_attempts=2,
                        backoff_seconds=0.01, timeout_seconds=0.5)
    try:
        with pytest.raises(SyncApiUnavailableError, match=r"after 2 attempts \(connection fault \(WriteTimeout\)\)") as info:
            # The guard turns a hang into a failure of this test, not of the suite.
            await asyncio.wait_for(api.post_encoded_changes("users", body, "k-stall"), 20)
    finally:
        await api.aclose()
    assert owner["posts"] == 2  # retried once, with the same key
    assert not info.value.maybe_applied  # the body never reached the service whole: it cannot have been applied


class _EarlyTooLarge(BaseHTTPRequestHandler):
    """Answers 413 after the first bytes of the body (a gateway that judges the declared
    Content-Length), then reads the rest and drops it before closing (a lingering close)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers["Content-Length"])
        self.rfile.read(1000)
        body = b'{"type":"about:blank","title":"Payload Too Large","status":413,"detail":"body over 10 MB"}'
        self.send_response(413)
        self.send_header("Content-Type", "application/problem+json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.server.owner.append(length)  # type: ignore[attr-defined]
        try:
            while length > 1000 and self.rfile.read(min(length - 1000, 1 << 20)):
                length -= 1 << 20
        except OSError:
            pass
        self.close_connection = True


async def test_a_413_answered_before_the_body_is_read_is_split_not_a_connection_fault() -> None:
    """The answer comes while the body is still being written: it is read, and it is the 413
    (split the request: docs/sync-api.md), not a connection fault retried as transient."""
    seen: list[int] = []
    server = Loopback(_EarlyTooLarge, seen)
    content = os.urandom(8 * 1024 * 1024)  # incompressible: 8 MB on the wire
    api = SyncApiClient(f"{server.origin}/v1", Secret("sync:secret", "SYNC_API_CREDENTIAL"), max_attempts=3, backoff_seconds=0.01,
                        timeout_seconds=5.0)
    try:
        with pytest.raises(PayloadTooLargeError) as info:
            await asyncio.wait_for(api.post_encoded_changes(
                "users", RequestBody(content, content, {"Content-Type": "application/json"}), "k-413"), 20)
    finally:
        await api.aclose()
        server.stop()
    assert seen == [len(content)]  # one request: a 413 is not retried
    assert not info.value.maybe_applied


async def test_a_body_goes_out_with_its_content_length_not_chunked() -> None:
    """A body written a slice at a time is still one body of a known length on the wire."""
    from tests.test_syncapi import HeaderRecordingReceiver

    receiver = HeaderRecordingReceiver(domains=["contoso.com"])
    receiver.start()
    try:
        upserts = [{"id": f"{n:08x}-0000-4000-8000-{n:012x}", "address": f"user{n}@contoso.com",
                    "groupIds": [os.urandom(16).hex() for _ in range(20)]} for n in range(1000)]
        body = request_body({"upsert": upserts, "delete": []})
        assert body.content is not None and len(body.content) > 4 * TimedBody.SLICE
        api = SyncApiClient(receiver.base_url, Secret("sync:secret", "SYNC_API_CREDENTIAL"), backoff_seconds=0.01)
        try:
            result = await api.post_encoded_changes("users", body, "k-length")
        finally:
            await api.aclose()
    finally:
        receiver.stop()
    assert {r.code for r in result.rejected} == {"unknown_group"}  # the receiver read the whole body: every record judged
    assert len(result.rejected) == 1000
    (_, _, headers, raw), = [r for r in receiver.raw if r[1].endswith("/changes")]
    assert raw == body.content and headers["content-length"] == str(len(body.content)) and "transfer-encoding" not in headers


# --- the environment's proxy ------------------------------------------------------------------------
def _graph(serve: Callable[[Callable[[str], Answer]], Server]) -> Server:  # noqa: F811
    holder: dict[str, Any] = {}
    holder["server"] = server = serve(empty_graph(holder))
    return server


@pytest.mark.parametrize("no_proxy,direct", [
    ("127.0.0.1", True), ("127.0.0.1:{port}", True), ("*", True), ("localhost, 127.0.0.1:{port}", True),
    (".0.0.1", True), ("example.com, *", True), ("127.0.0.1:{other}", False), ("127.0.0.2", False), ("", False),
])
def test_no_proxy_names_a_host_or_a_host_and_its_port(serve, no_proxy_env, no_proxy: str, direct: bool) -> None:  # noqa: F811
    """NO_PROXY as httpx (the client before aiohttp) and curl read it: a host, a domain suffix,
    ``host:port``, or ``*``."""
    graph = _graph(serve)
    proxy = serve(_proxied_graph)
    port = urlsplit(graph.origin).port
    no_proxy_env.setenv("HTTP_PROXY", proxy.origin)
    no_proxy_env.setenv("NO_PROXY", no_proxy.format(port=port, other=closed_port()))
    read(graph.origin)
    assert (len(graph.paths), len(proxy.paths)) == ((3, 0) if direct else (0, 3))


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "ALL_PROXY", "all_proxy"])
def test_all_proxy_stands_in_for_the_schemes_own(serve, no_proxy_env, variable: str) -> None:  # noqa: F811
    """ALL_PROXY is the proxy of every scheme without its own, as httpx and curl take it."""
    proxy = serve(_proxied_graph)
    no_proxy_env.setenv(variable, proxy.origin.removeprefix("http://"))  # no scheme: an http proxy
    read("http://graph.invalid")
    assert sorted(urlsplit(p).netloc for p in proxy.paths) == ["graph.invalid"] * 3


def test_a_socks_all_proxy_is_left_to_the_tools_that_speak_it(serve, no_proxy_env) -> None:  # noqa: F811
    """ALL_PROXY=socks5://... (a developer's setting for other tools) is no proxy these
    clients speak: the requests go as without it."""
    graph = _graph(serve)
    no_proxy_env.setenv("ALL_PROXY", f"socks5://127.0.0.1:{closed_port()}")
    read(graph.origin)
    assert len(graph.paths) == 3


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (the proxy's)."""
    return self_signed_pair(tmp_path_factory.mktemp("proxy-tls"))


class _TlsProxy(Server):
    """A proxy reached over TLS (``HTTP_PROXY=https://...``) that answers absolute-form requests."""

    def __init__(self, answer: Callable[[str], Answer], cert_file: str, key_file: str) -> None:
        self.answer = answer
        self.asked: list[Any] = []
        self.paths: list[str] = []
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)
        self._loopback = Loopback(_Handler, self, ctx)
        self.origin = self._loopback.origin


@pytest.fixture
def tls_proxy(tls_files: tuple[str, str]) -> Iterator[_TlsProxy]:
    proxy = _TlsProxy(_proxied_graph, *tls_files)
    tls_context.cache_clear()  # the process's one TLS context reads SSL_CERT_FILE when it is made
    yield proxy
    tls_context.cache_clear()
    proxy.stop()


@pytest.mark.parametrize("trusted", [True, False])
def test_an_https_proxy_carries_every_request_over_verified_tls(tls_proxy: _TlsProxy, tls_files: tuple[str, str], no_proxy_env,  # noqa: F811
                                                                trusted: bool) -> None:
    no_proxy_env.setenv("HTTP_PROXY", tls_proxy.origin)
    if trusted:
        no_proxy_env.setenv("SSL_CERT_FILE", tls_files[0])
        read("http://graph.invalid")
        assert sorted(urlsplit(p).netloc for p in tls_proxy.paths) == ["graph.invalid"] * 3
    else:  # the proxy's certificate is not trusted: the read fails, and nothing goes direct either
        with pytest.raises(IncompleteReadError, match="ConnectError"):
            read("http://graph.invalid", max_attempts=1)
        assert tls_proxy.paths == []


@pytest.mark.parametrize("trusted", [True, False])
def test_graph_and_the_sync_api_over_tls_verify_the_certificate(tls_files: tuple[str, str], no_proxy_env, trusted: bool) -> None:  # noqa: F811
    """TLS is never unverified: a certificate the process does not trust fails the request
    (a connection fault, retried, then the error), whichever client asks."""
    holder: dict[str, Any] = {}
    server = holder["server"] = _TlsProxy(empty_graph(holder), *tls_files)
    tls_context.cache_clear()
    try:
        if trusted:
            no_proxy_env.setenv("SSL_CERT_FILE", tls_files[0])
            read(server.origin)
            assert len(server.paths) == 3
        else:
            with pytest.raises(IncompleteReadError, match=r"\(ConnectError\)"):
                read(server.origin, max_attempts=2, concurrent=False)
            assert server.paths == []

            async def domains() -> None:
                api = SyncApiClient(f"{server.origin}/v1", Secret("sync:secret", "SYNC_API_CREDENTIAL"), max_attempts=2, backoff_seconds=0.01)
                try:
                    await api.domains()
                finally:
                    await api.aclose()

            with pytest.raises(SyncApiUnavailableError, match=r"\(connection fault \(ConnectError\)\)"):
                asyncio.run(domains())
            assert server.paths == []
    finally:
        tls_context.cache_clear()
        server.stop()


async def test_an_https_proxy_tunnels_to_an_https_origin(tls_files: tuple[str, str], no_proxy_env) -> None:  # noqa: F811
    """The usual deployment behind a TLS proxy: HTTPS_PROXY=https://..., an https service. The
    client opens TLS to the proxy, asks it for a CONNECT tunnel and opens TLS to the service
    inside it (both certificates verified); the proxy sees the CONNECT and never the request."""
    seen: list[bytes] = []

    async def service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(b"service: " + head.split(b"\r\n")[0])
        body = b'{"domains": ["contoso.com"]}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except OSError:
            pass
        finally:
            w.close()

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(b"proxy: " + head.split(b"\r\n")[0])
        port = int(head.split(b" ")[1].rsplit(b":", 1)[1])
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(pipe(reader, w2), pipe(r2, writer))

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*tls_files)
    origin = await asyncio.start_server(service, "127.0.0.1", 0, ssl=ctx)
    tunnel = await asyncio.start_server(proxy, "127.0.0.1", 0, ssl=ctx)
    origin_port, proxy_port = origin.sockets[0].getsockname()[1], tunnel.sockets[0].getsockname()[1]
    no_proxy_env.setenv("HTTPS_PROXY", f"https://127.0.0.1:{proxy_port}")
    no_proxy_env.setenv("SSL_CERT_FILE", tls_files[0])
    tls_context.cache_clear()
    api = SyncApiClient(f"https://127.0.0.1:{origin_port}/v1", Secret("sync:secret", "SYNC_API_CREDENTIAL"), max_attempts=1)
    try:
        assert await api.domains() == ["contoso.com"]
    finally:
        await api.aclose()
        tls_context.cache_clear()
        origin.close()
        tunnel.close()
    assert seen == [f"proxy: CONNECT 127.0.0.1:{origin_port} HTTP/1.1".encode(), b"service: GET /v1/domains HTTP/1.1"]


class _RefusingProxy(BaseHTTPRequestHandler):
    """A proxy that answers every CONNECT with 407 (the environment's proxy wants credentials)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_CONNECT(self) -> None:  # noqa: N802 - http.server's name
        self.server.owner.append(self.path)  # type: ignore[attr-defined]
        self.send_response(407, "Proxy Authentication Required")
        self.send_header("Proxy-Authenticate", 'Basic realm="corp"')
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def refusing_proxy() -> Iterator[tuple[str, list[str]]]:
    tunnels: list[str] = []
    proxy = Loopback(_RefusingProxy, tunnels)
    yield proxy.origin, tunnels
    proxy.stop()


async def test_a_proxy_that_refuses_the_tunnel_is_named_and_nothing_was_sent(refusing_proxy, no_proxy_env) -> None:  # noqa: F811
    """The request never reached the service: the error names the proxy, and a write is known
    not to have been applied."""
    origin, tunnels = refusing_proxy
    no_proxy_env.setenv("HTTPS_PROXY", origin)
    api = SyncApiClient("https://dirsync.invalid/v1", Secret("sync:secret", "SYNC_API_CREDENTIAL"), max_attempts=2, backoff_seconds=0.01)
    try:
        with pytest.raises(SyncApiUnavailableError, match=r"after 2 attempts \(connection fault \(ProxyError\)\)") as info:
            await api.post_changes("addresses", [{"address": "a@contoso.com"}], [], key="k-proxy")
    finally:
        await api.aclose()
    assert tunnels == ["dirsync.invalid:443"] * 2
    assert not info.value.maybe_applied


def test_a_graph_read_through_a_refusing_proxy_names_it(refusing_proxy, no_proxy_env) -> None:  # noqa: F811
    origin, tunnels = refusing_proxy
    no_proxy_env.setenv("HTTPS_PROXY", origin)
    with pytest.raises(IncompleteReadError, match=r"after 2 attempts \(ProxyError\)"):
        read("https://graph.invalid", max_attempts=2, concurrent=False)
    assert tunnels == ["graph.invalid:443"] * 2


# --- a configured URL that is not ASCII -------------------------------------------------------------
def _domains(path: str) -> Answer:
    return 200, {"Content-Type": "application/json"}, b'{"domains": ["contoso.com"]}'


async def test_a_sync_api_url_with_a_non_ascii_path_goes_out_encoded(serve, no_proxy_env) -> None:  # noqa: F811
    """SYNC_API_URL passes the settings check with a non-ASCII path; on the wire it is UTF-8
    percent-encoded (RFC 3986, 2.1), as httpx sent it, never raw UTF-8 in the request line."""
    service = serve(_domains)
    port = urlsplit(service.origin).port
    api = SyncApiClient(f"http://127.0.0.1:{port}/tenänt/v1", Secret("sync:secret", "SYNC_API_CREDENTIAL"), max_attempts=1)
    try:
        assert await api.domains() == ["contoso.com"]
    finally:
        await api.aclose()
    assert service.paths == ["/ten%C3%A4nt/v1/domains"]


async def test_a_sync_api_url_with_an_idn_host_goes_out_in_a_labels(refusing_proxy, no_proxy_env) -> None:  # noqa: F811
    """An internationalized host name (https: plain http goes to loopback hosts only) is asked
    of the proxy in its A-labels (RFC 3986, 3.2.2), never as raw UTF-8."""
    origin, tunnels = refusing_proxy
    no_proxy_env.setenv("HTTPS_PROXY", origin)
    api = SyncApiClient("https://bücher.invalid/v1", Secret("sync:secret", "SYNC_API_CREDENTIAL"), max_attempts=1)
    try:
        with pytest.raises(SyncApiUnavailableError):
            await api.domains()
    finally:
        await api.aclose()
    assert tunnels == ["xn--bcher-kva.invalid:443"]


def test_a_graph_base_url_with_an_idn_host_goes_out_in_a_labels(serve, no_proxy_env) -> None:  # noqa: F811
    proxy = serve(_proxied_graph)
    no_proxy_env.setenv("HTTP_PROXY", proxy.origin)
    read("http://bücher.localhost")
    assert sorted(urlsplit(p).netloc for p in proxy.paths) == ["xn--bcher-kva.localhost"] * 3
    assert {h["Host"] for h in proxy.asked} == {"xn--bcher-kva.localhost"}


# --- cancellation ------------------------------------------------------------------------------------
class _Slow(BaseHTTPRequestHandler):
    """Sends the head of an answer and a first part of its body, then waits (a slow page)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _slow(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.wfile.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"value": [')
        self.wfile.flush()
        self.server.owner.wait(10)  # type: ignore[attr-defined]
        self.close_connection = True

    do_GET = do_POST = _slow  # noqa: N815 - http.server's names


def test_a_run_cancelled_mid_request_closes_every_connection(no_proxy_env) -> None:  # noqa: F811
    """SIGTERM cancels the run's task (shared/common/shutdown.py) while pages and a write are
    in flight: both clients close, and nothing is left open for the collector to warn about."""
    import gc
    import warnings

    from shared.sources.graph import GraphSource

    release = threading.Event()
    server = Loopback(_Slow, release)

    class Sink:
        def take(self, collection: str, obj: dict[str, Any]) -> None:
            pass

    async def run() -> None:
        source = GraphSource(f"{server.origin}/v1.0", backoff_seconds=0.01)
        api = SyncApiClient(f"{server.origin}/v1", Secret("sync:secret", "SYNC_API_CREDENTIAL"), backoff_seconds=0.01)

        async def work() -> None:
            try:
                await asyncio.gather(source.read_directory(Sink()), api.post_changes("addresses", [{"address": "a@contoso.com"}], [], key="k"))
            finally:
                await source.aclose()
                await api.aclose()

        task = asyncio.ensure_future(work())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            asyncio.run(run())
            gc.collect()
    finally:
        release.set()
        server.stop()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning) or "nclosed" in str(w.message)] == []
