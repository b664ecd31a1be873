"""The Graph client's transport and page checks: requests stay on GRAPH_BASE_URL's origin, no
redirect is followed, an answer is capped in size before and after gzip (a truncated gzip
stream fails as such), and a page must be a JSON object with a ``value`` list (parsed through
orjson: shared/common/fastjson.py). Any of these failures fails the page, and with it the read:
nothing is sent from a partial read (docs/sync-rules.md, "Failures while reading")."""

from __future__ import annotations

import gzip
import io
import zlib
from typing import Any

import httpx

from ..common import fastjson
from ..common.textsafe import safe_text


class _MalformedPage(Exception):
    pass


class _BadGzip(httpx.DecodingError):
    """A gzip body cut short or corrupt (httpx's decoder lets a truncated stream pass)."""


class _RefusedAnswer(_MalformedPage):
    """An answer that is not a Graph page: a redirect, a request to another host, a body
    over the size caps. The page fails (and with it the read: nothing is sent)."""


MAX_PAGE_BYTES = 64 * 1024 * 1024  # one Graph answer, as sent and after gzip (a page of 999 objects is a few MB)


class StrictGzipTransport(httpx.AsyncBaseTransport):
    """The Graph client's transport, under msgraph's middleware:

    * requests go only to ``origin`` (scheme, host, port of GRAPH_BASE_URL): a redirect the
      middleware would follow, or any link, to another host fails the page;
    * a 3xx answer fails the page (Graph's delta and list endpoints do not redirect; the
      middleware would otherwise follow it and take the other page as directory data);
    * the body is read whole, at most ``MAX_PAGE_BYTES`` as sent and, for
      ``Content-Encoding: gzip``, at most ``MAX_PAGE_BYTES`` inflated (a decompression bomb
      fails after that much, never held in memory), and its gzip stream is checked (end
      marker, CRC) before httpx decodes it, so a body cut by a proxy fails as such."""

    def __init__(self, inner: httpx.AsyncBaseTransport, origin: str | None = None, max_bytes: int = MAX_PAGE_BYTES) -> None:
        self._inner = inner
        self._origin = _origin(httpx.URL(origin)) if origin else None
        self._max = max_bytes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._origin is not None and _origin(request.url) != self._origin:
            raise _RefusedAnswer(f"a request to {safe_text(request.url.host, 100)!r} was refused: Graph reads stay on {self._origin[1]}")
        resp = await self._inner.handle_async_request(request)
        if 300 <= resp.status_code < 400:
            await resp.aclose()
            where = safe_text(httpx.URL(resp.headers.get("location", "")).host or "?", 100)
            raise _RefusedAnswer(f"Graph answered HTTP {resp.status_code} (a redirect to {where!r}); redirects are not followed")
        try:
            raw = bytearray()
            async for chunk in resp.stream:  # type: ignore[union-attr]
                raw += chunk
                if len(raw) > self._max:
                    raise _RefusedAnswer(f"the answer is larger than {self._max} bytes")
        finally:
            await resp.aclose()
        if resp.headers.get("content-encoding", "").strip().lower() in ("gzip", "x-gzip"):
            inflated = 0
            try:
                with gzip.GzipFile(fileobj=io.BytesIO(raw)) as fh:
                    while chunk := fh.read(1 << 20):
                        inflated += len(chunk)
                        if inflated > self._max:
                            raise _RefusedAnswer(f"the gzip answer inflates to more than {self._max} bytes")
            except (OSError, EOFError, zlib.error) as exc:
                raise _BadGzip(f"truncated or corrupt gzip body ({exc})", request=request) from None
        return httpx.Response(resp.status_code, headers=resp.headers, stream=httpx.ByteStream(bytes(raw)), extensions=resp.extensions, request=request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port or {"https": 443, "http": 80}.get(url.scheme))


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
