"""The state's records describe one sync API: pointed at another (``SYNC_API_URL`` changed, the
state kept), ``update`` rebuilds its baseline from the new service's own copy before the diff,
as for a lost state, so the new service ends equal to what the directory implies, and a
record it held that the directory does not imply is deleted (docs/sync-rules.md, "Actions").
The same service spelled another way is not a move."""

from __future__ import annotations

import sqlite3

import pytest

from devstack.graph_emulator import GraphEmulator
from devstack.sync_receiver import SyncReceiver
from shared.target.syncapi import service_address
from tests.stack import CREDENTIAL, DOMAINS, EXPECTED, base_env, nasty_directory, run_cli, service_view


@pytest.fixture
def graph():
    em = GraphEmulator(nasty_directory())
    em.start()
    yield em
    em.stop()


@pytest.fixture
def second():
    rc = SyncReceiver(domains=DOMAINS, credential=CREDENTIAL)
    rc.start()
    yield rc
    rc.stop()


def update(env: dict[str, str], action: str = "update") -> dict:
    r = run_cli(action, env, "--json")
    assert r.code == 0, r.stderr
    return r.summary


def test_a_new_service_gets_everything_and_loses_what_the_directory_does_not_imply(graph, receiver, second, tmp_path):
    env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    update(env)
    assert service_view(receiver) == EXPECTED
    second.load("addresses", [{"address": "stale@contoso.com"}])  # the new service holds a record of its own
    moved = {**env, "SYNC_API_URL": second.base_url}
    preview = update(moved, "test-update")
    assert preview["stateRebuilt"]["signals"][0].startswith(f"SYNC_API_URL names {service_address(second.base_url)}")
    s = update(moved)
    assert s["read"]["kind"] == "full" and "SYNC_API_URL" in s["read"]["reason"]  # every record compared with the new copy
    assert s["stateRebuilt"]["signals"] == preview["stateRebuilt"]["signals"]
    for d in ("addresses", "groups", "users"):
        assert (s["datasets"][d]["added"], s["datasets"][d]["removed"]) == (preview["datasets"][d]["added"], preview["datasets"][d]["removed"])
    assert service_view(second) == EXPECTED  # everything sent, the stale address deleted
    assert s["datasets"]["addresses"]["removed"] == 1
    again = update(moved)  # the state now describes the new service
    assert "stateRebuilt" not in again and sum(c["added"] + c["removed"] for c in again["datasets"].values()) == 0
    back = update(env)  # and the first one is another service again
    assert back["stateRebuilt"]["signals"][0].startswith("SYNC_API_URL names")
    assert service_view(receiver) == EXPECTED


@pytest.mark.parametrize("spelling", [
    lambda url: url + "/",
    lambda url: url.replace("http://", "HTTP://").replace("127.0.0.1", "127.0.0.1"),
    lambda url: url.rstrip("/") + "//",
])
def test_the_same_service_spelled_another_way_is_not_a_move(graph, receiver, tmp_path, spelling):
    env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    update(env)
    s = update({**env, "SYNC_API_URL": spelling(receiver.base_url)})
    assert "stateRebuilt" not in s and sum(c["added"] + c["removed"] for c in s["datasets"].values()) == 0


def test_a_state_written_before_the_service_was_recorded_is_taken_as_this_services(graph, receiver, second, tmp_path):
    env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    update(env)
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:  # as the previous release left it
        assert conn.execute("DELETE FROM meta WHERE key='syncApi'").rowcount == 1
    s = update(env)
    assert "stateRebuilt" not in s
    moved = update({**env, "SYNC_API_URL": second.base_url})  # recorded by that update: a move is seen again
    assert moved["stateRebuilt"]["signals"][0].startswith("SYNC_API_URL names")
    assert service_view(second) == EXPECTED


@pytest.mark.parametrize("a, b, same", [
    ("https://dirsync.example.net/v1", "HTTPS://DirSync.Example.NET/v1/", True),
    ("https://dirsync.example.net/v1", "https://dirsync.example.net:443/v1", True),
    ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8081/v1", False),
    ("https://dirsync.example.net/v1", "https://dirsync.example.net/v2", False),
    ("https://eu.dirsync.example.net/v1", "https://us.dirsync.example.net/v1", False),
    ("https://dirsync.example.net/V1", "https://dirsync.example.net/v1", False),  # paths are case-sensitive
])
def test_service_addresses(a, b, same):
    assert (service_address(a) == service_address(b)) is same
