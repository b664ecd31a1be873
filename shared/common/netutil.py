"""Network helpers shared by settings and clients: URL checks (plain http only to loopback),
``Retry-After`` and backoff, the one construction of an httpx client, and the process's TLS
client context (with aiohttp's own default contexts loading their CA certificates only if used)."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import ipaddress
import math
import random
import re
import ssl
import threading
from collections.abc import Iterator, Mapping
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import yarl


def is_loopback_host(host: str | None) -> bool:
    """The loopback hosts of docs/sync-api.md ("Transport"): 127.0.0.0/8, ::1 and ``localhost``.
    A name under ``.localhost`` is not one: the resolver may ask DNS for it like any other name."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_DEFAULT_PORTS = {"http": 80, "https": 443}


def endpoint_key(url: str) -> str:
    """``url`` without what names the same endpoint twice: the case of the scheme and host, the
    scheme's default port, a trailing slash (``HTTPS://Graph.microsoft.com:443/v1.0/`` is
    ``https://graph.microsoft.com/v1.0``)."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    port = parts.port if parts.port not in (None, _DEFAULT_PORTS.get(scheme)) else None
    netloc = f"[{host}]" if ":" in host else host
    return f"{scheme}://{netloc}{f':{port}' if port else ''}{parts.path.rstrip('/')}"


def no_answer_hint(url: str, setting: str) -> str:
    """What an operator checks when ``url`` (a configured root, no secret in it: ``url_problem``)
    never answered: the setting that names it, and the network between."""
    return f"no answer came from {url}: check {setting} and that this host can reach it (DNS, firewall, proxy)"


def same_origin(url: str, base: str) -> bool:
    """Whether ``url`` (a page's next link) is on the origin of ``base`` (the configured root),
    so that a request with the bearer token may go there. Scheme and host compare
    case-insensitively and an absent port is the scheme's default (RFC 3986, 6.2.3); two loopback
    hosts (localhost, 127.0.0.0/8, ::1) on the same port are one machine, however a local emulator
    spells its links. A link with credentials in it is never the same origin."""
    a, b = urlsplit(url), urlsplit(base)
    try:
        ports = (a.port or _DEFAULT_PORTS.get(a.scheme.lower())), (b.port or _DEFAULT_PORTS.get(b.scheme.lower()))
    except ValueError:
        return False
    if a.username is not None or a.password is not None or a.scheme.lower() != b.scheme.lower() or ports[0] != ports[1]:
        return False
    host, root = (a.hostname or "").lower(), (b.hostname or "").lower()
    return bool(host) and (host == root or (is_loopback_host(host) and is_loopback_host(root)))


def url_problem(url: str) -> str | None:
    """Why ``url`` may not be used for an API call, or None when it may: the one check of every
    URL setting (GRAPH_BASE_URL, SYNC_API_URL, EXO_BASE_URL, KEY_VAULT_URL, the storage URIs).

    An absolute http(s) URL with a host name (or IP literal), an optional port that is a whole
    number in 1-65535, no credentials, no query string or fragment (it is a base URL: a
    request's path is appended to it), no spaces or control characters, and that both HTTP
    clients parse (httpx: Exchange Online; aiohttp's yarl, host included: Graph and the sync API). HTTPS always; plain http only when the host is a loopback
    address (local emulators). The reasons quote no part of the URL but a loopback-checked host:
    a URL may carry a secret where a port or credentials should be."""
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not host:
        return "must be an absolute http(s) URL"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials in the URL"
    if "?" in url or "#" in url:
        # A base URL takes each request's path after it: "{SYNC_API_URL}/domains" with a query
        # or fragment in the setting (even an empty one) would go somewhere else entirely.
        return "must be a base URL without a query string or fragment ('?' or '#'): each request's path is appended to it"
    problem = _port_problem(parts.netloc) or _host_problem(host)
    if problem:
        return problem
    try:
        httpx.URL(url)
        yarl.URL(url).raw_host  # noqa: B018 - its IDNA encoding runs on first use
    except Exception:  # noqa: BLE001 - httpx.InvalidURL, ValueError, or idna's errors for a malformed A-label
        return "is not a valid URL"
    if parts.scheme == "http" and not is_loopback_host(host):
        return f"uses plain http to the non-loopback host {host!r}; only https is allowed there"
    return None


_PORT = re.compile(r"[0-9]{1,5}")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def _port_problem(netloc: str) -> str | None:
    """The port after the host (``host:port``, ``[v6]:port``): absent, or digits in 1-65535."""
    hostport = netloc.rpartition("@")[2]
    rest = hostport.rpartition("]")[2] if hostport.startswith("[") else hostport
    if ":" not in rest:
        return None
    port = rest.partition(":")[2]
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        return "has a port that is not a whole number in 1-65535 (leave it out for the scheme's default)"
    return None


def _host_problem(host: str) -> str | None:
    """An IP literal, or a DNS name whose labels (after IDNA encoding) are 1-63 letters, digits
    and inner hyphens."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return "has a host name that is not a valid DNS name"
    labels = ascii_host.lower().removesuffix(".").split(".")
    if len(ascii_host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return "has a host name that is not a valid DNS name"
    return None


def parse_retry_after(raw: str) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date), never
    negative; None when the value is malformed (including NaN), so the caller backs off."""
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = (when - dt.datetime.now(when.tzinfo or dt.UTC)).total_seconds()
    if not math.isfinite(seconds):  # NaN, or "1e309" read as infinity
        return None
    return max(0.0, seconds)


def jittered_backoff(base: float, attempt: int, cap: float = math.inf) -> float:
    """Exponential backoff for retry ``attempt`` (1-based), capped, with jitter in [50%, 100%]."""
    return min(cap, base * (2 ** (attempt - 1))) * (0.5 + random.random() / 2)  # noqa: S311  # nosec B311 - jitter, not crypto


def http_client(
    timeout_seconds: float,
    *,
    connect_seconds: float = 30.0,
    headers: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """The ``httpx.AsyncClient`` of the Exchange Online adapter (``shared/sources/exchange.py``);
    Graph and the sync API use one aiohttp session each (``shared/common/aio.py``).

    ``timeout_seconds``: the read, write and pool timeout, in seconds; ``connect_seconds``: the
    connect timeout. ``headers`` go on every request; ``transport`` replaces httpx's own (tests,
    or a wrapping transport). Redirects are never followed: an answer is taken from the host
    that was asked, or not at all."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_seconds, connect=connect_seconds),
        headers=headers,
        transport=transport,
        follow_redirects=False,
        verify=tls_context(),  # used when no transport is given
    )


@functools.lru_cache(maxsize=1)
def tls_context() -> ssl.SSLContext:
    """The one TLS client context of the process, shared by every HTTP client: httpx's default
    (certifi's CA bundle; SSL_CERT_FILE and SSL_CERT_DIR honoured). Loading the CA bundle costs
    about 0.1 s per client, which every run of a warm Function would otherwise pay again."""
    return httpx.create_ssl_context()


_SET_DEFAULT_VERIFY_PATHS = ssl.SSLContext.set_default_verify_paths  # OpenSSL's default CA file and directory
_DEFERRED = threading.Lock()


class _DeferredDefaultCAs(ssl.SSLContext):
    """A context that asked for the default CA certificates (``set_default_verify_paths``:
    SSL_CERT_FILE and SSL_CERT_DIR, else the system's bundle and directory, as OpenSSL reads
    them) and gets them the first time it verifies a peer (``wrap_socket``, ``wrap_bio``) or
    shows its store; then it is a plain ``ssl.SSLContext`` again. Nothing else about it differs:
    verify mode, host-name check and protocols are as it was made. Made only by
    ``default_cas_deferred``."""

    def wrap_socket(self, *args: object, **kwargs: object) -> ssl.SSLSocket:
        _load_default_cas(self)
        return ssl.SSLContext.wrap_socket(self, *args, **kwargs)

    def wrap_bio(self, *args: object, **kwargs: object) -> ssl.SSLObject:
        _load_default_cas(self)
        return ssl.SSLContext.wrap_bio(self, *args, **kwargs)

    def get_ca_certs(self, binary_form: bool = False) -> list[Any]:
        _load_default_cas(self)
        return ssl.SSLContext.get_ca_certs(self, binary_form)

    def cert_store_stats(self) -> dict[str, int]:
        _load_default_cas(self)
        return ssl.SSLContext.cert_store_stats(self)


def _load_default_cas(context: ssl.SSLContext) -> None:
    """Load the default CA certificates a ``_DeferredDefaultCAs`` put off, once, whichever
    thread asks first."""
    with _DEFERRED:
        if type(context) is _DeferredDefaultCAs:
            _SET_DEFAULT_VERIFY_PATHS(context)
            context.__class__ = ssl.SSLContext


@contextlib.contextmanager
def default_cas_deferred() -> Iterator[None]:
    """While the block runs, a context made in this thread that asks for the default CA
    certificates loads them at its first use instead (``_DeferredDefaultCAs``); a context
    made in another thread meanwhile loads them at once, as ever.

    For ``import aiohttp`` (``shared/common/aio.py``): its connector module makes two default
    contexts at import (one verifying, one not) for requests that bring none. Each load parses
    the CA bundle, about 0.24 billion instructions (docs/performance.md, *aiohttp's CA bundles at import*), and the
    product's sessions never use either: they verify with ``tls_context``."""
    owner = threading.get_ident()

    def defer(context: ssl.SSLContext) -> None:
        if threading.get_ident() == owner and type(context) is ssl.SSLContext:
            context.__class__ = _DeferredDefaultCAs
        else:
            _SET_DEFAULT_VERIFY_PATHS(context)

    ssl.SSLContext.set_default_verify_paths = defer
    try:
        yield
    finally:
        del ssl.SSLContext.set_default_verify_paths  # the inherited method again
