"""The settings of the state alone, for the operations that never reach Graph or the sync API:
``status`` and ``approve-deletions`` read and write only the state, so they need no Graph or
sync API setting and no secret (``load_settings`` validates what they read, the same way)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from .settings import Settings, load_settings

STATE_SETTING_NAMES = (
    "SYNC_STATE",
    "AzureWebJobsStorage",
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__serviceUri",
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__clientId",
    "AZURE_CLIENT_ID",
)
_INERT_SOURCES = {
    "GRAPH_AUTH": "none",
    "GRAPH_BASE_URL": "http://127.0.0.1/v1.0",
    "SYNC_API_URL": "http://127.0.0.1/v1",
    "SYNC_API_CREDENTIAL": "unused",
}


def load_state_settings(env: Mapping[str, str] | None = None) -> Settings:
    """The settings of the state alone (``SYNC_STATE`` and the storage account), validated
    exactly as ``load_settings`` validates them; raises ``SettingsError`` naming the setting.

    Only ``state``, ``storage_*`` and ``managed_identity_client_id`` of the result are
    meaningful: the Graph and sync API fields hold inert loopback placeholders that no
    caller of this function uses."""
    env = os.environ if env is None else env
    only_state = {name: env[name] for name in STATE_SETTING_NAMES if name in env}
    return load_settings({**only_state, **_INERT_SOURCES})
