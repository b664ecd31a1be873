"""aiohttp, as the Graph read and the sync API client use it: one session per client, talking to
one origin; no redirect followed, no cookie kept, no content coding but gzip asked for (each
client inflates and caps gzip itself), the proxy the environment names for that origin looked
up once, and every way a request can get no answer named in one vocabulary.

Why aiohttp: its HTTP parser is llhttp's C code, and a request costs about a third of the CPU of
httpx's (docs/performance.md, "The Graph read on aiohttp"); the clients send thousands of
requests per full update."""

from __future__ import annotations

import asyncio
from urllib.request import getproxies, proxy_bypass

from yarl import URL

from .. import __version__
from .netutil import default_cas_deferred, tls_context

with default_cas_deferred():  # aiohttp's own default contexts load the CA bundle only if ever used
    import aiohttp  # the product's modules take aiohttp from here, so this import is the first

# Who is asking, on every request (Microsoft Graph's guidance: a User-Agent that names the app).
USER_AGENT = f"entra-dirsync/{__version__} aiohttp/{aiohttp.__version__}"


def open_session(origin: str, timeout_seconds: float, connect_seconds: float, headers: dict[str, str] | None = None) -> aiohttp.ClientSession:
    """A session for requests to ``origin``. ``timeout_seconds``: the wait for each read of an
    answer; ``connect_seconds``: for a connection (TLS included); ``headers`` go on every
    request, with ``User-Agent: USER_AGENT``. HTTPS_PROXY, HTTP_PROXY and NO_PROXY are honoured as httpx honoured
    them (``env_proxy``), looked up here once (aiohttp's ``trust_env`` would look them up, and read
    ``~/.netrc``, in a worker thread at every request). Call it inside the running loop."""
    proxy, proxy_auth = env_proxy(origin)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=tls_context(), limit=0),
        timeout=aiohttp.ClientTimeout(total=None, connect=connect_seconds, sock_read=timeout_seconds),
        headers={"User-Agent": USER_AGENT, **(headers or {})}, auto_decompress=False, trust_env=False, proxy=proxy, proxy_auth=proxy_auth,
        cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("Accept-Encoding",),
    )


def wire_url(url: str) -> str:
    """A configured URL (GRAPH_BASE_URL, SYNC_API_URL) as it goes on the wire: an
    internationalized host in its A-labels, a path or query that is not ASCII percent-encoded as
    UTF-8 (RFC 3986, 3.2.2 and 2.1), escapes already there kept. The clients then send their
    URLs as they are (``URL(..., encoded=True)``: a Graph link byte for byte), so a configured
    URL is put through this once, or aiohttp would send raw UTF-8 in the request line and Host."""
    return str(URL(url))


def env_proxy(origin: str) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """The proxy the environment names for ``origin``'s scheme (HTTPS_PROXY, HTTP_PROXY, else
    an http(s) ALL_PROXY; a value without a scheme is an http proxy) and the credentials in its URL, or
    ``(None, None)``: none named, or NO_PROXY names the origin's host, a domain it is in, its
    host and port (``127.0.0.1:8443``), or holds ``*``. An ``https://`` proxy is reached over
    TLS, its certificate verified like any other (aiohttp's own lookup drops one with a
    warning, and the requests would go past the proxy, direct). As httpx read them."""
    url = URL(origin)
    proxies = getproxies()
    if "*" in (name.strip() for name in proxies.get("no", "").split(",")):
        return None, None
    if proxy_bypass(f"{url.host}:{url.port}"):  # urllib compares the host alone and host:port
        return None, None
    value = proxies.get(url.scheme) or _http_proxy(proxies.get("all"))
    if not value:
        return None, None
    return aiohttp.helpers.strip_auth_from_url(URL(value if "://" in value else f"http://{value}"))


def _http_proxy(value: str | None) -> str | None:
    """ALL_PROXY when it names an http(s) proxy; a socks one (a common ALL_PROXY for other
    tools) is one neither client speaks, and is left to them."""
    if value and ("://" not in value or value.partition("://")[0].lower() in ("http", "https")):
        return value
    return None


class _WriteStalled(TimeoutError):
    """The peer took no part of a request body for the write timeout."""


class TimedBody(aiohttp.BytesPayload):
    """A request body written a slice at a time, each slice within ``seconds`` (httpx's write
    timeout): aiohttp arms its read timeout only once the whole body is written (aiohttp#7206),
    so a peer that stops reading would hold the request, and the run, for ever. A stall raises
    ``TimeoutError`` (``NoAnswer`` ``WriteTimeout``)."""

    SLICE = 64 * 1024

    def __init__(self, value: bytes, seconds: float, content_type: str = "application/json") -> None:
        super().__init__(value, content_type=content_type)
        self._seconds = seconds

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: aiohttp.abc.AbstractStreamWriter, content_length: int | None) -> None:
        data = memoryview(self._value)[:content_length]
        for start in range(0, len(data), self.SLICE):
            try:
                async with asyncio.timeout(self._seconds):
                    await writer.write(data[start:start + self.SLICE])
            except TimeoutError:
                raise _WriteStalled from None


class NoAnswer(Exception):
    """A request that got no (complete) answer. ``fault``: ``ConnectError`` (refused, no route,
    DNS, TLS), ``ProxyError`` (the proxy refused the tunnel: the request never left it),
    ``ConnectTimeout``, ``ReadTimeout``, ``WriteTimeout`` (``TimedBody``) or ``RemoteProtocolError`` (the connection
    dropped, or the answer broke off or was not HTTP). ``sent``: False when the request never
    reached the server whole (a connection fault, a refused tunnel, a stalled body), so it cannot
    have been applied."""

    def __init__(self, fault: str, sent: bool) -> None:
        super().__init__(fault)
        self.fault = fault
        self.sent = sent


def no_answer(exc: BaseException) -> NoAnswer:
    """``NoAnswer`` for an aiohttp exception or a ``TimeoutError`` (aiohttp's own timeouts
    derive from it)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return NoAnswer("ConnectTimeout", sent=False)
    if isinstance(exc, aiohttp.ClientHttpProxyError):  # before ClientResponseError: it is one
        return NoAnswer("ProxyError", sent=False)
    if isinstance(exc, aiohttp.ClientConnectorError):  # before ClientOSError: it is one
        return NoAnswer("ConnectError", sent=False)
    if isinstance(exc, _WriteStalled):  # the body's end never left this process: the peer cannot have taken the request
        return NoAnswer("WriteTimeout", sent=False)
    if isinstance(exc, TimeoutError):
        return NoAnswer("ReadTimeout", sent=True)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError, aiohttp.ClientOSError)):
        return NoAnswer("RemoteProtocolError", sent=True)
    return NoAnswer(type(exc).__name__, sent=True)
