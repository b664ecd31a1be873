"""aiohttp, as the Graph read and the sync API client use it: one session per client, talking to
one origin; no redirect followed, no cookie kept, no content coding but gzip asked for (each
client inflates and caps gzip itself), the proxy the environment names for that origin looked
up once, and every way a request can get no answer named in one vocabulary.

Why aiohttp: its HTTP parser is llhttp's C code, and a request costs about a third of the CPU of
httpx's (docs/performance.md, "The Graph read on aiohttp"); the clients send thousands of
requests per full update."""

from __future__ import annotations

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from .. import __version__
from .netutil import tls_context

# Who is asking, on every request (Microsoft Graph's guidance: a User-Agent that names the app).
USER_AGENT = f"entra-dirsync/{__version__} aiohttp/{aiohttp.__version__}"


def open_session(origin: str, timeout_seconds: float, connect_seconds: float, headers: dict[str, str] | None = None) -> aiohttp.ClientSession:
    """A session for requests to ``origin``. ``timeout_seconds``: the wait for each read of an
    answer; ``connect_seconds``: for a connection (TLS included); ``headers`` go on every
    request, with ``User-Agent: USER_AGENT``. HTTPS_PROXY, HTTP_PROXY and NO_PROXY are honoured as httpx and azure-core honour
    them, looked up here once (aiohttp's ``trust_env`` would look them up, and read
    ``~/.netrc``, in a worker thread at every request). Call it inside the running loop."""
    try:
        proxy, proxy_auth = get_env_proxy_for_url(URL(origin))
    except LookupError:
        proxy, proxy_auth = None, None
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=tls_context(), limit=0),
        timeout=aiohttp.ClientTimeout(total=None, connect=connect_seconds, sock_read=timeout_seconds),
        headers={"User-Agent": USER_AGENT, **(headers or {})}, auto_decompress=False, trust_env=False, proxy=proxy, proxy_auth=proxy_auth,
        cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("Accept-Encoding",),
    )


class NoAnswer(Exception):
    """A request that got no (complete) answer. ``fault``: ``ConnectError`` (refused, no route,
    DNS, TLS), ``ConnectTimeout``, ``ReadTimeout`` or ``RemoteProtocolError`` (the connection
    dropped, or the answer broke off or was not HTTP). ``sent``: False when the request never
    reached the server (a connection fault), so it cannot have been applied."""

    def __init__(self, fault: str, sent: bool) -> None:
        super().__init__(fault)
        self.fault = fault
        self.sent = sent


def no_answer(exc: BaseException) -> NoAnswer:
    """``NoAnswer`` for an aiohttp exception or a ``TimeoutError`` (aiohttp's own timeouts
    derive from it)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return NoAnswer("ConnectTimeout", sent=False)
    if isinstance(exc, aiohttp.ClientConnectorError):  # before ClientOSError: it is one
        return NoAnswer("ConnectError", sent=False)
    if isinstance(exc, TimeoutError):
        return NoAnswer("ReadTimeout", sent=True)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError, aiohttp.ClientOSError)):
        return NoAnswer("RemoteProtocolError", sent=True)
    return NoAnswer(type(exc).__name__, sent=True)
