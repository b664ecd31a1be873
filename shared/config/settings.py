"""Every setting of the product, validated before any network call.

Settings come from app settings in Azure and from environment variables locally; both reach
us as a mapping of strings. A missing or malformed one raises ``SettingsError`` naming the
setting and showing a valid value. Secret values are never part of an error."""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..common.errors import SettingsError
from ..common.netutil import is_loopback_host, url_problem
from ..common.redact import register
from ..model.addresses import InvalidAddress, check_domain, normalize_domain
from ..model.records import DATASETS
from ..model.rules import NO_RULES, Rules, parse_rules

log = logging.getLogger(__name__)

GRAPH_AUTH_MODES = ("client_secret", "managed_identity", "none")
DEFAULT_GRAPH_BASE_URL = "https://graph.microsoft.com/v1.0"
DEFAULT_SCHEDULE = "0 0 * * * *"

_SECRET_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
_CONTAINER = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9]))*$")
_TENANT_DOMAIN = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
_CRON_FIELD = re.compile(r"^(\*|\?|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?(,(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?)*$")
_TIMESPAN = re.compile(r"^\d{1,2}:\d{2}:\d{2}$")


@dataclass(frozen=True)
class StateLocation:
    kind: str  # "file" or "blob"
    where: str  # directory path or container name


EXO_MODES = ("off", "augment", "only")
DEFAULT_EXO_BASE_URL = "https://outlook.office365.com"
EXO_AUGMENT_TYPES: tuple[str, ...] = ("DynamicDistributionGroup", "PublicFolder")
# Every RecipientTypeDetails value that receives mail (docs/sync-rules.md, "Exchange Online").
EXO_ALL_TYPES: tuple[str, ...] = (
    "UserMailbox", "SharedMailbox", "RoomMailbox", "EquipmentMailbox", "MailUser", "GuestMailUser", "MailContact",
    "MailUniversalDistributionGroup", "MailUniversalSecurityGroup", "MailNonUniversalGroup", "RoomList",
    "GroupMailbox", "DynamicDistributionGroup", "PublicFolder",
)
BASIC_SIGN_IN_MODES = ("password", "username_password", "basic", "ropc")
BASIC_SIGN_IN_REFUSAL = (
    "username and password sign-in is not offered: Exchange Online retired basic authentication, and a password "
    "sign-in cannot pass the multifactor authentication that admin accounts require"
)


@dataclass(frozen=True)
class ExoSettings:
    """The Exchange Online source (docs/sync-rules.md, "Exchange Online"): ``mode`` is ``off``,
    ``augment`` or ``only``; ``recipient_types`` are RecipientTypeDetails values; ``base_url``
    has no trailing slash; ``tenant`` is GRAPH_TENANT_ID (set whenever the mode is not off)."""

    mode: str = "off"
    recipient_types: tuple[str, ...] = EXO_AUGMENT_TYPES
    base_url: str = DEFAULT_EXO_BASE_URL
    tenant: str | None = None

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def scope(self) -> str:
        return f"{self.base_url}/.default"


@dataclass(frozen=True)
class Settings:
    graph_auth: str
    graph_tenant_id: str | None
    graph_client_id: str | None
    graph_base_url: str
    key_vault_url: str | None
    graph_client_secret_name: str
    sync_api_credential_name: str
    sync_api_url: str
    datasets: tuple[str, ...]
    address_domains: frozenset[str] | None
    state: StateLocation
    schedule: str
    storage_connection_string: str | None = field(repr=False)  # may carry an AccountKey: never in repr
    storage_blob_uri: str | None
    storage_client_id: str | None
    managed_identity_client_id: str | None
    full_sync_interval_hours: float = 24.0
    delete_threshold_percent: float = 10.0
    delete_threshold_count: int = 500
    exo: ExoSettings = field(default_factory=ExoSettings)
    rules: Rules = NO_RULES

    @property
    def graph_scope(self) -> str:
        parts = urlsplit(self.graph_base_url)
        return f"{parts.scheme}://{parts.netloc}/.default"


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; the first problem found raises ``SettingsError``.
    Each concern has its reader below, in this order (docs/sync-rules.md, "Settings")."""
    get = _getter(os.environ if env is None else env)
    graph = _read_graph(get)
    secrets = _read_secret_names(get, graph["graph_auth"])
    sync_api_url = _read_sync_api(get)
    datasets, address_domains = _read_scope(get)
    state = _state(get("SYNC_STATE") or "blob:sync-state")
    schedule = _read_schedule(get)
    guard = _read_guard(get)
    storage = _read_storage(get, state)
    return Settings(
        **graph,
        **secrets,
        sync_api_url=sync_api_url,
        datasets=datasets,
        address_domains=address_domains,
        state=state,
        **schedule,
        **guard,
        **storage,
        exo=_exo_settings(get, graph["graph_auth"], graph["graph_tenant_id"], datasets),
        rules=_rules(get, get("EXO_MODE")),
    )


def _getter(env: Mapping[str, str]) -> Callable[[str], str | None]:
    """A setting's value, stripped; blank counts as unset (``None``)."""

    def get(name: str) -> str | None:
        value = env.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    return get


def _read_graph(get: Callable[[str], str | None]) -> dict[str, Any]:
    """GRAPH_AUTH, GRAPH_BASE_URL, GRAPH_TENANT_ID, GRAPH_CLIENT_ID."""
    graph_auth = (get("GRAPH_AUTH") or "client_secret").lower()
    if graph_auth in BASIC_SIGN_IN_MODES:
        raise SettingsError("GRAPH_AUTH", f"{graph_auth!r}: {BASIC_SIGN_IN_REFUSAL}", "client_secret or managed_identity")
    if graph_auth not in GRAPH_AUTH_MODES:
        raise SettingsError("GRAPH_AUTH", f"unknown mode {graph_auth!r}; use one of {', '.join(GRAPH_AUTH_MODES)}", "client_secret")

    graph_base_url = (get("GRAPH_BASE_URL") or DEFAULT_GRAPH_BASE_URL).rstrip("/")
    problem = url_problem(graph_base_url)
    if problem:
        raise SettingsError("GRAPH_BASE_URL", problem, DEFAULT_GRAPH_BASE_URL)
    if graph_auth == "none" and not is_loopback_host(urlsplit(graph_base_url).hostname):
        raise SettingsError("GRAPH_AUTH", "'none' is only allowed when GRAPH_BASE_URL is a loopback address", "client_secret")

    tenant = get("GRAPH_TENANT_ID")
    client_id = get("GRAPH_CLIENT_ID")
    if graph_auth != "none":
        if tenant is None:
            raise SettingsError("GRAPH_TENANT_ID", "is required", "00000000-0000-0000-0000-000000000000 or contoso.onmicrosoft.com")
        if not (_is_guid(tenant) or _TENANT_DOMAIN.match(tenant)):
            raise SettingsError("GRAPH_TENANT_ID", "is neither a GUID nor a tenant domain", "00000000-0000-0000-0000-000000000000")
        if client_id is None:
            raise SettingsError("GRAPH_CLIENT_ID", "is required", "00000000-0000-0000-0000-000000000000 (the app registration's Application (client) ID)")
        if not _is_guid(client_id):
            raise SettingsError("GRAPH_CLIENT_ID", "is not a GUID", "00000000-0000-0000-0000-000000000000")
    return {"graph_auth": graph_auth, "graph_base_url": graph_base_url, "graph_tenant_id": tenant, "graph_client_id": client_id,
            "managed_identity_client_id": get("AZURE_CLIENT_ID")}


def _read_secret_names(get: Callable[[str], str | None], graph_auth: str) -> dict[str, Any]:
    """KEY_VAULT_URL, GRAPH_CLIENT_SECRET_NAME, SYNC_API_CREDENTIAL_NAME; without a vault,
    GRAPH_CLIENT_SECRET (client_secret sign-in) and SYNC_API_CREDENTIAL must be set."""
    key_vault_url = get("KEY_VAULT_URL")
    if key_vault_url is not None:
        problem = url_problem(key_vault_url)  # also: not a URL, or credentials in it
        parts = urlsplit(key_vault_url) if problem is None else None
        if parts is None or parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
            raise SettingsError("KEY_VAULT_URL", problem or "must be the vault's https URI", "https://my-vault.vault.azure.net/")

    secret_name = get("GRAPH_CLIENT_SECRET_NAME") or "graph-client-secret"
    if not _SECRET_NAME.match(secret_name):
        raise SettingsError("GRAPH_CLIENT_SECRET_NAME", "is not a Key Vault secret name (1-127 letters, digits, hyphens)", "graph-client-secret")
    credential_name = get("SYNC_API_CREDENTIAL_NAME") or "sync-api-credential"
    if not _SECRET_NAME.match(credential_name):
        raise SettingsError("SYNC_API_CREDENTIAL_NAME", "is not a Key Vault secret name (1-127 letters, digits, hyphens)", "sync-api-credential")

    if key_vault_url is None:
        if graph_auth == "client_secret" and get("GRAPH_CLIENT_SECRET") is None:
            raise SettingsError("GRAPH_CLIENT_SECRET", "is required when KEY_VAULT_URL is unset and GRAPH_AUTH is client_secret", "the app's client secret value")
        if get("SYNC_API_CREDENTIAL") is None:
            raise SettingsError("SYNC_API_CREDENTIAL", "is required when KEY_VAULT_URL is unset", "username:password, or a bearer token")
    return {"key_vault_url": key_vault_url, "graph_client_secret_name": secret_name, "sync_api_credential_name": credential_name}


def _read_sync_api(get: Callable[[str], str | None]) -> str:
    """SYNC_API_URL: the API's base URL, ending in /v1."""
    sync_api_url = get("SYNC_API_URL")
    if sync_api_url is None:
        raise SettingsError("SYNC_API_URL", "is required", "https://dirsync.example.net/v1")
    sync_api_url = sync_api_url.rstrip("/")
    problem = url_problem(sync_api_url)
    if problem:
        raise SettingsError("SYNC_API_URL", problem, "https://dirsync.example.net/v1")
    if not urlsplit(sync_api_url).path.endswith("/v1") or urlsplit(sync_api_url).query:
        raise SettingsError("SYNC_API_URL", "must be the API's base URL, ending in /v1", "https://dirsync.example.net/v1")
    return sync_api_url


def _read_scope(get: Callable[[str], str | None]) -> tuple[tuple[str, ...], frozenset[str] | None]:
    """SYNC_DATASETS (with EXO_MODE=only, unset means addresses alone) and ADDRESS_DOMAINS."""
    datasets = _datasets(get("SYNC_DATASETS"))
    if get("SYNC_DATASETS") is None and (get("EXO_MODE") or "").strip().lower() == "only":
        datasets = ("addresses",)  # EXO_MODE=only syncs addresses alone: unset means just that
    return datasets, _domains(get("ADDRESS_DOMAINS"))


def _read_schedule(get: Callable[[str], str | None]) -> dict[str, Any]:
    """SYNC_SCHEDULE (NCRONTAB) and FULL_SYNC_INTERVAL_HOURS."""
    schedule = get("SYNC_SCHEDULE") or DEFAULT_SCHEDULE
    if not _valid_schedule(schedule):
        raise SettingsError("SYNC_SCHEDULE", "is not an NCRONTAB expression of six fields (second minute hour day month day-of-week)", DEFAULT_SCHEDULE)
    full_interval = _number(get("FULL_SYNC_INTERVAL_HOURS"), "FULL_SYNC_INTERVAL_HOURS", 24.0, "24 (hours; 0 reads in full every run)", 0, 24 * 366)
    return {"schedule": schedule, "full_sync_interval_hours": full_interval}


def _read_guard(get: Callable[[str], str | None]) -> dict[str, Any]:
    """DELETE_THRESHOLD_PERCENT and DELETE_THRESHOLD_COUNT (the deletion guard)."""
    delete_percent = _number(get("DELETE_THRESHOLD_PERCENT"), "DELETE_THRESHOLD_PERCENT", 10.0, "10 (percent of a dataset's records; 100 turns the percentage check off)", 0, 100)
    delete_count = int(_number(get("DELETE_THRESHOLD_COUNT"), "DELETE_THRESHOLD_COUNT", 500, "500 (deletions per dataset and run)", 0, 10**9, integer=True))
    return {"delete_threshold_percent": delete_percent, "delete_threshold_count": delete_count}


def _read_storage(get: Callable[[str], str | None], state: StateLocation) -> dict[str, Any]:
    """AzureWebJobsStorage (connection string) or AzureWebJobsStorage__blobServiceUri /
    __serviceUri / __accountName / __clientId (identity): required for ``blob:`` state."""
    conn = get("AzureWebJobsStorage")
    blob_uri = get("AzureWebJobsStorage__blobServiceUri") or get("AzureWebJobsStorage__serviceUri")
    _check_storage_secrets(conn, {n: get(n) for n in ("AzureWebJobsStorage__blobServiceUri", "AzureWebJobsStorage__serviceUri")})
    account = get("AzureWebJobsStorage__accountName")
    if blob_uri is None and account is not None:
        blob_uri = f"https://{account}.blob.core.windows.net"
    if state.kind == "blob":
        if conn is None and blob_uri is None:
            raise SettingsError(
                "AzureWebJobsStorage",
                f"SYNC_STATE={state.kind}:{state.where} needs the storage account: set AzureWebJobsStorage (a connection "
                "string) or AzureWebJobsStorage__blobServiceUri (identity-based)",
                "https://mystorage.blob.core.windows.net for AzureWebJobsStorage__blobServiceUri",
            )
        if conn is not None and conn.lower() != "usedevelopmentstorage=true" and "=" not in conn:
            raise SettingsError("AzureWebJobsStorage", "is not a storage connection string", "DefaultEndpointsProtocol=https;AccountName=...;EndpointSuffix=core.windows.net")
        if blob_uri is not None and conn is None:
            problem = url_problem(blob_uri)
            if problem:
                raise SettingsError("AzureWebJobsStorage__blobServiceUri", problem, "https://mystorage.blob.core.windows.net")
    return {"storage_connection_string": conn, "storage_blob_uri": blob_uri, "storage_client_id": get("AzureWebJobsStorage__clientId")}


def _exo_settings(get: Any, graph_auth: str, tenant: str | None, datasets: tuple[str, ...]) -> ExoSettings:
    """EXO_MODE, EXO_RECIPIENT_TYPES and EXO_BASE_URL, checked against GRAPH_AUTH,
    GRAPH_TENANT_ID and SYNC_DATASETS; raises ``SettingsError`` naming the setting."""
    for name in ("EXO_USERNAME", "EXO_PASSWORD"):
        if get(name) is not None:
            raise SettingsError(name, BASIC_SIGN_IN_REFUSAL + "; remove it and grant the app Exchange.ManageAsApp (docs/deployment.md)")
    mode = (get("EXO_MODE") or "off").lower()
    if mode not in EXO_MODES:
        raise SettingsError("EXO_MODE", f"unknown mode {mode!r}; use one of {', '.join(EXO_MODES)}", "augment")
    raw_types = get("EXO_RECIPIENT_TYPES")
    types = EXO_ALL_TYPES if mode == "only" else EXO_AUGMENT_TYPES
    if raw_types is not None:
        known = {t.lower(): t for t in EXO_ALL_TYPES}
        chosen: list[str] = []
        for part in raw_types.split(","):
            name = part.strip()
            if not name:
                continue
            if name.lower() not in known:
                raise SettingsError("EXO_RECIPIENT_TYPES", f"unknown recipient type {name!r}; the types are {', '.join(EXO_ALL_TYPES)}",
                                    ",".join(EXO_AUGMENT_TYPES))
            if known[name.lower()] not in chosen:
                chosen.append(known[name.lower()])
        if not chosen:
            raise SettingsError("EXO_RECIPIENT_TYPES", "names no recipient type; unset it for the default of EXO_MODE", ",".join(EXO_AUGMENT_TYPES))
        types = tuple(chosen)
    base_url = (get("EXO_BASE_URL") or DEFAULT_EXO_BASE_URL).rstrip("/")
    problem = url_problem(base_url)
    if problem is None and (urlsplit(base_url).query or urlsplit(base_url).fragment):
        problem = "must not have a query or fragment"
    if problem:
        raise SettingsError("EXO_BASE_URL", problem, DEFAULT_EXO_BASE_URL)
    if mode == "off":
        return ExoSettings("off", types, base_url, tenant)
    if tenant is None:
        raise SettingsError("GRAPH_TENANT_ID", f"is required when EXO_MODE is {mode!r} (the Exchange endpoint's path and routing hint name the tenant), even with GRAPH_AUTH=none",
                            "00000000-0000-0000-0000-000000000000 or contoso.onmicrosoft.com")
    if not (_is_guid(tenant) or _TENANT_DOMAIN.match(tenant)):
        raise SettingsError("GRAPH_TENANT_ID", "is neither a GUID nor a tenant domain", "00000000-0000-0000-0000-000000000000")
    if graph_auth == "none" and not is_loopback_host(urlsplit(base_url).hostname):
        raise SettingsError("EXO_BASE_URL", "GRAPH_AUTH=none sends no token, so EXO_BASE_URL must be a loopback address (a local emulator)",
                            "http://127.0.0.1:8765")
    if mode == "only" and datasets != ("addresses",):
        raise SettingsError("SYNC_DATASETS", f"EXO_MODE=only syncs the addresses dataset alone, so SYNC_DATASETS must be 'addresses' (it is {','.join(datasets)!r})",
                            "addresses")
    return ExoSettings(mode, types, base_url, tenant)




def _rules(get: Callable[[str], str | None], exo_mode: str | None = None) -> Rules:
    """``SYNC_SCOPE_GROUPS``, ``EXCLUDE_USER_TYPES``, ``EXCLUDE_ADDRESS_PATTERNS`` (``shared/model/rules.py``).

    With ``EXO_MODE=only`` Graph is not read, so the directory has no group: every scope id
    names no group of the directory, which fails the run before anything is sent, naming the
    setting and the ids (docs/sync-rules.md). ``EXCLUDE_USER_TYPES`` then has no user to judge:
    it is accepted and does nothing (a warning says so)."""
    rules = parse_rules(get("SYNC_SCOPE_GROUPS"), get("EXCLUDE_USER_TYPES"), get("EXCLUDE_ADDRESS_PATTERNS"))
    if (exo_mode or "").strip().lower() == "only":
        if rules.scope_groups is not None:
            ids = ", ".join(repr(g) for g in rules.scope_groups)
            raise SettingsError("SYNC_SCOPE_GROUPS", f"{ids} names no group of the directory: with EXO_MODE=only Graph is not read, "
                                "so there are no Entra groups to scope by; nothing was sent. Unset it, or use EXO_MODE=augment", "unset")
        if rules.exclude_user_types:
            log.warning("EXCLUDE_USER_TYPES has no effect with EXO_MODE=only: Graph is not read, so no user's userType is known")
    return rules


def _number(raw: str | None, name: str, default: float, example: str, low: float, high: float, *, integer: bool = False) -> float:
    if raw is None:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise SettingsError(name, f"{raw!r} is not {'a whole number' if integer else 'a number'}", example) from None
    if not (low <= value <= high) or value != value:
        raise SettingsError(name, f"{raw!r} is outside {low:g}..{high:g}", example)
    return value


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


def _datasets(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return DATASETS
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    if not names:
        raise SettingsError("SYNC_DATASETS", "names no dataset", "addresses,groups,users")
    for n in names:
        if n not in DATASETS:
            raise SettingsError("SYNC_DATASETS", f"unknown dataset {n!r}; the datasets are {', '.join(DATASETS)}", "addresses,groups,users")
    return tuple(d for d in DATASETS if d in names)


def _domains(raw: str | None) -> frozenset[str] | None:
    if raw is None:
        return None
    out: set[str] = set()
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            domain = normalize_domain(part)
            check_domain(domain)
        except InvalidAddress as exc:
            raise SettingsError("ADDRESS_DOMAINS", f"{part!r} is not a domain name ({exc})", "contoso.com,fabrikam.com") from None
        out.add(domain)
    if not out:
        raise SettingsError("ADDRESS_DOMAINS", "is set but names no domain; unset it to sync every provisioned domain", "contoso.com,fabrikam.com")
    return frozenset(out)


def _state(raw: str) -> StateLocation:
    kind, sep, where = raw.partition(":")
    kind = kind.strip().lower()
    where = where.strip()
    if not sep or kind not in ("file", "blob") or not where:
        raise SettingsError("SYNC_STATE", f"{raw!r} is neither file:<directory> nor blob:<container>", "blob:sync-state or file:/home/data/sync-state")
    if kind == "blob" and not _CONTAINER.match(where):
        raise SettingsError("SYNC_STATE", f"{where!r} is not a blob container name (3-63 lowercase letters, digits, single hyphens)", "blob:sync-state")
    return StateLocation(kind, where)


def _valid_schedule(value: str) -> bool:
    if _TIMESPAN.match(value):
        return True
    fields = value.split()
    return len(fields) == 6 and all(_CRON_FIELD.match(f) for f in fields)


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


def progress_interval_seconds(env: Mapping[str, str] | None = None) -> float:
    """``PROGRESS_INTERVAL_SECONDS``: seconds between progress lines during long reads and sends
    (default 30; 0 turns them off). Raises ``SettingsError`` when not a number in 0..3600."""
    env = os.environ if env is None else env
    raw = (env.get("PROGRESS_INTERVAL_SECONDS") or "").strip() or None
    return _number(raw, "PROGRESS_INTERVAL_SECONDS", 30.0, "30 (seconds; 0 turns progress lines off)", 0, 3600)
