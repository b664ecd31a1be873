"""Graph's error answers as kiota raises them (``APIError``): the error map that reads an
error body (only 400 and 410, whose code tells a sync reset: docs/sync-rules.md, "Reading
Microsoft Graph"), the error's code and text, and its ``Retry-After`` in seconds (None when
absent or malformed: the caller backs off)."""

from __future__ import annotations

from typing import Any

from kiota_abstractions.api_error import APIError

from ..common.netutil import parse_retry_after


class _ODataErrorFactory:
    """msgraph's ``ODataError`` as kiota's error factory, imported when Graph first answers 400
    or 410 (the body of a sync reset names its code), not at start-up."""

    @staticmethod
    def create_from_discriminator_value(parse_node: Any) -> Any:
        from msgraph.generated.models.o_data_errors.o_data_error import ODataError

        return ODataError.create_from_discriminator_value(parse_node)


# Only the codes whose error body matters: the sync-reset answers to a delta token.
_ERROR_MAP: dict[str, Any] = {"400": _ODataErrorFactory, "410": _ODataErrorFactory}


def _error_code(exc: APIError) -> str | None:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    return code if isinstance(code, str) else None


def _retry_after(exc: APIError) -> float | None:
    headers = exc.response_headers or {}
    for key, value in headers.items():
        if key.lower() == "retry-after":
            raw = value if isinstance(value, str) else next(iter(value), "")
            return parse_retry_after(raw)
    return None


def _api_error_text(exc: APIError) -> str:
    error = getattr(exc, "error", None)
    code, message = _error_code(exc), getattr(error, "message", None)
    text = f"{code}: {message}" if code and message else str(exc.message or exc)
    return text[:300]
