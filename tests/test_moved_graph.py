"""The saved delta links belong to the Graph endpoint they came from: pointed at another one
(``GRAPH_BASE_URL`` changed, the state kept: a proxy put in front of Graph, a national cloud
fixed, a local emulator started on another port), ``update`` reads that endpoint in full instead
of following links to the old one, and the service ends equal to what the directory implies
(docs/sync-rules.md, "Reading Microsoft Graph" and "The recovery guarantee"). Driven as an
operator drives it: the CLI against the Graph emulator and the strict receiver."""

from __future__ import annotations

from devstack.graph_emulator import GraphEmulator
from tests.stack import EXPECTED, U, base_env, nasty_directory, run_cli, service_view


def update(env: dict[str, str], action: str = "update") -> dict:
    r = run_cli(action, env, "--json")
    assert r.code == 0, r.stderr
    return r.summary


def test_a_new_graph_endpoint_is_read_in_full_and_the_service_follows_it(receiver, tmp_path):
    first = GraphEmulator(nasty_directory())
    first.start()
    try:
        env = base_env(first.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
        update(env)
        assert service_view(receiver) == EXPECTED
    finally:
        first.stop()
    # The same tenant, now behind another endpoint; in the meantime Dave left.
    directory = nasty_directory()
    directory["users"] = [u for u in directory["users"] if u["id"] != U(8)]
    second = GraphEmulator(directory)
    second.start()
    try:
        moved = {**env, "GRAPH_BASE_URL": second.base_url}
        preview = update(moved, "test-update")
        s = update(moved)
        assert s["read"]["kind"] == "full" and "GRAPH_BASE_URL" in s["read"]["reason"], s["read"]
        assert (s["datasets"]["users"]["removed"], s["datasets"]["addresses"]["removed"]) == (1, 1)
        assert (preview["datasets"]["users"]["removed"], preview["datasets"]["addresses"]["removed"]) == (1, 1)
        want = {**EXPECTED, "users": {k: v for k, v in EXPECTED["users"].items() if k != U(8)},
                "addresses": EXPECTED["addresses"] - {"dave@fabrikam.com"}}
        assert service_view(receiver) == want
        again = update(moved)  # and from then on, delta rounds from the new endpoint's links
        assert again["read"]["kind"] == "delta", again["read"]
    finally:
        second.stop()


def test_the_same_endpoint_spelled_another_way_keeps_its_delta_links(receiver, tmp_path):
    graph = GraphEmulator(nasty_directory())
    graph.start()
    try:
        env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
        update(env)
        spelled = {**env, "GRAPH_BASE_URL": graph.base_url.upper().replace("HTTP://", "http://").replace("/V1.0", "/v1.0") + "/"}
        s = update(spelled)
        assert s["read"]["kind"] == "delta", s["read"]
    finally:
        graph.stop()


# --- which saved links may be followed (shared/reading.py ``why_full``), over spellings ---------------
import datetime as dt  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402

from shared.common.netutil import endpoint_key  # noqa: E402
from shared.reading import fingerprint, why_full  # noqa: E402

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
SAVED_ON = "https://graph.microsoft.com/v1.0"


def _state(base: str) -> SimpleNamespace:
    links = {c: f"{base}/{c}/delta?$deltatoken=abc" for c in ("users", "groups", "contacts")}
    return SimpleNamespace(delta_links=links, directory_cache="complete", converted_from=None,
                           last_full_read=(NOW - dt.timedelta(hours=1)).isoformat(), read_fingerprint=fingerprint(["addresses"], None, frozenset(), base))


@pytest.mark.parametrize("configured", ["https://graph.microsoft.com/v1.0", "https://GRAPH.Microsoft.com/v1.0/", "HTTPS://graph.microsoft.com:443/v1.0",
                                        "https://graph.microsoft.com/beta"])
def test_links_on_the_configured_endpoints_origin_are_followed(configured):
    assert why_full(_state(SAVED_ON), fingerprint(["addresses"], None, frozenset(), configured), 24, NOW) is None


@pytest.mark.parametrize("configured", ["https://graph.microsoft.us/v1.0", "https://graph.microsoft.com:8443/v1.0", "http://127.0.0.1:8080/v1.0",
                                        "https://proxy.contoso.com/graph/v1.0"])
def test_links_on_another_origin_make_the_update_read_in_full(configured):
    why = why_full(_state(SAVED_ON), fingerprint(["addresses"], None, frozenset(), configured), 24, NOW)
    assert why is not None and "GRAPH_BASE_URL" in why


def test_a_state_saved_before_the_endpoint_was_recorded_is_judged_by_its_links():
    db = _state(SAVED_ON)
    db.read_fingerprint = {k: v for k, v in db.read_fingerprint.items() if k != "graph"}
    assert why_full(db, fingerprint(["addresses"], None, frozenset(), SAVED_ON), 24, NOW) is None
    assert "GRAPH_BASE_URL" in why_full(db, fingerprint(["addresses"], None, frozenset(), "http://localhost:9/v1.0"), 24, NOW)


@pytest.mark.parametrize("a, b", [("https://Graph.Microsoft.com:443/v1.0/", "https://graph.microsoft.com/v1.0"),
                                  ("http://127.0.0.1:80/v1.0", "http://127.0.0.1/v1.0"), ("http://[::1]:8080/v1.0", "http://[::1]:8080/v1.0/")])
def test_one_endpoint_spelled_two_ways_is_one_endpoint(a, b):
    assert endpoint_key(a) == endpoint_key(b)


def test_another_tenant_is_read_in_full(receiver, tmp_path):
    """GRAPH_TENANT_ID changed with the state kept (an operator reusing a deployment for another
    tenant, or fixing a wrong one): the saved delta links and the cache are the old tenant's, so
    the next update reads in full; the same tenant spelled in capitals is no change."""
    graph = GraphEmulator(nasty_directory())
    graph.start()
    try:
        env = {**base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}"),
               "GRAPH_TENANT_ID": "11111111-2222-3333-4444-555555555555"}
        assert update(env)["read"]["kind"] == "full"
        same = update({**env, "GRAPH_TENANT_ID": env["GRAPH_TENANT_ID"].upper()})
        assert same["read"]["kind"] == "delta", same["read"]
        other = update({**env, "GRAPH_TENANT_ID": "contoso.onmicrosoft.com"})
        assert other["read"]["kind"] == "full" and "GRAPH_TENANT_ID" in other["read"]["reason"], other["read"]
        assert update({**env, "GRAPH_TENANT_ID": "contoso.onmicrosoft.com"})["read"]["kind"] == "delta"
        assert service_view(receiver) == EXPECTED
    finally:
        graph.stop()
