"""Canary secrets pushed through every failure path: no secret value may reach a log line, an
exception message (or its cause/context chain), a run summary or a run report.

Two distinctive canaries stand for the product's two secrets: the Graph client secret and the
sync API credential (``user:password``, sent as Basic; a bearer-token variant too). Each path runs
the real engine (``shared.engine.run`` with settings from ``load_settings``) in this process,
against real servers on loopback: the Graph emulator and the strict receiver from ``devstack``,
and small ``http.server`` fakes written here (Entra ID's token endpoint over TLS, a hostile sync
API, nothing listening, connections dropped). Every log record of every logger is captured at
DEBUG, by a handler on the root (as the CLI's), one put in front of it after the redaction was
installed, and one on the ``azure`` logger (the Azure SDK's documented way to see its logs).

A canary counts as leaked in any of its forms: raw, the password alone, base64 (the Basic
header), URL-encoded (the token request's form body), and any 10-character piece of a secret or
16-character piece of its base64 (a value cut short by a length limit).

The product always asks Entra at a public authority (``credentials.authority_for``) and lets
azure-identity discover it first; here the authority is pointed at the loopback fake and
discovery is turned off (``_LoopbackClientSecretCredential``), so the exceptions are the ones
azure-identity and MSAL really raise. A few paths also run as ``python -m shared`` subprocesses.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import ssl
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.identity import ClientSecretCredential

from devstack.graph_emulator import GraphEmulator
from devstack.sync_receiver import SyncReceiver
from shared import engine
from shared.actions.reads import _graph_failure
from shared.common.errors import (
    CredentialExpiredError,
    GraphError,
    SecretError,
    SettingsError,
    SyncApiAuthError,
    SyncApiError,
    SyncApiUnavailableError,
)
from shared.common.redact import RedactingFilter, install_log_redaction
from shared.common.summary import RunSummary
from shared.config import credentials, vault
from shared.config.settings import load_settings
from shared.engine import Options
from tests.loopback import Loopback, closed_port, self_signed_pair
from tests.stack import run_cli

# --- the canaries ---------------------------------------------------------------------------------
GRAPH_SECRET = "CanaryGraph-9f8e7d6c5b4a-SECRET+/="  # '+/=' so that URL-encoding changes it
SYNC_USER, SYNC_PASSWORD = "canary-user", "CanaryPass-1a2b3c4d"
SYNC_CREDENTIAL = f"{SYNC_USER}:{SYNC_PASSWORD}"
SYNC_BEARER = "CanaryBearer-5e4d3c2b1a09+tok/="
OTHER_CREDENTIAL = "sync-admin:the-receivers-own-Pa55"  # what the strict receiver accepts instead

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "66666666-7777-8888-9999-000000000000"
VAULT_URL = "https://kv-canary.vault.azure.net/"
GRAPH_SECRET_NAME, SYNC_SECRET_NAME = "graph-client-secret", "sync-api-credential"
ROTATE_SCRIPT = "infra/scripts/rotate-graph-secret.sh"
DOMAINS = ["contoso.com"]
DIRECTORY = {
    "users": [{"id": "u-0001", "displayName": "Alice", "mail": "alice@contoso.com", "proxyAddresses": ["SMTP:alice@contoso.com"]}],
    "groups": [{"id": "g-0001", "displayName": "Sales", "mail": None, "proxyAddresses": [], "members": ["u-0001"]}],
    "contacts": [],
}
FAST = {"graph_backoff_seconds": 0.01, "sync_backoff_seconds": 0.01}


def _windows(text: str, size: int) -> set[str]:
    return {text[i : i + size] for i in range(len(text) - size + 1)} if len(text) >= size else {text}


def _needles() -> list[str]:
    out: set[str] = set()
    for secret in (GRAPH_SECRET, SYNC_PASSWORD, SYNC_BEARER):
        for form in (secret, quote(secret, safe=""), quote_plus(secret)):
            out |= _windows(form, 10)
    for value in (SYNC_CREDENTIAL, SYNC_PASSWORD, GRAPH_SECRET, SYNC_BEARER):
        for shift in range(3):  # the value at each alignment inside a longer base64 text
            for encode in (base64.b64encode, base64.urlsafe_b64encode):
                enc = encode(b"\0" * shift + value.encode()).decode().rstrip("=")
                out |= _windows(enc[(0, 2, 3)[shift] : -1], 16)
    return sorted(out, key=len, reverse=True)


NEEDLES = _needles()
# Whole forms, for the redaction to recognise (the windows above are only for finding leaks).
FULL_FORMS = [SYNC_CREDENTIAL, SYNC_PASSWORD, GRAPH_SECRET, SYNC_BEARER, quote_plus(GRAPH_SECRET), quote(GRAPH_SECRET, safe=""),
              base64.b64encode(SYNC_CREDENTIAL.encode()).decode(), quote_plus(SYNC_CREDENTIAL), quote_plus(SYNC_BEARER)]


def leak_in(text: str | bytes | None) -> str | None:
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lowered = text.lower()
    for needle in NEEDLES:
        if needle in text:
            return needle
    for word in ("canarygraph", "canarypass", "canarybearer"):
        if word in lowered:
            return word
    return None


def assert_clean(where: str, text: str | bytes | None) -> None:
    needle = leak_in(text)
    if needle is not None:
        shown = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        at = shown.find(needle)
        pytest.fail(f"canary piece {needle!r} leaked into {where}: ...{shown[max(0, at - 300) : at + 300]}...", pytrace=False)


def exception_chain(exc: BaseException | None) -> list[BaseException]:
    """The exception and everything reachable through __cause__ and __context__ (suppressed or not)."""
    out: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is seen for seen in out):
            continue
        out.append(e)
        todo += [e.__cause__, e.__context__]
    return out


def assert_exception_clean(where: str, exc: BaseException | None, *, chain: bool = True) -> None:
    if exc is None:
        return
    assert_clean(f"{where} (as printed)", "".join(traceback.format_exception(exc)))
    for e in exception_chain(exc) if chain else [exc]:
        name = f"{where} {'' if e is exc else 'chain: '}{type(e).__name__}"
        assert_clean(f"{name} str", str(e))
        assert_clean(f"{name} repr", repr(e))
        assert_clean(f"{name} args", repr(e.args))


# --- log capture ----------------------------------------------------------------------------------
LOGGERS = ("", "shared", "azure", "azure.identity", "azure.core", "msal", "httpx", "httpcore", "urllib3", "hpack",
           "aiohttp", "aiohttp.client", "aiohttp.internal", "asyncio")


class Capture(logging.Handler):
    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.name = name
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


@dataclass
class Logs:
    captures: tuple[Capture, ...]

    def texts(self) -> Iterator[tuple[str, str]]:
        for cap in self.captures:
            for record, line in zip(cap.records, cap.lines, strict=True):
                where = f"log line ({cap.name}) {record.name}"
                yield where, line
                yield where + " message", record.getMessage()
                yield where + " msg/args", f"{record.msg!s} {record.args!r}"
                yield where + " exc_text", record.exc_text or ""
                if record.exc_info and record.exc_info[1] is not None:
                    yield where + " traceback", logging.Formatter().formatException(record.exc_info)
                yield where + " stack", record.stack_info or ""

    def assert_clean(self) -> None:
        assert self.captures[0].records, "nothing was logged at all: the capture is broken"
        for where, text in self.texts():
            assert_clean(where, text)

    @property
    def messages(self) -> str:
        return "\n".join(self.captures[0].lines)


@pytest.fixture
def logs() -> Iterator[Logs]:
    """Every record of every logger at DEBUG, with the redaction installed as both entry points
    install it (``shared.common.logs.configure_logging``), then handlers added after it."""
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    factory = logging.getLogRecordFactory()
    root_filters = list(root.filters)
    handler_filters = {h: list(h.filters) for h in root.handlers}
    main = Capture("root handler")
    root.addHandler(main)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    install_log_redaction()
    first = Capture("root handler added later, called first")
    root.handlers.insert(0, first)
    sdk = Capture("handler on the 'azure' logger")
    logging.getLogger("azure").addHandler(sdk)
    try:
        yield Logs((main, first, sdk))
    finally:
        root.removeHandler(main)
        root.removeHandler(first)
        logging.getLogger("azure").removeHandler(sdk)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        logging.setLogRecordFactory(factory)
        root.filters[:] = root_filters
        for h in root.handlers:
            h.filters[:] = handler_filters.get(h, [f for f in h.filters if not isinstance(f, RedactingFilter)])


# --- TLS for the fake Entra -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return self_signed_pair(tmp_path_factory.mktemp("tls"))


# --- a fake Entra ID (v2.0 discovery + token endpoint) --------------------------------------------
AADSTS_TEXT = {
    "7000222": "AADSTS7000222: The provided client secret keys for app '{client}' are expired. Visit the Azure portal to create new "
               "keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: "
               "https://aka.ms/certCreds.",
    "7000215": "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret "
               "value, not the client secret ID, for a secret added to app '{client}'.",
}
TRACE = " Trace ID: 0b1c2d3e-0000-4000-8000-000000000000 Correlation ID: 4f5e6d7c-0000-4000-8000-000000000000 Timestamp: 2026-01-01 00:00:00Z"


class _EntraHandler(BaseHTTPRequestHandler):
    server: Any

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any, ctype: str = "application/json", headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        tenant = self.path.split("/")[1]
        base = f"{self.server.owner.authority}/{tenant}"
        self._send(200, {"token_endpoint": f"{base}/oauth2/v2.0/token", "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                         "issuer": f"{base}/v2.0", "token_endpoint_auth_methods_supported": ["client_secret_post"]})

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        form = parse_qs(raw)
        entra: FakeEntra = self.server.owner
        entra.token_requests.append(form)
        secret = (form.get("client_secret") or [""])[0]
        mode = entra.mode
        if mode == "ok":
            if secret == GRAPH_SECRET:
                return self._send(200, {"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600, "access_token": "graph-access-token"})
            mode = "7000215"
        if mode in AADSTS_TEXT:
            return self._send(401, {"error": "invalid_client", "error_description": AADSTS_TEXT[mode].format(client=CLIENT) + TRACE,
                                    "error_codes": [int(mode)], "error_uri": f"https://login.microsoftonline.com/error?code={mode}"})
        if mode == "echo":  # a hostile or broken endpoint: the secret back, in every form it came in
            return self._send(
                401,
                {"error": "invalid_client", "error_codes": [7000215], "client_secret": secret, "request": raw,
                 "error_description": f"AADSTS7000215: Invalid client secret provided: {secret!r} (request body: {raw})." + TRACE},
                headers={"X-Echo-Secret": secret, "WWW-Authenticate": f'Bearer error="invalid_client", secret="{secret}"'},
            )
        if mode == "echo-no-code":
            return self._send(400, {"error": "invalid_request", "error_description": f"bad request {raw} with secret {secret}"})
        if mode == "html":
            return self._send(500, f"<html><body><h1>Sign-in broke</h1><pre>{secret}\n{raw}</pre></body></html>".encode(), "text/html")
        if mode == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        raise AssertionError(f"unknown mode {mode}")


class FakeEntra:
    def __init__(self, cert_file: str, key_file: str) -> None:
        self.mode = "ok"
        self.token_requests: list[dict[str, list[str]]] = []
        self.ca_file = cert_file
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)
        self._loopback = Loopback(_EntraHandler, self, ctx)
        self.authority = self._loopback.origin

    def stop(self) -> None:
        self._loopback.stop()


class _LoopbackClientSecretCredential(ClientSecretCredential):
    """azure-identity's own credential; only instance discovery (a call to the public cloud) is off,
    and its transport retries back off in milliseconds instead of seconds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("disable_instance_discovery", True)
        kwargs.setdefault("retry_backoff_factor", 0.01)
        super().__init__(*args, **kwargs)


@pytest.fixture(scope="module")
def entra_server(tls: tuple[str, str]) -> Iterator[FakeEntra]:
    server = FakeEntra(*tls)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def entra(entra_server: FakeEntra, monkeypatch: pytest.MonkeyPatch) -> FakeEntra:
    """Every token request of this module goes to the loopback fake, never to the internet."""
    entra_server.mode = "ok"
    entra_server.token_requests.clear()
    monkeypatch.setattr(credentials, "authority_for", lambda graph_base_url: entra_server.authority)
    monkeypatch.setattr("azure.identity.ClientSecretCredential", _LoopbackClientSecretCredential)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", entra_server.ca_file)
    return entra_server


# --- a hostile sync API ---------------------------------------------------------------------------
class _HostileHandler(BaseHTTPRequestHandler):
    server: Any
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        api: HostileSyncApi = self.server.owner
        length = int(self.headers.get("Content-Length", "0"))
        if length:
            self.rfile.read(length)
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        cred = base64.b64decode(token).decode() if scheme == "Basic" else token
        api.requests.append(f"{self.command} {self.path}")
        if self.command == "GET" and self.path.endswith("/domains") and not api.fail_domains:
            status, ctype, text, headers = 200, "application/json", json.dumps({"domains": DOMAINS}), {}
        elif self.command == "GET" and "/records" in self.path and not api.fail_domains:  # an empty service
            status, ctype, text, headers = 200, "application/json", json.dumps({"records": [], "nextPageToken": None}), {}
        else:
            status, ctype = api.status, api.content_type
            text = api.body.replace("{auth}", auth).replace("{cred}", cred)
            headers = {k: v.replace("{auth}", auth).replace("{cred}", cred) for k, v in api.headers.items()}
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _answer


class HostileSyncApi:
    """Answers with ``status`` and a body in which ``{auth}`` is the Authorization header it got and
    ``{cred}`` the credential decoded from it; GET /domains (and GET .../records, an empty service)
    answer normally unless ``fail_domains``."""

    def __init__(self, status: int, body: str, content_type: str = "application/json", *,
                 headers: dict[str, str] | None = None, fail_domains: bool = True) -> None:
        self.status, self.body, self.content_type = status, body, content_type
        self.headers = headers or {}
        self.fail_domains = fail_domains
        self.requests: list[str] = []
        self._loopback = Loopback(_HostileHandler, self)
        self.base_url = f"{self._loopback.origin}/v1"

    def stop(self) -> None:
        self._loopback.stop()


# --- Key Vault --------------------------------------------------------------------------------------
class FakeVault:
    """Stands in for azure-keyvault-secrets' SecretClient; raises real azure-core exceptions."""

    def __init__(self, secrets: dict[str, str], errors: dict[str, Exception] | None = None) -> None:
        self.secrets = secrets
        self.errors = errors or {}

    def get_secret(self, name: str) -> Any:
        if name in self.errors:
            raise self.errors[name]
        if name not in self.secrets:
            raise ResourceNotFoundError(f"(SecretNotFound) A secret with (name/id) {name} was not found in this key vault.")
        return SimpleNamespace(value=self.secrets[name], properties=SimpleNamespace(expires_on=None))


@pytest.fixture
def use_vault(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeVault]:
    """Make the engine's own load_secrets read this fake vault (no Key Vault emulator exists)."""

    def install(secrets: dict[str, str] | None = None, errors: dict[str, Exception] | None = None) -> FakeVault:
        fake = FakeVault(secrets if secrets is not None else {GRAPH_SECRET_NAME: GRAPH_SECRET, SYNC_SECRET_NAME: SYNC_CREDENTIAL}, errors)
        monkeypatch.setattr(vault, "_secret_client", lambda settings: fake)
        return fake

    return install


# --- running the engine -----------------------------------------------------------------------------
def make_env(tmp_path: Path, *, graph_url: str | None = None, sync_url: str, vault_mode: bool = False,
             credential: str = SYNC_CREDENTIAL, graph_auth: str = "client_secret") -> dict[str, str]:
    env = {
        "GRAPH_AUTH": graph_auth, "GRAPH_TENANT_ID": TENANT, "GRAPH_CLIENT_ID": CLIENT,
        "GRAPH_BASE_URL": graph_url or f"http://127.0.0.1:{closed_port()}/v1.0", "SYNC_API_URL": sync_url,
        "SYNC_STATE": f"file:{tmp_path / 'state'}", "DELETE_THRESHOLD_PERCENT": "100", "DELETE_THRESHOLD_COUNT": "1000000",
    }
    if vault_mode:
        env["KEY_VAULT_URL"] = VAULT_URL
    else:
        env["GRAPH_CLIENT_SECRET"] = GRAPH_SECRET
        env["SYNC_API_CREDENTIAL"] = credential
    return env


def run_engine(env: dict[str, str], action: str = "update") -> RunSummary:
    settings = load_settings(env)
    return asyncio.run(engine.run(action, settings, env=env, options=Options(**FAST)))


def assert_run_clean(summary: RunSummary, logs: Logs, env: dict[str, str], *, chain: bool = True) -> None:
    """Logs, the exception (and its chain), the summary, the run report and every other file
    next to the state hold no piece of any canary."""
    logs.assert_clean()
    assert_exception_clean("summary.exception", summary.exception, chain=chain)
    assert_clean("summary.error", summary.error)
    assert_clean("summary.to_json()", summary.to_json())
    assert_clean("summary.to_json(compact=True)", summary.to_json(compact=True))
    assert_clean("summary.as_dict()", json.dumps(summary.as_dict(), default=repr))
    state = Path(env["SYNC_STATE"].removeprefix("file:"))
    reports = sorted((state / "runs").glob("*.json"))
    assert reports, f"no run report under {state / 'runs'}"
    for path in sorted(p for p in state.rglob("*") if p.is_file()):
        assert_clean(f"file {path.relative_to(state)}", path.read_bytes())


def assert_failed(summary: RunSummary, kind: type[BaseException], *needles: str) -> str:
    assert summary.ok is False
    assert isinstance(summary.exception, kind), f"{type(summary.exception).__name__}: {summary.exception}"
    message = str(summary.exception)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert summary.error == message  # the summary and the report carry the same message
    return message


@pytest.fixture
def graph() -> Iterator[GraphEmulator]:
    with GraphEmulator(DIRECTORY, require_auth=True) as em:
        yield em


@pytest.fixture
def receiver() -> Iterator[SyncReceiver]:
    with SyncReceiver(domains=DOMAINS, credential=SYNC_CREDENTIAL) as rc:
        yield rc


# === the healthy path: the fakes are really used, and even success leaks nothing ====================
@pytest.mark.parametrize("vault_mode", [False, True], ids=["env", "vault"])
def test_a_successful_run_through_the_loopback_entra_leaks_nothing(tmp_path, logs, entra, graph, receiver, use_vault, vault_mode):
    if vault_mode:
        use_vault()
    env = make_env(tmp_path, graph_url=graph.base_url, sync_url=receiver.base_url, vault_mode=vault_mode)
    summary = run_engine(env)
    assert summary.ok, summary.error
    assert [r["client_secret"] for r in entra.token_requests] == [[GRAPH_SECRET]]
    assert {r["address"] for r in receiver.records("addresses").values()} == {"alice@contoso.com"}
    assert_run_clean(summary, logs, env)


# === Entra ID refuses the Graph client secret ========================================================
@pytest.mark.parametrize("code, what", [("7000222", "has expired"), ("7000215", "is not valid")], ids=["expired", "invalid"])
@pytest.mark.parametrize("vault_mode", [False, True], ids=["env", "vault"])
def test_expired_or_invalid_graph_secret_names_the_secret_and_the_rotation(tmp_path, logs, entra, receiver, use_vault, code, what, vault_mode):
    entra.mode = code
    if vault_mode:
        use_vault()
    env = make_env(tmp_path, sync_url=receiver.base_url, vault_mode=vault_mode)
    summary = run_engine(env)
    where = [VAULT_URL, f"'{GRAPH_SECRET_NAME}'"] if vault_mode else ["GRAPH_CLIENT_SECRET"]
    message = assert_failed(summary, CredentialExpiredError, f"AADSTS{code}", what, ROTATE_SCRIPT, *where)
    assert entra.token_requests, "the token endpoint was never asked"
    assert message.count("AADSTS") == 1  # one clear message, not Entra's text
    assert_run_clean(summary, logs, env)
    assert f"AADSTS{code}" in logs.messages  # the run's log says it too


@pytest.mark.parametrize("mode, kind, needle", [
    ("echo", CredentialExpiredError, "AADSTS7000215"),
    ("echo-no-code", GraphError, "signing in to Graph failed"),
    ("html", GraphError, "signing in to Graph failed"),
    ("drop", GraphError, "signing in to Graph failed"),
])
@pytest.mark.parametrize("vault_mode", [False, True], ids=["env", "vault"])
def test_a_hostile_or_broken_token_endpoint_leaks_nothing(tmp_path, logs, entra, receiver, use_vault, mode, kind, needle, vault_mode):
    """The endpoint echoes the secret (raw, in the form body, in headers), answers HTML with it, or
    drops the connection: the run fails clearly and no canary survives anywhere."""
    entra.mode = mode
    if vault_mode:
        use_vault()
    env = make_env(tmp_path, sync_url=receiver.base_url, vault_mode=vault_mode)
    summary = run_engine(env)
    assert_failed(summary, kind, needle)
    assert entra.token_requests
    assert_run_clean(summary, logs, env, chain=False)


def test_the_graph_failure_does_not_keep_azure_identitys_exception_as_context(tmp_path, logs, entra, receiver):
    entra.mode = "echo"
    env = make_env(tmp_path, sync_url=receiver.base_url)
    summary = run_engine(env)
    assert isinstance(summary.exception, CredentialExpiredError)
    assert_exception_clean("summary.exception", summary.exception, chain=True)


@pytest.mark.parametrize("mode", ["7000222", "7000215", "echo", "echo-no-code", "html", "drop"])
@pytest.mark.parametrize("vault_mode", [False, True], ids=["env", "vault"])
def test_graph_failure_maps_real_azure_identity_exceptions(logs, entra, mode, vault_mode):
    """At the credential level: the exception azure-identity really raises against the fake
    endpoint, through the engine's mapping."""
    entra.mode = mode
    env = make_env(Path("/nonexistent"), sync_url="https://dirsync.example.net/v1", vault_mode=vault_mode)
    settings = load_settings(env)
    secrets = vault.load_secrets(settings, env, secret_client=FakeVault({GRAPH_SECRET_NAME: GRAPH_SECRET, SYNC_SECRET_NAME: SYNC_CREDENTIAL}))
    credential = credentials.graph_token_credential(settings, secrets.graph_client_secret)
    assert isinstance(credential, ClientSecretCredential)
    with pytest.raises(Exception) as info:  # noqa: B017 - whatever azure-identity raises is the point
        credential.get_token(settings.graph_scope)
    mapped = _graph_failure(info.value, settings)
    text = str(mapped)
    if mode in ("7000222", "7000215", "echo"):  # the echo still carries AADSTS7000215
        assert isinstance(mapped, CredentialExpiredError) and ROTATE_SCRIPT in text
        assert (VAULT_URL in text and GRAPH_SECRET_NAME in text) if vault_mode else "GRAPH_CLIENT_SECRET" in text
    else:
        assert isinstance(mapped, GraphError) and "signing in to Graph failed" in text
    assert_exception_clean("the mapped error", mapped)
    logs.assert_clean()


# === Graph itself unreachable =========================================================================
@pytest.mark.parametrize("fault", ["refused", "drop"])
def test_graph_refusing_or_dropping_connections_leaks_nothing(tmp_path, logs, entra, receiver, fault):
    if fault == "refused":
        graph_url = f"http://127.0.0.1:{closed_port()}/v1.0"
        em = None
    else:
        em = GraphEmulator(DIRECTORY, require_auth=True)
        graph_url = em.start()
        em.inject_fault("drop", path_contains="/", times=10_000)
    try:
        env = make_env(tmp_path, graph_url=graph_url, sync_url=receiver.base_url)
        summary = run_engine(env)
    finally:
        if em is not None:
            em.stop()
    message = assert_failed(summary, GraphError, "nothing was sent")
    assert ("ConnectError" if fault == "refused" else "RemoteProtocolError") in message
    assert [r for r in receiver.request_log if r.method != "GET"] == []
    assert_run_clean(summary, logs, env)


# === the sync API ========================================================================================
@pytest.mark.parametrize("fault", ["refused", "drop"])
@pytest.mark.parametrize("credential", [SYNC_CREDENTIAL, SYNC_BEARER], ids=["basic", "bearer"])
def test_sync_api_refusing_or_dropping_connections_leaks_nothing(tmp_path, logs, fault, credential):
    if fault == "refused":
        rc = None
        sync_url = f"http://127.0.0.1:{closed_port()}/v1"
    else:
        rc = SyncReceiver(domains=DOMAINS, credential=credential)
        sync_url = rc.start()
        rc.inject_fault("drop_before", path_contains="/domains", times=100)
    try:
        env = make_env(tmp_path, sync_url=sync_url, credential=credential)
        summary = run_engine(env)
    finally:
        if rc is not None:
            rc.stop()
    message = assert_failed(summary, SyncApiUnavailableError, "connection fault")
    assert ("ConnectError" if fault == "refused" else "RemoteProtocolError") in message
    assert_run_clean(summary, logs, env)


@pytest.mark.parametrize("credential", [SYNC_CREDENTIAL, SYNC_BEARER], ids=["basic", "bearer"])
@pytest.mark.parametrize("vault_mode", [False, True], ids=["env", "vault"])
def test_sync_api_401_names_the_credential_and_how_to_fix_it(tmp_path, logs, use_vault, credential, vault_mode):
    with SyncReceiver(domains=DOMAINS, credential=OTHER_CREDENTIAL) as rc:
        if vault_mode:
            use_vault({GRAPH_SECRET_NAME: GRAPH_SECRET, SYNC_SECRET_NAME: credential})
        env = make_env(tmp_path, sync_url=rc.base_url, vault_mode=vault_mode, credential=credential)
        summary = run_engine(env)
        assert [r.status for r in rc.request_log] == [401]  # refused once, not retried
    if vault_mode:
        message = assert_failed(summary, SyncApiAuthError, "HTTP 401", VAULT_URL, f"'{SYNC_SECRET_NAME}'", "az keyvault secret set")
    else:
        message = assert_failed(summary, SyncApiAuthError, "HTTP 401", "SYNC_API_CREDENTIAL", "username:password")
    assert "wrong" in message or "expired" in message
    assert_run_clean(summary, logs, env)


HTML_LOGIN = "<html><head><title>Sign in</title></head><body><p>Signed in as {cred}</p><p>{auth}</p></body></html>"
HOSTILE = {
    "401-echo": (401, '{"title": "Unauthorized", "detail": "bad credential {cred} ({auth})"}', "application/problem+json", SyncApiAuthError),
    "403-echo": (403, '{"title": "Forbidden", "detail": "{cred} lacks roles; sent {auth}"}', "application/problem+json", SyncApiAuthError),
    "500-echo": (500, "Internal error while checking Authorization: {auth} for {cred}", "text/plain", SyncApiUnavailableError),
    "400-echo": (400, '{"title": "Bad request", "detail": "header {auth} user {cred}"}', "application/problem+json", SyncApiError),
    "404-html": (404, HTML_LOGIN, "text/html", SyncApiError),
    "409-text": (409, "{cred} {auth}", "text/plain", SyncApiError),
    "400-cut": (400, "x" * 170 + "{auth}", "text/plain", SyncApiError),  # the echo straddles the detail's length limit
    "200-html": (200, HTML_LOGIN, "text/html", SyncApiError),
}


@pytest.mark.parametrize("case", list(HOSTILE))
@pytest.mark.parametrize("credential", [SYNC_CREDENTIAL, SYNC_BEARER], ids=["basic", "bearer"])
def test_a_hostile_sync_api_echoing_the_credential_leaks_nothing(tmp_path, logs, case, credential):
    status, body, ctype, kind = HOSTILE[case]
    api = HostileSyncApi(status, body, ctype)
    try:
        env = make_env(tmp_path, sync_url=api.base_url, credential=credential)
        summary = run_engine(env)
    finally:
        api.stop()
    assert_failed(summary, kind, "GET /domains")
    assert_run_clean(summary, logs, env)


@pytest.mark.parametrize("credential", [SYNC_CREDENTIAL, SYNC_BEARER], ids=["basic", "bearer"])
def test_a_malformed_retry_after_echoing_the_credential_leaks_nothing(tmp_path, logs, credential):
    """The Retry-After value is logged (cut to 40 characters): the echo must not survive the cut."""
    api = HostileSyncApi(429, '{"title": "slow down"}', headers={"Retry-After": "{auth}"})
    try:
        env = make_env(tmp_path, sync_url=api.base_url, credential=credential)
        summary = run_engine(env)
    finally:
        api.stop()
    assert_failed(summary, SyncApiUnavailableError, "HTTP 429")
    assert "malformed Retry-After" in logs.messages
    assert_run_clean(summary, logs, env)


def test_a_write_refused_with_an_echo_after_a_good_read_leaks_nothing(tmp_path, logs, entra, graph):
    """Graph is read (with the Graph secret in play), then POST changes answers 400 echoing both."""
    api = HostileSyncApi(400, '{"title": "Bad request", "detail": "{auth} / {cred}"}', "application/problem+json", fail_domains=False)
    try:
        env = make_env(tmp_path, graph_url=graph.base_url, sync_url=api.base_url)
        summary = run_engine(env)
    finally:
        api.stop()
    assert_failed(summary, SyncApiError, "HTTP 400", "POST /datasets/")
    assert any(r.startswith("POST ") for r in api.requests)
    assert entra.token_requests
    assert_run_clean(summary, logs, env)


# === Key Vault ============================================================================================
def _http_error(status: int, message: str) -> HttpResponseError:
    err = HttpResponseError(message=message)
    err.status_code = status
    return err


VAULT_ERRORS: dict[str, Callable[[], Exception]] = {
    "403": lambda: _http_error(403, f"(Forbidden) Caller is not authorized; last value seen: {GRAPH_SECRET} / {SYNC_CREDENTIAL}"),
    "500": lambda: _http_error(500, f"(InternalError) {SYNC_CREDENTIAL} {quote_plus(GRAPH_SECRET)}"),
    "auth": lambda: ClientAuthenticationError(message=f"DefaultAzureCredential failed: client_secret={quote_plus(GRAPH_SECRET)} {SYNC_PASSWORD}"),
    "not-found": lambda: ResourceNotFoundError(message=f"(SecretNotFound) {GRAPH_SECRET} {SYNC_CREDENTIAL}"),
    "connection": lambda: ServiceRequestError(message=f"Cannot connect to host kv-canary.vault.azure.net ({SYNC_CREDENTIAL})"),
}


@pytest.mark.parametrize("failing", [GRAPH_SECRET_NAME, SYNC_SECRET_NAME])
@pytest.mark.parametrize("error", list(VAULT_ERRORS))
def test_key_vault_failures_name_the_vault_and_leak_nothing(tmp_path, logs, use_vault, error, failing):
    """The vault client raises real azure-core exceptions whose text carries the canaries (for the
    second secret, after the first one was read and registered)."""
    secrets = {GRAPH_SECRET_NAME: GRAPH_SECRET, SYNC_SECRET_NAME: SYNC_CREDENTIAL}
    fake = use_vault(secrets, {failing: VAULT_ERRORS[error]()})
    env = make_env(tmp_path, sync_url="https://dirsync.example.net/v1", vault_mode=True)
    with pytest.raises(SecretError) as info:
        vault.load_secrets(load_settings(env), env, secret_client=fake)
    assert VAULT_URL in str(info.value) and f"'{failing}'" in str(info.value)
    assert_exception_clean("load_secrets' SecretError", info.value)
    summary = run_engine(env)  # the engine's own load_secrets, through the same fake vault
    assert_failed(summary, SecretError, VAULT_URL, f"'{failing}'")
    assert_run_clean(summary, logs, env)


# === settings ================================================================================================
@pytest.mark.parametrize("name, value", [
    ("SYNC_API_URL", f"https://{SYNC_CREDENTIAL}@dirsync.example.net/v1"),
    ("SYNC_API_URL", f"https://{quote(SYNC_CREDENTIAL, safe='')}@dirsync.example.net/v1"),
    ("SYNC_API_URL", f"http://{SYNC_CREDENTIAL}@dirsync.example.net/v1"),
    ("SYNC_API_URL", f"https://[{SYNC_CREDENTIAL}@dirsync.example.net/v1"),
    ("SYNC_API_URL", f"https://dirsync.example.net/v1?token={SYNC_BEARER}"),
    ("GRAPH_BASE_URL", f"https://{SYNC_USER}:{quote(GRAPH_SECRET, safe='')}@graph.microsoft.com/v1.0"),
    ("AzureWebJobsStorage__blobServiceUri", f"https://{SYNC_CREDENTIAL}@acct.blob.core.windows.net"),
])
def test_a_setting_carrying_the_credential_is_refused_without_echoing_it(tmp_path, name, value):
    env = make_env(tmp_path, sync_url="https://dirsync.example.net/v1")
    if name.startswith("AzureWebJobs"):
        env["SYNC_STATE"] = "blob:sync-state"
    env[name] = value
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    assert info.value.setting == name
    assert_exception_clean("SettingsError", info.value)


@pytest.mark.parametrize("value", [f"https://{SYNC_CREDENTIAL}@kv-canary.vault.azure.net/",
                                   f"https://[{SYNC_CREDENTIAL}@kv-canary.vault.azure.net/"], ids=["userinfo", "malformed"])
def test_a_key_vault_url_carrying_a_credential_is_refused(tmp_path, value):
    env = make_env(tmp_path, sync_url="https://dirsync.example.net/v1", vault_mode=True)
    env["KEY_VAULT_URL"] = value
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    assert_exception_clean("SettingsError", info.value)


# === the log redaction itself =====================================================================================
def test_redaction_reaches_every_handler_and_every_form(logs):
    """A record from third-party code, through a handler added after the redaction was installed
    and one below the root: the message, its arguments and its traceback, in every form."""
    from shared.common.redact import Secret

    Secret(GRAPH_SECRET, "GRAPH_CLIENT_SECRET")
    Secret(SYNC_CREDENTIAL, "SYNC_API_CREDENTIAL")
    Secret(SYNC_BEARER, "SYNC_API_CREDENTIAL")
    sdk = logging.getLogger("azure.identity._internal.get_token_mixin")
    for form in FULL_FORMS:
        try:
            raise ClientAuthenticationError(message=f"Authentication failed: {form}")
        except ClientAuthenticationError:
            sdk.warning("ClientSecretCredential.get_token failed: %s", form, exc_info=True)
        logging.getLogger("httpcore.http11").debug("receive_response_headers.complete return_value=%r", [(b"X-Echo", form.encode())])
    assert len(logs.captures[1].records) == 2 * len(FULL_FORMS) and len(logs.captures[2].records) == len(FULL_FORMS)
    logs.assert_clean()


# === the CLI, as an operator runs it ==================================================================================
def _cli_env(env: dict[str, str]) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT", "TMPDIR")}
    return {**keep, **env, "SYNC_TEST_BACKOFF_SECONDS": "0.01"}


@pytest.mark.parametrize("path", ["settings-userinfo", "401-strict", "400-echo", "refused"])
def test_the_cli_prints_no_canary(tmp_path, path):
    server: Any = None
    try:
        if path == "settings-userinfo":
            env = make_env(tmp_path, sync_url=f"https://{SYNC_CREDENTIAL}@dirsync.example.net/v1")
        elif path == "401-strict":
            server = SyncReceiver(domains=DOMAINS, credential=OTHER_CREDENTIAL)
            env = make_env(tmp_path, sync_url=server.start())
        elif path == "400-echo":
            server = HostileSyncApi(400, '{"title": "Bad request", "detail": "{auth} {cred}"}', "application/problem+json")
            env = make_env(tmp_path, sync_url=server.base_url)
        else:
            env = make_env(tmp_path, sync_url=f"http://127.0.0.1:{closed_port()}/v1")
        result = run_cli("update", _cli_env(env), "--json", "-vv", timeout=60)  # debug logging too
    finally:
        if server is not None:
            server.stop()
    assert result.code == (2 if path == "settings-userinfo" else 1), result.stderr
    assert_clean("CLI stdout", result.stdout)
    assert_clean("CLI stderr", result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    assert {"settings-userinfo": "SYNC_API_URL", "401-strict": "SYNC_API_CREDENTIAL", "400-echo": "HTTP 400",
            "refused": "connection fault"}[path] in last
    assert result.summary["ok"] is False
    state = tmp_path / "state"
    for report in state.rglob("*") if state.exists() else ():
        if report.is_file():
            assert_clean(f"file {report}", report.read_bytes())


# === an access token echoed back ===========================================================================
ACCESS_TOKEN = "graph-access-token"  # what the loopback Entra issues, for any scope


@pytest.mark.parametrize("source", ["graph", "exchange"])
@pytest.mark.parametrize("status", [400, 403])
def test_a_source_echoing_the_access_token_leaks_it_nowhere(tmp_path, logs, entra, graph, receiver, source, status):
    """Graph or Exchange Online (or a proxy in front of them) answering with the Authorization
    header in its error body and x-ms-diagnostics: the app's access token, a secret like the
    client secret it was signed in with, reaches no exception, summary, log line or state file."""
    hostile = HostileSyncApi(status, '{"error": {"code": "BadRequest", "message": "rejected {auth}"}}',
                             headers={"x-ms-diagnostics": '2000001;reason="bad {auth}";error_category="invalid_token"'})
    origin = hostile.base_url.removesuffix("/v1")
    try:
        if source == "graph":
            env = make_env(tmp_path, graph_url=f"{origin}/v1.0", sync_url=receiver.base_url)
        else:
            env = {**make_env(tmp_path, graph_url=graph.base_url, sync_url=receiver.base_url), "EXO_MODE": "augment", "EXO_BASE_URL": origin}
        summary = run_engine(env)
    finally:
        hostile.stop()
    assert summary.ok is False and hostile.requests, summary.error
    assert [r for r in receiver.request_log if r.method != "GET"] == []
    texts = [("summary", summary.to_json()), *((f"exception chain {type(e).__name__}", f"{e!s} {e!r}") for e in exception_chain(summary.exception)),
             *logs.texts(), *((str(p), p.read_text("utf-8", "replace")) for p in Path(env["SYNC_STATE"].removeprefix("file:")).rglob("*") if p.is_file())]
    leaked = [where for where, text in texts if ACCESS_TOKEN in text]
    assert not leaked, leaked
    assert_run_clean(summary, logs, env)
