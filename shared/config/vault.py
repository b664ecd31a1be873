"""The two secrets: from Key Vault (with the Function's managed identity) or, locally, from the
environment. Values are wrapped in ``Secret`` at once; expiry dates are checked so an expiring
client secret is reported weeks before it breaks the sync."""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..common.carriable import CREDENTIAL_EXAMPLE, form_secret_problem, header_credential_problem
from ..common.errors import SecretError, SettingsError
from ..common.redact import Secret
from .settings import Settings

log = logging.getLogger("shared.vault")  # the name its log lines have always carried

WARN_DAYS = 30
ERROR_DAYS = 7
ROTATE_HINT = "rotate it with infra/scripts/rotate-graph-secret.sh"
SYNC_ENV_HINT = "set it to the sync API account's current username:password (sent as Basic) or token (sent as Bearer)"


@dataclass
class Secrets:
    graph_client_secret: Secret | None
    sync_api_credential: Secret
    expiry_warnings: list[str]


def load_secrets(settings: Settings, env: Mapping[str, str] | None = None, *, secret_client: Any = None) -> Secrets:
    env = os.environ if env is None else env
    if settings.key_vault_url is None:
        graph = env.get("GRAPH_CLIENT_SECRET", "").strip()
        cred = env.get("SYNC_API_CREDENTIAL", "").strip()
        for setting, value, check in (("GRAPH_CLIENT_SECRET", graph, form_secret_problem), ("SYNC_API_CREDENTIAL", cred, header_credential_problem)):
            problem = check(value)  # load_settings checked them too; this is for a caller that did not
            if problem:
                raise SettingsError(setting, problem, CREDENTIAL_EXAMPLE if setting == "SYNC_API_CREDENTIAL" else None)
        return Secrets(
            Secret(graph, "GRAPH_CLIENT_SECRET", fix=ROTATE_HINT) if graph else None,
            Secret(cred, "SYNC_API_CREDENTIAL", fix=SYNC_ENV_HINT),
            [],
        )
    client = secret_client or _secret_client(settings)
    warnings: list[str] = []
    graph_secret = None
    if settings.graph_auth == "client_secret":
        graph_secret = _read(client, settings, settings.graph_client_secret_name, warnings, ROTATE_HINT)
        _check_carriable(graph_secret, "GRAPH_CLIENT_SECRET_NAME", form_secret_problem)
    cred = _read(client, settings, settings.sync_api_credential_name, warnings, _sync_fix(settings))
    _check_carriable(cred, "SYNC_API_CREDENTIAL_NAME", header_credential_problem)
    return Secrets(graph_secret, cred, warnings)


def _check_carriable(secret: Secret, setting: str, check: Callable[[str], str | None]) -> None:
    """A vault secret that cannot travel where it must (``shared/common/carriable.py``) is a
    ``SecretError`` naming the vault, the secret and the setting that names it, never the value."""
    problem = check(secret.reveal())
    if problem:
        raise SecretError(f"{secret.where} (named by {setting}) {problem}; {secret.fix}")


def _secret_client(settings: Settings) -> Any:
    from azure.identity import DefaultAzureCredential
    from azure.keyvault.secrets import SecretClient

    credential = DefaultAzureCredential(managed_identity_client_id=settings.managed_identity_client_id)
    return SecretClient(vault_url=settings.key_vault_url, credential=credential)


def _read(client: Any, settings: Settings, name: str, warnings: list[str], fix: str) -> Secret:
    where = f"secret {name!r} in Key Vault {settings.key_vault_url}"
    try:
        bundle = client.get_secret(name)
    except Exception as exc:  # noqa: BLE001 - every failure to read the vault is a SecretError
        failure = _read_failure(exc, where)
    else:
        failure = None
    if failure is not None:
        # Raised here, not in the except block: the SDK's exception (whose text may echo a
        # request or a value) does not ride along as __context__.
        raise failure
    value = (bundle.value or "").strip()
    if not value:
        raise SecretError(f"{where} is empty")
    expires = getattr(getattr(bundle, "properties", None), "expires_on", None)
    if expires is not None:
        _check_expiry(where, expires, warnings)
    return Secret(value, name, where=where, fix=fix)


def _read_failure(exc: Exception, where: str) -> SecretError:
    """A message naming the vault and the secret, without the SDK's text."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError

    if isinstance(exc, ResourceNotFoundError):
        return SecretError(f"{where} does not exist; create it (for the Graph secret: {ROTATE_HINT})")
    if isinstance(exc, ClientAuthenticationError):
        return SecretError(f"cannot authenticate to Key Vault to read {where}: {type(exc).__name__}; in Azure, check that the "
                           "managed identity AZURE_CLIENT_ID names is assigned to the Function app; on a command line, sign in "
                           "first (az login) as a principal with 'Key Vault Secrets User' on the vault")
    if isinstance(exc, HttpResponseError):
        code = getattr(exc, "status_code", None)
        if code == 403:
            return SecretError(f"the Function's identity may not read {where} (HTTP 403): grant it 'Key Vault Secrets User' on the vault")
        return SecretError(f"reading {where} failed (HTTP {code})")
    return SecretError(f"reading {where} failed ({type(exc).__name__}): no answer from the vault; check KEY_VAULT_URL and "
                       "that this host (the Function app, or the machine running the command) can reach it: DNS, firewall, the "
                       "vault's network rules")


def _sync_fix(settings: Settings) -> str:
    vault = (urlsplit(settings.key_vault_url or "").hostname or "<vault>").split(".")[0]
    return (
        "store the account's current username:password (or token) as a new version of that secret: "
        f"az keyvault secret set --vault-name {vault} --name {settings.sync_api_credential_name} --file /dev/stdin "
        "(docs/deployment.md, 'Sync API credential')"
    )


def _check_expiry(where: str, expires: dt.datetime, warnings: list[str], now: dt.datetime | None = None) -> None:
    now = now or dt.datetime.now(dt.UTC)
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=dt.UTC)
    days = (expires - now).total_seconds() / 86400
    if days <= ERROR_DAYS:
        text = f"{where} expires {expires:%Y-%m-%d} ({days:.0f} days); {ROTATE_HINT}"
        log.error(text)
        warnings.append(text)
    elif days <= WARN_DAYS:
        text = f"{where} expires {expires:%Y-%m-%d} ({days:.0f} days); {ROTATE_HINT}"
        log.warning(text)
        warnings.append(text)
