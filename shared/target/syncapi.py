"""The one adapter that speaks the email-security directory sync API (docs/sync-api.md).

Transport rules live here: https (or loopback http), gzip for large bodies, Idempotency-Key on
every write, retries with Retry-After/backoff on 429, 5xx and connection faults, and a clear
error for everything the contract says not to retry. What to send, and in which order, is
the engine's business."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import logging
import math
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from ..common.errors import (
    PayloadTooLargeError,
    SyncApiAuthError,
    SyncApiError,
    SyncApiProtocolError,
    SyncApiRequestError,
    SyncApiUnavailableError,
)
from ..common.netutil import http_client, jittered_backoff, parse_retry_after, url_problem
from ..common.redact import Secret, scrub
from ..model.records import to_api_record

log = logging.getLogger("shared.syncapi")  # the name its log lines have always carried

GZIP_ABOVE_BYTES = 16 * 1024
MAX_RETRY_AFTER_SECONDS = 300.0
MAX_BACKOFF_SECONDS = 30.0
# An answer larger than this (after gzip) is not one the contract can produce (a page is at
# most 5,000 records): refuse it rather than let a broken or hostile peer exhaust memory.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
CREDENTIAL_HINT = "SYNC_API_CREDENTIAL (or the Key Vault secret named by SYNC_API_CREDENTIAL_NAME)"


@dataclass
class Rejection:
    key: Any
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "code": self.code, "message": self.message}


@dataclass
class WriteResult:
    count: int  # applied / received / committed count, as the endpoint names it
    rejected: list[Rejection] = field(default_factory=list)


def auth_header(credential: Secret) -> str:
    """``user:password`` is sent as Basic, a bare token as Bearer."""
    value = credential.reveal()
    if ":" in value:
        return "Basic " + base64.b64encode(value.encode("utf-8")).decode("ascii")
    return "Bearer " + value


def _changes_document(upsert: list[dict[str, Any]], delete: list[str]) -> dict[str, Any]:
    return {"upsert": upsert, "delete": delete}


def changes_body(dataset: str, upserts: list[tuple[str, tuple]], deletes: list[str]) -> dict[str, Any]:
    """The body of ``POST /datasets/{dataset}/changes`` for canonical records ``(key, value)``
    and deleted keys (docs/sync-api.md); the caller hashes it into the Idempotency-Key and
    passes its two lists to ``post_changes``."""
    return _changes_document([to_api_record(dataset, k, v) for k, v in upserts], list(deletes))


def replacement_body(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The body of ``POST .../replacements/{id}/records`` (docs/sync-api.md)."""
    return {"records": records}


class SyncApiClient:
    def __init__(
        self,
        base_url: str,
        credential: Secret,
        *,
        max_attempts: int = 6,
        backoff_seconds: float = 0.5,
        timeout_seconds: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        problem = url_problem(base_url)
        if problem:
            raise SyncApiError(f"SYNC_API_URL {problem}")
        self.base_url = base_url.rstrip("/")
        # Where the credential lives and how to replace it, for the 401/403 messages.
        self.credential_where = credential.where
        self.credential_fix = credential.fix or f"check {CREDENTIAL_HINT}"
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.requests = 0
        # Only gzip is accepted, so that every answer is decoded here, strictly (see _read_body).
        headers = {"Authorization": auth_header(credential), "Accept": "application/json", "Accept-Encoding": "gzip"}
        self._http = http_client(timeout_seconds, headers=headers, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> SyncApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- endpoints -----------------------------------------------------------------------
    async def domains(self) -> list[str]:
        doc = await self._call("GET", "/domains")
        domains = doc.get("domains")
        if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
            raise SyncApiProtocolError("GET /domains answered without a 'domains' list of strings")
        return [d.lower() for d in domains]

    async def records(self, dataset: str, page_size: int = 5000) -> AsyncIterator[list[dict[str, Any]]]:
        token: str | None = None
        seen_tokens: set[str] = set()
        while True:
            path = f"/datasets/{dataset}/records?pageSize={page_size}"
            if token:
                path += "&pageToken=" + quote(token, safe="")
            doc = await self._call("GET", path)
            records = doc.get("records")
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise SyncApiProtocolError(f"GET {dataset} records answered without a 'records' list")
            yield records
            token = doc.get("nextPageToken")
            if token is None:
                return
            if not isinstance(token, str) or token in seen_tokens:
                raise SyncApiProtocolError(f"GET {dataset} records answered a bad or repeated nextPageToken")
            seen_tokens.add(token)

    async def post_changes(self, dataset: str, upsert: list[dict[str, Any]], delete: list[str], key: str) -> WriteResult:
        doc = await self._call("POST", f"/datasets/{dataset}/changes", _changes_document(upsert, delete), key=key)
        return _write_result(doc, "applied", f"POST {dataset} changes")

    async def create_replacement(self, dataset: str) -> str:
        doc = await self._call("POST", f"/datasets/{dataset}/replacements", {}, expect=(200, 201))
        rid = doc.get("replacementId")
        if not isinstance(rid, str) or not rid:
            raise SyncApiProtocolError(f"POST {dataset} replacements answered without a replacementId")
        return rid

    async def post_replacement_records(self, dataset: str, rid: str, records: list[dict[str, Any]], key: str) -> WriteResult:
        doc = await self._call(
            "POST", f"/datasets/{dataset}/replacements/{quote(rid, safe='')}/records", replacement_body(records), key=key
        )
        return _write_result(doc, "received", f"POST {dataset} replacement records")

    async def commit_replacement(self, dataset: str, rid: str) -> WriteResult:
        doc = await self._call("POST", f"/datasets/{dataset}/replacements/{quote(rid, safe='')}/commit", {})
        return _write_result(doc, "count", f"commit of the {dataset} replacement")

    async def abandon_replacement(self, dataset: str, rid: str) -> None:
        await self._call("DELETE", f"/datasets/{dataset}/replacements/{quote(rid, safe='')}", None, expect=(204, 200, 404))

    # --- transport -----------------------------------------------------------------------
    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        expect: tuple[int, ...] = (200,),
    ) -> dict[str, Any]:
        headers: dict[str, str] = {}
        content: bytes | None = None
        if body is not None:
            raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            headers["Content-Type"] = "application/json"
            if len(raw) > GZIP_ABOVE_BYTES:
                content = gzip.compress(raw, compresslevel=5, mtime=0)
                headers["Content-Encoding"] = "gzip"
            else:
                content = raw
        if key is not None:
            headers["Idempotency-Key"] = key
        what = f"{method} {path.split('?')[0]}"
        last = ""
        uncertain = False  # an attempt may have been applied without our seeing the answer
        for attempt in range(1, self.max_attempts + 1):
            self.requests += 1
            delay: float
            try:
                request = self._http.build_request(method, self.base_url + path, content=content, headers=headers)
                resp = await self._http.send(request, stream=True)
                try:
                    raw = await _read_raw(resp, what)
                except SyncApiError as exc:  # an answer too large to read: not a definite refusal
                    exc.maybe_applied = not 400 <= resp.status_code < 500
                    raise
                finally:
                    await resp.aclose()
            except httpx.TransportError as exc:
                last = f"connection fault ({type(exc).__name__})"
                uncertain |= not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
                delay = jittered_backoff(self.backoff_seconds, attempt, MAX_BACKOFF_SECONDS)
            else:
                if resp.status_code in expect:
                    try:
                        return _json_body(resp, raw, what) if resp.status_code != 204 else {}
                    except SyncApiError as exc:
                        # The request was accepted but its answer cannot be read (not JSON, the
                        # wrong shape, a truncated gzip): it may have been applied.
                        exc.maybe_applied = True
                        raise
                if resp.status_code in (429, 503):
                    last = f"HTTP {resp.status_code}"
                    # A missing or malformed Retry-After falls back to this client's own backoff
                    # (it used to be a fixed 2 s, which ignored backoff_seconds).
                    hinted = _retry_after(resp, what) if "retry-after" in resp.headers else None
                    delay = jittered_backoff(self.backoff_seconds, attempt, MAX_BACKOFF_SECONDS) if hinted is None else hinted
                elif resp.status_code >= 500:
                    last = f"HTTP {resp.status_code}"
                    uncertain |= resp.status_code in (500, 502, 504)  # a gateway's, or a failure after the work
                    delay = jittered_backoff(self.backoff_seconds, attempt, MAX_BACKOFF_SECONDS)
                else:
                    fatal = _fatal(resp, raw, what, self)
                    # Only a 4xx is a definite refusal; any other answer (an unexpected 2xx, a
                    # redirect) may stand for a request that was applied.
                    fatal.maybe_applied = not 400 <= resp.status_code < 500
                    raise fatal
            if attempt < self.max_attempts:
                log.info("sync API %s: %s; retry %d in %.1f s", what, last, attempt, delay)
                await asyncio.sleep(delay)
        error = SyncApiUnavailableError(f"sync API {what} failed after {self.max_attempts} attempts ({last})")
        error.maybe_applied = uncertain
        raise error



class _BadBody(Exception):
    """An answer's body that cannot be decoded: the reason, for the error message."""


@dataclass
class _Raw:
    body: bytes
    decoded: bool = False  # True when a transport handed over a response already read and decoded


async def _read_raw(resp: httpx.Response, what: str) -> _Raw:
    """The body as sent (still compressed), at most MAX_RESPONSE_BYTES."""
    if resp.is_stream_consumed:  # httpx.MockTransport hands over responses already read
        return _Raw(resp.content, decoded=True)
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_raw():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise SyncApiProtocolError(f"sync API {what} answered a body larger than {MAX_RESPONSE_BYTES} bytes; nothing more was sent")
        chunks.append(chunk)
    return _Raw(b"".join(chunks))


def _decoded(resp: httpx.Response, raw: _Raw) -> bytes:
    """The body without its Content-Encoding. httpx's own gzip decoder accepts a stream that
    is cut short (zlib's flush does not check for the end of the stream), so gzip is decoded
    here: a truncated or corrupt body raises ``_BadBody`` instead of passing as a short one."""
    if raw.decoded:
        return raw.body
    codings = [c.strip().lower() for c in resp.headers.get("content-encoding", "").split(",") if c.strip()]
    data = raw.body
    for coding in reversed(codings):
        if coding == "identity":
            continue
        if coding not in ("gzip", "x-gzip"):
            raise _BadBody(f"an unsupported Content-Encoding {coding!r} (this client accepts gzip)")
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
                data = fh.read(MAX_RESPONSE_BYTES + 1)
        except (OSError, EOFError, zlib.error) as exc:
            raise _BadBody(f"a truncated or corrupt gzip body (Content-Encoding: gzip; {exc})") from None
        if len(data) > MAX_RESPONSE_BYTES:
            raise _BadBody(f"a gzip body over {MAX_RESPONSE_BYTES} bytes uncompressed")
    return data


def _json_body(resp: httpx.Response, raw: _Raw, what: str) -> dict[str, Any]:
    ctype = resp.headers.get("content-type", "")
    try:
        data = _decoded(resp, raw)
    except _BadBody as exc:
        raise SyncApiProtocolError(f"sync API {what} answered HTTP {resp.status_code} with {exc}; is a proxy in the way?") from None
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        kind = "an HTML page, not JSON" if "html" in ctype.lower() or data.lstrip()[:1] == b"<" else "a body that is not JSON"
        if isinstance(exc, RecursionError):
            kind = "JSON nested too deeply to read"
        raise SyncApiProtocolError(
            f"sync API {what} answered HTTP {resp.status_code} with {kind} "
            f"(Content-Type {ctype or 'none'}); is a proxy or login page in the way?"
        ) from None
    if not isinstance(doc, dict):
        raise SyncApiProtocolError(f"sync API {what} answered JSON of the wrong shape: not an object")
    return doc


def _write_result(doc: dict[str, Any], count_field: str, what: str) -> WriteResult:
    """The answer to a write. A 2xx of the wrong shape raises SyncApiProtocolError with
    ``maybe_applied`` set: the service accepted the request and may have applied it."""
    try:
        return _write_result_strict(doc, count_field, what)
    except SyncApiError as exc:
        exc.maybe_applied = True
        raise


def _write_result_strict(doc: dict[str, Any], count_field: str, what: str) -> WriteResult:
    count = doc.get(count_field)
    rejected = doc.get("rejected")
    if not isinstance(count, int) or isinstance(count, bool) or not isinstance(rejected, list):
        raise SyncApiProtocolError(f"{what} answered JSON of the wrong shape: without '{count_field}' and 'rejected'")
    out: list[Rejection] = []
    for r in rejected:
        if not isinstance(r, dict) or not isinstance(r.get("code"), str):
            raise SyncApiProtocolError(f"{what} answered JSON of the wrong shape: a malformed rejection")
        out.append(Rejection(r.get("key"), r["code"], str(r.get("message", ""))))
    return WriteResult(count, out)


def _problem_detail(resp: httpx.Response, raw: _Raw) -> str:
    """The answer's own words, for the error message. A body can echo the request (its
    Authorization header): registered secrets are scrubbed before the text is cut short, so
    that no part of one survives the cut."""
    try:
        data = _decoded(resp, raw)
    except _BadBody as exc:
        return f"an unreadable body: {exc}"
    try:
        doc = json.loads(data)
        if isinstance(doc, dict):
            parts = [str(doc[k]) for k in ("title", "detail") if doc.get(k)]
            if parts:
                return scrub(": ".join(parts)[:4096])[:500]
    except (ValueError, RecursionError):
        pass
    return scrub(data[:4096].decode("utf-8", "replace"))[:200].strip().replace("\n", " ") or "no detail"


def _fatal(resp: httpx.Response, raw: _Raw, what: str, client: SyncApiClient) -> SyncApiError:
    status = resp.status_code
    detail = _problem_detail(resp, raw)
    if status == 401:
        return SyncApiAuthError(
            f"sync API refused the credential (HTTP 401) on {what}: the credential in {client.credential_where} is wrong, "
            f"expired or disabled; {client.credential_fix}",
            status,
        )
    if status == 403:
        return SyncApiAuthError(
            f"sync API account lacks the roles (HTTP 403) on {what}: the account in {client.credential_where} needs "
            "'Mail Platform' and 'LDAP User Groups'",
            status,
        )
    if status == 413:
        return PayloadTooLargeError(f"sync API {what}: request too large (HTTP 413)", status)
    if status == 404:
        return SyncApiRequestError(f"sync API {what}: not found (HTTP 404): {detail}; check SYNC_API_URL", status)
    if status == 409:
        return SyncApiRequestError(f"sync API {what}: Idempotency-Key reused with a different body (HTTP 409): {detail}", status)
    return SyncApiRequestError(f"sync API {what} failed with HTTP {status}: {detail}", status)


def _retry_after(resp: httpx.Response, what: str) -> float | None:
    """Seconds to wait, None when the header is malformed (the caller backs off instead)."""
    raw = resp.headers.get("retry-after", "").strip()
    seconds = parse_retry_after(raw)
    # parse_retry_after clamps a negative value to 0 and passes "1e309" as infinity: both are
    # malformed (delay-seconds is a non-negative integer), and neither may mean "at once" or "never".
    if seconds is None or not math.isfinite(seconds) or raw.startswith("-"):
        log.warning("sync API %s sent a malformed Retry-After %r; backing off instead", what, scrub(raw)[:40])
        return None
    if seconds > MAX_RETRY_AFTER_SECONDS:
        raise SyncApiUnavailableError(
            f"sync API {what} asked to wait {seconds:.0f} s (Retry-After), more than the {MAX_RETRY_AFTER_SECONDS:.0f} s "
            "this run will wait; nothing more was sent"
        )
    return seconds
