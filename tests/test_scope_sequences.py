"""Scope and exclusions across sequences of delta rounds (docs/sync-rules.md, "Scope and
exclusions"; "Every round is a delta round, and entries are applied in arrival order").

Generated small directories (nested groups at any depth, cycles, contacts and devices as
members, userType missing, null and in any case, shared primary addresses, mail values that a
pattern matches beside an ``SMTP:`` fallback) are served by the Graph emulator in small pages
and member slices; then sequences of directory changes (memberships added and removed, scope
groups and users soft- or hard-deleted and restored, userType and mail changes, the rule
settings themselves changed between runs) each followed by ``update`` through the real CLI
door against the strict receiver. After every run:

* a scope id that names no group of the directory fails the run (exit status 2, a message that
  names ``SYNC_SCOPE_GROUPS`` and the id) and nothing is sent;
* otherwise the service equals ``tests/spec_oracle.py`` for the directory as it then is, the
  summary's ``added``/``removed`` count what changed at the service and what ``test-update``
  predicted, and its ``excluded`` and ``ruleExclusions`` equal what a full read counts (the
  preview's, and ``test-update`` on an empty state);
* a change of a rule setting reads in full, and the read's reason names exactly the settings
  that changed.

A second property scripts the rounds themselves (objects repeated with partial newer state,
``@removed`` in the first round, member removals in later slices) under a scope, and a third
checks every pair of rule settings set or unset for the settings a change names. The suite runs
``SCOPE_SEQUENCE_EXAMPLES`` (12) examples of each property; a longer search sets more.

Hypothesis runs derandomized, without an example database, with bounded example counts."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from devstack.graph_emulator import GraphEmulator
from devstack.sync_receiver import SyncReceiver
from tests import test_conformance_oracle as oracle_mod
from tests.spec_oracle import expected, view
from tests.stack import CREDENTIAL, base_env
from tests.test_conformance_oracle import changed, run_cli

DOMAINS = ["contoso.com", "fabrikam.com"]
EXAMPLES = int(os.environ.get("SCOPE_SEQUENCE_EXAMPLES", "12"))  # more for a longer search; the suite runs 12


def U(n: int) -> str:  # Graph's object ids are lowercase GUIDs; these have letters, so a capitalised one differs
    return f"1a000000-0000-4000-8000-{n:012d}"


def G(n: int) -> str:
    return f"2b000000-0000-4000-8000-{n:012d}"


def C(n: int) -> str:
    return f"3c000000-0000-4000-8000-{n:012d}"


DEVICE = "4d000000-0000-4000-8000-000000000001"
USERS, GROUPS, CONTACTS = [U(i) for i in range(1, 6)], [G(i) for i in range(1, 5)], [C(i) for i in range(1, 3)]
OBJECTS = USERS + GROUPS + CONTACTS + [DEVICE]
MAILS = [None, "", "a@contoso.com", "A@Contoso.com ", "noreply@contoso.com", "NoReply@Fabrikam.com", "b@fabrikam.com",
         "shared@contoso.com", "x@unprovisioned.org", "bad..dot@contoso.com"]
PROXIES = [[], ["SMTP:fallback@contoso.com"], ["smtp:noreply@contoso.com", "SMTP:desk@fabrikam.com"], ["SMTP:Shared@Contoso.com"],
           ["smtp:alias@contoso.com", "X500:/o=x"], ["SMTP:noreply@fabrikam.com"]]
TYPES = ["absent", None, "Member", "Guest", "guest", "GUEST", "member"]
SCOPES = [None, G(1), f"{G(1)},{G(3)}", G(2).upper(), G(4)]
USER_TYPES = [None, "Guest", "guest, Member"]
PATTERNS = [None, r"noreply@.*", r".*@fabrikam\.com", r"shared@contoso\.com|a@.*"]


def _user(uid: str, mail: Any, proxies: list[str], utype: Any) -> dict[str, Any]:
    u = {"id": uid, "displayName": "u", "mail": mail, "proxyAddresses": list(proxies)}
    if utype != "absent":
        u["userType"] = utype
    return u


@st.composite
def directories(draw: st.DrawFn) -> dict[str, Any]:
    users = [_user(uid, draw(st.sampled_from(MAILS)), draw(st.sampled_from(PROXIES)), draw(st.sampled_from(TYPES))) for uid in USERS]
    contacts = [{"id": cid, "displayName": "c", "mail": draw(st.sampled_from(MAILS)), "proxyAddresses": draw(st.sampled_from(PROXIES))}
                for cid in CONTACTS]
    groups = [{"id": gid, "displayName": draw(st.sampled_from(["", "Team", None])), "mail": draw(st.sampled_from(MAILS)),
               "proxyAddresses": [], "members": draw(st.lists(st.sampled_from(OBJECTS), max_size=5, unique=True))} for gid in GROUPS]
    return {"users": users, "groups": groups, "contacts": contacts, "devices": [{"id": DEVICE, "displayName": "laptop"}]}


def rule_sets() -> st.SearchStrategy[dict[str, str]]:
    def pack(scope: str | None, types: str | None, patterns: str | None) -> dict[str, str]:
        raw = {"SYNC_SCOPE_GROUPS": scope, "EXCLUDE_USER_TYPES": types, "EXCLUDE_ADDRESS_PATTERNS": patterns}
        return {k: v for k, v in raw.items() if v is not None}
    return st.builds(pack, st.sampled_from(SCOPES), st.sampled_from(USER_TYPES), st.sampled_from(PATTERNS))


OP = st.one_of(
    st.tuples(st.just("member+"), st.sampled_from(GROUPS), st.sampled_from(OBJECTS)),
    st.tuples(st.just("member-"), st.sampled_from(GROUPS), st.integers(0, 9)),
    st.tuples(st.just("type"), st.sampled_from(USERS), st.sampled_from(TYPES[1:])),
    st.tuples(st.just("mail"), st.sampled_from(USERS + CONTACTS), st.sampled_from(MAILS)),
    st.tuples(st.just("proxies"), st.sampled_from(USERS), st.sampled_from(PROXIES)),
    st.tuples(st.just("delete"), st.sampled_from(GROUPS[:2] + USERS + CONTACTS), st.booleans()),
    st.tuples(st.just("delete"), st.sampled_from(GROUPS[:2]), st.booleans()),  # a scope group, more often
)
# A step: some changes, then (maybe) every deleted object restored, then (maybe) new rule settings.
STEP = st.tuples(st.lists(OP, min_size=1, max_size=4), st.booleans(), st.one_of(st.none(), st.just({}), rule_sets()))


class Directory:
    """The emulator plus what a restore brings back: a deleted object's properties, its members
    and the groups that held it (Graph restores a soft-deleted object with its memberships)."""

    def __init__(self, graph: GraphEmulator) -> None:
        self.graph = graph
        self.deleted: dict[str, tuple[str, dict[str, Any], list[str]]] = {}

    def apply(self, op: tuple) -> None:
        kind, oid, arg = op
        now = self.graph.snapshot()
        groups = {g["id"]: g for g in now["groups"]}
        users = {u["id"]: u for u in now["users"]}
        alive = set(groups) | set(users) | {c["id"] for c in now["contacts"]} | {DEVICE}
        if kind == "member+" and oid in groups and arg in alive:
            self.graph.add_member(oid, arg)
        elif kind == "member-" and oid in groups and groups[oid]["members"]:
            members = groups[oid]["members"]
            self.graph.remove_member(oid, members[arg % len(members)])
        elif kind == "type" and oid in users:
            self.graph.upsert_user({"id": oid, "userType": arg})
        elif kind == "mail" and oid in users:
            self.graph.upsert_user({"id": oid, "mail": arg})
        elif kind == "mail" and any(c["id"] == oid for c in now["contacts"]):
            self.graph.upsert_contact({"id": oid, "mail": arg})
        elif kind == "proxies" and oid in users:
            self.graph.upsert_user({"id": oid, "proxyAddresses": arg})
        elif kind == "delete" and oid in alive and oid != DEVICE:
            coll = "groups" if oid in groups else "users" if oid in users else "contacts"
            obj = next(o for o in now[coll] if o["id"] == oid)
            parents = [g for g, v in groups.items() if oid in v["members"] and g != oid]
            self.deleted[oid] = (coll, obj, parents)
            getattr(self.graph, f"delete_{coll[:-1]}")(oid, permanent=arg)

    def restore(self) -> None:
        """Every deleted object back, with the memberships it had that still can be."""
        for coll, obj, _ in self.deleted.values():
            getattr(self.graph, f"upsert_{coll[:-1]}")({k: v for k, v in obj.items() if k != "members"})
        for oid, (_, obj, parents) in self.deleted.items():
            now = self.graph.snapshot()
            alive = {o["id"] for c in ("users", "groups", "contacts", "devices") for o in now[c]}
            for mid in obj.get("members", ()):
                if mid in alive:
                    self.graph.add_member(oid, mid)
            for gid in parents:
                if gid in alive:
                    self.graph.add_member(gid, oid)
        self.deleted.clear()


def excluded_by_a_fresh_full_read(env: dict[str, str]) -> dict[str, int]:
    fresh = {**env, "SYNC_STATE": f"file:{tempfile.mkdtemp(prefix='scope-fresh-')}/state"}
    r = run_cli("test-update", fresh, "--json")
    assert r.code == 0, r.stderr
    return {d: v["excluded"] for d, v in r.summary["datasets"].items()}


def unknown_scope_ids(rules: dict[str, str], groups: set[str]) -> list[str]:
    lowered = {g.lower() for g in groups}
    return [x.strip() for x in rules.get("SYNC_SCOPE_GROUPS", "").split(",") if x.strip() and x.strip().lower() not in lowered]


def changed_settings(was: dict[str, str], now: dict[str, str]) -> set[str]:
    """The rule settings whose values differ (an unset setting names nothing)."""
    def items(rules: dict[str, str], name: str) -> list[str]:
        return sorted(x.strip() for x in rules.get(name, "").split(",") if x.strip())
    return {name for name in ("SYNC_SCOPE_GROUPS", "EXCLUDE_USER_TYPES", "EXCLUDE_ADDRESS_PATTERNS") if items(was, name) != items(now, name)}


def check_update(d: Directory, receiver: SyncReceiver, env: dict[str, str], rules: dict[str, str], synced: dict[str, str] | None) -> bool:
    """One ``update`` and what must hold after it; returns whether it succeeded."""
    snapshot = d.graph.snapshot()
    before = view(receiver)
    sent = len([q for q in receiver.request_log if q.method != "GET"])
    missing = unknown_scope_ids(rules, {g["id"] for g in snapshot["groups"]})
    dry = run_cli("test-update", {**env, **rules}, "--json")
    r = run_cli("update", {**env, **rules}, "--json")
    if missing:
        for failed in (dry, r):
            assert failed.code == 2, (failed.code, failed.stderr)
            assert "SYNC_SCOPE_GROUPS" in failed.stderr and all(m in failed.stderr for m in missing), failed.stderr
        assert len([q for q in receiver.request_log if q.method != "GET"]) == sent and view(receiver) == before
        return False
    assert dry.code == 0 and r.code == 0, (dry.stderr, r.stderr)
    after = view(receiver)
    assert after == expected(snapshot, DOMAINS, **rules)
    counted = {k: (v["added"], v["removed"]) for k, v in r.summary["datasets"].items()}
    assert counted == changed(before, after) == {k: (v["added"], v["removed"]) for k, v in dry.summary["datasets"].items()}
    moved = changed_settings(synced, rules) if synced is not None else set()
    if moved:  # a full read, whose reason names each setting that changed, and no other
        read = r.summary["read"]
        assert read["kind"] == "full", read
        named = {name for name in ("SYNC_SCOPE_GROUPS", "EXCLUDE_USER_TYPES", "EXCLUDE_ADDRESS_PATTERNS") if name in read["reason"]}
        assert named == moved, read["reason"]
    # What each setting left out (the run report, status) is what a full read says.
    assert r.summary.get("ruleExclusions") == dry.summary.get("ruleExclusions")
    excluded = {k: v["excluded"] for k, v in r.summary["datasets"].items()}
    assert excluded == {k: v["excluded"] for k, v in dry.summary["datasets"].items()} == excluded_by_a_fresh_full_read({**env, **rules})
    return True


# The brief's cases, always run: U1 and U2 share a primary address and U1 (the smaller id) leaves the scope
# through a nested group's removal, then comes back; U3's mail matches a pattern (its SMTP: value is the
# primary) and its userType changes case; the scope group is soft-deleted (the run fails, nothing is sent),
# restored, hard-deleted as the scope moves to another group (typed in capitals), and the rules unset.
WALKTHROUGH = {
    "users": [_user(U(1), "shared@contoso.com", [], "Member"), _user(U(2), "Shared@Contoso.com ", [], "absent"),
              _user(U(3), "noreply@contoso.com", ["SMTP:fallback@contoso.com"], "Guest")],
    "groups": [{"id": G(1), "displayName": "Scope", "mail": None, "members": [U(2), G(2), C(1)]},
               {"id": G(2), "displayName": "", "mail": "nested@contoso.com", "members": [U(1), G(3)]},
               {"id": G(3), "displayName": None, "mail": None, "members": [G(2), U(3)]},
               {"id": G(4), "displayName": "Outer", "mail": "outer@contoso.com", "members": [G(1), DEVICE, C(2)]}],
    "contacts": [{"id": C(1), "displayName": "c", "mail": "partner@fabrikam.com"}, {"id": C(2), "displayName": "c", "mail": "b@fabrikam.com"}],
    "devices": [{"id": DEVICE, "displayName": "laptop"}],
}
WALKTHROUGH_STEPS = [
    ([("member-", G(1), 1)], False, None),  # G2 out of G1: G2, G3, U1 and U3 leave; U2 keeps shared@
    ([("type", U(3), "GUEST"), ("member+", G(1), G(2))], False, None),  # back: U1 (smaller id) takes shared@ again
    ([("delete", G(1), False)], False, None),  # the scope group soft-deleted: the run fails, nothing is sent
    ([("type", U(3), "Member")], True, None),  # restored with its members and parents
    ([("delete", G(1), True)], False, {"SYNC_SCOPE_GROUPS": G(2).upper(), "EXCLUDE_ADDRESS_PATTERNS": r"noreply@.*"}),
    ([("mail", U(3), "b@fabrikam.com")], False, {}),
]


@settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.generate])
@example(WALKTHROUGH, {"SYNC_SCOPE_GROUPS": G(1), "EXCLUDE_USER_TYPES": "guest", "EXCLUDE_ADDRESS_PATTERNS": r"noreply@.*"},
         WALKTHROUGH_STEPS, "changed", "1")
@example(WALKTHROUGH, {"SYNC_SCOPE_GROUPS": f"{G(3)},{G(4)}"}, WALKTHROUGH_STEPS, "selected", None)
@given(directories(), rule_sets(), st.lists(STEP, min_size=1, max_size=4), st.sampled_from(["selected", "changed"]), st.sampled_from([None, "1", "2"]))
def test_any_sequence_of_changes_and_updates_leaves_the_service_as_a_full_read_implies(directory, rules, steps, props, items):
    graph = GraphEmulator(directory, max_page_size=2, max_members_per_page=2, delta_properties=props)
    receiver = SyncReceiver(domains=DOMAINS, credential=CREDENTIAL)
    try:
        env = base_env(graph.start(), receiver.start(), f"file:{tempfile.mkdtemp(prefix='scope-seq-')}/state")
        if items:  # small requests: users.address stays unique between them as a primary changes hands
            env["SYNC_TEST_MAX_ITEMS"] = items
        d = Directory(graph)
        synced = rules if check_update(d, receiver, env, rules, None) else None  # the rules of the last run that succeeded
        for ops, restore, new_rules in steps:
            for op in ops:
                d.apply(op)
            if restore:
                d.restore()
            rules = new_rules if new_rules is not None else rules
            if check_update(d, receiver, env, rules, synced):
                synced = rules
    finally:
        graph.stop()
        receiver.stop()


# --- scripted rounds (repeats, @removed in the first round, member removals in later slices) ----
@settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.generate])
@given(st.randoms(use_true_random=True), st.sampled_from([oracle_mod.GROUPS[0], ",".join(oracle_mod.GROUPS[:2]), oracle_mod.GROUPS[3]]),
       st.sampled_from(USER_TYPES), st.sampled_from(PATTERNS), st.integers(2, 4))
def test_scripted_rounds_under_a_scope_fold_as_the_contract_says(rnd, scope, types, patterns, rounds):
    rules = {k: v for k, v in {"SYNC_SCOPE_GROUPS": scope, "EXCLUDE_USER_TYPES": types, "EXCLUDE_ADDRESS_PATTERNS": patterns}.items() if v}
    state: dict[str, dict] = {}
    with oracle_mod.Stack({}, rules) as s:
        for n in range(rounds):
            for coll, entries in oracle_mod.delta_round(rnd, state, n == 0).items():
                s.graph.script_round(coll, oracle_mod.paged(entries, rnd))
            before = view(s.receiver)
            r = run_cli("update", s.env, "--json")
            missing = unknown_scope_ids(rules, {oid for oid, v in state.items() if v["coll"] == "groups"})
            if missing:
                assert r.code == 2 and "SYNC_SCOPE_GROUPS" in r.stderr and all(m in r.stderr for m in missing), r.stderr
                assert view(s.receiver) == before
                return
            assert r.code == 0, r.stderr
            assert view(s.receiver) == expected(oracle_mod.folded(state), oracle_mod.DOMAINS, **rules)
            assert {k: (v["added"], v["removed"]) for k, v in r.summary["datasets"].items()} == changed(before, view(s.receiver))


# --- which settings a rule change names (every pair of the settings set or unset) ---------------
def test_a_rule_change_names_exactly_the_settings_that_changed():
    from itertools import product

    from shared.model.rules import changed_settings, parse_rules

    names = ("SYNC_SCOPE_GROUPS", "EXCLUDE_USER_TYPES", "EXCLUDE_ADDRESS_PATTERNS")
    configs = list(product([None, G(1)], [None, "Guest"], [None, r"noreply@.*"]))
    for was, now in product(configs, configs):
        want = [name for name, a, b in zip(names, was, now, strict=True) if a != b]
        assert changed_settings(parse_rules(*was).fingerprint(), parse_rules(*now).fingerprint()) == want, (was, now)
        assert changed_settings(None, parse_rules(*now).fingerprint()) == [n for n, v in zip(names, now, strict=True) if v]  # no rule before
    # The same rules spelled otherwise are no change: user types compare case-insensitively, ids in any order.
    assert changed_settings(parse_rules(f"{G(1)},{G(2)}", "GUEST", None).fingerprint(), parse_rules(f"{G(2)}, {G(1)}", "guest", None).fingerprint()) == []


# --- a change of the rules is judged by the deletion guard like any other -----------------------
@settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.generate])
# U3 holds shared@ in the scope; without it, U2 (the smaller id) takes it, and U3's deletion is held.
@example({"users": [_user(U(2), "shared@contoso.com", [], "Member"), _user(U(3), "Shared@contoso.com", [], "Member"),
                    _user(U(5), "a@contoso.com", [], "Member")],
          "groups": [{"id": G(1), "displayName": "x", "mail": None, "members": [U(3), U(5)]}], "contacts": []},
         {"SYNC_SCOPE_GROUPS": G(1)}, [], {})
# A chain: U3 leaves with shared@ (held), U5 moves from x@ to shared@ and waits, so U4, which takes x@, waits too.
@example({"users": [_user(U(3), "shared@contoso.com", [], "Member"), _user(U(4), "x@contoso.com", [], "Member"),
                    _user(U(5), "X@contoso.com", [], "Member")],
          "groups": [{"id": G(1), "displayName": "x", "mail": None, "members": [U(3), U(5)]},
                     {"id": G(2), "displayName": "y", "mail": None, "members": [U(4), U(5)]}], "contacts": []},
         {"SYNC_SCOPE_GROUPS": G(1)}, [("mail", U(5), "shared@contoso.com")], {"SYNC_SCOPE_GROUPS": G(2)})
@given(directories(), rule_sets(), st.lists(OP, max_size=3), rule_sets())
def test_a_rule_change_reads_in_full_and_the_guard_holds_what_it_would_delete(directory, first, ops, then):
    # DELETE_THRESHOLD_PERCENT 10 above a floor of 0: a change that deletes more than a tenth of a
    # dataset's records holds every deletion of the run (docs/sync-rules.md, "The deletion guard").
    guard = {"DELETE_THRESHOLD_PERCENT": "10", "DELETE_THRESHOLD_FLOOR": "0", "DELETE_THRESHOLD_COUNT": "1000000"}
    graph = GraphEmulator(directory, max_page_size=2, max_members_per_page=2)
    receiver = SyncReceiver(domains=DOMAINS, credential=CREDENTIAL)
    try:
        env = base_env(graph.start(), receiver.start(), f"file:{tempfile.mkdtemp(prefix='scope-guard-')}/state")
        d = Directory(graph)
        if unknown_scope_ids(first, {g["id"] for g in directory["groups"]}) or unknown_scope_ids(then, {g["id"] for g in directory["groups"]}):
            return  # a scope naming no group fails the run: the property above covers it
        assert run_cli("update", {**env, **first}).code == 0
        for op in (o for o in ops if o[0] != "delete"):  # the directory changes too (no deletion: every scope id still names a group)
            d.apply(op)
        before = view(receiver)
        want = expected(graph.snapshot(), DOMAINS, **then)
        keys = lambda v: {"addresses": set(v["addresses"]), "groups": set(v["groups"]), "users": set(v["users"])}  # noqa: E731
        deletions = {ds: keys(before)[ds] - keys(want)[ds] for ds in ("addresses", "groups", "users")}
        trips = any(len(k) * 100 > 10 * len(keys(before)[ds]) for ds, k in deletions.items())
        r = run_cli("update", {**env, **guard, **then}, "--json")
        if changed_settings(first, then):
            assert r.summary["read"]["kind"] == "full", r.summary["read"]
        after = view(receiver)
        if not trips:
            assert r.code == 0, r.stderr
            assert after == want
            return
        assert r.code == 4, r.stderr
        held = r.summary["heldDeletions"]
        assert {ds: set(held[ds]["keys"]) for ds in held} == {ds: k for ds, k in deletions.items() if k}
        # Everything else was sent: the service holds what the rules now imply, plus the held records;
        # a user whose primary address a held user still holds waits with that deletion (users.address
        # is unique: the service would reject it), and nothing is sent that the service rejects.
        taken, waits = {before["users"][k]["address"] for k in deletions["users"]}, set()
        while moved := {k for k, v in want["users"].items() if v["address"] in taken and k not in waits}:  # and who waits on them
            waits |= moved
            taken |= {before["users"][k]["address"] for k in moved if k in before["users"]}
        assert keys(after) == {ds: (keys(want)[ds] - (waits - set(before[ds]) if ds == "users" else set())) | deletions[ds] for ds in deletions}
        assert all(after[ds][k] == (before[ds][k] if k in waits else v) for ds in ("groups", "users") for k, v in want[ds].items() if k in after[ds])
        assert {ds: v["rejected"] for ds, v in r.summary["datasets"].items()} == {"addresses": 0, "groups": 0, "users": 0}
        digest = run_cli("status", {**env, **guard, **then}, "--json").summary["heldDigest"]
        assert run_cli("approve-deletions", {**env, **guard, **then}, "--expect", digest).code == 0
        assert run_cli("update", {**env, **guard, **then}).code == 0
        assert view(receiver) == want
    finally:
        graph.stop()
        receiver.stop()
