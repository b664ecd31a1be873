"""Read Exchange Online recipients: the one adapter for the Exchange admin endpoint.

There is no public Exchange Online REST API that lists recipients (the official Exchange
Online Admin API v2.0, in preview since November 2025, has none). The Exchange Online
PowerShell module (v3) posts each cmdlet to an admin endpoint, and this module does the
same, for one cmdlet (docs/sync-rules.md, "The Exchange Online
source")::

    POST {EXO_BASE_URL}/adminapi/beta/{GRAPH_TENANT_ID}/InvokeCommand
    Authorization: Bearer <token for {EXO_BASE_URL}/.default>   (none with GRAPH_AUTH=none)
    Prefer: odata.maxpagesize=1000
    X-AnchorMailbox: APP:SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}@{GRAPH_TENANT_ID}
    {"CmdletInput": {"CmdletName": "Get-Recipient",
                     "Parameters": {"ResultSize": "Unlimited", "RecipientTypeDetails": [types...]}}}

    200 {"value": [recipient, ...], "@odata.nextLink": "<url>"}

The next page is read by POSTing the same body to ``@odata.nextLink``, until there is none.
One request is in flight at a time. Throttling (429, or a 503, or an answer that says the
tenant exceeded the maximum number of concurrent requests) waits ``Retry-After`` or backs
off; other 5xx, dropped connections and malformed pages (not JSON, no ``value`` list, a
recipient without a ``Guid``) are retried with backoff; a recipient's odd-typed field is its
data, not a malformed page: warned about with its Guid and read as Graph's would be. 401 and 403
raise ``ExchangeAuthError`` naming ``Exchange.ManageAsApp``, the directory role, and
Exchange's own ``x-ms-diagnostics`` reason when the answer has one. An answer of more than
``MAX_PAGE_BYTES`` (after gzip) or a nextLink that is no URL fails at once. A page that still
fails raises ``ExchangeError``: the run fails and sends nothing.

Everything Exchange-specific stays here, so the endpoint can be swapped for another (a
documented API, when one lists recipients) without touching the rest of the engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin

import httpx

from ..common.errors import ExchangeAuthError, ExchangeError
from ..common.netutil import http_client, jittered_backoff, no_answer_hint, parse_retry_after, same_origin
from ..common.redact import scrub
from ..config.credentials import BearerToken, TokenGetter, token_getter_for
from ..model.fold import RECIPIENT_FIELDS
from .base import EntrySink, ListSink, SourceRead

log = logging.getLogger("shared.exchange")  # the name its log lines have always carried

PAGE_SIZE = 1000
ANCHOR_MAILBOX = "APP:SystemMailbox{{bb558c35-97f1-4cb9-8ff7-d53741dc928c}}@{tenant}"
SOURCE = "Exchange Online"
CONCURRENCY_THROTTLE = re.compile(r"maximum\s+number\s+of\s+concurrent\s+requests", re.IGNORECASE)
MAX_RETRY_AFTER_SECONDS = 300.0
MAX_PAGE_BYTES = 64 * 1024 * 1024  # one answer, as sent and after gzip (a page of 1,000 recipients is a few MB), as Graph's
# What the engine keeps of a recipient (the rest of Get-Recipient's ~100 properties is dropped).
KEPT_PROPERTIES = ("Guid", "RecipientTypeDetails", "PrimarySmtpAddress", "EmailAddresses", "DisplayName", "ExternalDirectoryObjectId")

@dataclass
class ExoStats:
    requests: int = 0  # every HTTP attempt, retries included (the summary's exoRequests)
    retries: int = 0
    pages: int = 0
    recipients: int = 0


def invoke_body(types: Sequence[str]) -> bytes:
    """The InvokeCommand body for Get-Recipient over ``types``, as the exact bytes sent on
    every page."""
    doc = {"CmdletInput": {"CmdletName": "Get-Recipient", "Parameters": {"ResultSize": "Unlimited", "RecipientTypeDetails": list(types)}}}
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


class _Retry(Exception):
    """One attempt failed in a way that is worth another: ``wait`` seconds from Retry-After
    (None: back off), ``why`` for the log and the final error."""

    def __init__(self, why: str, wait: float | None = None) -> None:
        super().__init__(why)
        self.why = why
        self.wait = wait


class ExchangeSource:
    """Reads every recipient of the configured types, page by page, one request at a time.

    ``base_url``: EXO_BASE_URL without a trailing slash; ``tenant``: GRAPH_TENANT_ID;
    ``token``: None for GRAPH_AUTH=none; ``backoff_seconds``: base of the exponential
    backoff; ``max_attempts``: attempts per page (the first included); ``max_bytes``: the
    largest answer taken, after decompression."""

    def __init__(
        self,
        base_url: str,
        tenant: str,
        types: Sequence[str],
        *,
        token: TokenGetter | None,
        backoff_seconds: float = 1.0,
        max_attempts: int = 6,
        timeout: float = 100.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_bytes: int = MAX_PAGE_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.tenant = tenant
        self.types = tuple(types)
        self.scope = f"{self.base_url}/.default"
        self.token = None if token is None else BearerToken(token, self.scope)
        self.backoff_seconds = backoff_seconds
        self.max_attempts = max(1, max_attempts)
        self.max_bytes = max_bytes
        self.stats = ExoStats()
        self._gate = asyncio.Lock()  # one Exchange request in flight at a time
        self._client = http_client(timeout, connect_seconds=timeout, transport=transport)

    @property
    def url(self) -> str:
        return f"{self.base_url}/adminapi/beta/{quote(self.tenant, safe='')}/InvokeCommand"

    async def aclose(self) -> None:
        await self._client.aclose()

    # --- the source interface (shared/sources/base.py) ------------------------------------
    name = SOURCE
    collections = ("recipients",)
    delta = False  # no delta query: every read is complete and replaces the recipients held before

    async def read(self, sink: EntrySink, links: Mapping[str, str] | None = None) -> SourceRead:
        """Every recipient of the configured types, each reduced to ``KEPT_PROPERTIES`` and
        handed to ``sink`` as a ``recipients`` entry, page by page in arrival order
        (``links`` is ignored: a snapshot source has none).

        Raises ``ExchangeAuthError`` (401/403) or ``ExchangeError`` (a page that failed for
        good, a refused request, a nextLink that is no URL or leaves EXO_BASE_URL's origin)."""
        body = invoke_body(self.types)
        url: str | None = self.url
        seen: set[str] = set()
        while url is not None:
            if url in seen:
                raise ExchangeError("Exchange Online Get-Recipient: a page's @odata.nextLink repeats an earlier page; the read stopped, nothing was sent")
            seen.add(url)
            page = await self._page(url, body)
            self.stats.pages += 1
            for rec in page["value"]:
                _warn_odd(rec)
                sink.take("recipients", {k: rec.get(k) for k in KEPT_PROPERTIES})
                self.stats.recipients += 1
            link = page.get("@odata.nextLink")
            try:
                url = urljoin(url, link) if link is not None else None  # a relative link resolves against this page's URL
                if url is not None:
                    httpx.URL(url)
            except (ValueError, httpx.InvalidURL):
                raise ExchangeError("Exchange Online Get-Recipient: a page's @odata.nextLink is not a valid URL; the read stopped, nothing was sent") from None
            if url is not None and not same_origin(url, self.base_url):
                # The bearer token goes with every page: never to another host.
                raise ExchangeError("Exchange Online Get-Recipient: @odata.nextLink points outside EXO_BASE_URL; the read stopped, nothing was sent")
        log.info("read: Exchange Online, %d recipients of %s in %d pages", self.stats.recipients, ",".join(self.types), self.stats.pages)
        return SourceRead(SOURCE, True, {}, self.stats.requests, self.stats.retries,
                          {"recipients": self.stats.recipients, "pages": self.stats.pages})

    async def read_recipients(self) -> list[dict[str, Any]]:
        """Every recipient as a list (``read`` into a list; same errors)."""
        out = ListSink()
        await self.read(out)
        return out.entries

    # --- one page, with retries ----------------------------------------------------------
    async def _page(self, url: str, body: bytes) -> dict[str, Any]:
        last = ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                async with self._gate:
                    return await self._attempt(url, body)
            except _Retry as r:
                last = r.why
                if attempt == self.max_attempts:
                    break
                self.stats.retries += 1
                wait = r.wait if r.wait is not None else jittered_backoff(self.backoff_seconds, attempt, cap=60.0)
                log.warning("Exchange Online Get-Recipient: %s; retry %d of %d in %.1f s", r.why, attempt, self.max_attempts - 1, wait)
                await asyncio.sleep(wait)
        hint = ""
        if last.startswith("connection failed"):  # never an answer: the setting or the network
            hint = f"; {no_answer_hint(self.base_url, 'EXO_BASE_URL')}"
        raise ExchangeError(
            f"Exchange Online Get-Recipient: a page could not be read after {self.max_attempts} attempts ({last}); "
            f"the run failed and nothing was sent{hint}"
        )

    async def _attempt(self, url: str, body: bytes) -> dict[str, Any]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Prefer": f"odata.maxpagesize={PAGE_SIZE}",
            "X-AnchorMailbox": ANCHOR_MAILBOX.format(tenant=self.tenant),
        }
        if self.token is not None:
            headers["Authorization"] = f"Bearer {await self.token.value()}"
        self.stats.requests += 1
        try:
            async with self._client.stream("POST", url, content=body, headers=headers) as resp:
                status = resp.status_code
                if status in (401, 403):
                    raise ExchangeAuthError(auth_message(status, resp.headers.get("x-ms-diagnostics")))
                content = await _read_capped(resp, self.max_bytes)
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise _Retry(f"connection failed ({type(exc).__name__})") from None
        text = content.decode("utf-8", "replace") if status >= 400 else ""
        if status == 429 or (status >= 400 and CONCURRENCY_THROTTLE.search(text)):
            raise _Retry(f"throttled (HTTP {status})", _retry_after(resp))
        if status == 503:
            raise _Retry("HTTP 503", _retry_after(resp))
        if status >= 500:
            raise _Retry(f"HTTP {status}")
        if status != 200:
            raise ExchangeError(f"Exchange Online refused Get-Recipient (HTTP {status}{_error_text(text)}); nothing was sent")
        try:
            page = json.loads(content)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise _Retry("a malformed page (not JSON)") from None
        problem = _page_problem(page)
        if problem:
            raise _Retry(f"a malformed page ({problem})")
        return page


async def _read_capped(resp: httpx.Response, cap: int) -> bytes:
    """The answer's body, decompressed, refused (``ExchangeError``, no retry: hostile, not
    transient) as soon as it is, or inflates to, more than ``cap`` bytes."""
    length = resp.headers.get("Content-Length", "")
    too_big = f"Exchange Online answered Get-Recipient with more than {cap} bytes (decompressed); the read stopped, nothing was sent"
    if length.isdigit() and int(length) > cap:
        raise ExchangeError(too_big)
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        size += len(chunk)
        if size > cap:
            raise ExchangeError(too_big)
        chunks.append(chunk)
    return b"".join(chunks)


def auth_message(status: int, diagnostics: str | None) -> str:
    """The 401/403 message: what the app needs, who grants it, and Exchange's own reason."""
    text = (
        f"Exchange Online refused the app (HTTP {status}): it needs the application permission Exchange.ManageAsApp "
        "(Office 365 Exchange Online) with admin consent, and an Entra directory role that Exchange accepts for app-only "
        "access (Global Reader by default), assigned to the app's service principal by a Privileged Role Administrator "
        "(docs/deployment.md). Both take a while to propagate after they are granted: a first run may get 403; run again later."
    )
    if diagnostics:
        reason = _printable(scrub(diagnostics))[:300]
        text += f" Exchange says (x-ms-diagnostics): {reason}"
    return text


def _printable(value: str) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in value).strip()


def _retry_after(resp: httpx.Response) -> float | None:
    raw = resp.headers.get("Retry-After")
    if raw is None:
        return None
    wait = parse_retry_after(raw)
    return None if wait is None else min(wait, MAX_RETRY_AFTER_SECONDS)


def _error_text(text: str) -> str:
    """Exchange's error code and message from an OData error body, shortened and scrubbed."""
    try:
        err = json.loads(text).get("error") or {}
        code, message = err.get("code"), err.get("message")
    except (ValueError, AttributeError, TypeError, RecursionError):
        return ""
    parts = [str(p) for p in (code, message) if isinstance(p, str) and p]
    return (": " + _printable(scrub(": ".join(parts)))[:300]) if parts else ""


def _page_problem(page: Any) -> str | None:
    if not isinstance(page, dict):
        return "the body is not a JSON object"
    value = page.get("value")
    if not isinstance(value, list):
        return "no 'value' list"
    link = page.get("@odata.nextLink")
    if link is not None and (not isinstance(link, str) or not link):
        return "'@odata.nextLink' is not a URL"
    for rec in value:
        if not isinstance(rec, dict):
            return "a recipient that is not an object"
        guid = rec.get("Guid")
        if not isinstance(guid, str) or not guid.strip():
            return "a recipient without a Guid"  # nothing to know it by from one read to the next
    return None


def _warn_odd(rec: dict[str, Any]) -> None:
    """A recipient's odd-typed fields are its data, not a broken page: it offers the candidates
    it can, as a Graph object whose ``proxyAddresses`` is not a list offers none of them, with
    a warning naming its Guid, and the run goes on (docs/sync-rules.md: exactly the rules of
    Graph candidates; an invalid value never fails the run)."""
    for name, kind in RECIPIENT_FIELDS.items():  # the types the rules read them with (shared/model/fold.py)
        value = rec.get(name)
        if value is not None and not isinstance(value, kind):
            what = "a list" if kind is list else "a string"
            log.warning("Exchange Online recipient %s: %s is not %s (%s), so it is ignored", _printable(rec["Guid"])[:64], name, what, type(value).__name__)


__all__ = ["ExchangeSource", "ExoStats", "SOURCE", "auth_message", "invoke_body", "token_getter_for"]
