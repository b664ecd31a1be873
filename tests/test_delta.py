"""Incremental reads (issue 4): delta rounds merged into the directory cache must leave the
service exactly equal to a full projection of the directory, after every run, whatever the
churn: partial objects, removals, split member lists, replays, expired tokens, the reconcile
interval, a round that fails midway, and a state from the previous release."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from devstack.graph_emulator import GraphEmulator
from devstack.sync_receiver import SyncReceiver
from devstack.tenant import generate_tenant
from shared.config.settings import load_settings
from shared.engine import Options, run
from shared.model.directory import project
from shared.storage.stores import FileStateStore
from tests.stack import CREDENTIAL, DOMAINS, G, U, base_env, nasty_directory, service_view


def expected_view(graph: GraphEmulator, domains=DOMAINS) -> dict:
    p = project(graph.snapshot(), domains)
    return {
        "addresses": set(p.datasets["addresses"]),
        "groups": {k: {"id": k, "name": v[0], "parentIds": list(v[1])} for k, v in p.datasets["groups"].items()},
        "users": {k: {"id": k, "address": v[0], "groupIds": list(v[1])} for k, v in p.datasets["users"].items()},
    }, p


class Stack:
    def __init__(self, graph: GraphEmulator, receiver: SyncReceiver, state: Path, **env: str) -> None:
        self.graph, self.receiver, self.state = graph, receiver, state
        self.env = {**base_env(graph.base_url, receiver.base_url, f"file:{state}"), **env}
        self.now = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)

    def update(self, action: str = "update", **env: str) -> dict:
        settings = load_settings({**self.env, **env})
        options = Options(graph_backoff_seconds=0.01, sync_backoff_seconds=0.01, now=lambda: self.now)
        summary = asyncio.run(run(action, settings, env={**self.env, **env}, options=options))
        return json.loads(summary.to_json())

    def check(self) -> None:
        want, p = expected_view(self.graph)
        assert service_view(self.receiver) == want
        return p


def make_graph(directory=None, **kw) -> GraphEmulator:
    em = GraphEmulator(directory if directory is not None else nasty_directory(), **kw)
    em.start()
    return em


@pytest.fixture
def graph():
    em = make_graph()
    yield em
    em.stop()


@pytest.fixture
def stack(graph, receiver, tmp_path):
    return Stack(graph, receiver, tmp_path / "state")


def test_second_run_reads_delta_and_sends_nothing(stack):
    first = stack.update()
    assert first["ok"] and first["read"]["kind"] == "full" and "first run" in first["read"]["reason"]
    stack.check()
    second = stack.update()
    assert second["ok"] and second["read"]["kind"] == "delta"
    assert all(c["added"] == 0 and c["removed"] == 0 for c in second["datasets"].values())
    assert second["graphRequests"] == 3  # one page per collection
    # excluded counts are the whole directory's, as a full read gives them
    assert {d: c["excluded"] for d, c in second["datasets"].items()} == {d: c["excluded"] for d, c in first["datasets"].items()}


def test_partial_objects_are_merged_not_cleared(stack):
    stack.update()
    # Only mail changes: the delta entry carries id + mail, not proxyAddresses.
    stack.graph.upsert_user({"id": U(1), "mail": "alice.new@contoso.com"})
    s = stack.update()
    assert s["read"]["kind"] == "delta" and s["read"]["objects"]["users"] == 1
    stack.check()
    addrs = {r["address"] for r in stack.receiver.records("addresses").values()}
    assert "alice.new@contoso.com" in addrs and "al.ice@fabrikam.com" in addrs  # the proxy is kept
    assert stack.receiver.records("users")[U(1)]["address"] == "alice.new@contoso.com"
    # a group renamed by displayName only
    stack.graph.upsert_group({"id": G(1), "displayName": "Sales EMEA"})
    stack.update()
    stack.check()
    assert stack.receiver.records("groups")[G(1)]["name"] == "Sales EMEA"
    assert "sales@contoso.com" in {r["address"] for r in stack.receiver.records("addresses").values()}


def test_removals_and_shared_primary_handover(stack):
    stack.update()
    # U(4) and U(5) share shared@contoso.com: U(4) (smaller id) holds it; deleting U(4) hands it to U(5).
    stack.graph.delete_user(U(4))
    stack.graph.delete_contact("30000000-0000-0000-0000-000000000001")
    stack.graph.delete_group(G(2))  # G(3)'s parent and G(1)'s child
    s = stack.update()
    assert s["ok"] and s["read"]["kind"] == "delta"
    stack.check()
    assert stack.receiver.records("users")[U(5)]["address"] == "shared@contoso.com"
    assert "ext@fabrikam.com" not in {r["address"] for r in stack.receiver.records("addresses").values()}
    assert G(2) not in stack.receiver.records("groups")


def test_random_churn_matches_a_full_projection_after_every_run(graph, receiver, tmp_path):
    """The harness's check: mutate, update, compare with the projection; many rounds, seeded."""
    seed = 20261126
    rng = random.Random(seed)
    stack = Stack(graph, receiver, tmp_path / "state")
    stack.update()
    stack.check()
    users = [u["id"] for u in graph.snapshot()["users"]]
    groups = [g["id"] for g in graph.snapshot()["groups"]]
    contacts = [c["id"] for c in graph.snapshot()["contacts"]]
    n = 0
    for rnd in range(25):
        for _ in range(rng.randint(1, 6)):
            op = rng.choice(["mail", "proxy", "new_user", "del_user", "member+", "member-", "rename", "new_group",
                             "del_group", "contact", "collide"])
            n += 1
            try:
                if op == "mail" and users:
                    graph.upsert_user({"id": rng.choice(users), "mail": rng.choice([None, f"m{n}@contoso.com", f"M{n}@Fabrikam.com", "bad..x@contoso.com", f"x{n}@other.org"])})
                elif op == "proxy" and users:
                    graph.upsert_user({"id": rng.choice(users), "proxyAddresses": rng.choice([[], [f"SMTP:p{n}@contoso.com"], [f"smtp:p{n}@fabrikam.com", "X500:/o=x"]])})
                elif op == "new_user":
                    uid = f"1f000000-0000-0000-0000-{n:012d}"
                    graph.upsert_user({"id": uid, "mail": f"new{n}@contoso.com", "proxyAddresses": [f"SMTP:new{n}@contoso.com"]})
                    users.append(uid)
                elif op == "del_user" and users:
                    graph.delete_user(users.pop(rng.randrange(len(users))))
                elif op == "member+" and groups:
                    graph.add_member(rng.choice(groups), rng.choice(users + groups + contacts))
                elif op == "member-" and groups:
                    gid = rng.choice(groups)
                    members = next(g["members"] for g in graph.snapshot()["groups"] if g["id"] == gid)
                    if members:
                        graph.remove_member(gid, rng.choice(members))
                elif op == "rename" and groups:
                    graph.upsert_group({"id": rng.choice(groups), "displayName": rng.choice(["", None, f"Group {n}"])})
                elif op == "new_group":
                    gid = f"2f000000-0000-0000-0000-{n:012d}"
                    graph.upsert_group({"id": gid, "displayName": f"G{n}", "mail": f"g{n}@contoso.com", "proxyAddresses": [],
                                        "members": rng.sample(users + groups, k=min(3, len(users + groups)))})
                    groups.append(gid)
                elif op == "del_group" and groups:
                    graph.delete_group(groups.pop(rng.randrange(len(groups))))
                elif op == "contact" and contacts:
                    graph.upsert_contact({"id": rng.choice(contacts), "mail": rng.choice([None, f"c{n}@fabrikam.com"])})
                elif op == "collide" and len(users) >= 2:
                    a, b = rng.sample(users, 2)
                    graph.upsert_user({"id": a, "mail": f"same{n}@contoso.com"})
                    graph.upsert_user({"id": b, "mail": f"SAME{n}@contoso.com"})
            except KeyError:
                pass  # a member that is already gone
        s = stack.update()
        assert s["ok"], (seed, rnd, s.get("error"))
        assert s["read"]["kind"] == "delta", (seed, rnd)
        p = stack.check()
        assert {d: s["datasets"][d]["excluded"] for d in ("addresses", "users")} == {
            d: p.excluded(d) for d in ("addresses", "users")
        }, (seed, rnd)
    assert receiver.keys_reused_with_different_body() == []


def test_big_group_members_split_across_pages(receiver, tmp_path):
    directory = generate_tenant(60, groups=3, seed=7, domains=tuple(DOMAINS[:2]))
    big = directory["groups"][0]
    big["members"] = [u["id"] for u in directory["users"]] + [directory["groups"][1]["id"]]
    graph = make_graph(directory, max_members_per_page=7, max_page_size=2)
    try:
        stack = Stack(graph, receiver, tmp_path / "state")
        stack.update()
        stack.check()
        users = [u["id"] for u in directory["users"]]
        for uid in users[:25]:
            graph.remove_member(big["id"], uid)
        graph.add_member(big["id"], directory["groups"][2]["id"])
        s = stack.update()
        assert s["read"]["kind"] == "delta" and s["graphRequests"] > 3  # the group came over several pages
        stack.check()
        assert all(big["id"] not in stack.receiver.records("users")[u]["groupIds"] for u in users[:25] if u in stack.receiver.records("users"))
    finally:
        graph.stop()


def test_replayed_changes_change_nothing(stack):
    """The emulator (like Graph) replays a change made during a round in the next round."""
    stack.update()
    stack.graph.upsert_user({"id": U(8), "mail": "dave2@fabrikam.com"})
    stack.update()
    stack.check()
    # Replay by hand: the same round read again from the previous links applies as a no-op.
    from shared.model.directory import Affected, Cache

    db = FileStateStore(stack.state).open()
    try:
        cache = Cache(db.conn, frozenset(DOMAINS))
        change = {"id": U(8), "mail": "dave2@fabrikam.com"}
        for _ in range(2):
            affected = Affected()
            cache.apply("users", [change], affected)
            assert cache.desired("users", [U(8)])[U(8)] == ("dave2@fabrikam.com", ())
            assert db.values("users", [U(8)]) == {U(8): ("dave2@fabrikam.com", ())}
    finally:
        db.close()
    s = stack.update()
    assert all(c["added"] == 0 and c["removed"] == 0 for c in s["datasets"].values())


def test_expired_token_leads_to_a_full_resync(stack):
    stack.update()
    stack.graph.expire_delta_tokens()
    stack.graph.upsert_user({"id": U(2), "mail": "bob2@contoso.com"})
    s = stack.update()
    assert s["ok"] and s["read"]["kind"] == "full" and "410" in s["read"]["reason"]
    stack.check()
    assert stack.update()["read"]["kind"] == "delta"  # new links were saved


def test_sync_reset_error_is_a_full_resync(stack):
    stack.update()
    stack.graph.inject_fault("400-syncstate", path_contains="contacts/delta", times=1)
    s = stack.update()
    assert s["ok"] and s["read"]["kind"] == "full" and "syncStateNotFound" in s["read"]["reason"]
    stack.check()


def test_reconcile_interval_and_settings_changes_force_a_full_read(stack):
    stack.update()
    stack.now += dt.timedelta(hours=23)
    assert stack.update()["read"]["kind"] == "delta"
    stack.now += dt.timedelta(hours=2)
    s = stack.update()
    assert s["read"]["kind"] == "full" and "periodic full reconcile" in s["read"]["reason"]
    assert stack.update(FULL_SYNC_INTERVAL_HOURS="0")["read"]["kind"] == "full"
    assert stack.update()["read"]["kind"] == "delta"
    s = stack.update(ADDRESS_DOMAINS="contoso.com")
    assert s["read"]["kind"] == "full" and "ADDRESS_DOMAINS" in s["read"]["reason"]
    s = stack.update(ADDRESS_DOMAINS="contoso.com", SYNC_DATASETS="addresses,users")
    assert s["read"]["kind"] == "full" and "SYNC_DATASETS" in s["read"]["reason"]


def test_provisioned_domain_change_forces_a_full_read(graph, tmp_path):
    rc = SyncReceiver(domains=DOMAINS, credential=CREDENTIAL)
    rc.start()
    try:
        stack = Stack(graph, rc, tmp_path / "state")
        stack.update()
        rc.stop()
        rc2 = SyncReceiver(domains=DOMAINS[:2], credential=CREDENTIAL)
        rc2.start()
        stack.receiver = rc2
        stack.env["SYNC_API_URL"] = rc2.base_url
        s = stack.update()
        assert s["read"]["kind"] == "full" and "provisioned" in s["read"]["reason"]
        rc2.stop()
    finally:
        rc.stop()


def test_a_round_that_fails_midway_is_completed_exactly_once_by_the_next(stack):
    stack.update()
    receiver = stack.receiver
    for i in range(12):
        stack.graph.upsert_user({"id": f"1e000000-0000-0000-0000-{i:012d}", "mail": f"late{i}@contoso.com", "proxyAddresses": []})
    stack.graph.upsert_group({"id": G(1), "displayName": "Sales 2"})
    receiver.clear_log()
    # users batches go through (one answer is lost after the service applied it); addresses keep failing.
    receiver.inject_fault("drop_after", path_contains="/users/changes", times=1)
    receiver.inject_fault("500", path_contains="/addresses/changes", times=50)
    failed = stack.update(SYNC_TEST_MAX_ITEMS="3")
    assert not failed["ok"]
    held = receiver.records("users")
    assert any(k.startswith("1e000000") for k in held)  # users went through
    assert not any(r["address"].startswith("late") for r in receiver.records("addresses").values())  # addresses did not
    receiver._api.faults._faults.clear()  # the outage ends
    ok = stack.update(SYNC_TEST_MAX_ITEMS="3")
    assert ok["ok"], ok.get("error")
    stack.check()
    applied = Counter()
    for r in receiver.request_log:
        if r.method == "POST" and r.path.endswith("/changes") and r.status == 200 and not r.replayed:
            for rec in (r.body or {}).get("upsert", []):
                applied[(r.path, json.dumps(rec, sort_keys=True))] += 1
    # a dropped answer is resent under the same key (replayed), never applied twice
    assert applied and max(applied.values()) == 1
    assert receiver.keys_reused_with_different_body() == []


def test_a_state_from_the_previous_release_loads_and_reads_in_full(stack, caplog):
    stack.update()
    view = service_view(stack.receiver)
    state = stack.state
    # Write what release 1 wrote: state.json.gz (version 1) holding the same records.
    recs = {
        "addresses": sorted(view["addresses"]),
        "groups": {k: [v["name"], v["parentIds"]] for k, v in view["groups"].items()},
        "users": {k: [v["address"], v["groupIds"]] for k, v in view["users"].items()},
    }
    doc = {"format": "entra-dirsync-state", "version": 1, "lineage": "a" * 32, "generation": 3, "meta": {}, "datasets": recs}
    for f in state.iterdir():
        if f.is_file():
            f.unlink()
    (state / "state.json.gz").write_bytes(gzip.compress(json.dumps(doc).encode()))
    with caplog.at_level("WARNING"):
        s = stack.update()
    assert s["ok"] and s["read"]["kind"] == "full" and "previous release" in s["read"]["reason"]
    assert any("converted the previous release's state" in r.getMessage() for r in caplog.records)
    assert all(c["added"] == 0 and c["removed"] == 0 for c in s["datasets"].values())
    assert (state / "state.db").exists() and not (state / "state.json.gz").exists()
    assert stack.update()["read"]["kind"] == "delta"


def test_an_unreadable_state_fails_clearly_and_changes_nothing(stack):
    stack.update()
    db = stack.state / "state.db"
    db.write_bytes(b"this is not a database" * 100)
    s = stack.update()
    assert not s["ok"] and "refresh" in s["error"] and "state" in s["error"]
    assert db.read_bytes() == b"this is not a database" * 100
    # refresh is the way out: it sets the unreadable file aside and rebuilds from the service
    r = stack.update("refresh")
    assert r["ok"], r.get("error")
    assert list(stack.state.glob("state.db.unreadable-*"))
    s = stack.update()
    assert s["ok"] and s["read"]["kind"] == "full"
    assert all(c["added"] == 0 and c["removed"] == 0 for c in s["datasets"].values())
    stack.check()


def test_a_delta_page_that_keeps_failing_sends_nothing_and_keeps_the_links(stack):
    stack.update()
    db_before = (stack.state / "state.db").read_bytes()
    stack.graph.delete_user(U(8))
    stack.graph.upsert_user({"id": U(2), "mail": "bob3@contoso.com"})
    stack.receiver.clear_log()
    stack.graph.inject_fault("503", path_contains="groups/delta", times=100)
    s = stack.update()
    assert not s["ok"] and "groups/delta" in s["error"] and "nothing was sent" in s["error"]
    assert [r for r in stack.receiver.request_log if r.method != "GET"] == []
    assert (stack.state / "state.db").read_bytes() == db_before
    stack.graph.clear_faults()
    s = stack.update()
    assert s["ok"] and s["read"]["kind"] == "delta"
    stack.check()


def test_a_batch_applied_without_a_recorded_answer_is_reconciled_even_after_more_churn(stack):
    """The service applied a batch whose answer never came back (the run died), and the object
    changed again before the next run: what that batch added must still be taken back."""
    stack.update()
    stack.graph.upsert_user({"id": U(8), "mail": "first.move@fabrikam.com"})
    stack.receiver.inject_fault("drop_after", path_contains="/addresses/changes", times=100)
    failed = stack.update()
    assert not failed["ok"]
    assert "first.move@fabrikam.com" in {r["address"] for r in stack.receiver.records("addresses").values()}
    stack.receiver._api.faults._faults.clear()
    stack.graph.upsert_user({"id": U(8), "mail": "second.move@fabrikam.com"})
    s = stack.update()
    assert s["ok"], s.get("error")
    stack.check()
    addresses = {r["address"] for r in stack.receiver.records("addresses").values()}
    assert "first.move@fabrikam.com" not in addresses and "second.move@fabrikam.com" in addresses
