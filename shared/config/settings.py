"""Every setting of the product, validated before any network call.

Settings come from app settings in Azure and from environment variables locally; both reach
us as a mapping of strings. A missing or malformed one raises ``SettingsError`` naming the
setting and showing a valid value. Secret values are never part of an error."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..common.carriable import CREDENTIAL_EXAMPLE, form_secret_problem, header_credential_problem
from ..common.errors import SettingsError
from ..common.netutil import url_problem
from ..model.addresses import InvalidAddress, check_domain, normalize_domain
from ..model.records import DATASETS
from ..model.rules import NO_RULES, Rules, parse_rules
from .exo_settings import EXO_ALL_TYPES, EXO_AUGMENT_TYPES, EXO_MODES, ExoSettings, read_exo
from .graph_settings import BASIC_SIGN_IN_REFUSAL, DEFAULT_GRAPH_BASE_URL, GRAPH_AUTH_MODES, read_graph
from .schedule import DEFAULT_SCHEDULE, check_schedule
from .storage_settings import StateLocation, read_state, read_storage
from .values import Getter, getter, number

__all__ = [
    "BASIC_SIGN_IN_REFUSAL", "DEFAULT_GRAPH_BASE_URL", "DEFAULT_SCHEDULE", "EXO_ALL_TYPES", "EXO_AUGMENT_TYPES", "EXO_MODES",
    "GRAPH_AUTH_MODES", "ExoSettings", "Settings", "StateLocation", "load_settings", "progress_interval_seconds",
]

log = logging.getLogger(__name__)

_SECRET_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
ENTRA_USER_TYPES = frozenset({"member", "guest"})  # user.userType as Entra ID sets it, casefolded


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
    delete_threshold_floor: int = 25
    exo: ExoSettings = field(default_factory=ExoSettings)
    rules: Rules = NO_RULES

    @property
    def graph_scope(self) -> str:
        parts = urlsplit(self.graph_base_url)
        return f"{parts.scheme}://{parts.netloc}/.default"


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; the first problem found raises ``SettingsError``.
    Each concern has its reader, in this order (docs/sync-rules.md, "Settings"): Graph
    (``graph_settings.py``), the secrets' names, the sync API, the datasets and domains, the
    state (``storage_settings.py``), the schedule, the deletion guard, the storage account, the
    Exchange Online source (``exo_settings.py``) and the scope and exclusion rules."""
    get = getter(os.environ if env is None else env)
    graph = read_graph(get)
    secrets = _read_secret_names(get, graph["graph_auth"])
    sync_api_url = _read_sync_api(get)
    datasets, address_domains = _read_scope(get)
    state = read_state(get)
    schedule = _read_schedule(get)
    guard = _read_guard(get)
    storage = read_storage(get, state)
    settings = Settings(
        **graph,
        **secrets,
        sync_api_url=sync_api_url,
        datasets=datasets,
        address_domains=address_domains,
        state=state,
        **schedule,
        **guard,
        **storage,
        exo=read_exo(get, graph["graph_auth"], graph["graph_tenant_id"], datasets),
        rules=_rules(get, get("EXO_MODE")),
    )
    _warn_users_without_groups(datasets)
    return settings


def _read_secret_names(get: Getter, graph_auth: str) -> dict[str, Any]:
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
        _check_carriable(get, graph_auth)
    return {"key_vault_url": key_vault_url, "graph_client_secret_name": secret_name, "sync_api_credential_name": credential_name}


def _check_carriable(get: Getter, graph_auth: str) -> None:
    """The secrets from the environment must be sendable: SYNC_API_CREDENTIAL in the
    Authorization header, GRAPH_CLIENT_SECRET in the token request (``shared/common/carriable.py``).
    The error names the setting and quotes no part of the value."""
    cred_problem = header_credential_problem(get("SYNC_API_CREDENTIAL") or "")
    if cred_problem:
        raise SettingsError("SYNC_API_CREDENTIAL", cred_problem, CREDENTIAL_EXAMPLE)
    secret_problem = form_secret_problem(get("GRAPH_CLIENT_SECRET") or "") if graph_auth == "client_secret" else None
    if secret_problem:
        raise SettingsError("GRAPH_CLIENT_SECRET", secret_problem, "the app's client secret value, as Entra showed it when it was created")


def _read_sync_api(get: Getter) -> str:
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


def _read_scope(get: Getter) -> tuple[tuple[str, ...], frozenset[str] | None]:
    """SYNC_DATASETS (unset: every dataset, whatever EXO_MODE is; ``read_exo`` refuses that
    with EXO_MODE=only, docs/sync-rules.md) and ADDRESS_DOMAINS. ``users`` without ``groups``
    is allowed (another sync may keep the groups), with a warning: a user record's groupIds
    must name groups the service holds, else it is rejected with unknown_group (docs/sync-api.md)."""
    return _datasets(get("SYNC_DATASETS")), _domains(get("ADDRESS_DOMAINS"))


def _warn_users_without_groups(datasets: tuple[str, ...]) -> None:
    """Once every setting is valid (a run that stops on a settings error prints that error alone)."""
    if "users" in datasets and "groups" not in datasets:
        log.warning("SYNC_DATASETS names users without groups: each user record's groupIds names the user's groups, which this sync "
                    "does not send, so the service rejects every group member with unknown_group unless another sync keeps "
                    "those groups; add groups to SYNC_DATASETS (e.g. groups,users)")


def _read_schedule(get: Getter) -> dict[str, Any]:
    """SYNC_SCHEDULE (NCRONTAB) and FULL_SYNC_INTERVAL_HOURS."""
    schedule = check_schedule(get("SYNC_SCHEDULE") or DEFAULT_SCHEDULE)  # schedule.py: as the Functions host reads it
    full_interval = number(get("FULL_SYNC_INTERVAL_HOURS"), "FULL_SYNC_INTERVAL_HOURS", 24.0, "24 (hours; 0 reads in full every run)", 0, 24 * 366)
    return {"schedule": schedule, "full_sync_interval_hours": full_interval}


def _read_guard(get: Getter) -> dict[str, Any]:
    """DELETE_THRESHOLD_PERCENT, DELETE_THRESHOLD_COUNT and DELETE_THRESHOLD_FLOOR (the deletion guard, shared/plan/guard.py)."""
    delete_percent = number(get("DELETE_THRESHOLD_PERCENT"), "DELETE_THRESHOLD_PERCENT", 10.0, "10 (percent of a dataset's records; 100 turns the percentage check off)", 0, 100)
    delete_count = int(number(get("DELETE_THRESHOLD_COUNT"), "DELETE_THRESHOLD_COUNT", 500, "500 (deletions per dataset and run)", 0, 10**9, integer=True))
    delete_floor = int(number(get("DELETE_THRESHOLD_FLOOR"), "DELETE_THRESHOLD_FLOOR", 25,
                              "25 (deletions per dataset and run that the percentage never holds; 0 applies it to every deletion)", 0, 10**9, integer=True))
    return {"delete_threshold_percent": delete_percent, "delete_threshold_count": delete_count, "delete_threshold_floor": delete_floor}


def _rules(get: Getter, exo_mode: str | None = None) -> Rules:
    """``SYNC_SCOPE_GROUPS``, ``EXCLUDE_USER_TYPES``, ``EXCLUDE_ADDRESS_PATTERNS`` (``shared/model/rules.py``).

    With ``EXO_MODE=only`` Graph is not read, so the directory has no group: every scope id
    names no group of the directory, which fails the run before anything is sent, naming the
    setting and the ids (docs/sync-rules.md). ``EXCLUDE_USER_TYPES`` then has no user to judge:
    it is accepted and does nothing (a warning says so)."""
    rules = parse_rules(get("SYNC_SCOPE_GROUPS"), get("EXCLUDE_USER_TYPES"), get("EXCLUDE_ADDRESS_PATTERNS"))
    unknown = sorted(rules.exclude_user_types - ENTRA_USER_TYPES)
    if unknown:  # Graph's user.userType: "such as Member and Guest"; a typo would silently exclude no one
        log.warning("EXCLUDE_USER_TYPES names %s, which is neither Member nor Guest (the userType values Entra ID sets); "
                    "check the spelling: a value no user has excludes no one", ", ".join(repr(t) for t in unknown))
    if (exo_mode or "").strip().lower() == "only":
        if rules.scope_groups is not None:
            ids = ", ".join(repr(g) for g in rules.scope_groups)
            raise SettingsError("SYNC_SCOPE_GROUPS", f"{ids} names no group of the directory: with EXO_MODE=only Graph is not read, "
                                "so there are no Entra groups to scope by; nothing was sent. Unset it, or use EXO_MODE=augment", "unset")
        if rules.exclude_user_types:
            log.warning("EXCLUDE_USER_TYPES has no effect with EXO_MODE=only: Graph is not read, so no user's userType is known")
    return rules


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


def progress_interval_seconds(env: Mapping[str, str] | None = None) -> float:
    """``PROGRESS_INTERVAL_SECONDS``: seconds between progress lines during long reads and sends
    (default 30; 0 turns them off). Raises ``SettingsError`` when not a number in 0..3600."""
    env = os.environ if env is None else env
    raw = (env.get("PROGRESS_INTERVAL_SECONDS") or "").strip() or None
    return number(raw, "PROGRESS_INTERVAL_SECONDS", 30.0, "30 (seconds; 0 turns progress lines off)", 0, 3600)
