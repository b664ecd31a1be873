"""Injectable faults: throttling, outages, dropped connections, expired tokens and hostile 200 answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from devstack.graph.model import _DELTA_SEGMENTS, _SEGMENTS, GraphError, Response, _dumps
from devstack.graph.wire import _error_response

FAULT_KINDS: tuple[str, ...] = (
    "429",
    "429-unknown",
    "429-activity",
    "503",
    "504",
    "500",
    "drop",
    "malformed",
    "410",
    "410-resync",
    "400-syncstate",
    "400-expired-page-token",
    "400-resync-inner",
    "401-expired-token",
    "html",
    "not_json",
    "wrong_shape",
    "no_value",
    "truncated_gzip",
    "deep_json",
    "no_links",
    "loop_link",
)
# Faults that spoil the real answer rather than replace it.
_BODY_FAULTS = frozenset(("malformed", "truncated_gzip", "no_links", "loop_link"))
PROXY_PAGE = (
    b"<!DOCTYPE html><html><head><title>Sign in</title></head><body><h1>Web proxy</h1><p>Please sign in to continue.</p></body></html>"
)

_RETRY_LATER = "Retry after the time in the Retry-After header."
_SYNC_STATE_GONE = "The sync state generation is not found. The delta token is expired and data must be synchronized again."
# The faults answered in Graph's error shape: kind -> (status, code, message, the header it
# carries: "Retry-After" (the fault's value), "Location" (the initial delta request) or None).
_ERROR_FAULTS: dict[str, tuple[int, str, str, str | None]] = {
    "429": (429, "TooManyRequests", f"Too many requests. {_RETRY_LATER}", "Retry-After"),
    "503": (503, "serviceNotAvailable", f"The service is temporarily unavailable. {_RETRY_LATER}", "Retry-After"),
    # Throttling as tenants have seen it: code UnknownError with an empty message (Microsoft's
    # "Gotchas: Microsoft Graph/Outlook REST API throttling best practices"), or
    # activityLimitReached with the detailed code throttledRequest in innerError (Microsoft Q&A
    # "Retry-After header upper limit or range").
    "429-unknown": (429, "UnknownError", "", "Retry-After"),
    "429-activity": (429, "activityLimitReached", "The request has been throttled", "Retry-After"),
    "504": (504, "UnknownError", "", None),  # a gateway timeout: no Retry-After
    "500": (500, "generalException", "An unspecified error has occurred.", None),
    "410": (410, "syncStateNotFound", _SYNC_STATE_GONE, "Location"),
    "410-resync": (410, "resyncRequired", "The delta token is no longer valid, and the app must reset the sync state.", "Location"),
    "400-syncstate": (400, "syncStateNotFound", _SYNC_STATE_GONE, None),
    # Entra's answer to a page token (a $skiptoken, or a saved link's) it no longer keeps: a 400,
    # not a 410 (the message as Graph words it; cartography-cncf/cartography restarts its listings
    # on this code).
    "400-expired-page-token": (400, "Directory_ExpiredPageToken",
                               "The specified page token value has expired and can no longer be included in your request.", None),
    # A sync reset named only by a nested code: Graph's "Error responses" page lists resyncRequired
    # among the detailed codes of ``innerError`` and tells apps to look through every level.
    "400-resync-inner": (400, "invalidRequest", "Resync is required.", None),
    # An access token Graph no longer accepts (expired, or not yet valid by Graph's clock).
    "401-expired-token": (401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.", "WWW-Authenticate"),
}
_INNER_CODES = {"400-resync-inner": "resyncRequired", "429-activity": "throttledRequest"}
_WWW_AUTHENTICATE = ('Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
                     'client_id="00000003-0000-0000-c000-000000000000"')


@dataclass
class _Fault:
    kind: str
    path_contains: str
    times: int
    retry_after: str | None  # None: the answer carries no Retry-After


class FaultsMixin:
    """Mixin of :class:`GraphEmulator`: the fault queue (``_faults``) and the answers it gives;
    ``GraphEmulator._graph`` takes a fault per request and applies it."""

    # --- faults and token expiry --------------------------------------------------------------
    def inject_fault(self, kind: str, *, path_contains: str = "", times: int = 1, retry_after: int | str | None = 1) -> None:
        """Queue a fault for the next ``times`` Graph requests whose path+query contains ``path_contains``.

        Kinds: ``429``/``503`` (with Retry-After; ``retry_after=None``: without one),
        ``429-unknown`` (429 ``UnknownError`` with an empty message), ``429-activity`` (429
        ``activityLimitReached``, ``innerError.code`` ``throttledRequest``), ``504`` (``UnknownError``,
        no Retry-After), ``500``, ``drop`` (close the socket without
        answering), ``malformed`` (200 with the real body cut in half), ``410`` (expired delta token:
        syncStateNotFound), ``410-resync`` (resyncRequired), ``400-syncstate`` (400 syncStateNotFound,
        as Graph answered expired directory tokens according to Microsoft's 2020 announcement),
        ``400-expired-page-token`` (400 ``Directory_ExpiredPageToken``: Entra no longer keeps the
        page token of a nextLink or a saved link), ``400-resync-inner`` (400 ``invalidRequest``
        whose ``innerError.code`` is ``resyncRequired``), ``401-expired-token`` (401
        ``InvalidAuthenticationToken``, "Access token has expired or is not yet valid.", with
        Graph's ``WWW-Authenticate``).
        Hostile 200 answers, as from a broken proxy: ``html`` (a ``text/html`` sign-in page),
        ``not_json`` (Graph's JSON content type over a body that is not JSON), ``wrong_shape``
        (``{"value": {}}``), ``no_value`` (an object without ``value``), ``truncated_gzip`` (the
        real page gzip-compressed with ``Content-Encoding: gzip`` and the stream cut in half,
        Content-Length matching the cut body), ``deep_json`` (valid JSON nested 100,000 deep, past
        any recursive parser's limit), ``no_links`` (the real page without its ``@odata.nextLink`` and
        ``@odata.deltaLink``: a page that does not say whether the round goes on), ``loop_link`` (the
        real page with its ``@odata.nextLink`` pointing back at the page itself, as from a cache
        that serves a stale page: followed, the round would never end)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; use one of {', '.join(FAULT_KINDS)}")
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._faults.append(_Fault(kind, path_contains, times, None if retry_after is None else str(retry_after)))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def expire_delta_tokens(self) -> None:
        """Every delta and skip token issued so far answers 410 from now on."""
        with self._lock:
            self._epoch += 1

    def _take_fault(self, target: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.path_contains in target:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # --- faults -----------------------------------------------------------------------------------------
    def _fault_response(self, fault: _Fault, path: str, request_id: str) -> Response:
        kind = fault.kind
        if kind == "drop":
            return Response(0, drop=True)
        if kind == "html":
            return Response(200, PROXY_PAGE, {"Content-Type": "text/html; charset=utf-8"})
        if kind == "not_json":
            return Response(200, b"OK: accepted by the gateway")
        if kind == "deep_json":
            return Response(200, b"[" * 100_000 + b"]" * 100_000)
        if kind in ("wrong_shape", "no_value"):
            doc: dict[str, Any] = {"@odata.context": f"{self.base_url}/$metadata#directoryObjects"}
            if kind == "wrong_shape":
                doc["value"] = {}
            else:
                doc["items"] = []
            return Response(200, _dumps(doc).encode())
        status, code, message, header = _ERROR_FAULTS[kind]
        if header == "Retry-After":
            headers = {} if fault.retry_after is None else {header: fault.retry_after}
        elif header == "Location":
            headers = {header: self._reset_location(path)}
        elif header == "WWW-Authenticate":
            headers = {header: _WWW_AUTHENTICATE}
        else:
            headers = {}
        return _error_response(GraphError(status, code, message, headers, _INNER_CODES.get(kind)), request_id)

    def _reset_location(self, path: str) -> str:
        """The initial delta request for the collection of ``path`` (Graph's Location on a 410)."""
        segments = [s for s in path[len("/v1.0/") :].split("/") if s]
        coll = _SEGMENTS.get(segments[0].lower(), "users") if segments else "users"
        segment = segments[1] if len(segments) > 1 and segments[1].lower() in _DELTA_SEGMENTS else "delta"
        return f"{self.base_url}/{coll}/{segment}"
