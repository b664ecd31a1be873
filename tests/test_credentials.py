"""GRAPH_AUTH modes at the credential-construction level, and secrets from Key Vault."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from types import SimpleNamespace

import pytest
from azure.identity import ClientAssertionCredential, ClientSecretCredential
from hypothesis import given
from hypothesis import strategies as st

from shared.common.errors import SecretError
from shared.common.redact import Secret
from shared.config import credentials
from shared.config.settings import load_settings
from shared.config.vault import load_secrets

BASE = {
    "GRAPH_TENANT_ID": "11111111-2222-3333-4444-555555555555",
    "GRAPH_CLIENT_ID": "66666666-7777-8888-9999-000000000000",
    "SYNC_API_URL": "https://dirsync.example.net/v1",
    "SYNC_STATE": "file:/tmp/x",
    "KEY_VAULT_URL": "https://kv-sync.vault.azure.net/",
    "AZURE_CLIENT_ID": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
}


def test_client_secret_mode_builds_a_client_secret_credential(monkeypatch):
    s = load_settings({**BASE, "GRAPH_AUTH": "client_secret"})
    cred = credentials.graph_token_credential(s, Secret("the-secret-value", "graph-client-secret"))
    assert isinstance(cred, ClientSecretCredential)
    assert cred._client_id == BASE["GRAPH_CLIENT_ID"]
    # Graph's token getter asks that credential for GRAPH_SCOPE, off the event loop's thread.
    asked: list[tuple] = []

    def get_token(self, *scopes, **kwargs):
        asked.append((scopes, threading.current_thread() is threading.main_thread()))
        return SimpleNamespace(token="graph-token", expires_on=1_900_000_000)

    monkeypatch.setattr(ClientSecretCredential, "get_token", get_token)
    getter = credentials.graph_token_getter(s, Secret("the-secret-value", "graph-client-secret"))
    assert asyncio.run(getter(s.graph_scope)) == ("graph-token", 1_900_000_000.0)
    assert asked == [((s.graph_scope,), False)]


def test_managed_identity_mode_uses_the_identity_token_as_client_assertion(monkeypatch):
    asked: list[tuple] = []

    class FakeMI:
        def __init__(self, client_id=None):
            asked.append(("client_id", client_id))

        def get_token(self, *scopes):
            asked.append(("scopes", scopes))
            return SimpleNamespace(token="mi-assertion-token")

    monkeypatch.setattr("azure.identity.ManagedIdentityCredential", FakeMI)
    s = load_settings({**BASE, "GRAPH_AUTH": "managed_identity"})
    cred = credentials.graph_token_credential(s, None)
    assert isinstance(cred, ClientAssertionCredential)
    assert cred._client._client_id == BASE["GRAPH_CLIENT_ID"] if hasattr(cred, "_client") else True
    # the assertion callback fetches the managed identity's token for the exchange audience
    func = cred._func if hasattr(cred, "_func") else cred._client._client_credential.assertion_func  # type: ignore[attr-defined]
    assert func() == "mi-assertion-token"
    assert ("client_id", BASE["AZURE_CLIENT_ID"]) in asked
    assert ("scopes", ("api://AzureADTokenExchange/.default",)) in asked


@pytest.mark.parametrize(("graph", "exo", "audience"), [
    ("https://graph.microsoft.com/v1.0", None, "api://AzureADTokenExchange"),
    ("https://graph.microsoft.us/v1.0", None, "api://AzureADTokenExchangeUSGov"),
    ("https://dod-graph.microsoft.us/v1.0", None, "api://AzureADTokenExchangeUSGov"),
    ("https://microsoftgraph.chinacloudapi.cn/v1.0", None, "api://AzureADTokenExchangeChina"),
    ("https://graph.microsoft.com/v1.0", "https://outlook.office365.us", "api://AzureADTokenExchangeUSGov"),
    ("https://graph.microsoft.com/v1.0", "https://partner.outlook.cn", "api://AzureADTokenExchangeChina"),
])
def test_the_managed_identity_asks_for_its_clouds_token_exchange_audience(monkeypatch, graph, exo, audience):
    """A national cloud's federated credential accepts its own audience (Microsoft Entra,
    "Configure an application to trust a managed identity"): the public one would be refused."""
    asked: list[tuple] = []

    class FakeMI:
        def __init__(self, client_id=None):
            pass

        def get_token(self, *scopes):
            asked.append(scopes)
            return SimpleNamespace(token="mi-assertion-token")

    monkeypatch.setattr("azure.identity.ManagedIdentityCredential", FakeMI)
    s = load_settings({**BASE, "GRAPH_AUTH": "managed_identity", "GRAPH_BASE_URL": graph})
    cred = credentials.graph_token_credential(s, None, base_url=exo)
    func = cred._func if hasattr(cred, "_func") else cred._client._client_credential.assertion_func  # type: ignore[attr-defined]
    assert func() == "mi-assertion-token"
    assert asked == [(audience + "/.default",)]


def test_none_mode_is_anonymous():
    s = load_settings({k: v for k, v in BASE.items() if not k.startswith("GRAPH_")} | {"GRAPH_AUTH": "none", "GRAPH_BASE_URL": "http://127.0.0.1:1/v1.0"})
    assert credentials.graph_token_credential(s, None) is None
    assert credentials.graph_token_getter(s, None) is None  # no Authorization header at all


def test_national_cloud_authority():
    assert credentials.authority_for("https://graph.microsoft.us/v1.0") == "login.microsoftonline.us"
    assert credentials.authority_for("https://microsoftgraph.chinacloudapi.cn/v1.0") == "login.chinacloudapi.cn"
    assert credentials.authority_for("https://graph.microsoft.com/v1.0") == "login.microsoftonline.com"


class FakeVault:
    """Stands in for azure-keyvault-secrets' SecretClient (no Key Vault emulator exists)."""

    def __init__(self, secrets: dict[str, tuple[str, dt.datetime | None]], error=None):
        self.secrets = secrets
        self.error = error
        self.read: list[str] = []

    def get_secret(self, name):
        self.read.append(name)
        if self.error:
            raise self.error
        from azure.core.exceptions import ResourceNotFoundError

        if name not in self.secrets:
            raise ResourceNotFoundError(f"SecretNotFound {name}")
        value, expires = self.secrets[name]
        return SimpleNamespace(value=value, properties=SimpleNamespace(expires_on=expires))


def test_both_secrets_come_from_the_vault_by_name():
    s = load_settings({**BASE, "GRAPH_CLIENT_SECRET_NAME": "my-graph", "SYNC_API_CREDENTIAL_NAME": "my-sync"})
    vault = FakeVault({"my-graph": ("g-secret-canary", None), "my-sync": ("u:p-canary", None)})
    got = load_secrets(s, {}, secret_client=vault)
    assert vault.read == ["my-graph", "my-sync"]
    assert got.graph_client_secret.reveal() == "g-secret-canary"
    assert got.sync_api_credential.reveal() == "u:p-canary"
    assert "canary" not in repr(got)


def test_managed_identity_mode_reads_only_the_sync_credential():
    s = load_settings({**BASE, "GRAPH_AUTH": "managed_identity"})
    vault = FakeVault({"sync-api-credential": ("tok", None)})
    got = load_secrets(s, {}, secret_client=vault)
    assert vault.read == ["sync-api-credential"] and got.graph_client_secret is None


def test_missing_secret_names_the_vault_and_the_secret():
    s = load_settings(BASE)
    with pytest.raises(SecretError) as e:
        load_secrets(s, {}, secret_client=FakeVault({}))
    assert "graph-client-secret" in str(e.value) and "kv-sync.vault.azure.net" in str(e.value)


def test_forbidden_vault_says_which_role_is_missing():
    from azure.core.exceptions import HttpResponseError

    err = HttpResponseError(message="Forbidden")
    err.status_code = 403
    with pytest.raises(SecretError, match="Key Vault Secrets User"):
        load_secrets(load_settings(BASE), {}, secret_client=FakeVault({}, error=err))


@pytest.mark.parametrize("kind, fix", [
    ("auth", "sign in first (az login) as a principal with 'Key Vault Secrets User'"),
    ("connection", "check KEY_VAULT_URL and that this host"),
])
def test_an_unreachable_or_unauthenticated_vault_says_what_to_do(kind, fix):
    """The two failures an administrator meets first, from a laptop or a new Function app: each
    message says what to check (the setting, the sign-in), never only asks a question."""
    from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

    err = ClientAuthenticationError(message="no credential") if kind == "auth" else ServiceRequestError(message="no route")
    with pytest.raises(SecretError) as e:
        load_secrets(load_settings(BASE), {}, secret_client=FakeVault({}, error=err))
    text = str(e.value)
    assert fix in text and "kv-sync.vault.azure.net" in text and "graph-client-secret" in text and not text.endswith("?")


@pytest.mark.parametrize("days, level", [(45, None), (20, logging.WARNING), (3, logging.ERROR), (-1, logging.ERROR)])
def test_expiring_secret_is_reported_early(caplog, days, level):
    caplog.set_level(logging.WARNING)
    exp = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
    vault = FakeVault({"graph-client-secret": ("g-canary", exp), "sync-api-credential": ("u:p-canary", None)})
    got = load_secrets(load_settings(BASE), {}, secret_client=vault)
    records = [r for r in caplog.records if r.name == "shared.vault"]
    if level is None:
        assert records == [] and got.expiry_warnings == []
    else:
        assert records and records[0].levelno == level
        assert "graph-client-secret" in records[0].getMessage() and "rotate" in records[0].getMessage()
        assert "canary" not in records[0].getMessage()


_AROUND = st.text(alphabet=" :;.,()[]-\n", max_size=30)  # no letters: never a registered secret that scrub would mask


@given(_AROUND, st.from_regex(r"[0-9]{5,9}", fullmatch=True), _AROUND)
def test_aadsts_code_is_found_wherever_the_sign_in_error_names_it(before, digits, after):
    """The Graph and the Exchange sign-in failures read the same code (common/redact.py)."""
    from shared.common.redact import aadsts_code

    assert aadsts_code(RuntimeError(f"{before}AADSTS{digits}{after}")) == digits
    assert aadsts_code(RuntimeError(before)) is None


@pytest.mark.parametrize("mode", ["managed_identity", "client_secret"])
def test_no_managed_identity_where_the_command_runs_says_so(mode):
    """GRAPH_AUTH=managed_identity on a laptop: azure-identity finds no identity
    (CredentialUnavailableError). The message says that this mode works only in Azure and what
    to use on a command line; other modes keep the generic advice."""
    from azure.identity import CredentialUnavailableError

    from shared.actions.reads import _graph_failure

    settings = load_settings({**BASE, "GRAPH_AUTH": mode})
    text = str(_graph_failure(CredentialUnavailableError(message="ManagedIdentityCredential authentication unavailable"), settings))
    assert text.startswith("signing in to Graph failed (CredentialUnavailableError)")
    assert ("exists only in Azure; on a command line use GRAPH_AUTH=client_secret" in text) == (mode == "managed_identity")
    assert "GRAPH_AUTH" in text and "authentication unavailable" not in text
