"""The one adapter that speaks the email-security directory sync API (docs/sync-api.md).

Transport rules live here: https (or loopback http), gzip for large bodies, Idempotency-Key on
every write, retries with Retry-After/backoff on 429, 408, 5xx and connection faults, and a clear
error for everything the contract says not to retry. Reading and judging the answers is in
``shared/target/responses.py``. What to send, and in which order, is the engine's business."""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any, NamedTuple
from urllib.parse import quote

import httpx
from isal import igzip
from yarl import URL

from ..common import fastjson
from ..common.aio import NoAnswer, TimedBody, aiohttp, no_answer, open_session, wire_url
from ..common.carriable import header_credential_problem
from ..common.errors import PayloadTooLargeError, SecretError, SyncApiError, SyncApiProtocolError, SyncApiUnavailableError
from ..common.netutil import jittered_backoff, no_answer_hint, url_problem
from ..common.redact import Secret
from ..model.records import to_api_record
from .responses import Answer, Raw, Rejection, WriteResult, json_body, read_raw, refusal, retry_after, write_result

__all__ = [
    "GZIP_ABOVE_BYTES", "MAX_BODY_BYTES", "Rejection", "RequestBody", "SyncApiClient", "WriteResult", "auth_header", "changes_body", "encode_body",
    "replacement_body", "request_body",
]

log = logging.getLogger("shared.syncapi")  # the name its log lines have always carried

GZIP_ABOVE_BYTES = 16 * 1024
MAX_BODY_BYTES = 10_000_000
"""The largest request body the service takes, uncompressed (docs/sync-api.md, 413: "a body over
10 MB (uncompressed)"), read as 10,000,000 bytes, the smaller reading of "10 MB". A body over it
is refused here, before it is sent, as the service would refuse it: the caller splits it."""
MAX_BACKOFF_SECONDS = 30.0
CREDENTIAL_HINT = "SYNC_API_CREDENTIAL (or the Key Vault secret named by SYNC_API_CREDENTIAL_NAME)"


def auth_header(credential: Secret) -> str:
    """``user:password`` is sent as Basic, a bare token as Bearer. A value that the header
    cannot carry (``shared/common/carriable.py``) raises ``SecretError`` naming where the
    credential came from (``credential.where``), never the value."""
    value = credential.reveal()
    problem = header_credential_problem(value)
    if problem:
        raise SecretError(f"the sync API credential ({credential.where}) {problem}; {credential.fix or 'replace it'}")
    if ":" in value:
        return "Basic " + base64.b64encode(value.encode("utf-8")).decode("ascii")
    return "Bearer " + value


def service_address(url: str) -> str:
    """Which sync API a state's records describe: ``SYNC_API_URL`` without what names the same
    service twice (the case of the scheme and host, a default port, a trailing slash)."""
    u = httpx.URL(url)
    port = f":{u.port}" if u.port is not None else ""
    return f"{u.scheme.lower()}://{u.host.lower()}{port}{u.path.rstrip('/')}"


def _changes_document(upsert: list[dict[str, Any]], delete: list[str]) -> dict[str, Any]:
    return {"upsert": upsert, "delete": delete}


def changes_body(dataset: str, upserts: list[tuple[str, tuple]], deletes: list[str]) -> dict[str, Any]:
    """The body of ``POST /datasets/{dataset}/changes`` for canonical records ``(key, value)``
    and deleted keys (docs/sync-api.md); the caller encodes it once (``request_body``), hashes
    its bytes into the Idempotency-Key and sends those bytes (``post_encoded_changes``)."""
    return _changes_document(api_records(dataset, upserts), list(deletes))


def api_records(dataset: str, upserts: list[tuple[str, tuple]]) -> list[dict[str, Any]]:
    """``[to_api_record(dataset, k, v) for k, v in upserts]`` (shared/model/records.py) as JSON,
    one comprehension per dataset instead of a call per record. The id lists stay the records'
    tuples, which JSON (and orjson, without a list copy per record) writes as the same arrays;
    tests/test_send_fast.py holds the two documents' JSON equal over generated records."""
    if dataset == "addresses":
        return [{"address": k} for k, _ in upserts]
    if dataset == "groups":
        return [{"id": k, "name": v[0], "parentIds": v[1]} for k, v in upserts]
    if dataset == "users":
        return [{"id": k, "address": v[0], "groupIds": v[1]} for k, v in upserts]
    return [to_api_record(dataset, k, v) for k, v in upserts]  # its error for an unknown dataset


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
        connect_seconds: float = 30.0,
    ) -> None:
        problem = url_problem(base_url)
        if problem:
            raise SyncApiError(f"SYNC_API_URL {problem}")
        self.base_url = base_url.rstrip("/")
        self._wire_base = wire_url(self.base_url)  # IDN host, non-ASCII path: encoded once (shared/common/aio.py)
        # Where the credential lives and how to replace it, for the 401/403 messages.
        self.credential_where = credential.where
        self.credential_fix = credential.fix or f"check {CREDENTIAL_HINT}"
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.requests = 0
        # Only gzip is accepted, so that every answer is decoded strictly (responses.py, _decoded).
        self._headers = {"Authorization": auth_header(credential), "Accept": "application/json", "Accept-Encoding": "gzip"}
        self._timeouts = (timeout_seconds, connect_seconds)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        """The aiohttp session (``shared/common/aio.py``), opened at the first request."""
        if self._session is None:
            self._session = open_session(self.base_url, *self._timeouts, headers=self._headers)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

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
            if "nextPageToken" not in doc:  # null on the last page (docs/sync-api.md): absent says nothing
                raise SyncApiProtocolError(f"GET {dataset} records answered without 'nextPageToken', so the listing may not be complete")
            yield records
            token = doc.get("nextPageToken")
            if token is None:
                return
            if not isinstance(token, str) or not token or token in seen_tokens:  # "" would list the first page again
                raise SyncApiProtocolError(f"GET {dataset} records answered a bad or repeated nextPageToken")
            seen_tokens.add(token)

    async def post_changes(self, dataset: str, upsert: list[dict[str, Any]], delete: list[str], key: str) -> WriteResult:
        return await self.post_encoded_changes(dataset, request_body(_changes_document(upsert, delete)), key)

    async def post_encoded_changes(self, dataset: str, body: RequestBody, key: str) -> WriteResult:
        """``POST /datasets/{dataset}/changes`` with a body already encoded (``request_body``
        of ``changes_body``): the bytes the Idempotency-Key was derived from are the bytes sent."""
        doc = await self._call("POST", f"/datasets/{dataset}/changes", body, key=key)
        return write_result(doc, "applied", f"POST {dataset} changes")

    async def create_replacement(self, dataset: str) -> str:
        """``POST /datasets/{dataset}/replacements``: the new replacement's id. Sent with an
        Idempotency-Key of its own (docs/sync-api.md, "6. Idempotency": a retry after a lost answer
        carries the same key), so a service that honours it opens one replacement, not two."""
        key = f"replacement-{uuid.uuid4().hex}"
        doc = await self._call("POST", f"/datasets/{dataset}/replacements", {}, key=key, expect=(200, 201))
        rid = doc.get("replacementId")
        if not isinstance(rid, str) or not rid:
            raise SyncApiProtocolError(f"POST {dataset} replacements answered without a replacementId")
        return rid

    async def post_replacement_records(self, dataset: str, rid: str, records: list[dict[str, Any]], key: str) -> WriteResult:
        return await self.post_encoded_replacement_records(dataset, rid, request_body(replacement_body(records)), key)

    async def post_encoded_replacement_records(self, dataset: str, rid: str, body: RequestBody, key: str) -> WriteResult:
        """``POST .../replacements/{id}/records`` with a body already encoded (``request_body``
        of ``replacement_body``)."""
        doc = await self._call("POST", f"/datasets/{dataset}/replacements/{quote(rid, safe='')}/records", body, key=key)
        return write_result(doc, "received", f"POST {dataset} replacement records")

    async def commit_replacement(self, dataset: str, rid: str) -> WriteResult:
        doc = await self._call("POST", f"/datasets/{dataset}/replacements/{quote(rid, safe='')}/commit", {})
        return write_result(doc, "count", f"commit of the {dataset} replacement")

    async def abandon_replacement(self, dataset: str, rid: str) -> None:
        await self._call("DELETE", f"/datasets/{dataset}/replacements/{quote(rid, safe='')}", None, expect=(204, 200, 404))

    # --- transport -----------------------------------------------------------------------
    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | RequestBody | None = None,
        *,
        key: str | None = None,
        expect: tuple[int, ...] = (200,),
    ) -> dict[str, Any]:
        """Send one request (``body``: a JSON document, or one already encoded), retried on 429,
        408, 5xx and connection faults (at most ``max_attempts``); its answer as a JSON object
        (``{}`` for 204). Raises a ``SyncApiError`` whose ``maybe_applied`` says whether the
        request may have been applied."""
        encoded = body if isinstance(body, RequestBody) else request_body(body)
        content, headers = encoded.content, dict(encoded.headers)
        if key is not None:
            headers["Idempotency-Key"] = key
        what = f"{method} {path.split('?')[0]}"
        if encoded.raw is not None and len(encoded.raw) > MAX_BODY_BYTES:  # the service's 413, without the upload
            raise PayloadTooLargeError(
                f"sync API {what}: the request body is {len(encoded.raw):,} bytes uncompressed, over the {MAX_BODY_BYTES:,} "
                "the service takes (docs/sync-api.md, 413); it was not sent", 413)
        last = ""
        uncertain = False  # an attempt may have been applied without our seeing the answer
        for attempt in range(1, self.max_attempts + 1):
            self.requests += 1
            try:
                resp, raw = await self._send(method, path, content, headers, what)
            except NoAnswer as exc:
                last = f"connection fault ({exc.fault})"
                uncertain |= exc.sent  # a request that reached the service may have been applied
                delay = self._backoff(attempt)
            else:
                if resp.status_code in expect:
                    return _answer(resp, raw, what)
                last = f"HTTP {resp.status_code}"
                delay, maybe_applied = self._retry_delay(resp, raw, what, attempt)
                uncertain |= maybe_applied
            if attempt < self.max_attempts:
                log.info("sync API %s: %s; retry %d in %.1f s", what, last, attempt, delay)
                await asyncio.sleep(delay)
        error = SyncApiUnavailableError(f"sync API {what} failed after {self.max_attempts} attempts ({last}); {self._unavailable_fix(last)}")
        error.maybe_applied = uncertain
        raise error

    async def _send(self, method: str, path: str, content: bytes | None, headers: dict[str, str], what: str) -> tuple[Answer, Raw]:
        """One attempt: the answer and its body as sent (at most MAX_RESPONSE_BYTES). The URL
        goes out as written (its path and query are quoted here). Raises ``NoAnswer``."""
        data = None if content is None else TimedBody(content, self._timeouts[0])  # a peer that stops reading it times out
        try:
            async with self._open().request(method, URL(self._wire_base + path, encoded=True), data=data, headers=headers,
                                            allow_redirects=False) as resp:
                answer = Answer(resp.status, resp.headers)
                try:
                    return answer, await read_raw(resp.content, what)
                except SyncApiError as exc:  # an answer too large to read: not a definite refusal
                    exc.maybe_applied = not 400 <= answer.status_code < 500
                    raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise no_answer(exc) from None

    def _unavailable_fix(self, last: str) -> str:
        """What an operator checks when the retries ran out: no answer at all points at
        SYNC_API_URL or the network; a 408/429/5xx to the end is the service's own outage. The
        base URL carries no secret (``url_problem`` refuses credentials in it)."""
        if last.startswith("connection fault"):
            return no_answer_hint(self.base_url, "SYNC_API_URL")
        return f"the service at {self.base_url} (SYNC_API_URL) stayed unavailable; the next run tries again"

    def _backoff(self, attempt: int) -> float:
        return jittered_backoff(self.backoff_seconds, attempt, MAX_BACKOFF_SECONDS)

    def _retry_delay(self, resp: Answer, raw: Raw, what: str, attempt: int) -> tuple[float, bool]:
        """For an answer that was not expected: (seconds before the retry, whether the request
        may have been applied), or the error when the answer must not be retried."""
        status = resp.status_code
        if status in (429, 503):
            # A missing or malformed Retry-After falls back to this client's own backoff
            # (it used to be a fixed 2 s, which ignored backoff_seconds).
            hinted = retry_after(resp, what) if "retry-after" in resp.headers else None
            return (self._backoff(attempt) if hinted is None else hinted), False
        if status >= 500:
            return self._backoff(attempt), status in (500, 502, 504)  # a gateway's, or a failure after the work
        if status == 408:  # a timeout (docs/sync-api.md: transient): the request was not processed
            return self._backoff(attempt), False
        fatal = refusal(resp, raw, what, self.credential_where, self.credential_fix)
        # Only a 4xx is a definite refusal; any other answer (an unexpected 2xx, a
        # redirect) may stand for a request that was applied.
        fatal.maybe_applied = not 400 <= status < 500
        raise fatal


class RequestBody(NamedTuple):
    """A request body encoded once: ``raw``, the JSON as UTF-8 (what the Idempotency-Key hashes
    and what the service compares, uncompressed); ``content``, the bytes on the wire; and
    their headers. ``raw`` and ``content`` are ``None`` for a request without a body."""

    raw: bytes | None
    content: bytes | None
    headers: dict[str, str]


def request_body(body: dict[str, Any] | None) -> RequestBody:
    """A request body as sent: compact UTF-8 JSON (byte for byte ``json.dumps(body,
    ensure_ascii=False, separators=(",", ":"))``, written by orjson: shared/common/fastjson.py),
    gzip-compressed above GZIP_ABOVE_BYTES (docs/sync-api.md, "1. Transport") by ISA-L's igzip
    (the isal library), whose level 1 costs a quarter of zlib's level 1 for a smaller body
    (bench/send_encoding.py); with its Content-Type (and Content-Encoding) headers. ``None``: no
    body, no headers."""
    if body is None:
        return RequestBody(None, None, {})
    raw = fastjson.dumps_bytes(body)
    if len(raw) <= GZIP_ABOVE_BYTES:
        return RequestBody(raw, raw, {"Content-Type": "application/json"})
    return RequestBody(raw, igzip.compress(raw, compresslevel=1, mtime=0), {"Content-Type": "application/json", "Content-Encoding": "gzip"})


def encode_body(body: dict[str, Any] | None) -> tuple[bytes | None, dict[str, str]]:
    """``request_body``'s bytes on the wire and headers."""
    encoded = request_body(body)
    return encoded.content, dict(encoded.headers)


def _answer(resp: Answer, raw: Raw, what: str) -> dict[str, Any]:
    """An expected answer as a JSON object (``{}`` for 204)."""
    if resp.status_code == 204:
        return {}
    try:
        return json_body(resp, raw, what)
    except SyncApiError as exc:
        # The request was accepted but its answer cannot be read (not JSON, the wrong shape,
        # a truncated gzip): it may have been applied.
        exc.maybe_applied = True
        raise
