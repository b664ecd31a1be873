"""Plain reads: ``/{collection}``, ``/{collection}/{id}`` and ``/groups/{id}/members`` with ``$select``,
``$top`` and ``$skiptoken`` paging, and the routing of every ``/v1.0`` path.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Mapping, Sequence
from urllib.parse import quote

from devstack.graph.model import (
    _DELTA_SEGMENTS,
    _SEGMENTS,
    _TYPE_NAMES,
    COLLECTIONS,
    DEFAULT_PROPERTIES,
    KNOWN_PROPERTIES,
    ODATA_TYPES,
    GraphError,
    _b64,
    _dumps,
    _unb64,
)
from devstack.graph.wire import _not_found, _object_json, _page, _parse_top, _reject_unsupported, _select_text, _spec


class PagingMixin:
    """Mixin of :class:`GraphEmulator`: routing, paged collections, ``$select`` and cached object JSON
    (``_frags``, per collection and ``$select``; the store drops an object's entry when it changes)."""

    def _route(self, path: str, params: dict[str, str], headers: Mapping[str, str]) -> tuple[int, bytes, dict[str, str]]:
        segments = [s for s in path[len("/v1.0/") :].split("/") if s]
        coll = _SEGMENTS.get(segments[0].lower()) if segments else None
        if coll is None:
            raise GraphError(400, "Request_BadRequest", f"Resource not found for the segment '{segments[0] if segments else ''}'.")
        _reject_unsupported(params, allow_expand_members=coll == "groups" and len(segments) == 2)
        if len(segments) == 1:
            return 200, self._list_page(coll, params), {}
        if len(segments) == 2 and segments[1].lower() in _DELTA_SEGMENTS:
            return self._delta_page(coll, segments[1], params, headers)
        if len(segments) == 2:
            return 200, self._get_object(coll, segments[1], params), {}
        if len(segments) == 3 and coll == "groups" and segments[2].lower() == "members":
            return 200, self._members_page(segments[1], params), {}
        raise GraphError(400, "Request_BadRequest", f"Resource not found for the segment '{segments[-1]}'.")

    # --- plain collections ------------------------------------------------------------------------
    def _list_page(self, coll: str, params: dict[str, str]) -> bytes:
        select = params.get("$select")
        props = self._parse_select(coll, select)[0]
        top = _parse_top(params.get("$top"), self.max_page_size)
        after = self._list_cursor(params.get("$skiptoken"), coll)
        with self._lock:
            ids = self._ids(coll)
            start = bisect.bisect_right(ids, after) if after is not None else 0
            chunk = ids[start : start + top]
            values = self._fragments(coll, chunk, props)
            more = start + top < len(ids)
            count = len(ids)
        link = None
        if more:
            token = _b64(_dumps({"k": "list", "c": coll, "a": chunk[-1]}).encode())
            link = self._link(coll, {"$select": _select_text(props) if select is not None else None, "$top": str(top), "$skiptoken": token})
        return _page(
            self._context(coll, props if select is not None else None),
            values,
            next_link=link,
            count=count if params.get("$count") == "true" else None,
        )

    def _get_object(self, coll: str, oid: str, params: dict[str, str]) -> bytes:
        props = self._parse_select(coll, params.get("$select"))[0]
        with self._lock:
            if oid not in self._objects[coll]:
                raise _not_found(oid)
            frag = self._fragment(coll, oid, props)
        context = _dumps(f"{self.base_url}/$metadata#{coll}/$entity")
        return ('{"@odata.context":' + context + "," + frag[1:]).encode()

    def _members_page(self, gid: str, params: dict[str, str]) -> bytes:
        """Direct members, each with ``@odata.type``; $select applies per member type."""
        select = params.get("$select")
        requested = self._parse_member_select(select)
        top = _parse_top(params.get("$top"), self.max_page_size)
        after = self._list_cursor(params.get("$skiptoken"), f"members:{gid}")
        with self._lock:
            if gid not in self._members:
                raise _not_found(gid)
            mids = self._member_ids(gid)
            start = bisect.bisect_right(mids, after) if after is not None else 0
            per_type = {c: DEFAULT_PROPERTIES[c] if requested is None else self._props_for(c, requested) for c in COLLECTIONS}
            values: list[str] = []
            last = None
            i = start
            while i < len(mids) and len(values) < top:
                mid = mids[i]
                i += 1
                mcoll = self._kind.get(mid)
                if mcoll is None:
                    continue
                props = per_type[mcoll]
                values.append('{"@odata.type":"' + ODATA_TYPES[mcoll] + '",' + self._fragment(mcoll, mid, props)[1:])
                last = mid
            more = i < len(mids)
        link = None
        if more and last is not None:
            token = _b64(_dumps({"k": "list", "c": f"members:{gid}", "a": last}).encode())
            link = self._link(
                f"groups/{quote(gid, safe='')}/members",
                {"$select": ",".join(requested) if requested is not None else None, "$top": str(top), "$skiptoken": token},
            )
        return _page(f"{self.base_url}/$metadata#directoryObjects", values, next_link=link)

    def _list_cursor(self, token: str | None, scope: str) -> str | None:
        if token is None:
            return None
        try:
            data = json.loads(_unb64(token))
            if data.get("k") != "list" or data.get("c") != scope or not isinstance(data.get("a"), str):
                raise ValueError
            return data["a"]
        except (ValueError, TypeError, AttributeError, UnicodeDecodeError):
            raise GraphError(400, "Request_BadRequest", "Invalid $skiptoken.") from None

    # --- $select, fragments, links ------------------------------------------------------------------
    def _parse_select(self, coll: str, select: str | None, *, allow_members: bool = False) -> tuple[tuple[str, ...], bool]:
        """Canonical property tuple (``id`` first) and whether ``members`` was named. Unknown -> 400."""
        if select is None:
            return DEFAULT_PROPERTIES[coll], False
        known = {p.lower(): p for p in (*KNOWN_PROPERTIES[coll], *self._extra[coll])}
        out, members = ["id"], False
        for name in (n.strip() for n in select.split(",")):
            if not name:
                continue
            if name.lower() == "members" and coll == "groups":
                members = allow_members  # a navigation property: tracked by delta, ignored elsewhere
                continue
            canonical = known.get(name.lower())
            if canonical is None:
                raise GraphError(400, "Request_BadRequest", f"Could not find a property named '{name}' on type '{_TYPE_NAMES[coll]}'.")
            if canonical not in out:
                out.append(canonical)
        return tuple(out), members

    def _parse_member_select(self, select: str | None) -> tuple[str, ...] | None:
        if select is None:
            return None
        known: dict[str, str] = {}
        for coll in COLLECTIONS:
            known.update({p.lower(): p for p in (*KNOWN_PROPERTIES[coll], *self._extra[coll])})
        out = ["id"]
        for name in (n.strip() for n in select.split(",")):
            if not name:
                continue
            canonical = known.get(name.lower())
            if canonical is None:
                raise GraphError(
                    400, "Request_BadRequest", f"Could not find a property named '{name}' on type 'microsoft.graph.directoryObject'."
                )
            if canonical not in out:
                out.append(canonical)
        return tuple(out)

    def _props_for(self, coll: str, requested: tuple[str, ...]) -> tuple[str, ...]:
        valid = KNOWN_PROPERTIES[coll] | self._extra[coll]
        return tuple(p for p in requested if p in valid)

    def _fragment(self, coll: str, oid: str, props: tuple[str, ...]) -> str:
        """The object's JSON for this $select, cached until the object changes."""
        return self._fragments(coll, (oid,), props)[0]

    def _fragments(self, coll: str, ids: Sequence[str], props: tuple[str, ...]) -> list[str]:
        """JSON of several objects for one $select (the per-page loop of a full read: keep it lean)."""
        cache = self._frags.get((coll, props))
        if cache is None:
            if len(self._frags) > 32:
                self._frags.pop(next(iter(self._frags)))
            cache = self._frags[(coll, props)] = {}
        spec, objects, out = _spec(props), self._objects[coll], []
        for oid in ids:
            text = cache.get(oid)
            if text is None:
                text = cache[oid] = _object_json(objects[oid], spec)
            out.append(text)
        return out

    def _context(self, coll: str, props: tuple[str, ...] | None, members: bool = False) -> str:
        if props is None:
            return f"{self.base_url}/$metadata#{coll}"
        names = list(props) + (["members"] if members else [])
        return f"{self.base_url}/$metadata#{coll}({','.join(names)})"

    def _link(self, path: str, params: Mapping[str, str | None]) -> str:
        query = "&".join(f"{k}={quote(v, safe=',')}" for k, v in params.items() if v is not None)
        return f"{self.base_url}/{path}" + (f"?{query}" if query else "")
