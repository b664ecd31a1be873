"""The Graph client's HTTP layer and page checks: the httpx client with msgraph's middleware over
our transport. Requests stay on GRAPH_BASE_URL's origin, no redirect is followed, an answer is
capped in size before and after gzip (a truncated gzip stream fails as such), and a page must be
a JSON object with a ``value`` list (parsed through orjson: shared/common/fastjson.py). Any of
these failures fails the page, and with it the read: nothing is sent from a partial read
(docs/sync-rules.md, "Failures while reading")."""

from __future__ import annotations

import zlib
from typing import Any

import httpx
from kiota_http.middleware import ParametersNameDecodingHandler
from msgraph_core import GraphClientFactory
from msgraph_core.middleware import GraphTelemetryHandler

from ..common import fastjson
from ..common.netutil import http_client, same_origin, tls_context
from ..common.textsafe import safe_text


class _MalformedPage(Exception):
    pass


class _BadGzip(httpx.DecodingError):
    """A gzip body cut short or corrupt (httpx's decoder lets a truncated stream pass)."""


class _RefusedAnswer(_MalformedPage):
    """An answer that is not a Graph page: a redirect, a request to another host, a body
    over the size caps, a compression that was not asked for. The page fails (and with it the
    read: nothing is sent)."""


MAX_PAGE_BYTES = 64 * 1024 * 1024  # one Graph answer, as sent and after gzip (a page of 999 objects is a few MB)
_GZIP = frozenset({"gzip", "x-gzip"})
_DROPPED_WITH_GZIP = frozenset({b"content-encoding", b"content-length", b"transfer-encoding"})


def graph_http_client(base_url: str, timeout_seconds: float) -> httpx.AsyncClient:
    """The httpx client under msgraph's request adapter: msgraph's own pipeline
    (``GraphClientFactory``) with the two handlers this read uses, over ``StrictGzipTransport``.

    * ``ParametersNameDecodingHandler``: the first request of a round says ``$select``/``$top``
      (kiota's URL templates write ``%24select``);
    * ``GraphTelemetryHandler``: ``client-request-id`` and ``SdkVersion`` on requests to a
      Microsoft Graph cloud (the id Microsoft support asks for).

    The default chain's other handlers carry nothing here and cost a span each per request:
    ``RetryHandler`` (``GraphSource._fetch`` is the one retry policy, Retry-After included: one
    layer, or a throttled page would cost up to (1 + 3) x max_attempts requests),
    ``RedirectHandler`` (the transport refuses every 3xx, and the client follows none),
    ``UrlReplaceHandler`` (``/users/TokenToReplace`` → ``/me``; no such path is read),
    ``UserAgentHandler`` and the two inspection handlers (no option asks for them)."""
    transport = StrictGzipTransport(httpx.AsyncHTTPTransport(verify=tls_context()), origin=base_url)
    middleware = [ParametersNameDecodingHandler(), GraphTelemetryHandler()]
    return GraphClientFactory.create_with_custom_middleware(middleware, client=http_client(timeout_seconds, transport=transport))


class StrictGzipTransport(httpx.AsyncBaseTransport):
    """The Graph client's transport, under msgraph's middleware:

    * requests go only to ``origin`` (GRAPH_BASE_URL's origin, ``netutil.same_origin``): a redirect the
      middleware would follow, or any link, to another host fails the page;
    * a 3xx answer fails the page (Graph's delta and list endpoints do not redirect; a client
      that followed it would take the other page as directory data);
    * every request asks for ``Accept-Encoding: gzip`` only (what Graph compresses with, and
      the one coding checked here; httpx would also offer deflate and zstd, whose inflated size
      nothing would cap), and an answer in any other coding fails the page;
    * the body is read whole, at most ``max_bytes`` as sent and, for ``Content-Encoding:
      gzip``, at most ``max_bytes`` inflated (a decompression bomb fails after that much, never
      held in memory). A gzip body is inflated here, once, and checked whole (every member's
      end marker, CRC-32 and length), so a body cut by a proxy fails as such; httpx is handed
      the inflated body without the ``Content-Encoding`` header and does not inflate it again."""

    def __init__(self, inner: httpx.AsyncBaseTransport, origin: str | None = None, max_bytes: int = MAX_PAGE_BYTES) -> None:
        self._inner = inner
        self._origin = origin
        self._max = max_bytes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._origin is not None and not same_origin(str(request.url), self._origin):
            raise _RefusedAnswer(f"a request to {safe_text(request.url.host, 100)!r} was refused: Graph reads stay on {httpx.URL(self._origin).host}")
        request.headers["Accept-Encoding"] = "gzip"
        resp = await self._inner.handle_async_request(request)
        if 300 <= resp.status_code < 400:
            await resp.aclose()
            where = safe_text(httpx.URL(resp.headers.get("location", "")).host or "?", 100)
            raise _RefusedAnswer(f"Graph answered HTTP {resp.status_code} (a redirect to {where!r}); redirects are not followed")
        try:
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.stream:  # type: ignore[union-attr]
                size += len(chunk)
                if size > self._max:
                    raise _RefusedAnswer(f"the answer is larger than {self._max} bytes")
                chunks.append(chunk)
        finally:
            await resp.aclose()
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        headers: Any = resp.headers
        coding = headers.get("content-encoding", "").strip().lower()
        if coding in _GZIP:
            body = inflate_gzip(body, self._max, request)
            raw = [(k, v) for k, v in headers.raw if k.lower() not in _DROPPED_WITH_GZIP]
            headers = [*raw, (b"Content-Length", str(len(body)).encode())]
        elif coding not in ("", "identity"):
            raise _RefusedAnswer(f"Graph answered in the content coding {safe_text(coding, 40)!r}; only gzip was asked for")
        return httpx.Response(resp.status_code, headers=headers, stream=httpx.ByteStream(body), extensions=resp.extensions, request=request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def inflate_gzip(data: bytes, max_bytes: int, request: httpx.Request | None = None) -> bytes:
    """A ``Content-Encoding: gzip`` body, inflated: every member (RFC 1952 allows several;
    zero padding after a member is skipped, as ``gzip.GzipFile`` does), each checked to its end
    marker, CRC-32 and length. An empty body stays empty. Raises ``_RefusedAnswer`` when it
    inflates to more than ``max_bytes`` (after inflating at most ``max_bytes + 1``) and
    ``_BadGzip`` (an ``httpx.DecodingError``) when it is truncated or corrupt."""
    out: list[bytes] = []
    size = 0
    rest = data
    try:
        while rest:
            member = zlib.decompressobj(16 + zlib.MAX_WBITS)
            chunk = member.decompress(rest, max_bytes - size + 1)
            size += len(chunk)
            if size > max_bytes:
                raise _RefusedAnswer(f"the gzip answer inflates to more than {max_bytes} bytes")
            out.append(chunk)
            if not member.eof:
                raise _BadGzip("truncated or corrupt gzip body (the stream ends before its end marker)", request=request)
            rest = member.unused_data.lstrip(b"\x00")
    except zlib.error as exc:
        raise _BadGzip(f"truncated or corrupt gzip body ({exc})", request=request) from None
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
