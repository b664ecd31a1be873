"""Scope and exclusions end to end (docs/sync-rules.md, "Scope and exclusions"): the real CLI and
the timer function against the Graph emulator and the strict receiver, on a directory built to
be awkward: nested and cyclic scope groups, a user reachable only through a group that merely
contains the scope, contacts as members, userType missing, null and in mixed case, a mail that
matches a pattern and falls back to the SMTP: address, patterns with anchors, dots and mixed
case; then delta rounds that move users and whole subtrees in and out of scope, and a scope
change that trips the deletion guard and is approved."""

from __future__ import annotations

import json

import pytest

from devstack.graph_emulator import GraphEmulator
from tests.stack import C, G, U, app_functions, base_env, posts, run_cli, service_view

PATTERNS = r"^NoReply@CONTOSO\.com$,info.desk@contoso\.com,.*\.LAB@FABRIKAM\.com"
RULES = {"SYNC_SCOPE_GROUPS": G(1), "EXCLUDE_USER_TYPES": "guest", "EXCLUDE_ADDRESS_PATTERNS": PATTERNS}


def user(n: int, mail: str | None, *proxies: str, **extra) -> dict:
    return {"id": U(n), "displayName": f"user {n}", "mail": mail, "proxyAddresses": list(proxies), **extra}


def scope_directory() -> dict:
    return {
        "users": [
            user(1, "alice@contoso.com", userType="Member"),               # in G1 directly
            user(2, "bob@contoso.com", userType="member"),                 # in G3 (G1 > G2 > G3 > G2: a cycle)
            user(3, "guest@fabrikam.com", userType="Guest"),               # in G1, but a guest
            user(4, "mixed@fabrikam.com", userType="gUEST"),               # in G2, a guest in mixed case
            user(5, "nulltype@contoso.com", userType=None),                # in G1, userType null: kept
            user(6, "notype@contoso.com"),                                 # in G3, userType missing: kept
            user(7, "outer@contoso.com"),                                  # only in G9, which contains G1: out
            user(8, "NoReply@Contoso.com", "smtp:noreply@contoso.com", "SMTP:Desk@Contoso.com"),  # falls back to desk@
            user(9, "loner@contoso.com"),                                  # in G4 only (outside the scope)
            user(10, "info-desk@contoso.com", "SMTP:info-desk@contoso.com"),  # the pattern's dot matches '-': no address
            user(11, "infodesk@contoso.com"),                              # ... but not the empty string: kept
            user(12, "ann@contoso.com", "smtp:Ann.Lab@fabrikam.com"),      # one address excluded by the pattern
        ],
        "groups": [
            {"id": G(1), "displayName": "Scope root", "mail": "root@contoso.com", "members": [U(1), U(3), U(5), U(8), U(10), U(11), U(12), G(2)]},
            {"id": G(2), "displayName": "Nested", "mail": None, "members": [G(3), U(4), C(1)]},
            {"id": G(3), "displayName": "Deeper", "mail": "deeper@contoso.com", "members": [G(2), U(2), U(6)]},
            {"id": G(4), "displayName": "Elsewhere", "mail": "elsewhere@contoso.com", "members": [U(9)]},
            {"id": G(9), "displayName": "Outer", "mail": "outer-group@contoso.com", "members": [G(1), U(7), C(2)]},
        ],
        "contacts": [
            {"id": C(1), "displayName": "In-scope contact", "mail": "partner@fabrikam.com", "proxyAddresses": []},
            {"id": C(2), "displayName": "Outer contact", "mail": "vendor@fabrikam.com", "proxyAddresses": []},
        ],
    }


# What the operator expects the service to hold with RULES, worked out by hand.
SCOPED = {
    "addresses": {"alice@contoso.com", "bob@contoso.com", "nulltype@contoso.com", "notype@contoso.com", "desk@contoso.com",
                  "infodesk@contoso.com", "ann@contoso.com", "root@contoso.com", "deeper@contoso.com", "partner@fabrikam.com"},
    "groups": {
        G(1): {"id": G(1), "name": "Scope root", "parentIds": []},           # G9 contains it, but G9 is out of scope
        G(2): {"id": G(2), "name": "Nested", "parentIds": sorted([G(1), G(3)])},
        G(3): {"id": G(3), "name": "Deeper", "parentIds": [G(2)]},
    },
    "users": {
        U(1): {"id": U(1), "address": "alice@contoso.com", "groupIds": [G(1)]},
        U(2): {"id": U(2), "address": "bob@contoso.com", "groupIds": [G(3)]},
        U(5): {"id": U(5), "address": "nulltype@contoso.com", "groupIds": [G(1)]},
        U(6): {"id": U(6), "address": "notype@contoso.com", "groupIds": [G(3)]},
        U(8): {"id": U(8), "address": "desk@contoso.com", "groupIds": [G(1)]},
        U(11): {"id": U(11), "address": "infodesk@contoso.com", "groupIds": [G(1)]},
        U(12): {"id": U(12), "address": "ann@contoso.com", "groupIds": [G(1)]},
    },
}


@pytest.fixture
def graph():
    em = GraphEmulator(scope_directory())
    em.start()
    yield em
    em.stop()


@pytest.fixture
def env(graph, receiver, tmp_path):
    return {**base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}"), **RULES}


def exclusions_by_object(summary: dict) -> dict[str, list[tuple[str, str | None, str]]]:
    out: dict[str, list] = {}
    for e in summary["exclusions"]:
        out.setdefault(e["objectId"], []).append((e["dataset"], e["value"], e["reason"]))
    return out


def test_test_update_lists_every_rule_exclusion_with_its_setting(env, receiver):
    r = run_cli("test-update", env, "--json")
    assert r.code == 0, r.stderr
    s = r.summary
    assert posts(receiver) == []
    ex = exclusions_by_object(s)
    scope = "SYNC_SCOPE_GROUPS"
    assert ex[U(7)] == [("addresses", "outer@contoso.com", ex[U(7)][0][2]), ("users", "outer@contoso.com", ex[U(7)][0][2])]
    assert scope in ex[U(7)][0][2]
    assert {d for d, _, why in ex[U(9)] if scope in why} == {"addresses", "users"}
    assert [(d, v) for d, v, why in ex[G(9)] if scope in why] == [("addresses", "outer-group@contoso.com"), ("groups", "Outer")]
    assert [(d, v) for d, v, why in ex[G(4)] if scope in why] == [("addresses", "elsewhere@contoso.com"), ("groups", "Elsewhere")]
    assert [(d, v) for d, v, why in ex[C(2)] if scope in why] == [("addresses", "vendor@fabrikam.com")]
    assert C(1) not in ex  # a contact that is a member of a nested scope group is in scope
    for uid, value in ((U(3), "guest@fabrikam.com"), (U(4), "mixed@fabrikam.com")):
        assert [(d, v) for d, v, why in ex[uid]] == [("addresses", value), ("users", value)]
        assert all("EXCLUDE_USER_TYPES" in why for _, _, why in ex[uid])
    assert ex[U(8)] == [("addresses", "noreply@contoso.com", r"matches EXCLUDE_ADDRESS_PATTERNS pattern '^NoReply@CONTOSO\.com$'")]
    assert ("addresses", "info-desk@contoso.com", r"matches EXCLUDE_ADDRESS_PATTERNS pattern 'info.desk@contoso\.com'") in ex[U(10)]
    assert [d for d, _, _ in ex[U(10)]] == ["addresses", "users"]  # no kept address left: no primary, no record
    assert ex[U(12)] == [("addresses", "ann.lab@fabrikam.com", r"matches EXCLUDE_ADDRESS_PATTERNS pattern '.*\.LAB@FABRIKAM\.com'")]
    for uid in (U(1), U(2), U(5), U(6), U(11)):
        assert uid not in ex
    added = s["changes"]
    assert {r["address"] for r in added["addresses"]["added"]} == SCOPED["addresses"]
    assert {r["id"]: r for r in added["users"]["added"]} == SCOPED["users"]
    # excluded: addresses 10 (U3, U4, U7, U8's noreply, U9, U10 (mail and SMTP: once), U12's ann.lab, G4, G9, C2),
    # users: U3, U4, U7, U9 and U10 (no primary); groups: G4, G9
    assert {d: c["excluded"] for d, c in s["datasets"].items()} == {"addresses": 10, "groups": 2, "users": 5}
    assert s["ruleExclusions"]["counts"]["SYNC_SCOPE_GROUPS"] == {"addresses": 5, "users": 2, "groups": 2}


def test_update_sends_only_the_scope_and_status_shows_the_exclusions(env, receiver):
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    assert service_view(receiver) == SCOPED
    assert r.summary["read"]["kind"] == "full"
    again = run_cli("update", env, "--json").summary
    assert again["read"]["kind"] == "delta" and all(c["added"] == c["removed"] == 0 for c in again["datasets"].values())
    assert {d: c["excluded"] for d, c in again["datasets"].items()} == {"addresses": 10, "groups": 2, "users": 5}
    assert again["ruleExclusions"]["counts"] == r.summary["ruleExclusions"]["counts"]
    status = run_cli("status", env)
    assert status.code == 0
    assert "SYNC_SCOPE_GROUPS: 5 addresses, 2 groups, 2 users" in status.stdout
    assert "EXCLUDE_USER_TYPES: 2 addresses, 2 users" in status.stdout
    assert "EXCLUDE_ADDRESS_PATTERNS: 3 addresses" in status.stdout
    js = json.loads(run_cli("status", env, "--json").stdout.strip().splitlines()[-1])
    assert js["runs"][0]["ruleExclusions"]["counts"]["EXCLUDE_ADDRESS_PATTERNS"] == {"addresses": 3, "users": 1}  # U10: its only candidate matches


def test_a_scope_id_that_names_no_group_fails_before_anything_is_sent(env, receiver):
    assert run_cli("update", {**env, "SYNC_SCOPE_GROUPS": ""}).code == 0  # the whole directory first
    before = service_view(receiver)
    sent = len(posts(receiver))
    for missing in (U(1), "20000000-0000-0000-0000-0000000000ff"):  # a user's id, and no object at all
        r = run_cli("update", {**env, "SYNC_SCOPE_GROUPS": f"{G(1)},{missing}"}, "--json")
        assert r.code == 2
        assert "SYNC_SCOPE_GROUPS" in r.stderr and missing in r.stderr
        assert len(posts(receiver)) == sent and service_view(receiver) == before
    preview = run_cli("test-update", {**env, "SYNC_SCOPE_GROUPS": "nope"})
    assert preview.code == 2 and "'nope'" in preview.stderr


def test_an_invalid_pattern_stops_the_run_before_any_request(env, receiver, graph):
    graph.reset_stats()
    r = run_cli("update", {**env, "EXCLUDE_ADDRESS_PATTERNS": r"ok@.*,(unclosed"})
    assert r.code == 2 and "EXCLUDE_ADDRESS_PATTERNS" in r.stderr and "'(unclosed'" in r.stderr
    assert receiver.request_log == [] and graph.request_count == 0


def test_delta_rounds_move_users_and_subtrees_in_and_out_of_scope(env, receiver, graph):
    assert run_cli("update", env).code == 0
    assert U(9) not in receiver.records("users")

    def update() -> dict:
        r = run_cli("update", env, "--json")
        assert r.code == 0, r.stderr
        assert r.summary["read"]["kind"] == "delta"
        return r.summary

    # A user added to a group nested in the scope comes in, with its addresses.
    graph.add_member(G(3), U(9))
    update()
    assert receiver.records("users")[U(9)]["groupIds"] == [G(3)]  # G4 is out of scope: not listed
    assert "loner@contoso.com" in service_view(receiver)["addresses"]
    # ...and goes out again when removed.
    graph.remove_member(G(3), U(9))
    update()
    assert U(9) not in receiver.records("users") and "loner@contoso.com" not in service_view(receiver)["addresses"]
    # A group nested into the scope brings its whole subtree: G4, its member U9 and its address.
    graph.add_member(G(2), G(4))
    s = update()
    view = service_view(receiver)
    assert view["groups"][G(4)]["parentIds"] == [G(2)]
    assert view["users"][U(9)]["groupIds"] == [G(4)]
    assert {"loner@contoso.com", "elsewhere@contoso.com"} <= view["addresses"]
    assert s["datasets"]["groups"]["excluded"] == 1
    # Nesting the outer group under the scope makes a cycle: now everything is in scope.
    graph.add_member(G(4), G(9))
    update()
    view = service_view(receiver)
    assert view["groups"][G(1)]["parentIds"] == [G(9)] and view["groups"][G(9)]["parentIds"] == [G(4)]
    assert view["users"][U(7)]["groupIds"] == [G(9)] and "vendor@fabrikam.com" in view["addresses"]
    # Taking G4 out of G2 moves G4, G9 and all they alone held out of scope again.
    graph.remove_member(G(2), G(4))
    update()
    assert service_view(receiver) == SCOPED
    # A userType change (Member -> GUEST) takes a user out; null brings them back.
    graph.upsert_user({"id": U(1), "userType": "GUEST"})
    update()
    assert U(1) not in receiver.records("users") and "alice@contoso.com" not in service_view(receiver)["addresses"]
    graph.upsert_user({"id": U(1), "userType": None})
    update()
    assert service_view(receiver) == SCOPED
    # A mail that starts to match a pattern falls back to the SMTP: address on the next round.
    graph.upsert_user({"id": U(11), "mail": "INFO_desk@contoso.com", "proxyAddresses": ["SMTP:id2@contoso.com"]})
    update()
    assert receiver.records("users")[U(11)]["address"] == "id2@contoso.com"
    assert "info_desk@contoso.com" not in service_view(receiver)["addresses"]


def test_a_rule_change_reads_in_full_and_a_mistyped_scope_is_held_until_approved(graph, receiver, tmp_path):
    env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    # The guard as shipped, with its percentage on every deletion: this directory is smaller than
    # the floor (DELETE_THRESHOLD_FLOOR, 25 deletions per dataset), below which nothing is held.
    env.update({"DELETE_THRESHOLD_PERCENT": "10", "DELETE_THRESHOLD_COUNT": "500", "DELETE_THRESHOLD_FLOOR": "0"})
    assert run_cli("update", env).code == 0
    everything = service_view(receiver)
    assert len(everything["users"]) == 12
    # Each rule setting, changed alone, makes the next update read in full and says which.
    for name, value in (("EXCLUDE_USER_TYPES", "nobody"), ("EXCLUDE_ADDRESS_PATTERNS", "nothing@.*")):
        s = run_cli("update", {**env, name: value}, "--json").summary
        assert s["ok"] and s["read"]["kind"] == "full" and name in s["read"]["reason"]
        env[name] = value
    assert run_cli("update", env, "--json").summary["read"]["kind"] == "delta"
    # The operator means G1 but types the id of G4 (one user): almost everything would go.
    env["SYNC_SCOPE_GROUPS"] = G(4)
    r = run_cli("update", env, "--json")
    assert r.code == 4, r.stderr
    s = r.summary
    assert "SYNC_SCOPE_GROUPS" in s["read"]["reason"]
    assert sorted(s["heldDeletions"]["users"]["keys"]) == sorted(u for u in everything["users"] if u != U(9))
    view = service_view(receiver)
    assert view["users"].keys() == everything["users"].keys() and view["addresses"] == everything["addresses"]
    assert view["users"][U(9)]["groupIds"] == [G(4)]  # the update of U9 (its groupIds now in scope only) was sent
    preview = run_cli("test-update", env, "--json").summary
    assert preview["heldDeletions"]["users"]["count"] == 11
    status = run_cli("status", env)
    assert "SYNC_SCOPE_GROUPS" in status.stdout and "approve-deletions" in status.stdout
    # Fixed before approval: the held deletions the directory no longer implies disappear.
    env["SYNC_SCOPE_GROUPS"] = G(1)
    env["EXCLUDE_USER_TYPES"] = "guest"
    env["EXCLUDE_ADDRESS_PATTERNS"] = PATTERNS
    r = run_cli("update", env, "--json")
    assert r.code == 4  # the real scope still removes more than 10 % of the records
    assert set(r.summary["heldDeletions"]["users"]["keys"]) == {U(3), U(4), U(7), U(9), U(10)}
    digest = run_cli("status", env, "--json").summary["heldDigest"]  # the held set the operator reviewed
    assert run_cli("approve-deletions", env, "--expect", digest).code == 0
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    assert service_view(receiver) == SCOPED


def test_the_timer_function_syncs_the_scope(monkeypatch, graph, receiver, tmp_path):
    for k, v in {**base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}"), **RULES}.items():
        monkeypatch.setenv(k, v)
    from tests.test_function_app import _timer

    app_functions()["sync_timer"].get_user_function()(_timer())
    assert service_view(receiver) == SCOPED
    graph.add_member(G(3), U(9))
    app_functions()["sync_timer"].get_user_function()(_timer())
    assert receiver.records("users")[U(9)]["groupIds"] == [G(3)]


def test_the_operator_preview_includes_the_rule_exclusions(monkeypatch, graph, receiver, tmp_path):
    from tests.test_operator_endpoints import preview  # POST test-update, then its result from GET status

    for k, v in {**base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}"), **RULES}.items():
        monkeypatch.setenv(k, v)
    body = preview()
    reasons = {e["reason"] for e in body["exclusions"]}
    assert any("SYNC_SCOPE_GROUPS" in r for r in reasons) and any("EXCLUDE_USER_TYPES" in r for r in reasons)
    assert body["ruleExclusions"]["counts"]["EXCLUDE_ADDRESS_PATTERNS"] == {"addresses": 3, "users": 1}  # U10: its only candidate matches
    assert {r["id"] for r in body["changes"]["users"]["added"]} == set(SCOPED["users"])
