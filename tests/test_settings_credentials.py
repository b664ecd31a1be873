"""The two secrets must be sendable (shared/common/carriable.py): SYNC_API_CREDENTIAL in the
Authorization header, GRAPH_CLIENT_SECRET in the token request's form body. Exhaustive over the
256 latin-1 code points and a handful beyond (a separator, the euro sign, a BOM, an emoji, lone
surrogates as os.environ makes them from bytes that are not UTF-8): each value is either
accepted, and then sent verbatim, or refused with the setting named and no part of the value in
the message (docs/sync-rules.md, "Settings")."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import unicodedata
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from types import SimpleNamespace
from urllib.parse import parse_qs, urlencode

import pytest

from shared.common.errors import SecretError, SettingsError
from shared.common.redact import Secret
from shared.config.settings import load_settings
from shared.config.vault import load_secrets
from shared.target.syncapi import SyncApiClient, auth_header
from tests.loopback import Loopback

CODE_POINTS = [*range(256), 0x100, 0x141, 0x2028, 0x20AC, 0xFEFF, 0x1F600, 0xD800, 0xDCFF]
CANARY = "Canary-4d2f"
ENV = {
    "GRAPH_TENANT_ID": "11111111-2222-3333-4444-555555555555",
    "GRAPH_CLIENT_ID": "66666666-7777-8888-9999-000000000000",
    "GRAPH_CLIENT_SECRET": "client-secret-value",
    "SYNC_API_URL": "https://dirsync.example.net/v1",
    "SYNC_API_CREDENTIAL": "user:pw-value",
    "SYNC_STATE": "file:/tmp/state",
}
VAULT = {**{k: v for k, v in ENV.items() if k not in ("GRAPH_CLIENT_SECRET", "SYNC_API_CREDENTIAL")},
         "KEY_VAULT_URL": "https://kv-sync.vault.azure.net/"}


def _bearer(c: str) -> str:
    return f"tok{c}en-{CANARY}"


def _basic(c: str) -> str:
    return f"us{c}er:pa{c}ss-{CANARY}"


def _carried_by_header(value: str) -> bool:
    """The rule: Basic carries any UTF-8 text without control characters; Bearer printable ASCII."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    if ":" in value:
        return not any(unicodedata.category(ch) == "Cc" for ch in value)
    return all(" " <= ch <= "~" for ch in value)


def _assert_value_absent(message: str, value: str, c: str) -> None:
    assert CANARY not in message and value not in message
    assert "position" not in message
    if not " " <= c <= "~":  # a refused character is never printable ASCII: not raw, not escaped
        assert c not in message
        assert f"\\x{ord(c):02x}" not in message and f"\\u{ord(c):04x}" not in message and f"U+{ord(c):04X}" not in message


class _Capture(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        # http.server reads header bytes as latin-1: encoding back gives the bytes on the wire.
        self.server.owner.append(self.headers["Authorization"].encode("latin-1"))  # type: ignore[attr-defined]
        body = b'{"domains": ["contoso.com"]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def wire() -> Iterator[tuple[str, list[bytes]]]:
    seen: list[bytes] = []
    server = Loopback(_Capture, seen)
    yield server.origin, seen
    server.stop()


def _sent_header(wire: tuple[str, list[bytes]], value: str) -> bytes:
    """The Authorization header as the client put it on the wire, read by a server on loopback."""
    origin, seen = wire

    async def go() -> None:
        async with SyncApiClient(f"{origin}/v1", Secret(value, "SYNC_API_CREDENTIAL")) as client:
            assert await client.domains() == ["contoso.com"]

    asyncio.run(go())
    return seen[-1]


@pytest.mark.parametrize("form", [_bearer, _basic], ids=["bearer", "basic"])
def test_every_code_point_in_the_sync_credential_is_sent_verbatim_or_refused_without_the_value(wire, form):
    for cp in CODE_POINTS:
        c = chr(cp)
        value = form(c)
        try:
            load_settings({**ENV, "SYNC_API_CREDENTIAL": value})
        except SettingsError as exc:
            assert exc.setting == "SYNC_API_CREDENTIAL", (cp, str(exc))
            _assert_value_absent(str(exc), value, c)
            assert not _carried_by_header(value), cp
            with pytest.raises(SecretError) as e:  # the client refuses it too, whoever built the Secret
                auth_header(Secret(value, "SYNC_API_CREDENTIAL"))
            _assert_value_absent(str(e.value), value, c)
            continue
        assert _carried_by_header(value), cp
        raw = _sent_header(wire, value)
        if ":" in value:
            assert raw == b"Basic " + base64.b64encode(value.encode("utf-8")), cp
        else:
            assert raw == b"Bearer " + value.encode("ascii"), cp


class FakeVault:
    """Stands in for azure-keyvault-secrets' SecretClient (no Key Vault emulator exists)."""

    def __init__(self, secrets: dict[str, str]):
        self.secrets = secrets

    def get_secret(self, name: str):
        return SimpleNamespace(value=self.secrets[name], properties=SimpleNamespace(expires_on=dt.datetime(2099, 1, 1, tzinfo=dt.UTC)))


def test_every_code_point_in_the_vault_credential_is_accepted_or_refused_naming_the_vault_and_setting():
    settings = load_settings(VAULT)
    for cp in CODE_POINTS:
        for value in (_bearer(chr(cp)), _basic(chr(cp))):
            vault = FakeVault({"graph-client-secret": "client-secret-value", "sync-api-credential": value})
            try:
                got = load_secrets(settings, {}, secret_client=vault)
            except SecretError as exc:
                assert not _carried_by_header(value), cp
                text = str(exc)
                assert "SYNC_API_CREDENTIAL_NAME" in text and "'sync-api-credential'" in text and "kv-sync.vault.azure.net" in text
                _assert_value_absent(text, value, chr(cp))
            else:
                assert _carried_by_header(value) and got.sync_api_credential.reveal() == value.strip(), cp


def _form_carries(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not any(unicodedata.category(ch) == "Cc" for ch in value)


def test_every_code_point_in_the_graph_client_secret_reaches_the_token_request_or_is_refused():
    """azure-identity hands the client secret to MSAL, which posts it form-encoded (UTF-8): a
    lone surrogate cannot be encoded at all, and a control character is no client secret
    Entra issues. Both are refused before any call; everything else survives the encoding."""
    vault_settings = load_settings(VAULT)
    for cp in CODE_POINTS:
        c = chr(cp)
        value = f"sec{c}ret-{CANARY}"
        try:
            load_settings({**ENV, "GRAPH_CLIENT_SECRET": value})
        except SettingsError as exc:
            assert exc.setting == "GRAPH_CLIENT_SECRET" and not _form_carries(value), cp
            _assert_value_absent(str(exc), value, c)
        else:
            assert _form_carries(value), cp
            assert parse_qs(urlencode({"client_secret": value}))["client_secret"] == [value]
        vault = FakeVault({"graph-client-secret": value, "sync-api-credential": "user:pw-value"})
        try:
            load_secrets(vault_settings, {}, secret_client=vault)
        except SecretError as exc:
            assert "GRAPH_CLIENT_SECRET_NAME" in str(exc) and "'graph-client-secret'" in str(exc) and not _form_carries(value)
            _assert_value_absent(str(exc), value, c)
        else:
            assert _form_carries(value), cp


def test_a_graph_client_secret_is_not_judged_when_it_is_not_used():
    """GRAPH_AUTH=managed_identity never sends GRAPH_CLIENT_SECRET: a stray value is ignored."""
    s = load_settings({**ENV, "GRAPH_AUTH": "managed_identity", "GRAPH_CLIENT_SECRET": "x\ny"})
    assert s.graph_auth == "managed_identity"


def test_load_secrets_refuses_an_environment_value_load_settings_did_not_see():
    """A caller that builds Settings one way and passes another environment still gets the
    settings error, not a traceback from the HTTP layer."""
    settings = load_settings(ENV)
    with pytest.raises(SettingsError) as e:
        load_secrets(settings, {**ENV, "SYNC_API_CREDENTIAL": f"t\u00f6k-{CANARY}"})
    assert e.value.setting == "SYNC_API_CREDENTIAL" and CANARY not in str(e.value)
