"""Security checks in the suite: a static scan with no unexplained finding, and plain http to
a non-loopback host refused everywhere a URL is taken."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.common.errors import SettingsError, SyncApiError
from shared.common.netutil import url_problem
from shared.common.redact import Secret
from shared.config.settings import load_settings
from shared.target.syncapi import SyncApiClient
from tests.stack import ROOT


def test_static_security_scan_is_clean():
    """ruff's bandit rules (S) over the shipped code; each accepted finding carries a noqa with its reason."""
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "S", "--no-cache", "shared", "function_app.py", "operator_endpoints.py"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path in (ROOT / "shared").glob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "noqa: S" in line:
                assert " - " in line.split("noqa: S", 1)[1], f"{path.name}:{n} suppresses a security rule without a reason"


BASE = {"GRAPH_AUTH": "none", "GRAPH_BASE_URL": "http://127.0.0.1:1/v1.0", "SYNC_API_URL": "http://127.0.0.1:2/v1",
        "SYNC_API_CREDENTIAL": "u:p", "SYNC_STATE": "file:/tmp/x"}


@pytest.mark.parametrize("name, url", [
    ("SYNC_API_URL", "http://dirsync.example.net/v1"),
    ("SYNC_API_URL", "http://192.168.1.10/v1"),
    ("SYNC_API_URL", "http://localhost.evil.example/v1"),
    # docs/sync-api.md names the loopback hosts: 127.0.0.0/8, ::1 and localhost. A name under
    # .localhost is resolved like any other (glibc asks DNS), so it is not one of them.
    ("SYNC_API_URL", "http://dirsync.localhost/v1"),
    ("GRAPH_BASE_URL", "http://graph.localhost/v1.0"),
    ("GRAPH_BASE_URL", "http://graph.microsoft.com/v1.0"),
    ("AzureWebJobsStorage__blobServiceUri", "http://acct.blob.core.windows.net"),
])
def test_settings_refuse_plain_http_to_other_hosts(name, url):
    env = {**BASE, name: url}
    if name == "GRAPH_BASE_URL":
        env["GRAPH_AUTH"] = "client_secret"
        env.update(GRAPH_TENANT_ID="11111111-2222-3333-4444-555555555555", GRAPH_CLIENT_ID="11111111-2222-3333-4444-555555555555", GRAPH_CLIENT_SECRET="s")
    if name.startswith("AzureWebJobs"):
        env["SYNC_STATE"] = "blob:sync-state"
    with pytest.raises(SettingsError) as e:
        load_settings(env)
    assert e.value.setting == name and "plain http" in str(e.value)


@pytest.mark.parametrize("url", ["http://dirsync.example.net/v1", "http://10.0.0.5/v1", "http://[2001:db8::1]/v1", "http://dirsync.localhost/v1"])
def test_the_client_refuses_plain_http_to_other_hosts(url):
    with pytest.raises(SyncApiError, match="plain http"):
        SyncApiClient(url, Secret("u:p", "SYNC_API_CREDENTIAL"))


@pytest.mark.parametrize("setting, url", [
    ("GRAPH_BASE_URL", "http://graph.localhost:8080/v1.0"),
    ("EXO_BASE_URL", "http://exchange.localhost:8080"),
])
def test_graph_auth_none_needs_a_loopback_host_not_a_name_under_localhost(setting, url):
    """GRAPH_AUTH=none is refused unless the URL's host is a loopback address (docs/sync-rules.md,
    "Settings"; docs/sync-api.md, "Transport": 127.0.0.0/8, ::1, localhost)."""
    env = {**BASE, "GRAPH_BASE_URL": "http://127.0.0.1:1/v1.0", setting: url}
    if setting == "EXO_BASE_URL":
        env.update(EXO_MODE="augment", GRAPH_TENANT_ID="contoso.onmicrosoft.com")
    with pytest.raises(SettingsError) as e:
        load_settings(env)
    assert e.value.setting in (setting, "GRAPH_AUTH")


@pytest.mark.parametrize("url", ["http://localhost:8080/v1", "http://LOCALHOST:8080/v1", "http://127.0.0.2:8080/v1", "http://[::1]:8080/v1"])
def test_plain_http_to_a_loopback_host_is_accepted(url):
    assert load_settings({**BASE, "SYNC_API_URL": url}).sync_api_url == url


def _contract_loopback(host: str) -> bool:
    """docs/sync-api.md, "Transport": plain http only to 127.0.0.0/8, ::1 or localhost."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip in ipaddress.ip_network("127.0.0.0/8") or ip == ipaddress.ip_address("::1")


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.sampled_from(["127.0.0.1", "127.255.255.254", "::1", "::", "::ffff:127.0.0.1", "0.0.0.0", "128.0.0.1"]),  # noqa: S104 - hosts judged, nothing bound
    st.builds(lambda labels, tail: ".".join([*labels, tail]), st.lists(_label, min_size=0, max_size=3),
              st.sampled_from(["localhost", "LocalHost", "localhost.example", "example.net", "local"])).filter(bool),
)


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(_hosts)
def test_plain_http_is_accepted_exactly_for_the_contracts_loopback_hosts(host):
    """Every URL setting takes plain http to a host exactly when the contract calls it loopback."""
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:8080/v1"
    problem = url_problem(url)
    if _contract_loopback(host):
        assert problem is None, (url, problem)
    else:
        assert problem is not None and "plain http" in problem, (url, problem)
