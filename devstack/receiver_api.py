"""The /v1 endpoints of docs/sync-api.md: routing, auth, idempotency and faults.

See devstack.sync_receiver's docstring for every reading of an ambiguous
point of the contract.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import hmac
import json
import re
import threading
import traceback
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import parse_qsl

from devstack.receiver_http import (
    HttpRequest,
    HttpResponse,
    check_json_content_type,
    decode_entity,
    json_response,
    parse_json,
    problem_response,
)
from devstack.receiver_records import DATASETS
from devstack.receiver_store import ApiError, IdempotencyRegistry, Store

MAX_KEY_LENGTH = 128
MAX_PAGE_SIZE = 5000
DEFAULT_PAGE_SIZE = 1000
FAULT_KINDS = (
    "429", "503", "500", "408", "drop_before", "drop_after", "401",
    # hostile 200 answers, as from a broken proxy in front of the service:
    "html", "wrong_shape", "not_json", "truncated_gzip", "deep_json",
    # the request is applied in full (its idempotent answer remembered), then answered 200
    # with a body the client cannot read, as from a proxy that mangles the service's answer:
    "applied_html", "applied_wrong_shape", "applied_not_json", "applied_truncated_gzip",
    # the real answer without its `nextPageToken` member, as from a gateway that drops null
    # members: a records page that does not say whether another page follows
    "no_page_token",
)
APPLIED_PREFIX = "applied_"
PROXY_PAGE = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body><h1>Proxy sign-in</h1></body></html>"
# A plausible answer, compressed and cut in half: what a proxy that cuts a gzip stream delivers.
_GZIP = gzip.compress(json.dumps({"applied": 0, "rejected": [], "note": "x" * 512}).encode(), mtime=0)
TRUNCATED_GZIP = _GZIP[: len(_GZIP) // 2]
DEEP_JSON = b"[" * 100_000 + b"]" * 100_000  # valid JSON, nested past any parser's recursion limit


@dataclass
class LoggedRequest:
    """One request as the receiver saw it. `status` is None when no answer was sent (a drop)."""

    method: str
    path: str
    query: str
    idempotency_key: str | None
    body: Any
    status: int | None
    fault: str | None = None
    replayed: bool = False
    response_bytes: bytes = field(default=b"", repr=False)
    response_type: str | None = None

    @cached_property
    def response(self) -> Any:
        """The answer's JSON (also the unsent one of drop_after), parsed only when asked."""
        if self.response_type and "json" in self.response_type and self.response_bytes:
            return json.loads(self.response_bytes)
        return None

    def summary(self, with_bodies: bool = False) -> dict[str, Any]:
        """The JSON form served by GET /_receiver/log."""
        out = {"method": self.method, "path": self.path, "query": self.query, "idempotencyKey": self.idempotency_key,
               "status": self.status, "fault": self.fault, "replayed": self.replayed}
        if with_bodies:
            out["body"], out["response"] = self.body, self.response
        return out


@dataclass
class Fault:
    kind: str
    path_contains: str
    remaining: int
    retry_after: int | str


class FaultQueue:
    """Injected faults, served in the order they were injected, each `times` times."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, kind: str, path_contains: str, times: int, retry_after: int | str) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {FAULT_KINDS}")
        if times < 1:
            raise ValueError("times is at least 1")
        with self._lock:
            self._faults.append(Fault(kind, path_contains, times, retry_after))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, target: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.path_contains in target:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None


@dataclass(frozen=True)
class Route:
    name: str
    pattern: re.Pattern[str]
    method: str
    key: str  # "required" | "optional" | "none": the Idempotency-Key
    body: str  # "required" | "empty": an empty body or {}; "none": ignored


_DS = r"/v1/datasets/(?P<dataset>[^/]+)"
ROUTES: tuple[Route, ...] = (
    Route("domains", re.compile(r"/v1/domains"), "GET", "none", "none"),
    Route("list_records", re.compile(_DS + r"/records"), "GET", "none", "none"),
    Route("changes", re.compile(_DS + r"/changes"), "POST", "required", "required"),
    Route("create_replacement", re.compile(_DS + r"/replacements"), "POST", "optional", "empty"),
    Route("receive", re.compile(_DS + r"/replacements/(?P<rid>[^/]+)/records"), "POST", "required", "required"),
    Route("commit", re.compile(_DS + r"/replacements/(?P<rid>[^/]+)/commit"), "POST", "optional", "empty"),
    Route("abandon", re.compile(_DS + r"/replacements/(?P<rid>[^/]+)"), "DELETE", "optional", "empty"),
)


def resolve(method: str, path: str) -> tuple[Route, dict[str, str]]:
    """The route and its parameters; 404 for an unknown path or dataset, 405 for a wrong method."""
    matched = [(r, m) for r in ROUTES if (m := r.pattern.fullmatch(path))]
    if not matched:
        raise ApiError(404, "Not found", f"no endpoint at {path}")
    for route, match in matched:
        if route.method == method:
            params = match.groupdict()
            if "dataset" in params and params["dataset"] not in DATASETS:
                raise ApiError(404, "Unknown dataset", f"no dataset {params['dataset']!r}; the datasets are {list(DATASETS)}")
            return route, params
    allowed = ", ".join(sorted({r.method for r, _ in matched}))
    raise ApiError(405, "Method not allowed", f"{method} is not allowed on {path}; use {allowed}", [("Allow", allowed)])


class Credentials:
    """`user:pass` is accepted as Basic, anything else as a Bearer token."""

    def __init__(self, credential: str, forbidden: str | None) -> None:
        self.scheme = "basic" if ":" in credential else "bearer"
        self.credential = credential
        self.forbidden = forbidden

    def check(self, headers: Any) -> None:
        """401 for a missing or wrong credential, 403 for the one that lacks the roles."""
        values = headers.get_all("Authorization") or []
        presented = self._presented(values[0]) if len(values) == 1 else None
        if presented is not None and _same(presented, self.credential):
            return
        if presented is not None and self.forbidden is not None and _same(presented, self.forbidden):
            raise ApiError(403, "Forbidden", "the account lacks the Mail Platform and LDAP User Groups roles")
        raise ApiError(401, "Unauthorized", "missing or wrong credentials")

    def _presented(self, header: str) -> str | None:
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() != self.scheme or not value:
            return None
        if self.scheme == "bearer":
            return value
        try:
            return base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None

    def challenge(self) -> list[tuple[str, str]]:
        return [("WWW-Authenticate", f'{self.scheme.capitalize()} realm="dirsync"')]


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


class SyncApi:
    """Turns HttpRequests into HttpResponses; every /v1 request is logged."""

    def __init__(
        self, store: Store, credentials: Credentials, domains: list[str], max_items: int, max_body_bytes: int, log_bodies: bool
    ) -> None:
        self.store = store
        self.credentials = credentials
        self.domains = domains
        self.max_items = max_items
        self.max_body_bytes = max_body_bytes
        self.log_bodies = log_bodies
        self.idempotency = IdempotencyRegistry()
        self.faults = FaultQueue()
        self.log: list[LoggedRequest] = []
        self._log_lock = threading.Lock()

    # ---- entry point ----------------------------------------------------------

    def handle(self, request: HttpRequest) -> HttpResponse:
        entry = LoggedRequest(request.method, request.path, request.query, request.headers.get("Idempotency-Key"), None, None)
        fault = self.faults.take(request.target)
        entry.fault = fault.kind if fault else None
        applies = fault is not None and (fault.kind in ("drop_after", "no_page_token") or fault.kind.startswith(APPLIED_PREFIX))
        if fault and not applies:
            entry.body = self._observe_faulted(request)
            response = self._fault_response(fault)
        else:
            try:
                response = self._handle(request, entry)
            except ApiError as error:
                response = self._error(error)
            except Exception as exc:  # a receiver bug: answer it instead of hanging the client
                traceback.print_exc()
                response = problem_response(ApiError(500, "Receiver bug", f"{type(exc).__name__}: {exc}"))
        if entry.fault == "no_page_token" and response.status == 200:
            page = json.loads(response.body)
            page.pop("nextPageToken", None)
            response = json_response(200, page)
        entry.status = None if response.drop or entry.fault == "drop_after" else response.status
        entry.response_bytes, entry.response_type = response.body, response.content_type
        with self._log_lock:
            self.log.append(entry)
        if entry.fault == "drop_after":
            return HttpResponse(drop=True)
        if fault is not None and fault.kind.startswith(APPLIED_PREFIX) and 200 <= response.status < 300:
            return self._fault_response(Fault(fault.kind[len(APPLIED_PREFIX):], fault.path_contains, 1, fault.retry_after))
        return response

    def _observe_faulted(self, request: HttpRequest) -> Any:
        """A faulted request still counts for key reuse; returns its JSON body for the log."""
        try:
            route, _ = resolve(request.method, request.path)
            key = idempotency_key(request, route)
            data = decode_entity(request, self.max_body_bytes) if route.body != "none" else b""
        except ApiError:
            return None
        if key is not None:
            with self.store.lock:
                self.idempotency.observe(key, fingerprint_of(request, data))
        try:
            return parse_json(data) if data and self.log_bodies else None
        except ApiError:
            return None

    def _error(self, error: ApiError) -> HttpResponse:
        headers = self.credentials.challenge() if error.status == 401 else []
        return problem_response(error, headers + error.headers)

    def _fault_response(self, fault: Fault) -> HttpResponse:
        kind = fault.kind
        if kind == "drop_before":
            return HttpResponse(drop=True)
        if kind in ("429", "503"):
            title = "Too many requests" if kind == "429" else "Service unavailable"
            return problem_response(ApiError(int(kind), title, "injected fault"), [("Retry-After", str(fault.retry_after))])
        if kind == "500":
            return problem_response(ApiError(500, "Internal server error", "injected fault"))
        if kind == "408":  # a gateway that timed out waiting for the request: it was never processed
            return problem_response(ApiError(408, "Request timeout", "injected fault"))
        if kind == "401":
            return self._error(ApiError(401, "Unauthorized", "injected fault: credentials refused"))
        if kind == "html":
            return HttpResponse(200, PROXY_PAGE, "text/html; charset=utf-8")
        if kind == "not_json":
            return HttpResponse(200, b"OK: accepted by the gateway", "application/json")
        if kind == "truncated_gzip":
            return HttpResponse(200, TRUNCATED_GZIP, "application/json", [("Content-Encoding", "gzip")])
        if kind == "deep_json":
            return HttpResponse(200, DEEP_JSON, "application/json")
        return json_response(200, {"result": "ok", "items": None})

    def _handle(self, request: HttpRequest, entry: LoggedRequest) -> HttpResponse:
        self.credentials.check(request.headers)
        route, params = resolve(request.method, request.path)
        key = idempotency_key(request, route)
        value, data = self._body(request, route)
        if self.log_bodies:
            entry.body = value
        query = parse_query(request.query)
        fingerprint = fingerprint_of(request, data)
        with self.store.lock:
            if key is not None:
                self.idempotency.observe(key, fingerprint)
                seen = self.idempotency.lookup(key, fingerprint)
                if seen is not None:
                    entry.replayed = True
                    return json_response(seen.status, seen.body, [("Idempotent-Replayed", "true")])
            status, answer = getattr(self, "_" + route.name)(params, query, value)
            if key is not None and 200 <= status < 300:
                self.idempotency.remember(key, fingerprint, status, answer)
            return json_response(status, answer)

    def _body(self, request: HttpRequest, route: Route) -> tuple[Any, bytes]:
        """The decoded JSON body (None when empty) and the uncompressed bytes it came from."""
        if route.body == "none":
            return None, b""
        data = decode_entity(request, self.max_body_bytes)
        if not data:
            if route.body == "required":
                raise ApiError(400, "Missing body", "this request needs a JSON body")
            return None, data
        check_json_content_type(request)
        value = parse_json(data)
        if route.body == "empty" and value != {}:
            raise ApiError(400, "Unexpected body", "this request takes no body, or an empty JSON object")
        return value, data

    # ---- endpoints (called with the store lock held) ----------------------------

    def _domains(self, params: dict[str, str], query: dict[str, str], value: Any) -> tuple[int, Any]:
        no_query(query)
        return 200, {"domains": list(self.domains)}

    def _list_records(self, params: dict[str, str], query: dict[str, str], value: Any) -> tuple[int, Any]:
        unknown = set(query) - {"pageSize", "pageToken"}
        if unknown:
            raise ApiError(400, "Bad query", f"unknown query parameters {sorted(unknown)}")
        size = page_size(query.get("pageSize"))
        token = query.get("pageToken")
        if token is not None and not token:
            raise ApiError(400, "Bad page token", "pageToken is empty; omit it for the first page")
        return 200, self.store.page(params["dataset"], size, token)

    def _changes(self, params: dict[str, str], query: dict[str, str], value: Any) -> tuple[int, Any]:
        no_query(query)
        upserts, deletes = change_lists(value)
        if len(upserts) + len(deletes) > self.max_items:
            raise ApiError(413, "Too many items", f"{len(upserts) + len(deletes)} items; at most {self.max_items} per request")
        return 200, self.store.apply_changes(params["dataset"], upserts, deletes)

    def _create_replacement(self, params: dict[str, str], query: dict[str, str], value: Any) -> tuple[int, Any]:
        no_query(query)
        return 201, {"replacementId": self.store.create_replacement(params["dataset"]).id}

    def _receive(self, params: dict[str, str], query: dict[str, str], value: Any) -> tuple[int, Any]:
        no_query(query)
        records = replacement_records(value)
        if len(records) > self.max_items:
            raise ApiError(413, "Too many items", f"{len(records)} records; at most {self.max_items} per request")
        replacement = self.store.replacement(params["dataset"], params["rid"])
        return 200, self.store.receive(replacement, records)

    def _commit(self, params: dict[str, str], query: dict[str, str], value: Any) -> tuple[int, Any]:
        no_query(query)
        return 200, self.store.commit(self.store.replacement(params["dataset"], params["rid"]))

    def _abandon(self, params: dict[str, str], query: dict[str, str], value: Any) -> tuple[int, Any]:
        no_query(query)
        self.store.abandon(self.store.replacement(params["dataset"], params["rid"]))
        return 204, None


# ---- request checks -------------------------------------------------------------


def fingerprint_of(request: HttpRequest, data: bytes) -> str:
    """What makes two requests "the same": method, path, query and uncompressed body bytes."""
    return f"{request.method} {request.path}?{request.query} {hashlib.sha256(data).hexdigest()}"


def idempotency_key(request: HttpRequest, route: Route) -> str | None:
    """The validated Idempotency-Key: 1..128 printable ASCII characters, sent once."""
    if route.key == "none":
        return None
    values = request.headers.get_all("Idempotency-Key") or []
    if not values:
        if route.key == "required":
            raise ApiError(400, "Missing Idempotency-Key", "this request needs an Idempotency-Key header")
        return None
    if len(values) > 1:
        raise ApiError(400, "Bad Idempotency-Key", "send exactly one Idempotency-Key header")
    key = values[0]
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise ApiError(400, "Bad Idempotency-Key", f"the Idempotency-Key is 1 to {MAX_KEY_LENGTH} characters, not {len(key)}")
    if not all(" " <= ch <= "~" for ch in key):
        raise ApiError(400, "Bad Idempotency-Key", "the Idempotency-Key is printable ASCII")
    return key


def parse_query(query: str) -> dict[str, str]:
    """Query parameters, each at most once."""
    pairs = parse_qsl(query, keep_blank_values=True)
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ApiError(400, "Bad query", "a query parameter is repeated")
    return dict(pairs)


def no_query(query: dict[str, str]) -> None:
    if query:
        raise ApiError(400, "Bad query", f"this endpoint takes no query parameters, got {sorted(query)}")


def page_size(raw: str | None) -> int:
    """pageSize is an integer from 1 to 5,000; 1,000 when absent."""
    if raw is None:
        return DEFAULT_PAGE_SIZE
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise ApiError(400, "Bad pageSize", f"pageSize is an integer from 1 to {MAX_PAGE_SIZE}, not {raw!r}")
    return int(raw)


def change_lists(value: Any) -> tuple[list[Any], list[str]]:
    """{"upsert": [object...], "delete": [string...]}; either list may be left out."""
    if not isinstance(value, dict):
        raise ApiError(400, "Wrong shape", "the body is a JSON object with upsert and delete lists")
    extra = sorted(set(value) - {"upsert", "delete"})
    if extra:
        raise ApiError(400, "Wrong shape", f"unknown members {extra}; only upsert and delete")
    upserts, deletes = value.get("upsert", []), value.get("delete", [])
    if not isinstance(upserts, list) or not all(isinstance(item, dict) for item in upserts):
        raise ApiError(400, "Wrong shape", "upsert is a list of record objects")
    if not isinstance(deletes, list) or not all(isinstance(key, str) for key in deletes):
        raise ApiError(400, "Wrong shape", "delete is a list of key strings")
    return upserts, deletes


def replacement_records(value: Any) -> list[Any]:
    """{"records": [object...]} and nothing else."""
    if not isinstance(value, dict) or set(value) != {"records"}:
        raise ApiError(400, "Wrong shape", 'the body is exactly {"records": [...]}')
    records = value["records"]
    if not isinstance(records, list) or not all(isinstance(item, dict) for item in records):
        raise ApiError(400, "Wrong shape", "records is a list of record objects")
    return records

