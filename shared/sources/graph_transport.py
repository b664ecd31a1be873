"""The Graph read's HTTP layer: one aiohttp session per source, and the checks every answer
passes before its page is taken. Requests stay on GRAPH_BASE_URL's origin, no redirect is
followed, a link is sent exactly as Graph wrote it, an answer is capped in size before and after
gzip (a truncated gzip stream fails as such), and a page must be a JSON object with a ``value``
list (parsed through orjson: shared/common/fastjson.py). Any of these failures fails the page,
and with it the read: nothing is sent from a partial read (docs/sync-rules.md, "Failures while
reading").

Why aiohttp (``shared/common/aio.py``) and not msgraph-sdk's request adapter over httpx: the
read takes the raw pages (not the SDK's typed models), so the adapter only carried the request;
per 999-user page it cost about 3 ms of CPU against about 1 ms here (docs/performance.md, "The
Graph read on aiohttp"), and a 100,000-user full read fetches 713 pages.

Errors, in one place: ``GraphHttpError`` (Graph answered with an HTTP error status; its code,
message and Retry-After are read from the answer), ``NoAnswer`` (``shared/common/aio.py``: no
answer, refused, dropped, timed out; ``fault`` names which), ``_MalformedPage`` (an answer that is not a page:
retried) and its ``_RefusedAnswer`` (an answer that must not be taken: not retried)."""

from __future__ import annotations

import uuid
from typing import Any

from isal import isal_zlib
from yarl import URL

from ..common import fastjson
from ..common.aio import aiohttp, no_answer, open_session
from ..common.netutil import parse_retry_after, same_origin
from ..common.redact import scrub
from ..common.textsafe import safe_text
from ..config.credentials import BearerToken, TokenGetter

MAX_PAGE_BYTES = 64 * 1024 * 1024  # one Graph answer, as sent and after gzip (a page of 999 objects is a few MB)
_GZIP = frozenset({"gzip", "x-gzip"})


class _MalformedPage(Exception):
    """An answer that is not a Graph page (retried: a proxy or a cut connection can cause it)."""


class _BadGzip(_MalformedPage):
    """A gzip body cut short or corrupt."""


class _RefusedAnswer(_MalformedPage):
    """An answer that is not a Graph page and must not be taken: a redirect, a request to
    another host, a body over the size caps, a compression that was not asked for. The page
    fails at once (and with it the read: nothing is sent)."""


class GraphHttpError(Exception):
    """Graph answered with HTTP ``status`` >= 400. ``code``/``message``: the OData error body's
    ``error.code`` and ``error.message`` (None when absent or not JSON); ``codes``: ``error.code``
    and the code of every nested ``innerError`` (or ``innererror``), outermost first: Graph puts
    its more specific codes there (``resyncRequired`` among them) and tells apps to look through
    every level (Microsoft Graph, "Error responses", "Code property"); ``retry_after``: the
    answer's Retry-After in seconds (None when absent or malformed)."""

    MAX_DEPTH = 16  # nested innerError levels read; a deeper body is not Graph's

    def __init__(self, status: int, body: bytes, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after
        self.code: str | None = None
        self.message: str | None = None
        self.codes: tuple[str, ...] = ()
        try:
            error = fastjson.loads(body).get("error") if body else None
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, dict):
            code, message = error.get("code"), error.get("message")
            self.code = code if isinstance(code, str) else None
            self.message = message if isinstance(message, str) else None
            codes: list[str] = []
            level: Any = error
            for _ in range(self.MAX_DEPTH):
                if not isinstance(level, dict):
                    break
                if isinstance(level.get("code"), str):
                    codes.append(level["code"])
                level = level.get("innerError", level.get("innererror"))
            self.codes = tuple(codes)

    def text(self) -> str:
        """``code: message`` for a message, at most 300 printable characters, without any
        secret it echoes (the access token sent with the request, the client secret)."""
        if self.code and self.message:
            return safe_text(scrub(f"{self.code}: {self.message}"), 300)
        return safe_text(scrub(self.code or f"HTTP {self.status}"), 300)


class GraphHttp:
    """GET Graph pages from one origin over one aiohttp session (opened at the first request,
    inside the running loop; ``aclose`` closes it).

    ``origin``: GRAPH_BASE_URL; ``token``: a ``TokenGetter`` for ``scope`` (None: no
    Authorization header, GRAPH_AUTH=none); ``timeout_seconds``: per socket read;
    ``connect_seconds``: per connection; ``max_bytes``: the cap on an answer, as sent and
    inflated. Every request asks for ``Accept-Encoding: gzip`` only (what Graph compresses
    with; aiohttp would also offer deflate and br, whose inflated size nothing would cap) and
    carries a fresh ``client-request-id`` (the id Microsoft support asks for)."""

    def __init__(self, origin: str, token: TokenGetter | None, scope: str, timeout_seconds: float = 120.0,
                 *, connect_seconds: float = 30.0, max_bytes: int = MAX_PAGE_BYTES) -> None:
        self.origin = origin
        self._timeout_seconds = timeout_seconds
        self._connect_seconds = connect_seconds
        self._max = max_bytes
        self._session: aiohttp.ClientSession | None = None
        self._bearer = None if token is None else BearerToken(token, scope)  # one sign-in for the collections that start together

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = open_session(self.origin, self._timeout_seconds, self._connect_seconds)
        return self._session

    async def page(self, url: str, prefer: str | None = None) -> dict[str, Any]:
        """The Graph page at ``url``, parsed (``get``; a body that is not a page raises
        ``_MalformedPage``)."""
        return _parse_page(await self.get(url, prefer))

    async def get(self, url: str, prefer: str | None = None) -> bytes:
        """The body of a 2xx answer to ``GET url`` (sent byte for byte as given), inflated.
        Raises ``GraphHttpError`` (status >= 400), ``NoAnswer``, ``_BadGzip`` and
        ``_RefusedAnswer``."""
        if not same_origin(url, self.origin):
            raise _RefusedAnswer(f"a request to {safe_text(URL(url).host, 100)!r} was refused: Graph reads stay on {URL(self.origin).host}")
        headers = {"Accept": "application/json", "Accept-Encoding": "gzip", "client-request-id": str(uuid.uuid4())}
        if prefer:
            headers["Prefer"] = prefer
        if self._bearer is not None:
            headers["Authorization"] = f"Bearer {await self._bearer.value()}"
        try:
            async with self._open().get(URL(url, encoded=True), headers=headers, allow_redirects=False) as resp:
                status = resp.status
                if 300 <= status < 400:
                    where = safe_text(URL(resp.headers.get("Location", "")).host or "?", 100)
                    raise _RefusedAnswer(f"Graph answered HTTP {status} (a redirect to {where!r}); redirects are not followed")
                body = await self._body(resp)
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise no_answer(exc) from None
        if status >= 400:
            raise GraphHttpError(status, body, parse_retry_after(retry_after) if retry_after is not None else None)
        return body

    async def _body(self, resp: aiohttp.ClientResponse) -> bytes:
        """The answer's body, capped as sent, inflated when it is gzip (and capped again)."""
        length = resp.content_length
        if length is not None and length > self._max:
            raise _RefusedAnswer(f"the answer is larger than {self._max} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > self._max:
                raise _RefusedAnswer(f"the answer is larger than {self._max} bytes")
            chunks.append(chunk)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        coding = resp.headers.get("Content-Encoding", "").strip().lower()
        if coding in _GZIP:
            return inflate_gzip(body, self._max)
        if coding not in ("", "identity"):
            raise _RefusedAnswer(f"Graph answered in the content coding {safe_text(coding, 40)!r}; only gzip was asked for")
        return body


def inflate_gzip(data: bytes, max_bytes: int) -> bytes:
    """A ``Content-Encoding: gzip`` body, inflated: every member (RFC 1952 allows several;
    zero padding after a member is skipped, as ``gzip.GzipFile`` does), each checked to its end
    marker, CRC-32 and length. An empty body stays empty. Raises ``_RefusedAnswer`` when it
    inflates to more than ``max_bytes`` (after inflating at most ``max_bytes + 1``) and
    ``_BadGzip`` when it is truncated or corrupt. ISA-L's inflate (``isal``), about twice as
    fast as zlib's, with zlib's interface."""
    out: list[bytes] = []
    size = 0
    rest = data
    try:
        while rest:
            member = isal_zlib.decompressobj(16 + isal_zlib.MAX_WBITS)
            chunk = member.decompress(rest, max_bytes - size + 1)
            size += len(chunk)
            if size > max_bytes:
                raise _RefusedAnswer(f"the gzip answer inflates to more than {max_bytes} bytes")
            out.append(chunk)
            if not member.eof:
                raise _BadGzip("truncated or corrupt gzip body (the stream ends before its end marker)")
            rest = member.unused_data.lstrip(b"\x00")
    except isal_zlib.error as exc:
        raise _BadGzip(f"truncated or corrupt gzip body ({exc})") from None
    return out[0] if len(out) == 1 else b"".join(out)


def _parse_page(body: bytes | None) -> dict[str, Any]:
    if not body:
        raise _MalformedPage("empty body")
    try:
        page = fastjson.loads(body)
    except ValueError:
        if body.lstrip()[:1] == b"<":
            raise _MalformedPage("body is an HTML page, not JSON (is a proxy or sign-in page in the way?)") from None
        raise _MalformedPage("body is not JSON") from None
    if not isinstance(page, dict) or not isinstance(page.get("value"), list):
        raise _MalformedPage("JSON without a 'value' list")
    return page
