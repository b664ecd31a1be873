"""Where the state lives: ``SYNC_STATE`` (``file:<directory>`` or ``blob:<container>``) and the
storage account of ``blob:`` state, ``AzureWebJobsStorage`` (a connection string) or its
identity-based ``AzureWebJobsStorage__*`` settings (docs/sync-rules.md, "Settings")."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..common.errors import SettingsError
from ..common.netutil import url_problem
from ..common.redact import register
from .values import Getter

DEFAULT_STATE = "blob:sync-state"
_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")
_CONTAINER = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9]))*$")


@dataclass(frozen=True)
class StateLocation:
    kind: str  # "file" or "blob"
    where: str  # directory path or container name


def read_state(get: Getter) -> StateLocation:
    """SYNC_STATE: ``file:<directory>`` or ``blob:<container>`` (default ``blob:sync-state``)."""
    raw = get("SYNC_STATE") or DEFAULT_STATE
    kind, sep, where = raw.partition(":")
    kind = kind.strip().lower()
    where = where.strip()
    if not sep or kind not in ("file", "blob") or not where:
        raise SettingsError("SYNC_STATE", f"{raw!r} is neither file:<directory> nor blob:<container>", "blob:sync-state or file:/home/data/sync-state")
    if kind == "blob" and not _CONTAINER.match(where):
        raise SettingsError("SYNC_STATE", f"{where!r} is not a blob container name (3-63 lowercase letters, digits, single hyphens)", "blob:sync-state")
    return StateLocation(kind, where)


def read_storage(get: Getter, state: StateLocation) -> dict[str, Any]:
    """AzureWebJobsStorage (connection string) or AzureWebJobsStorage__blobServiceUri /
    __serviceUri / __accountName / __clientId (identity): required for ``blob:`` state."""
    conn = get("AzureWebJobsStorage")
    blob_uri = get("AzureWebJobsStorage__blobServiceUri") or get("AzureWebJobsStorage__serviceUri")
    _check_storage_secrets(conn, {n: get(n) for n in ("AzureWebJobsStorage__blobServiceUri", "AzureWebJobsStorage__serviceUri")})
    account = get("AzureWebJobsStorage__accountName")
    if account is not None and not _ACCOUNT.match(account):
        raise SettingsError("AzureWebJobsStorage__accountName", "is not a storage account name (3-24 lowercase letters and digits)", "mystorage")
    if blob_uri is None and account is not None:
        blob_uri = f"https://{account}.blob.core.windows.net"
    if state.kind == "blob":
        if conn is None and blob_uri is None:
            raise SettingsError(
                "AzureWebJobsStorage",
                f"SYNC_STATE={state.kind}:{state.where} needs the storage account: set AzureWebJobsStorage (a connection "
                "string) or AzureWebJobsStorage__blobServiceUri (identity-based); or, for a state on this machine, "
                "SYNC_STATE=file:<directory>",
                "https://mystorage.blob.core.windows.net for AzureWebJobsStorage__blobServiceUri",
            )
        if conn is not None and conn.lower() != "usedevelopmentstorage=true" and "=" not in conn:
            raise SettingsError("AzureWebJobsStorage", "is not a storage connection string", "DefaultEndpointsProtocol=https;AccountName=...;EndpointSuffix=core.windows.net")
        if blob_uri is not None and conn is None:
            problem = url_problem(blob_uri)
            if problem:
                source = next((n for n in ("AzureWebJobsStorage__blobServiceUri", "AzureWebJobsStorage__serviceUri") if get(n) == blob_uri),
                              "AzureWebJobsStorage__accountName")
                raise SettingsError(source, problem, "https://mystorage.blob.core.windows.net")
    return {"storage_connection_string": conn, "storage_blob_uri": blob_uri, "storage_client_id": get("AzureWebJobsStorage__clientId")}


def _check_storage_secrets(conn: str | None, uris: Mapping[str, str | None]) -> None:
    """A connection string's AccountKey / SharedAccessSignature values are secrets: register
    them for scrubbing (``shared/common/redact.py``). A storage URI must not carry a query string (a
    SAS token would be echoed into status, errors, logs and reports): refused, naming the
    setting, never the value."""
    for part in (conn or "").split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() in ("accountkey", "sharedaccesssignature") and value.strip():
            register(value.strip())
    for setting, raw in uris.items():
        if raw and ("?" in raw or "#" in raw):
            if "?" in raw:
                register(raw.split("?", 1)[1])
            raise SettingsError(setting, "must not carry a query string or fragment (a SAS token is a secret: use the "
                                "function app's managed identity, or a connection string in Key Vault)", "https://mystorage.blob.core.windows.net")
