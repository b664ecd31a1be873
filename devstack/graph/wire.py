"""Graph's wire format: object JSON for a ``$select``, pages, error bodies, and query-option parsing."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote

from devstack.graph.model import _COLLECTION_VALUED, _MISSING, DEFAULT_PAGE_SIZE, GraphError, Response, _dumps, _quote_json


# --- helpers ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def _spec(props: tuple[str, ...]) -> tuple[tuple[str, str, Any], ...]:
    """Per selected property: its JSON key prefix, its name, and the value served when absent."""
    return tuple((_quote_json(p) + ":", p, [] if p in _COLLECTION_VALUED else None) for p in props)


def _object_json(obj: Mapping[str, Any], spec: tuple[tuple[str, str, Any], ...]) -> str:
    """Compact JSON of the selected properties; strings and lists of strings (nearly every value in
    a directory) skip the generic encoder, which makes a cold 100,000-user read ~25% cheaper."""
    get = obj.get
    parts = []
    for key, prop, default in spec:
        value = get(prop, default)
        kind = type(value)
        if kind is str:
            parts.append(key + _quote_json(value))
        elif value is None:
            parts.append(key + "null")
        elif kind is list:
            try:
                parts.append(key + "[" + ",".join(map(_quote_json, value)) + "]")
            except TypeError:  # not all strings
                parts.append(key + _dumps(value))
        else:
            parts.append(key + _dumps(value))
    return "{" + ",".join(parts) + "}"


def _value(obj: Mapping[str, Any], prop: str) -> Any:
    value = obj.get(prop, _MISSING)
    if value is _MISSING:
        return [] if prop in _COLLECTION_VALUED else None
    return value


def _select_text(props: tuple[str, ...]) -> str:
    return ",".join(props)


def _page(
    context: str, values: Iterable[str], *, next_link: str | None = None, delta_link: str | None = None, count: int | None = None
) -> bytes:
    parts = ['{"@odata.context":', _dumps(context)]
    if count is not None:
        parts += [',"@odata.count":', str(count)]
    if next_link is not None:
        parts += [',"@odata.nextLink":', _dumps(next_link)]
    if delta_link is not None:
        parts += [',"@odata.deltaLink":', _dumps(delta_link)]
    parts += [',"value":[', ",".join(values), "]}"]
    return "".join(parts).encode("utf-8")


def _error_response(exc: GraphError, request_id: str) -> Response:
    inner: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "request-id": request_id, "client-request-id": request_id}
    if exc.inner_code is not None:
        inner = {"code": exc.inner_code, **inner}
    body = _dumps({"error": {"code": exc.code, "message": exc.message, "innerError": inner}}).encode()
    return Response(exc.status, body, dict(exc.headers))


def _json_response(status: int, data: Any) -> Response:
    return Response(status, _dumps(data).encode(), {"Content-Type": "application/json"})


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError as exc:
        raise ValueError(f"the body is not JSON: {exc}") from None


def _not_found(oid: str) -> GraphError:
    return GraphError(
        404,
        "Request_ResourceNotFound",
        f"Resource '{oid}' does not exist or one of its queried reference-property objects are not present.",
    )


def _check_auth(headers: Mapping[str, str]) -> None:
    auth = headers.get("Authorization") or ""
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise GraphError(
            401,
            "InvalidAuthenticationToken",
            "Access token is empty." if not auth else "IDX14100: JWT is not well formed.",
            {
                "WWW-Authenticate": 'Bearer realm="", authorization_uri='
                '"https://login.microsoftonline.com/common/oauth2/authorize", '
                'client_id="00000003-0000-0000-c000-000000000000"'
            },
        )


def _unquote_path(text: str) -> str:
    return unquote(text)


def _parse_query(query: str) -> dict[str, str]:
    """System query options, case-insensitive, with or without ``$`` (OData 4.01 allows both)."""
    params: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        low = key.lower()
        if not low.startswith("$") and low in {
            "select",
            "top",
            "skiptoken",
            "deltatoken",
            "count",
            "filter",
            "orderby",
            "search",
            "expand",
            "skip",
        }:
            low = "$" + low
        params[low] = value
    return params


def _reject_unsupported(params: Mapping[str, str], *, allow_expand_members: bool) -> None:
    """Options the emulator does not implement fail loudly rather than being silently ignored."""
    for option in ("$filter", "$orderby", "$search", "$skip"):
        if option in params:
            raise GraphError(400, "Request_BadRequest", f"The emulator does not support the query option '{option}'.")
    expand = params.get("$expand")
    if expand is not None and not (allow_expand_members and expand.strip().lower() == "members"):
        raise GraphError(400, "Request_BadRequest", f"The emulator does not support $expand={expand}.")


def _parse_top(raw: str | None, limit: int) -> int:
    if raw is None:
        return min(DEFAULT_PAGE_SIZE, limit)
    try:
        top = int(raw)
    except ValueError:
        raise GraphError(400, "Request_BadRequest", f"Invalid value '{raw}' for $top.") from None
    if not 1 <= top <= 999:
        raise GraphError(400, "Request_BadRequest", f"Invalid page size specified: '{top}'. Must be between 1 and 999 inclusive.")
    return min(top, limit)


def _prefer_page_size(prefer: str | None) -> int | None:
    """``Prefer: odata.maxpagesize=N`` (possibly among other preferences)."""
    if not prefer:
        return None
    for pref in prefer.split(","):
        name, _, value = pref.strip().partition("=")
        if name.strip().lower() == "odata.maxpagesize":
            try:
                return max(1, int(value.strip().strip('"')))
            except ValueError:
                return None
    return None


def _prefer_minimal(prefer: str | None) -> bool:
    """``Prefer: return=minimal`` (possibly among other preferences): a delta round then serves an
    updated object with only the properties that changed (Graph: "user: delta", "group: delta")."""
    if not prefer:
        return False
    for pref in prefer.split(","):
        name, _, value = pref.strip().partition("=")
        if name.strip().lower() == "return" and value.strip().strip('"').lower() == "minimal":
            return True
    return False
