"""Reading the sync API's answers (docs/sync-api.md): the body as sent, at most
``MAX_RESPONSE_BYTES``, decoded strictly; a JSON object out of it; a write's result; the error
a refusal stands for (with the answer's own words, secrets scrubbed); and ``Retry-After``.

``shared/target/syncapi.py`` sends the requests and owns the retries; this module judges
what comes back. Every function raises a ``SyncApiError`` subclass that names the request."""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..common.aio import aiohttp
from ..common.errors import (
    PayloadTooLargeError,
    SyncApiAuthError,
    SyncApiError,
    SyncApiProtocolError,
    SyncApiRequestError,
    SyncApiUnavailableError,
)
from ..common.netutil import parse_retry_after
from ..common.redact import scrub

log = logging.getLogger("shared.syncapi")  # the name its log lines have always carried

MAX_RETRY_AFTER_SECONDS = 300.0
# An answer larger than this (after gzip) is not one the contract can produce (a page is at
# most 5,000 records): refuse it rather than let a broken or hostile peer exhaust memory.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


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


class _BadBody(Exception):
    """An answer's body that cannot be decoded: the reason, for the error message."""


class Answer(NamedTuple):
    """An answer's status and headers (``headers``: case-insensitive, aiohttp's)."""

    status_code: int
    headers: Mapping[str, str]


@dataclass
class Raw:
    body: bytes


async def read_raw(stream: aiohttp.StreamReader, what: str) -> Raw:
    """The body as sent (still compressed), at most MAX_RESPONSE_BYTES."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream.iter_any():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise SyncApiProtocolError(f"sync API {what} answered a body larger than {MAX_RESPONSE_BYTES} bytes; nothing more was sent")
        chunks.append(chunk)
    return Raw(b"".join(chunks))


def _decoded(resp: Answer, raw: Raw) -> bytes:
    """The body without its Content-Encoding, decoded here (the session inflates nothing): a
    truncated or corrupt gzip body raises ``_BadBody`` instead of passing as a short one."""
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


def json_body(resp: Answer, raw: Raw, what: str) -> dict[str, Any]:
    """The answer as a JSON object; ``SyncApiProtocolError`` for anything else."""
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


def write_result(doc: dict[str, Any], count_field: str, what: str) -> WriteResult:
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


def _problem_detail(resp: Answer, raw: Raw) -> str:
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


def refusal(resp: Answer, raw: Raw, what: str, credential_where: str, credential_fix: str) -> SyncApiError:
    """The error an answer that must not be retried stands for; 401/403 name where the
    credential lives (``credential_where``) and how to replace it (``credential_fix``)."""
    status = resp.status_code
    detail = _problem_detail(resp, raw)
    if status == 401:
        return SyncApiAuthError(
            f"sync API refused the credential (HTTP 401) on {what}: the credential in {credential_where} is wrong, "
            f"expired or disabled; {credential_fix}",
            status,
        )
    if status == 403:
        return SyncApiAuthError(
            f"sync API account lacks the roles (HTTP 403) on {what}: the account in {credential_where} needs "
            "'Mail Platform' and 'LDAP User Groups'",
            status,
        )
    if status == 413:
        return PayloadTooLargeError(f"sync API {what}: request too large (HTTP 413)", status)
    if status == 404 and "/replacements/" in what:
        # The replacement this run opened is gone (docs/sync-api.md: expired after 24 hours, or
        # abandoned): the URL is right, and the live dataset is as it was before the replace.
        return SyncApiRequestError(
            f"sync API {what}: the service no longer knows this replacement (HTTP 404: {detail}): it expired or was "
            "abandoned, so nothing of it was applied and the live dataset is unchanged; run 'replace' again", status)
    if status == 404:
        return SyncApiRequestError(f"sync API {what}: not found (HTTP 404): {detail}; check SYNC_API_URL", status)
    if status == 409:
        return SyncApiRequestError(f"sync API {what}: Idempotency-Key reused with a different body (HTTP 409): {detail}", status)
    return SyncApiRequestError(f"sync API {what} failed with HTTP {status}: {detail}", status)


def retry_after(resp: Answer, what: str) -> float | None:
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
