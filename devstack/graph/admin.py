"""Admin endpoints under ``/_emulator/`` for an emulator in another process (see ``devstack.graph_emulator``)."""

from __future__ import annotations

from typing import Any

from devstack.graph.model import COLLECTIONS, Response
from devstack.graph.wire import _json_body, _json_response


class AdminMixin:
    """Mixin of :class:`GraphEmulator`: the ``/_emulator/`` endpoints."""

    # --- admin endpoints (for an emulator in a subprocess) ---------------------------------------------
    _MUTATIONS: dict[str, str] = {
        "upsert_user": "upsert_user",
        "delete_user": "delete_user",
        "upsert_group": "upsert_group",
        "delete_group": "delete_group",
        "upsert_contact": "upsert_contact",
        "delete_contact": "delete_contact",
        "upsert_device": "upsert_device",
        "delete_device": "delete_device",
        "upsert_service_principal": "upsert_service_principal",
        "delete_service_principal": "delete_service_principal",
        "add_member": "add_member",
        "remove_member": "remove_member",
        "expire_delta_tokens": "expire_delta_tokens",
    }

    def _admin(self, method: str, path: str, body: bytes) -> Response:
        try:
            if method == "GET" and path == "/_emulator/stats":
                with self._lock:
                    stats = {
                        "requestCount": self.request_count,
                        "watermark": self._seq,
                        "objects": {c: len(self._objects[c]) for c in COLLECTIONS},
                        "memberships": sum(len(m) for m in self._members.values()),
                        "pendingFaults": sum(f.times for f in self._faults),
                    }
                return _json_response(200, stats)
            if method == "GET" and path == "/_emulator/requests":
                with self._lock:
                    return _json_response(200, {"requests": [list(r) for r in self.request_log]})
            if method == "GET" and path == "/_emulator/snapshot":
                return _json_response(200, self.snapshot())
            if method != "POST":
                return _json_response(405, {"error": f"{method} {path} is not an admin endpoint"})
            if path == "/_emulator/mutations":
                return _json_response(200, {"applied": self._apply_mutations(_json_body(body)), "watermark": self._seq})
            if path == "/_emulator/faults":
                data = _json_body(body)
                for spec in data if isinstance(data, list) else [data]:
                    self.inject_fault(
                        str(spec["kind"]),
                        path_contains=spec.get("path_contains", ""),
                        times=int(spec.get("times", 1)),
                        retry_after=spec.get("retry_after", 1),
                    )
                return _json_response(200, {"ok": True})
            if path == "/_emulator/faults/clear":
                self.clear_faults()
                return _json_response(200, {"ok": True})
            if path == "/_emulator/script-round":
                data = _json_body(body)
                self.script_round(str(data["collection"]), data["pages"])
                return _json_response(200, {"ok": True})
            if path == "/_emulator/expire-delta-tokens":
                self.expire_delta_tokens()
                return _json_response(200, {"ok": True})
            if path == "/_emulator/stats/reset":
                self.reset_stats()
                return _json_response(200, {"ok": True})
            if path == "/_emulator/latency":
                self.latency = float(_json_body(body)["latency"])
                return _json_response(200, {"ok": True})
            return _json_response(404, {"error": f"no admin endpoint {path}"})
        except (KeyError, ValueError, TypeError) as exc:
            return _json_response(400, {"error": f"{type(exc).__name__}: {exc}"})

    def _apply_mutations(self, ops: Any) -> int:
        """Apply ``[{"op": name, "args": {...}}]`` in order, under one lock hold (no reader sees half a
        batch). The first failing op stops the batch with a 400; the ops before it stay applied."""
        if not isinstance(ops, list):
            raise ValueError("the body must be a JSON list of {op, args}")
        with self._lock:
            for n, item in enumerate(ops):
                name = self._MUTATIONS.get(item.get("op", "")) if isinstance(item, dict) else None
                if name is None:
                    raise ValueError(f"item {n}: unknown op {item!r}; use one of {', '.join(self._MUTATIONS)}")
                getattr(self, name)(**(item.get("args") or {}))
        return len(ops)
