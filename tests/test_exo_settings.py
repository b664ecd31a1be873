"""EXO_MODE, EXO_RECIPIENT_TYPES and EXO_BASE_URL: every error of the rules, each naming the
setting, raised before any network call (the CLI exits 2 with no request made)."""

from __future__ import annotations

import itertools

import pytest

from shared.common.errors import SettingsError
from shared.config.exo_settings import EXO_QUERY_TYPES
from shared.config.settings import EXO_ALL_TYPES, load_settings
from tests.stack import base_env, run_cli

TENANT = "11111111-2222-3333-4444-555555555555"
GOOD = {
    "GRAPH_TENANT_ID": TENANT,
    "GRAPH_CLIENT_ID": "66666666-7777-8888-9999-000000000000",
    "GRAPH_CLIENT_SECRET": "client-secret-canary-XYZ",
    "SYNC_API_URL": "https://dirsync.example.net/v1",
    "SYNC_API_CREDENTIAL": "user:pw-canary-ABC",
    "SYNC_STATE": "file:/tmp/state",
}
LOCAL = {**{k: v for k, v in GOOD.items() if k not in ("GRAPH_CLIENT_ID", "GRAPH_CLIENT_SECRET")},
         "GRAPH_AUTH": "none", "GRAPH_BASE_URL": "http://127.0.0.1:9/v1.0", "EXO_BASE_URL": "http://127.0.0.1:9"}


def error(env: dict[str, str]) -> SettingsError:
    with pytest.raises(SettingsError) as e:
        load_settings(env)
    return e.value


def test_defaults_off():
    s = load_settings(GOOD)
    assert s.exo.mode == "off" and not s.exo.enabled
    assert s.exo.base_url == "https://outlook.office365.com"
    assert s.exo.recipient_types == ("DynamicDistributionGroup", "PublicFolder")


def test_augment_and_only_defaults():
    s = load_settings({**GOOD, "EXO_MODE": "Augment"})
    assert s.exo.mode == "augment" and s.exo.recipient_types == ("DynamicDistributionGroup", "PublicFolder")
    assert s.exo.tenant == TENANT and s.exo.scope == "https://outlook.office365.com/.default"
    s = load_settings({**GOOD, "EXO_MODE": "only", "SYNC_DATASETS": "addresses"})
    assert s.exo.recipient_types == EXO_ALL_TYPES and len(EXO_ALL_TYPES) == 14


@pytest.mark.parametrize("host", ["outlook.office365.us", "outlook-dod.office365.us", "partner.outlook.cn"])
def test_national_cloud_scope(host):
    s = load_settings({**GOOD, "EXO_MODE": "augment", "EXO_BASE_URL": f"https://{host}/"})
    assert s.exo.base_url == f"https://{host}" and s.exo.scope == f"https://{host}/.default"


def test_exchange_only_with_graph_auth_none_needs_no_graph_base_url():
    """EXO_MODE=only reads no Graph: with GRAPH_AUTH=none only EXO_BASE_URL must be a loopback
    address, and GRAPH_BASE_URL may be left at its default; with Graph read, it may not."""
    env = {k: v for k, v in LOCAL.items() if k != "GRAPH_BASE_URL"}
    s = load_settings({**env, "EXO_MODE": "only", "SYNC_DATASETS": "addresses"})
    assert s.exo.mode == "only" and s.graph_auth == "none"
    e = error({**env, "EXO_MODE": "only", "SYNC_DATASETS": "addresses", "EXO_BASE_URL": "https://outlook.office365.com"})
    assert e.setting == "EXO_BASE_URL"
    for mode in ("off", "augment"):
        assert error({**env, "EXO_MODE": mode}).setting == "GRAPH_AUTH"


def test_unknown_mode():
    e = error({**GOOD, "EXO_MODE": "both"})
    assert e.setting == "EXO_MODE" and "'both'" in str(e) and "augment" in str(e)


@pytest.mark.parametrize("mode", ["augment", "only"])
def test_on_without_tenant_even_with_graph_auth_none(mode):
    env = {k: v for k, v in LOCAL.items() if k != "GRAPH_TENANT_ID"}
    env.update(EXO_MODE=mode, SYNC_DATASETS="addresses")
    assert load_settings({**env, "EXO_MODE": "off"}).exo.mode == "off"
    e = error(env)
    assert e.setting == "GRAPH_TENANT_ID" and "EXO_MODE" in str(e)


def test_graph_auth_none_needs_a_loopback_exchange():
    e = error({**LOCAL, "EXO_MODE": "augment", "EXO_BASE_URL": "https://outlook.office365.com"})
    assert e.setting == "EXO_BASE_URL" and "GRAPH_AUTH=none" in str(e) and "loopback" in str(e)
    assert load_settings({**LOCAL, "EXO_MODE": "augment", "EXO_BASE_URL": "http://localhost:8080"}).exo.base_url == "http://localhost:8080"


@pytest.mark.parametrize("datasets", ["addresses,groups", "users", "groups,users,addresses"])
def test_only_needs_the_addresses_dataset_alone(datasets):
    e = error({**GOOD, "EXO_MODE": "only", "SYNC_DATASETS": datasets})
    assert e.setting == "SYNC_DATASETS" and "EXO_MODE=only" in str(e)


def test_only_with_sync_datasets_unset_is_a_settings_error_naming_both():
    """Unset SYNC_DATASETS means its default, addresses,groups,users, whatever the mode; with
    EXO_MODE=only that is a settings error naming both settings and the value to set
    (docs/sync-rules.md, "The Exchange Online source")."""
    e = error({**GOOD, "EXO_MODE": "only"})
    assert e.setting == "SYNC_DATASETS" and "EXO_MODE=only" in str(e) and "SYNC_DATASETS=addresses" in str(e)
    assert "unset" in str(e)
    assert load_settings({**GOOD, "EXO_MODE": "only", "SYNC_DATASETS": "addresses"}).datasets == ("addresses",)
    assert load_settings({**GOOD, "EXO_MODE": "augment"}).datasets == ("addresses", "groups", "users")


def test_only_with_a_scope_fails_naming_the_setting_and_the_id():
    """EXO_MODE=only reads no Graph, so a scope id names no group of the directory: the run
    fails before anything is sent, naming the setting and the id (docs/sync-rules.md)."""
    gid = "20000000-0000-0000-0000-000000000001"
    e = error({**GOOD, "EXO_MODE": "only", "SYNC_DATASETS": "addresses", "SYNC_SCOPE_GROUPS": gid})
    assert e.setting == "SYNC_SCOPE_GROUPS" and gid in str(e) and "EXO_MODE=only" in str(e)


def test_only_accepts_the_user_type_and_pattern_rules(caplog):
    """No user is read with EXO_MODE=only: EXCLUDE_USER_TYPES does nothing (and says so);
    EXCLUDE_ADDRESS_PATTERNS applies to the Exchange candidates."""
    s = load_settings({**GOOD, "EXO_MODE": "only", "SYNC_DATASETS": "addresses", "EXCLUDE_USER_TYPES": "Guest"})
    assert s.exo.mode == "only" and "EXCLUDE_USER_TYPES has no effect" in caplog.text
    patterns = load_settings({**GOOD, "EXO_MODE": "only", "SYNC_DATASETS": "addresses", "EXCLUDE_ADDRESS_PATTERNS": "noreply@.*"})
    assert patterns.rules.exclude_address_patterns


@pytest.mark.parametrize("raw,bad", [("PublicFolder,Mailbox", "Mailbox"), ("DynamicDistributionGroupX", "DynamicDistributionGroupX"), ("*", "*")])
def test_unknown_recipient_type(raw, bad):
    e = error({**GOOD, "EXO_MODE": "augment", "EXO_RECIPIENT_TYPES": raw})
    assert e.setting == "EXO_RECIPIENT_TYPES" and repr(bad) in str(e)


@pytest.mark.parametrize("name", ["SchedulingMailbox", "teammailbox", "LinkedRoomMailbox", "RemoteUserMailbox", "MailForestContact"])
def test_any_recipient_type_get_recipient_takes_is_accepted(name):
    """EXO_RECIPIENT_TYPES may name any RecipientTypeDetails value that Get-Recipient binds, not
    only the fourteen of EXO_MODE=only's default (which stays as it is)."""
    s = load_settings({**GOOD, "EXO_MODE": "augment", "EXO_RECIPIENT_TYPES": f"PublicFolder,{name}"})
    canonical = {t.lower(): t for t in EXO_QUERY_TYPES}[name.lower()]
    assert s.exo.recipient_types == ("PublicFolder", canonical)
    assert load_settings({**GOOD, "EXO_MODE": "only", "SYNC_DATASETS": "addresses"}).exo.recipient_types == EXO_ALL_TYPES


def test_empty_recipient_type_list():
    assert error({**GOOD, "EXO_MODE": "augment", "EXO_RECIPIENT_TYPES": " , ,"}).setting == "EXO_RECIPIENT_TYPES"


def test_recipient_types_are_canonicalized_and_deduplicated():
    s = load_settings({**GOOD, "EXO_MODE": "augment", "EXO_RECIPIENT_TYPES": "publicfolder, PublicFolder ,SHAREDMAILBOX"})
    assert s.exo.recipient_types == ("PublicFolder", "SharedMailbox")


@pytest.mark.parametrize("url", ["http://outlook.office365.com", "ftp://x.example", "https://user:pw@outlook.office365.com", "not a url",
                                 "https://outlook.office365.com/?x=1"])
def test_bad_base_url(url):
    assert error({**GOOD, "EXO_MODE": "augment", "EXO_BASE_URL": url}).setting == "EXO_BASE_URL"


@pytest.mark.parametrize("name,value", [("GRAPH_AUTH", "password"), ("EXO_PASSWORD", "hunter2-canary"), ("EXO_USERNAME", "admin@contoso.com")])
def test_password_sign_in_is_refused_with_the_reason(name, value):
    e = error({**GOOD, "EXO_MODE": "augment", name: value})
    assert e.setting == name and "basic authentication" in str(e) and "multifactor" in str(e)
    assert "hunter2-canary" not in str(e)


def test_every_mode_and_dataset_choice():
    """The whole small space: mode × SYNC_DATASETS subsets × GRAPH_AUTH."""
    subsets = [",".join(c) for n in (1, 2, 3) for c in itertools.combinations(("addresses", "groups", "users"), n)]
    for mode, datasets, local in itertools.product(("off", "augment", "only"), subsets, (False, True)):
        env = {**(LOCAL if local else GOOD), "EXO_MODE": mode, "SYNC_DATASETS": datasets}
        if mode == "only" and datasets != "addresses":
            assert error(env).setting == "SYNC_DATASETS"
        else:
            assert load_settings(env).exo.mode == mode


@pytest.mark.parametrize("extra,setting", [
    ({"EXO_MODE": "sometimes"}, "EXO_MODE"),
    ({"EXO_MODE": "only", "SYNC_DATASETS": "addresses,users"}, "SYNC_DATASETS"),
    ({"EXO_MODE": "augment", "EXO_RECIPIENT_TYPES": "Nope"}, "EXO_RECIPIENT_TYPES"),
    ({"EXO_MODE": "augment", "EXO_BASE_URL": "https://outlook.office365.com"}, "EXO_BASE_URL"),
])
def test_cli_stops_before_any_network_call(tmp_path, extra, setting):
    # Every URL points at a closed port: any request would fail differently from a settings error.
    env = {**base_env("http://127.0.0.1:9/v1.0", "http://127.0.0.1:9/v1", f"file:{tmp_path}"), "GRAPH_TENANT_ID": TENANT,
           "EXO_BASE_URL": "http://127.0.0.1:9", **extra}
    r = run_cli("test-update", env)
    assert r.code == 2, r.stderr
    assert f"setting {setting}" in r.stderr
