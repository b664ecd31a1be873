"""The Microsoft Graph settings (docs/sync-rules.md, "Settings"): ``GRAPH_AUTH``,
``GRAPH_BASE_URL``, ``GRAPH_TENANT_ID``, ``GRAPH_CLIENT_ID`` and ``AZURE_CLIENT_ID``."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..common.errors import SettingsError
from ..common.netutil import is_loopback_host, url_problem
from .values import TENANT_EXAMPLE, Getter, check_tenant, is_guid

GRAPH_AUTH_MODES = ("client_secret", "managed_identity", "none")
DEFAULT_GRAPH_BASE_URL = "https://graph.microsoft.com/v1.0"
BASIC_SIGN_IN_MODES = ("password", "username_password", "basic", "ropc")
BASIC_SIGN_IN_REFUSAL = (
    "username and password sign-in is not offered: Exchange Online retired basic authentication, and a password "
    "sign-in cannot pass the multifactor authentication that admin accounts require"
)


def read_graph(get: Getter) -> dict[str, Any]:
    """GRAPH_AUTH, GRAPH_BASE_URL, GRAPH_TENANT_ID, GRAPH_CLIENT_ID (and AZURE_CLIENT_ID, the
    managed identity's client id) → the matching ``Settings`` fields."""
    graph_auth = (get("GRAPH_AUTH") or "client_secret").lower()
    if graph_auth in BASIC_SIGN_IN_MODES:
        raise SettingsError("GRAPH_AUTH", f"{graph_auth!r}: {BASIC_SIGN_IN_REFUSAL}", "client_secret or managed_identity")
    if graph_auth not in GRAPH_AUTH_MODES:
        raise SettingsError("GRAPH_AUTH", f"unknown mode {graph_auth!r}; use one of {', '.join(GRAPH_AUTH_MODES)}", "client_secret")

    graph_base_url = (get("GRAPH_BASE_URL") or DEFAULT_GRAPH_BASE_URL).rstrip("/")
    problem = url_problem(graph_base_url)
    if problem:
        raise SettingsError("GRAPH_BASE_URL", problem, DEFAULT_GRAPH_BASE_URL)
    # 'none' sends Graph no token, so Graph must be a local emulator; with EXO_MODE=only Graph is
    # never read (EXO_BASE_URL then has the same rule, shared/config/exo_settings.py).
    graph_read = (get("EXO_MODE") or "off").strip().lower() != "only"
    if graph_auth == "none" and graph_read and not is_loopback_host(urlsplit(graph_base_url).hostname):
        raise SettingsError("GRAPH_AUTH", "'none' is only allowed when GRAPH_BASE_URL is a loopback address", "client_secret")

    tenant = get("GRAPH_TENANT_ID")
    client_id = get("GRAPH_CLIENT_ID")
    if graph_auth != "none":
        if tenant is None:
            raise SettingsError("GRAPH_TENANT_ID", "is required", TENANT_EXAMPLE)
        check_tenant(tenant)
        if client_id is None:
            raise SettingsError("GRAPH_CLIENT_ID", "is required", "00000000-0000-0000-0000-000000000000 (the app registration's Application (client) ID)")
        if not is_guid(client_id):
            raise SettingsError("GRAPH_CLIENT_ID", "is not a GUID", "00000000-0000-0000-0000-000000000000")
    return {"graph_auth": graph_auth, "graph_base_url": graph_base_url, "graph_tenant_id": tenant, "graph_client_id": client_id,
            "managed_identity_client_id": get("AZURE_CLIENT_ID")}
