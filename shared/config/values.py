"""How a setting's raw value is read: the getter over the environment, numbers in a range,
GUIDs and tenant names. Every problem raises ``SettingsError`` naming the setting."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping

from ..common.errors import SettingsError

# A setting's value, stripped; a blank one counts as unset (``None``).
Getter = Callable[[str], str | None]

TENANT_EXAMPLE = "00000000-0000-0000-0000-000000000000 or contoso.onmicrosoft.com"
_TENANT_DOMAIN = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


def getter(env: Mapping[str, str]) -> Getter:
    """A setting's value, stripped; blank counts as unset (``None``)."""

    def get(name: str) -> str | None:
        value = env.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    return get


def number(raw: str | None, name: str, default: float, example: str, low: float, high: float, *, integer: bool = False) -> float:
    """``raw`` as a number in ``low..high`` (``default`` when unset); ``integer``: a whole number."""
    if raw is None:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise SettingsError(name, f"{raw!r} is not {'a whole number' if integer else 'a number'}", example) from None
    if not (low <= value <= high) or value != value:
        raise SettingsError(name, f"{raw!r} is outside {_plain(low)}..{_plain(high)}", example)
    return value


def _plain(bound: float) -> str:
    """A range's bound as an operator types it: ``1000000000``, never ``1e+09``."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


def check_tenant(tenant: str) -> None:
    """GRAPH_TENANT_ID must be a GUID or a tenant domain (``contoso.onmicrosoft.com``)."""
    if not (is_guid(tenant) or _TENANT_DOMAIN.match(tenant)):
        raise SettingsError("GRAPH_TENANT_ID", "is neither a GUID nor a tenant domain", "00000000-0000-0000-0000-000000000000")
