"""The Exchange Online source's settings (docs/sync-rules.md, "The Exchange Online source"): ``EXO_MODE``,
``EXO_RECIPIENT_TYPES`` and ``EXO_BASE_URL``, checked against ``GRAPH_AUTH``,
``GRAPH_TENANT_ID`` and ``SYNC_DATASETS``."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from ..common.errors import SettingsError
from ..common.netutil import is_loopback_host, url_problem
from .graph_settings import BASIC_SIGN_IN_REFUSAL
from .values import TENANT_EXAMPLE, Getter, check_tenant

EXO_MODES = ("off", "augment", "only")
DEFAULT_EXO_BASE_URL = "https://outlook.office365.com"
EXO_AUGMENT_TYPES: tuple[str, ...] = ("DynamicDistributionGroup", "PublicFolder")
# Every RecipientTypeDetails value that receives mail (docs/sync-rules.md, "The Exchange Online source").
EXO_ALL_TYPES: tuple[str, ...] = (
    "UserMailbox", "SharedMailbox", "RoomMailbox", "EquipmentMailbox", "MailUser", "GuestMailUser", "MailContact",
    "MailUniversalDistributionGroup", "MailUniversalSecurityGroup", "MailNonUniversalGroup", "RoomList",
    "GroupMailbox", "DynamicDistributionGroup", "PublicFolder",
)
# Every value Get-Recipient's -RecipientTypeDetails takes (Exchange Online PowerShell reference,
# "Get-Recipient"): an operator may name any of them; a name outside it is a settings error.
EXO_QUERY_TYPES: tuple[str, ...] = (
    "DiscoveryMailbox", "DynamicDistributionGroup", "EquipmentMailbox", "GroupMailbox", "GuestMailUser", "LegacyMailbox",
    "LinkedMailbox", "LinkedRoomMailbox", "MailContact", "MailForestContact", "MailNonUniversalGroup",
    "MailUniversalDistributionGroup", "MailUniversalSecurityGroup", "MailUser", "PublicFolder", "PublicFolderMailbox",
    "RemoteEquipmentMailbox", "RemoteRoomMailbox", "RemoteSharedMailbox", "RemoteTeamMailbox", "RemoteUserMailbox",
    "RoomList", "RoomMailbox", "SchedulingMailbox", "SharedMailbox", "TeamMailbox", "UserMailbox",
)


@dataclass(frozen=True)
class ExoSettings:
    """The Exchange Online source (docs/sync-rules.md, "The Exchange Online source"): ``mode`` is ``off``,
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


def read_exo(get: Getter, graph_auth: str, tenant: str | None, datasets: tuple[str, ...]) -> ExoSettings:
    """EXO_MODE, EXO_RECIPIENT_TYPES and EXO_BASE_URL, checked against GRAPH_AUTH,
    GRAPH_TENANT_ID and SYNC_DATASETS; raises ``SettingsError`` naming the setting."""
    for name in ("EXO_USERNAME", "EXO_PASSWORD"):
        if get(name) is not None:
            raise SettingsError(name, BASIC_SIGN_IN_REFUSAL + "; remove it and grant the app Exchange.ManageAsApp (docs/deployment.md)")
    mode = (get("EXO_MODE") or "off").lower()
    if mode not in EXO_MODES:
        raise SettingsError("EXO_MODE", f"unknown mode {mode!r}; use one of {', '.join(EXO_MODES)}", "augment")
    types = _recipient_types(get("EXO_RECIPIENT_TYPES"), mode)
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
                            TENANT_EXAMPLE)
    check_tenant(tenant)
    if graph_auth == "none" and not is_loopback_host(urlsplit(base_url).hostname):
        raise SettingsError("EXO_BASE_URL", "GRAPH_AUTH=none sends no token, so EXO_BASE_URL must be a loopback address (a local emulator)",
                            "http://127.0.0.1:8765")
    if mode == "only" and datasets != ("addresses",):
        now = f"it is {','.join(datasets)!r}" if get("SYNC_DATASETS") is not None else f"it is unset, which means {','.join(datasets)!r}"
        raise SettingsError("SYNC_DATASETS", f"EXO_MODE=only syncs the addresses dataset alone, so SYNC_DATASETS must be 'addresses' ({now}): "
                            "set SYNC_DATASETS=addresses", "addresses")
    return ExoSettings(mode, types, base_url, tenant)


def _recipient_types(raw: str | None, mode: str) -> tuple[str, ...]:
    """EXO_RECIPIENT_TYPES (any of ``EXO_QUERY_TYPES``), spelled as Exchange spells them, each once, in the order given;
    unset: every type that receives mail with EXO_MODE=only, else ``EXO_AUGMENT_TYPES``."""
    if raw is None:
        return EXO_ALL_TYPES if mode == "only" else EXO_AUGMENT_TYPES
    known = {t.lower(): t for t in EXO_QUERY_TYPES}
    chosen: list[str] = []
    for part in raw.split(","):
        name = part.strip()
        if not name:
            continue
        if name.lower() not in known:
            raise SettingsError("EXO_RECIPIENT_TYPES", f"unknown recipient type {name!r}; the types are Get-Recipient's RecipientTypeDetails values: {', '.join(EXO_QUERY_TYPES)}",
                                ",".join(EXO_AUGMENT_TYPES))
        if known[name.lower()] not in chosen:
            chosen.append(known[name.lower()])
    if not chosen:
        raise SettingsError("EXO_RECIPIENT_TYPES", "names no recipient type; unset it for the default of EXO_MODE", ",".join(EXO_AUGMENT_TYPES))
    return tuple(chosen)
