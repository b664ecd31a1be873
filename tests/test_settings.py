"""Settings: every one validated before any network call, with an error that names the
setting and shows a valid value, and never a secret."""

from __future__ import annotations

import pytest

from shared.common.errors import SettingsError
from shared.config.settings import load_settings, progress_interval_seconds
from tests.stack import base_env, run_cli

GOOD = {
    "GRAPH_TENANT_ID": "11111111-2222-3333-4444-555555555555",
    "GRAPH_CLIENT_ID": "66666666-7777-8888-9999-000000000000",
    "GRAPH_CLIENT_SECRET": "client-secret-canary-XYZ",
    "SYNC_API_URL": "https://dirsync.example.net/v1",
    "SYNC_API_CREDENTIAL": "user:pw-canary-ABC",
    "SYNC_STATE": "file:/tmp/state",
}


def test_defaults():
    s = load_settings(GOOD)
    assert s.graph_auth == "client_secret"
    assert s.graph_base_url == "https://graph.microsoft.com/v1.0"
    assert s.datasets == ("addresses", "groups", "users")
    assert s.address_domains is None
    assert s.schedule == "0 0 * * * *"
    assert s.graph_client_secret_name == "graph-client-secret" and s.sync_api_credential_name == "sync-api-credential"
    assert s.graph_scope == "https://graph.microsoft.com/.default"


def test_default_state_is_blob_and_needs_a_storage_account():
    env = {k: v for k, v in GOOD.items() if k != "SYNC_STATE"}
    with pytest.raises(SettingsError) as e:
        load_settings(env)
    assert e.value.setting == "AzureWebJobsStorage"
    s = load_settings({**env, "AzureWebJobsStorage__blobServiceUri": "https://acct.blob.core.windows.net"})
    assert (s.state.kind, s.state.where) == ("blob", "sync-state")
    s = load_settings({**env, "AzureWebJobsStorage__accountName": "acct"})
    assert s.storage_blob_uri == "https://acct.blob.core.windows.net"


@pytest.mark.parametrize(
    "name, value, setting, example_fragment",
    [
        ("GRAPH_AUTH", "certificate", "GRAPH_AUTH", "client_secret"),
        ("GRAPH_TENANT_ID", "", "GRAPH_TENANT_ID", "00000000-"),
        ("GRAPH_TENANT_ID", "not a tenant!", "GRAPH_TENANT_ID", "00000000-"),
        ("GRAPH_CLIENT_ID", "abc", "GRAPH_CLIENT_ID", "00000000-"),
        ("GRAPH_BASE_URL", "ftp://graph", "GRAPH_BASE_URL", "https://graph.microsoft.com/v1.0"),
        ("GRAPH_BASE_URL", "http://graph.example.com/v1.0", "GRAPH_BASE_URL", "https://graph.microsoft.com/v1.0"),
        ("KEY_VAULT_URL", "http://vault", "KEY_VAULT_URL", "https://my-vault.vault.azure.net/"),
        ("GRAPH_CLIENT_SECRET_NAME", "bad name!", "GRAPH_CLIENT_SECRET_NAME", "graph-client-secret"),
        ("SYNC_API_CREDENTIAL_NAME", "x" * 200, "SYNC_API_CREDENTIAL_NAME", "sync-api-credential"),
        ("SYNC_API_URL", "", "SYNC_API_URL", "https://dirsync.example.net/v1"),
        ("SYNC_API_URL", "https://dirsync.example.net/v2", "SYNC_API_URL", "/v1"),
        ("SYNC_API_URL", "http://dirsync.example.net/v1", "SYNC_API_URL", "https://"),
        ("SYNC_API_URL", "http://10.1.2.3/v1", "SYNC_API_URL", "https://"),
        ("SYNC_DATASETS", "addresses,contacts", "SYNC_DATASETS", "addresses,groups,users"),
        ("SYNC_DATASETS", " , ", "SYNC_DATASETS", "addresses,groups,users"),
        ("ADDRESS_DOMAINS", "contoso.com,not_a_domain", "ADDRESS_DOMAINS", "contoso.com,fabrikam.com"),
        ("ADDRESS_DOMAINS", ",", "ADDRESS_DOMAINS", "contoso.com"),
        ("SYNC_STATE", "s3:bucket", "SYNC_STATE", "blob:sync-state"),
        ("SYNC_STATE", "blob:Bad_Container", "SYNC_STATE", "blob:sync-state"),
        ("SYNC_STATE", "file:", "SYNC_STATE", "file:"),
        ("SYNC_SCHEDULE", "every hour", "SYNC_SCHEDULE", "0 0 * * * *"),
        ("SYNC_SCHEDULE", "0 * * * *", "SYNC_SCHEDULE", "0 0 * * * *"),
    ],
)
def test_malformed_settings_name_the_setting_and_a_valid_value(name, value, setting, example_fragment):
    with pytest.raises(SettingsError) as e:
        load_settings({**GOOD, name: value})
    assert e.value.setting == setting
    text = str(e.value)
    assert text.startswith(f"setting {setting}:") and example_fragment in text
    assert "canary" not in text.lower()


NUMBER_SETTINGS = {  # setting: (lowest, highest) allowed
    "FULL_SYNC_INTERVAL_HOURS": ("0", "8784"),
    "DELETE_THRESHOLD_PERCENT": ("0", "100"),
    "DELETE_THRESHOLD_COUNT": ("0", "1000000000"),
    "DELETE_THRESHOLD_FLOOR": ("0", "1000000000"),
    "PROGRESS_INTERVAL_SECONDS": ("0", "3600"),
}


@pytest.mark.parametrize("setting", sorted(NUMBER_SETTINGS))
@pytest.mark.parametrize("side", ["below", "above"])
def test_a_number_out_of_range_names_the_range_as_an_operator_types_it(setting, side):
    """The range in the message is whole numbers an operator can type (``0..1000000000``, not
    ``0..1e+09``), for every numeric setting and either side of its range."""
    low, high = NUMBER_SETTINGS[setting]
    value = "-1" if side == "below" else str(int(high) + 1)
    env = {**GOOD, setting: value}
    with pytest.raises(SettingsError) as e:
        load_settings(env)
        progress_interval_seconds(env)
    text = str(e.value)
    assert e.value.setting == setting and f"is outside {low}..{high} " in text and "e+" not in text


def test_secrets_are_required_without_a_vault_and_not_with_one():
    with pytest.raises(SettingsError, match="GRAPH_CLIENT_SECRET"):
        load_settings({k: v for k, v in GOOD.items() if k != "GRAPH_CLIENT_SECRET"})
    with pytest.raises(SettingsError, match="SYNC_API_CREDENTIAL"):
        load_settings({k: v for k, v in GOOD.items() if k != "SYNC_API_CREDENTIAL"})
    vault = {k: v for k, v in GOOD.items() if k not in ("GRAPH_CLIENT_SECRET", "SYNC_API_CREDENTIAL")}
    s = load_settings({**vault, "KEY_VAULT_URL": "https://v.vault.azure.net/"})
    assert s.key_vault_url == "https://v.vault.azure.net/"


def test_graph_auth_none_only_for_loopback_and_needs_no_app():
    env = {k: v for k, v in GOOD.items() if not k.startswith("GRAPH_")}
    with pytest.raises(SettingsError) as e:
        load_settings({**env, "GRAPH_AUTH": "none"})
    assert e.value.setting == "GRAPH_AUTH"
    s = load_settings({**env, "GRAPH_AUTH": "none", "GRAPH_BASE_URL": "http://127.0.0.1:8080/v1.0"})
    assert s.graph_tenant_id is None
    assert load_settings({**env, "GRAPH_AUTH": "none", "GRAPH_BASE_URL": "http://[::1]:8080/v1.0"}).graph_auth == "none"
    assert load_settings({**env, "GRAPH_AUTH": "none", "GRAPH_BASE_URL": "http://localhost:8080/v1.0"}).graph_auth == "none"


def test_lists_are_normalized():
    s = load_settings({**GOOD, "SYNC_DATASETS": " Users , addresses ", "ADDRESS_DOMAINS": "Contoso.COM, bücher.example"})
    assert s.datasets == ("addresses", "users")
    assert s.address_domains == frozenset({"contoso.com", "xn--bcher-kva.example"})


def test_managed_identity_mode_needs_no_client_secret():
    env = {k: v for k, v in GOOD.items() if k != "GRAPH_CLIENT_SECRET"}
    assert load_settings({**env, "GRAPH_AUTH": "managed_identity"}).graph_auth == "managed_identity"


def test_cli_settings_error_stops_before_any_network_call(tmp_path):
    from devstack.graph_emulator import GraphEmulator
    from devstack.sync_receiver import SyncReceiver

    with GraphEmulator({}) as graph, SyncReceiver(domains=["contoso.com"]) as receiver:
        env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path}")
        env["SYNC_DATASETS"] = "addresses,mailboxes"
        r = run_cli("update", env)
        assert r.code != 0
        assert r.stderr.strip().splitlines() == [
            "error: setting SYNC_DATASETS: unknown dataset 'mailboxes'; the datasets are addresses, groups, users "
            "(a valid value looks like: addresses,groups,users)"
        ]
        assert graph.request_count == 0 and receiver.request_log == []


@pytest.mark.parametrize("value, warned", [
    ("Guest", None), ("guest,MEMBER", None), ("Guestt", "'guestt'"), ("Guest,External", "'external'"),
])
def test_an_exclude_user_type_entra_never_sets_is_warned_about(value, warned, caplog):
    """A typo in EXCLUDE_USER_TYPES (``Guestt``) excludes no one; the run says so instead of
    staying silent. Member and Guest, in any case, are what Entra ID sets: no warning."""
    with caplog.at_level("WARNING", logger="shared.config.settings"):
        s = load_settings({**GOOD, "EXCLUDE_USER_TYPES": value})
    assert s.rules.exclude_user_types
    lines = [r.getMessage() for r in caplog.records if "EXCLUDE_USER_TYPES" in r.getMessage()]
    if warned is None:
        assert lines == []
    else:
        assert len(lines) == 1 and warned in lines[0] and "neither Member nor Guest" in lines[0]
