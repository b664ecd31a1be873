"""The state's records describe one sync API: pointed at another (``SYNC_API_URL`` changed, the
state kept), ``update`` rebuilds its baseline from the new service's own copy before the diff,
as for a lost state, so the new service ends equal to what the directory implies, and a
record it held that the directory does not imply is deleted (docs/sync-rules.md, "Actions").
The same service spelled another way is not a move."""

from __future__ import annotations

import sqlite3

import pytest

from devstack.sync_receiver import SyncReceiver
from shared.target.syncapi import service_address
from tests.stack import CREDENTIAL, DOMAINS, EXPECTED, U, base_env, run_cli, service_view


@pytest.fixture
def graph(nasty_graph):
    return nasty_graph


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
    lambda url: url.replace("http://", "HTTP://"),
    lambda url: url.replace("127.0.0.1", "localhost") if False else url.upper().replace("/V1", "/v1"),
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


def test_a_run_that_failed_against_the_new_service_then_the_old_one_again(graph, receiver, second, tmp_path):
    """The full read's checkpoints commit the new service's baseline together with its name:
    pointed back, the first service is a move again, and a departure is deleted there."""
    env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    update(env)
    moved = {**env, "SYNC_API_URL": second.base_url, "SYNC_TEST_CHECKPOINT_SECONDS": "0"}
    second.inject_fault("401", path_contains="/changes", times=100)
    assert run_cli("update", moved).code != 0  # fails at its first batch, after the read's checkpoints committed
    graph.delete_user(U(8))  # Dave leaves
    back = update(env)
    assert back["stateRebuilt"]["signals"][0].startswith("SYNC_API_URL names")
    view = service_view(receiver)
    assert "dave@fabrikam.com" not in view["addresses"] and U(8) not in view["users"]


def test_a_move_with_some_datasets_then_all_of_them(graph, receiver, second, tmp_path):
    """The state names one service for every dataset: a move read with SYNC_DATASETS=addresses
    takes every dataset's baseline from the new service."""
    env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    update(env)
    moved = {**env, "SYNC_API_URL": second.base_url, "SYNC_DATASETS": "addresses"}
    s = update(moved)
    assert set(s["stateRebuilt"]["serviceRecords"]) == {"addresses", "groups", "users"}
    update({**moved, "SYNC_DATASETS": "addresses,groups,users"})
    assert service_view(second) == EXPECTED


def test_a_preview_of_a_moved_state_says_what_update_does(graph, receiver, second, tmp_path):
    """Deletions held against the first service are not the new service's: test-update and
    update agree on what is held and sent."""
    env = {**base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}"),
           "DELETE_THRESHOLD_FLOOR": "0", "DELETE_THRESHOLD_PERCENT": "10", "DELETE_THRESHOLD_COUNT": "500"}
    update(env)
    update({**env, "SYNC_API_URL": second.base_url, "SYNC_STATE": f"file:{tmp_path / 'other'}"})  # the new service is current
    graph.delete_user(U(8))
    assert run_cli("update", env).code == 4  # held against the first service
    moved = {**env, "SYNC_API_URL": second.base_url, "DELETE_THRESHOLD_FLOOR": "25"}
    preview, done = update(moved, "test-update"), update(moved)
    assert preview.get("heldDeletions") == done.get("heldDeletions") == {}
    for d in ("addresses", "groups", "users"):
        assert (preview["datasets"][d]["added"], preview["datasets"][d]["removed"]) == (done["datasets"][d]["added"], done["datasets"][d]["removed"])
    assert done["datasets"]["users"]["removed"] == 1 and service_view(second) == {**EXPECTED, **service_view(second)}
    assert U(8) not in service_view(second)["users"]


def test_refresh_and_replace_after_a_move(graph, receiver, second, tmp_path):
    env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    update(env)
    second.load("addresses", [{"address": "stale@contoso.com"}])
    refreshed = update({**env, "SYNC_API_URL": second.base_url, "SYNC_DATASETS": "addresses"}, "refresh")
    assert set(refreshed["serviceRecords"]) == {"addresses", "groups", "users"}  # every dataset of the new service
    s = update({**env, "SYNC_API_URL": second.base_url})
    assert "stateRebuilt" not in s and service_view(second) == EXPECTED  # the stale address deleted
    replaced = update(env, "replace")  # back to the first service, by a replace
    assert replaced["ok"] and service_view(receiver) == EXPECTED
    assert "stateRebuilt" not in update(env)
