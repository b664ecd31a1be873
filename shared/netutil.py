"""URL checks shared by settings and clients: plain http only to loopback."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_problem(url: str) -> str | None:
    """Why ``url`` may not be used for an API call, or None when it may.

    HTTPS always; plain http only when the host is a loopback address (local emulators)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not host:
        return "must be an absolute http(s) URL"
    if parts.username or parts.password:
        return "must not carry credentials in the URL"
    if parts.scheme == "http" and not is_loopback_host(host):
        return f"uses plain http to the non-loopback host {host!r}; only https is allowed there"
    return None
