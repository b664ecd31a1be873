"""The Graph emulator: state and the dispatch of one request; the rest lives in the mixins, the
socket layer and lifecycle in ``devstack.http_server``."""

from __future__ import annotations

import gzip
import json
import secrets
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from devstack.graph.admin import AdminMixin
from devstack.graph.delta import DeltaMixin, _ChangeState
from devstack.graph.faults import _BODY_FAULTS, FaultsMixin, _Fault
from devstack.graph.model import COLLECTIONS, CONTENT_TYPE, GraphError, Response, _dumps
from devstack.graph.paging import PagingMixin
from devstack.graph.scripted import ScriptedRounds
from devstack.graph.store import DirectoryStore
from devstack.graph.wire import _check_auth, _error_response, _parse_query, _unquote_path
from devstack.http_server import LoopbackService


class GraphEmulator(LoopbackService, DirectoryStore, PagingMixin, DeltaMixin, ScriptedRounds, FaultsMixin, AdminMixin):
    """Microsoft Graph v1.0, in memory, over real HTTP on 127.0.0.1. Thread-safe.

    ``start(port=0, host="127.0.0.1")`` serves it from a thread and returns the base URL
    ``http://host:port/v1.0``; ``stop()`` (or ``with``) ends it (``devstack.http_server``)."""

    thread_name = "graph-emulator"
    url_path = "/v1.0"

    def __init__(
        self,
        directory: dict | None = None,
        *,
        require_auth: bool = False,
        latency: float = 0.0,
        max_page_size: int = 999,
        delta_token_ttl: float | None = None,
        max_members_per_page: int = 500,
        delta_properties: str = "selected",
    ) -> None:
        if max_members_per_page < 1 or max_page_size < 1:
            raise ValueError("max_page_size and max_members_per_page must be >= 1")
        if delta_properties not in ("changed", "selected"):
            raise ValueError("delta_properties is 'changed' or 'selected'")
        # What an incremental round serves for an updated object: "changed", id + the selected
        # properties that changed (Graph's answer under Prefer: return=minimal); "selected", id +
        # every selected property the object ever had set, changed or not (Graph's default without
        # that header: "user: delta", "group: delta"). Prefer: return=minimal always gives "changed".
        self.delta_properties = delta_properties
        self._minimal = True
        self.require_auth = require_auth
        self.latency = latency
        self.max_page_size = max_page_size
        self.delta_token_ttl = delta_token_ttl
        self.max_members_per_page = max_members_per_page
        self.base_url = ""
        self.request_log: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._key = secrets.token_bytes(32)
        self._epoch = 0
        self._seq = 0
        self._objects: dict[str, dict[str, dict[str, Any]]] = {c: {} for c in COLLECTIONS}
        self._members: dict[str, dict[str, None]] = {}  # group id -> ordered set of member ids
        self._kind: dict[str, str] = {}  # object id -> collection
        self._extra: dict[str, set[str]] = {c: set() for c in COLLECTIONS}
        self._sorted_ids: dict[str, list[str] | None] = {c: None for c in COLLECTIONS}
        self._sorted_members: dict[str, list[str]] = {}
        self._refs: dict[str, str] = {}  # member id -> its members@delta entry
        self._member_refs: dict[str, list[str | None]] = {}  # group id -> refs aligned with sorted members
        self._dangling_groups: set[str] = set()  # groups holding ids of no object (only from a loaded directory)
        self._parents: dict[str, set[str]] | None = None  # member id -> group ids; built on the first delete
        self._frags: dict[tuple[str, tuple[str, ...]], dict[str, str]] = {}
        self._logs: dict[str, list[tuple[int, str, str, Any]]] = {c: [] for c in COLLECTIONS}
        self._log_seqs: dict[str, list[int]] = {c: [] for c in COLLECTIONS}
        self._rounds: OrderedDict[tuple[str, int, int], tuple[list[str], dict[str, _ChangeState]]] = OrderedDict()
        self._faults: list[_Fault] = []
        self._scripts: dict[str, list[list[list[dict[str, Any]]]]] = {c: [] for c in COLLECTIONS}  # queued scripted rounds
        self._script_runs: dict[str, tuple[list[list[str]], int, list[str] | None]] = {}  # id -> (pages, watermark, select)
        if directory:
            self._load(directory)

    @property
    def request_count(self) -> int:
        """Graph requests served (``/v1.0`` only; admin calls are not counted)."""
        return len(self.request_log)

    def reset_stats(self) -> None:
        with self._lock:
            self.request_log.clear()

    # --- request handling -----------------------------------------------------------------------
    def handle(self, method: str, raw_target: str, headers: Mapping[str, str], body: bytes = b"") -> Response:
        """Answer one HTTP request (the socket layer is ``devstack.http_server.EmulatorHandler``)."""
        parts = urlsplit(raw_target)
        path = _unquote_path(parts.path)
        if path.startswith("/_emulator/"):
            return self._admin(method, path, body)
        target = path + ("?" + _unquote_path(parts.query) if parts.query else "")
        request_id = str(uuid.uuid4())
        resp = self._graph(method, path, parts.query, target, headers, request_id)
        resp.headers.setdefault("Content-Type", CONTENT_TYPE)
        resp.headers["request-id"] = request_id
        resp.headers["client-request-id"] = headers.get("client-request-id") or request_id
        resp.headers["OData-Version"] = "4.0"
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    def _graph(self, method: str, path: str, query: str, target: str, headers: Mapping[str, str], request_id: str) -> Response:
        with self._lock:
            self.request_log.append((method, target))
        if self.latency > 0:
            # Re-read while waiting: lowering the latency releases a request already waiting
            # (a test holds a run mid-read with a large latency, then lets it go).
            started = time.monotonic()
            while time.monotonic() - started < self.latency:
                time.sleep(min(0.02, max(self.latency, 0.0)))
        try:
            if not path.startswith("/v1.0/"):
                raise GraphError(404, "Request_BadRequest", f"Invalid version or path: {path}")
            if self.require_auth:
                _check_auth(headers)
            fault = self._take_fault(target)
            if fault is not None and fault.kind not in _BODY_FAULTS:
                return self._fault_response(fault, path, request_id)
            if method != "GET":
                raise GraphError(405, "Request_BadRequest", f"The emulator serves GET only, not {method}.")
            params = _parse_query(query)
            status, body, extra = self._route(path, params, headers)
            if fault is not None and fault.kind == "malformed":  # the real page, cut short
                body = body[: max(1, len(body) // 2)]
            elif fault is not None and fault.kind == "no_links":  # the real page, without the links that say what follows
                page = json.loads(body)
                for link in ("@odata.nextLink", "@odata.deltaLink"):
                    page.pop(link, None)
                body = _dumps(page).encode()
            elif fault is not None and fault.kind == "loop_link":  # the real page, its nextLink back at this very page
                page = json.loads(body)
                page.pop("@odata.deltaLink", None)
                page["@odata.nextLink"] = self.base_url[: len(self.base_url) - len(self.url_path)] + target
                body = _dumps(page).encode()
            elif fault is not None:  # truncated_gzip: the real page, compressed, the stream cut short
                packed = gzip.compress(body, mtime=0)
                body = packed[: max(1, len(packed) // 2)]
                extra = {**extra, "Content-Encoding": "gzip"}
            return Response(status, body, extra)
        except GraphError as exc:
            return _error_response(exc, request_id)
        except Exception:  # an emulator bug: answer in Graph's shape, and show it on stderr
            traceback.print_exc()
            return _error_response(GraphError(500, "generalException", "The Graph emulator failed; see its stderr."), request_id)
