"""The commands as an operator runs them (``python -m shared ...`` through tests/launcher.py),
against the Graph emulator and the strict receiver, in the nastiest legal sequences: what the
service holds afterwards must be what the directory implies, with no rejection the client's
own ordering caused (docs/sync-api.md, "8. Ordering an update"; 413)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.graph_emulator import GraphEmulator
from devstack.sync_receiver import SyncReceiver
from tests.stack import CREDENTIAL, DOMAINS, G, U, base_env, run_cli, service_view


def _cycle_directory(n: int) -> dict:
    """``n`` groups nested in a ring (G1 ∋ G2 ∋ … ∋ Gn ∋ G1), one user in each."""
    groups = [{"id": G(i), "displayName": f"Ring {i}", "mail": None, "proxyAddresses": [],
               "members": [G(i % n + 1), U(i)]} for i in range(1, n + 1)]
    users = [{"id": U(i), "displayName": f"u{i}", "mail": f"u{i}@contoso.com", "proxyAddresses": []} for i in range(1, n + 1)]
    return {"users": users, "groups": groups, "contacts": []}


def _implied(n: int) -> dict:
    return {
        "addresses": {f"u{i}@contoso.com" for i in range(1, n + 1)},
        "groups": {G(i): {"id": G(i), "name": f"Ring {i}", "parentIds": [G((i - 2) % n + 1)]} for i in range(1, n + 1)},
        "users": {U(i): {"id": U(i), "address": f"u{i}@contoso.com", "groupIds": [G(i)]} for i in range(1, n + 1)},
    }


@pytest.mark.parametrize("n,batch,service_max", [(2, 2, 1), (3, 3, 1), (4, 4, 2), (5, 4, 2), (6, 6, 4), (7, 4, 3)])
def test_a_413_on_a_batch_holding_a_group_cycle_causes_no_rejection(tmp_path, n, batch, service_max):
    """The service takes fewer items per request than the client's batches: each batch is
    split after its 413. A ring of nested groups in one batch must still be applied without
    an ``unknown_group`` rejection, and the service must end equal to the directory."""
    with GraphEmulator(_cycle_directory(n)) as graph, SyncReceiver(domains=DOMAINS, credential=CREDENTIAL, max_items=service_max) as receiver:
        env = {**base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}"), "SYNC_TEST_MAX_ITEMS": str(batch)}
        r = run_cli("update", env, "--json")
        assert r.code == 0, r.stderr
        assert {d: c["rejected"] for d, c in r.summary["datasets"].items()} == {"addresses": 0, "groups": 0, "users": 0}, r.stderr
        assert service_view(receiver) == _implied(n)


def _nesting_directory(n: int, edges: set[tuple[int, int]]) -> dict:
    """Groups 1..n, ``(p, c)`` in ``edges``: group p has group c as a direct member."""
    groups = [{"id": G(i), "displayName": f"N{i}", "mail": None, "proxyAddresses": [],
               "members": [G(c) for p, c in sorted(edges) if p == i] + [U(i)]} for i in range(1, n + 1)]
    users = [{"id": U(i), "displayName": f"u{i}", "mail": f"u{i}@contoso.com", "proxyAddresses": []} for i in range(1, n + 1)]
    return {"users": users, "groups": groups, "contacts": []}


def _nesting_implied(n: int, edges: set[tuple[int, int]]) -> dict:
    return {
        "addresses": {f"u{i}@contoso.com" for i in range(1, n + 1)},
        "groups": {G(i): {"id": G(i), "name": f"N{i}", "parentIds": sorted(G(p) for p, c in edges if c == i)} for i in range(1, n + 1)},
        "users": {U(i): {"id": U(i), "address": f"u{i}@contoso.com", "groupIds": [G(i)]} for i in range(1, n + 1)},
    }


@st.composite
def _nestings(draw):
    n = draw(st.integers(2, 7))
    pairs = st.tuples(st.integers(1, n), st.integers(1, n)).filter(lambda e: e[0] != e[1])
    first = draw(st.sets(pairs, max_size=3 * n))
    m = draw(st.integers(2, 9))  # the second round: groups added, or the last ones deleted
    pairs2 = st.tuples(st.integers(1, m), st.integers(1, m)).filter(lambda e: e[0] != e[1])
    second = draw(st.sets(pairs2, max_size=3 * m))
    batch = draw(st.integers(1, 6))
    service_max = draw(st.integers(1, batch))
    return n, first, m, second, batch, service_max


@settings(derandomize=True, database=None, deadline=None, max_examples=12, suppress_health_check=[HealthCheck.too_slow])
@given(case=_nestings())
def test_any_nesting_reaches_a_service_that_splits_every_batch_without_a_rejection(tmp_path_factory, case):
    """Any graph of nested groups (cycles, diamonds, self-contained rings), then any other one
    (groups added, removed, re-nested: a delta round), against a service that takes fewer
    items per request than the client's batches: each update leaves the service equal to the
    directory, with no rejection, whatever the 413 splits cut."""
    n, first, m, second, batch, service_max = case
    state = tmp_path_factory.mktemp("state")
    with GraphEmulator(_nesting_directory(n, first)) as graph, SyncReceiver(domains=DOMAINS, credential=CREDENTIAL, max_items=service_max) as receiver:
        env = {**base_env(graph.base_url, receiver.base_url, f"file:{state}"), "SYNC_TEST_MAX_ITEMS": str(batch)}
        r = run_cli("update", env, "--json")
        assert r.code == 0, r.stderr
        assert all(c["rejected"] == 0 for c in r.summary["datasets"].values()), r.stderr
        assert service_view(receiver) == _nesting_implied(n, first)
        wanted = _nesting_directory(m, second)
        for g in wanted["groups"]:
            graph.upsert_group(g)
        for u in wanted["users"][n:]:
            graph.upsert_user(u)
        for i in range(m + 1, n + 1):
            graph.delete_group(G(i))
            graph.delete_user(U(i))
        r = run_cli("update", env, "--json")
        assert r.code == 0, r.stderr
        assert all(c["rejected"] == 0 for c in r.summary["datasets"].values()), r.stderr
        assert service_view(receiver) == _nesting_implied(m, second)


def _files(root) -> dict[str, bytes]:
    """Every file of a ``file:`` state but the run reports (``runs/``: each run, a dry run too, leaves one)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).parts[0] != "runs"}


def test_test_update_after_a_nasty_round_changes_no_byte_and_previews_exactly_what_update_sends(tmp_path):
    """After a first update, one round renames a group while its users move, swaps two users'
    addresses, deletes a user and recreates it under a new id with the same address, deletes a
    group, and makes two more departures the deletion guard holds. ``test-update`` then sends
    nothing and leaves every byte of the state as it was; its changes are exactly the upserts
    and deletes the next ``update`` sends."""
    n = 8
    directory = {
        "users": [{"id": U(i), "displayName": f"u{i}", "mail": f"u{i}@contoso.com", "proxyAddresses": []} for i in range(1, n + 1)],
        "groups": [{"id": G(1), "displayName": "One", "mail": None, "proxyAddresses": [], "members": [U(1), U(2), G(2)]},
                   {"id": G(2), "displayName": "Two", "mail": None, "proxyAddresses": [], "members": [U(3), U(4)]},
                   {"id": G(3), "displayName": "Three", "mail": None, "proxyAddresses": [], "members": [U(5), G(1)]}],
        "contacts": [],
    }
    state = tmp_path / "state"
    with GraphEmulator(directory) as graph, SyncReceiver(domains=DOMAINS, credential=CREDENTIAL) as receiver:
        env = {**base_env(graph.base_url, receiver.base_url, f"file:{state}"), "SYNC_TEST_MAX_ITEMS": "2"}
        assert run_cli("update", env).code == 0
        graph.upsert_group({"id": G(1), "displayName": "One renamed", "mail": None, "proxyAddresses": [], "members": [U(3), U(9), G(2)]})
        graph.upsert_group({"id": G(2), "displayName": "Two", "mail": None, "proxyAddresses": [], "members": [U(1), U(2)]})
        graph.delete_group(G(3))
        graph.upsert_user({"id": U(1), "displayName": "u1", "mail": "u2@contoso.com", "proxyAddresses": []})
        graph.upsert_user({"id": U(2), "displayName": "u2", "mail": "u1@contoso.com", "proxyAddresses": []})
        graph.delete_user(U(3))
        graph.upsert_user({"id": U(9), "displayName": "u3 again", "mail": "u3@contoso.com", "proxyAddresses": []})
        graph.delete_user(U(7))
        graph.delete_user(U(8))
        guarded = {**env, "DELETE_THRESHOLD_COUNT": "1"}
        held = run_cli("update", guarded, "--json")
        assert held.code == 4, held.stderr
        # U9 takes an address whose holder's deletion is held: it waits with that deletion, not sent to be rejected
        assert held.summary["datasets"]["users"]["rejected"] == 0 and held.summary["waitingUsers"]["keys"] == [U(9)]
        digest = run_cli("status", guarded, "--json").summary["heldDigest"]
        assert run_cli("approve-deletions", guarded, "--json", "--expect", digest).code == 0
        before = _files(state)
        receiver.clear_log()
        preview = run_cli("test-update", guarded, "--json")
        assert preview.code == 0, preview.stderr
        assert [p for p in receiver.request_log if p.method != "GET"] == []
        assert _files(state) == before
        changes = preview.summary["changes"]
        run = run_cli("update", guarded, "--json")
        sent = {d: {"upsert": [], "delete": []} for d in ("addresses", "groups", "users")}
        for p in receiver.request_log:
            if p.method == "POST" and p.path.endswith("/changes"):
                d = p.path.split("/")[3]
                sent[d]["upsert"] += p.body.get("upsert", [])
                sent[d]["delete"] += p.body.get("delete", [])
        assert run.code == 0, run.stderr
        for d in ("addresses", "groups", "users"):
            key = "address" if d == "addresses" else "id"
            assert sorted(r[key] for r in sent[d]["upsert"]) == sorted(r[key] for r in changes[d]["added"]), d
            assert sorted(sent[d]["delete"]) == sorted(changes[d]["removed"]), d
            for figure in ("added", "removed", "excluded"):
                assert preview.summary["datasets"][d][figure] == run.summary["datasets"][d][figure], (d, figure)
        assert service_view(receiver)["users"][U(9)]["address"] == "u3@contoso.com"
        assert all(c["rejected"] == 0 for c in run.summary["datasets"].values()), run.stderr
        after = run_cli("test-update", guarded, "--json").summary
        assert all(after["datasets"][d]["added"] == 0 and after["datasets"][d]["removed"] == 0 for d in sent), after["changes"]


@pytest.mark.parametrize("n,batch,service_max", [(2, 2, 1), (5, 4, 2)])
def test_replace_over_unknown_groups_with_every_request_split_ends_equal_to_the_directory(tmp_path, n, batch, service_max):
    """The service holds groups the directory does not know, users in them, and a user that
    holds an address a directory user has; a ring of nested groups; every staging request is
    split after its 413. ``replace`` leaves the service equal to the directory without a
    rejection, and the next ``update`` has nothing to send."""
    with GraphEmulator(_cycle_directory(n)) as graph, SyncReceiver(domains=DOMAINS, credential=CREDENTIAL, max_items=service_max) as receiver:
        receiver.load("groups", [{"id": "stale-a", "name": "Stale A", "parentIds": ["stale-b"]},
                                 {"id": "stale-b", "name": "Stale B", "parentIds": ["stale-a"]}])
        receiver.load("users", [{"id": "stale-user", "address": "u1@contoso.com", "groupIds": ["stale-a", "stale-b"]}])
        receiver.load("addresses", [{"address": "gone@contoso.com"}])
        env = {**base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}"), "SYNC_TEST_MAX_ITEMS": str(batch)}
        r = run_cli("replace", env, "--json")
        assert r.code == 0, r.stderr
        assert all(c["rejected"] == 0 for c in r.summary["datasets"].values()), r.stderr
        assert service_view(receiver) == _implied(n)
        again = run_cli("update", env, "--json").summary
        assert all(again["datasets"][d]["added"] == 0 and again["datasets"][d]["removed"] == 0 for d in ("addresses", "groups", "users")), again


@st.composite
def _address_moves(draw):
    """Users 1..n with distinct addresses from a pool, then a second round over users 1..m
    (some gone, some new) that hands the pool's addresses around (swaps, rings, chains)."""
    pool = [f"a{i}@contoso.com" for i in range(10)]
    n = draw(st.integers(2, 6))
    first = draw(st.permutations(pool))[:n]
    m = draw(st.integers(2, 8))
    second = draw(st.permutations(pool))[:m]
    batch = draw(st.integers(1, 4))
    service_max = draw(st.integers(1, batch))
    return first, second, batch, service_max


def _users(addresses) -> list[dict]:
    return [{"id": U(i), "displayName": f"u{i}", "mail": a, "proxyAddresses": []} for i, a in enumerate(addresses, 1)]


@settings(derandomize=True, database=None, deadline=None, max_examples=12, suppress_health_check=[HealthCheck.too_slow])
@given(case=_address_moves())
def test_addresses_handed_around_among_users_reach_a_splitting_service_without_a_rejection(tmp_path_factory, case):
    """Addresses move between users in one round (a swap, a ring, a chain, a user deleted and
    its address given to a new one), the service taking fewer items per request than the
    client's batches: the update leaves each user with its new address, no rejection."""
    first, second, batch, service_max = case
    state = tmp_path_factory.mktemp("state")
    directory = {"users": _users(first), "groups": [], "contacts": []}
    with GraphEmulator(directory) as graph, SyncReceiver(domains=DOMAINS, credential=CREDENTIAL, max_items=service_max) as receiver:
        env = {**base_env(graph.base_url, receiver.base_url, f"file:{state}"), "SYNC_TEST_MAX_ITEMS": str(batch)}
        assert run_cli("update", env).code == 0
        for u in _users(second):
            graph.upsert_user(u)
        for i in range(len(second) + 1, len(first) + 1):
            graph.delete_user(U(i))
        r = run_cli("update", env, "--json")
        assert r.code == 0, r.stderr
        assert all(c["rejected"] == 0 for c in r.summary["datasets"].values()), r.stderr
        want = {U(i): {"id": U(i), "address": a, "groupIds": []} for i, a in enumerate(second, 1)}
        assert service_view(receiver) == {"addresses": set(second), "groups": {}, "users": want}


def test_a_group_deleted_while_a_users_deletion_is_held_is_held_with_it_and_sent_once_approved(tmp_path):
    """A departure the deletion guard holds; then, run after run, a group of the departed user
    is deleted too. Nothing is deleted until the operator approves the set ``status`` shows;
    the users still in that group lose it from their ``groupIds`` meanwhile; once approved,
    one update leaves the service equal to the directory (no rejection, nothing left)."""
    from tests.stack import nasty_directory

    with GraphEmulator(nasty_directory()) as graph, SyncReceiver(domains=DOMAINS, credential=CREDENTIAL) as receiver:
        env = {**base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}"),
               "DELETE_THRESHOLD_PERCENT": "10", "DELETE_THRESHOLD_FLOOR": "0"}
        assert run_cli("update", env).code == 0
        graph.delete_user(U(1))  # Alice: a member of G1 and G3
        first = run_cli("update", env, "--json")
        assert first.code == 4 and set(first.summary["heldDeletions"]) >= {"users", "addresses"}, first.stderr
        assert U(1) in receiver.records("users")
        graph.delete_group(G(3))
        second = run_cli("update", env, "--json")
        assert second.code == 4, second.stderr
        assert G(3) in second.summary["heldDeletions"]["groups"]["keys"]
        assert G(3) in receiver.records("groups") and U(1) in receiver.records("users")
        assert all(c["rejected"] == 0 for c in second.summary["datasets"].values()), second.stderr
        status = run_cli("status", env, "--json").summary
        assert run_cli("approve-deletions", env, "--json", "--expect", status["heldDigest"]).code == 0
        done = run_cli("update", env, "--json")
        assert done.code == 0, done.stderr
        assert all(c["rejected"] == 0 for c in done.summary["datasets"].values()), done.stderr
        view = service_view(receiver)
        assert U(1) not in view["users"] and G(3) not in view["groups"] and "alice@contoso.com" not in view["addresses"]
        assert view["groups"][G(2)]["parentIds"] == [G(1)]
        after = run_cli("test-update", env, "--json").summary
        assert all(after["datasets"][d][f] == 0 for d in ("addresses", "groups", "users") for f in ("added", "removed")), after["changes"]


@pytest.mark.slow
def test_an_update_killed_anywhere_in_a_split_ring_then_undone_converges(tmp_path):
    """A ring of nested groups appears; the update that sends it through a service that
    splits every batch is killed at each of its writes in turn (on receipt, or applied with
    the answer lost), including between a half sent without a reference and the request that
    completes it; the directory then undoes the ring. The next update leaves the service equal
    to the directory, and one more has nothing to send."""
    from tests.test_crash_matrix import Killer, killed_update

    n = 3
    flat = _nesting_directory(n, set())
    ring = {(i, i % n + 1) for i in range(1, n + 1)}
    with GraphEmulator(flat) as graph, SyncReceiver(domains=DOMAINS, credential=CREDENTIAL, max_items=1) as receiver:
        env = {**base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}"), "SYNC_TEST_MAX_ITEMS": str(n)}
        assert run_cli("update", env).code == 0
        killer = Killer(receiver)
        cases = 0
        for k in range(1, 40):
            for mode in ("receipt", "applied"):
                for g in _nesting_directory(n, ring)["groups"]:
                    graph.upsert_group(g)
                try:
                    killed_update(env, killer, (mode, k))
                except AssertionError:  # the update finished before its k-th write: every instant was tried
                    assert cases >= 2 * 4, cases
                    return
                cases += 1
                for g in flat["groups"]:
                    graph.upsert_group(g)
                r = run_cli("update", env, "--json")
                assert r.code == 0, (k, mode, r.stderr)
                assert service_view(receiver) == _nesting_implied(n, set()), (k, mode)
        raise AssertionError("the update was killed at 40 writes and never finished")
