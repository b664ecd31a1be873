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
