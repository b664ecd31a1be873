"""Black-box checks of the product against the contract (docs/sync-rules.md, docs/sync-api.md).

Only the CLI (``python -m shared <action> --json``) and the loopback emulators are used: the Graph
emulator (devstack/graph_emulator.py, with its scripted delta rounds), the Exchange Online emulator
and the strict sync API receiver. Nothing here imports the engine (``shared``): what the service
should hold is computed by the small reference projection below, written straight from the rules,
so these tests survive any refactor of the engine.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from devstack.exchange_emulator import ExchangeEmulator, recipient
from devstack.graph_emulator import GraphEmulator
from devstack.sync_receiver import SyncReceiver
from tests.stack import CREDENTIAL, base_env, run_cli

# --- the reference projection (written from docs/sync-rules.md and docs/sync-api.md) ------------

_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_LOCAL = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def ref_normalize(value: str) -> str:
    """Strip, lowercase, IDN domain to A-labels (sync-rules: candidate normalization)."""
    v = value.strip().lower()
    if v.count("@") != 1:
        return v
    local, domain = v.split("@")
    labels = []
    for label in domain.split("."):
        if label and not label.isascii():
            try:
                label = label.encode("idna").decode("ascii")
            except UnicodeError:
                pass
        labels.append(label)
    return local + "@" + ".".join(labels)


def ref_valid(address: str) -> bool:
    """docs/sync-api.md address rules: dot-atom local part <= 64, host-name domain, <= 254 in all."""
    if not address.isascii() or address.count("@") != 1 or len(address) > 254:
        return False
    local, domain = address.split("@")
    if len(local) > 64 or not _LOCAL.fullmatch(local):
        return False
    if len(domain) > 253:
        return False
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(x) for x in labels) or labels[-1].isdigit():
        return False
    for x in labels:
        if x.startswith("xn--"):
            try:
                x.encode("ascii").decode("idna")
            except UnicodeError:
                return False
    return True


def _candidates(obj: dict[str, Any]) -> list[str]:
    out = [obj["mail"]] if isinstance(obj.get("mail"), str) and obj["mail"] else []
    out += [p[5:] for p in obj.get("proxyAddresses") or [] if p[:5].lower() == "smtp:"]
    return out


def reference(directory: dict, provisioned: set[str], *, scope: set[str] | None = None,
              exclude_types: set[str] = frozenset(), patterns: list[str] = ()) -> dict[str, Any]:
    users = {u["id"]: u for u in directory.get("users", [])}
    groups = {g["id"]: g for g in directory.get("groups", [])}
    contacts = {c["id"]: c for c in directory.get("contacts", [])}
    members = {g["id"]: list(g.get("members") or []) for g in directory.get("groups", [])}
    in_groups = set(groups)
    if scope is not None:
        in_groups, todo = set(), [s for s in scope]
        while todo:
            gid = todo.pop()
            if gid in in_groups:
                continue
            in_groups.add(gid)
            todo += [m for m in members[gid] if m in groups]
    member_ok = {m for g in in_groups for m in members[g]}

    def in_scope(oid: str) -> bool:
        return scope is None or oid in in_groups or oid in member_ok

    def kept(value: str) -> str | None:
        n = ref_normalize(value)
        if not ref_valid(n) or n.split("@")[1] not in provisioned:
            return None
        if any(re.fullmatch(p, n, re.IGNORECASE) for p in patterns):
            return None
        return n

    addresses: set[str] = set()
    excluded_addr: set[tuple[str, str]] = set()
    excluded_users = 0
    primaries: dict[str, str] = {}
    for kind, objs in (("user", users), ("group", groups), ("contact", contacts)):
        for oid, obj in objs.items():
            if not in_scope(oid):
                continue
            if kind == "user" and str(obj.get("userType") or "").lower() in exclude_types:
                excluded_users += 1
                continue
            for c in _candidates(obj):
                k = kept(c)
                if k:
                    addresses.add(k)
                else:
                    excluded_addr.add((oid, ref_normalize(c)))
            if kind == "user":
                primary = kept(obj["mail"]) if isinstance(obj.get("mail"), str) and obj["mail"] else None
                if primary is None:
                    primary = next((kept(p[5:]) for p in obj.get("proxyAddresses") or []
                                    if p.startswith("SMTP:") and kept(p[5:])), None)
                if primary is None:
                    excluded_users += 1
                else:
                    primaries[oid] = primary
    by_address: dict[str, list[str]] = {}
    for uid, a in primaries.items():
        by_address.setdefault(a, []).append(uid)
    user_records = {}
    for a, ids in by_address.items():
        winner = min(ids)
        excluded_users += len(ids) - 1
        user_records[winner] = {"id": winner, "address": a,
                                "groupIds": sorted(g for g in in_groups if winner in members[g])}
    group_records = {}
    for gid in in_groups:
        g = groups[gid]
        name = g.get("displayName") or g.get("mail") or gid
        group_records[gid] = {"id": gid, "name": name, "parentIds": sorted(p for p in in_groups if gid in members[p])}
    return {"addresses": addresses, "groups": group_records, "users": user_records,
            "excluded": {"addresses": len(excluded_addr), "users": excluded_users}}


def view(receiver: SyncReceiver) -> dict[str, Any]:
    users = {k: {**v, "groupIds": sorted(v["groupIds"])} for k, v in receiver.records("users").items()}
    groups = {k: {**v, "parentIds": sorted(v["parentIds"])} for k, v in receiver.records("groups").items()}
    return {"addresses": {r["address"] for r in receiver.records("addresses").values()}, "groups": groups, "users": users}


def same(receiver: SyncReceiver, ref: dict[str, Any]) -> None:
    got = view(receiver)
    assert got["addresses"] == ref["addresses"]
    assert got["groups"] == ref["groups"]
    assert got["users"] == ref["users"]


# --- a nasty directory -------------------------------------------------------------------------

def oid(prefix: str, n: int) -> str:
    return f"{prefix}{n:07d}-0000-4000-8000-000000000000"


def u(n: int) -> str:
    return oid("1", n)


def g(n: int) -> str:
    return oid("2", n)


def c(n: int) -> str:
    return oid("3", n)


DEVICE, SP, DANGLING = oid("4", 1), oid("5", 1), oid("6", 1)
LONG_OK = "x" * 61 + "." + "y" * 61 + "." + "z" * 61 + ".com"  # 189: 64 + 1 + 189 = 254
LONG_BAD = "x" * 62 + "." + "y" * 61 + "." + "z" * 61 + ".com"  # 190: 255 in all
DOMAINS = ["contoso.com", "fabrikam.com", "xn--bcher-kva.example", LONG_OK, LONG_BAD]
# The duplicate primary: three users share it; string order of the ids picks the winner.
DUP_A, DUP_B, DUP_C = "1f000000-0000-4000-8000-000000000000", "10000000-0000-4000-8000-00000000000a", "1a000000-0000-4000-8000-000000000000"


def nasty() -> dict[str, Any]:
    return {
        "users": [
            {"id": u(1), "mail": None, "proxyAddresses": ["Smtp:mixed@contoso.com", "sMTP:mixed2@contoso.com"]},
            {"id": u(2), "mail": None, "proxyAddresses": ["smtp:lower@contoso.com", "X500:/o=x/cn=lower"]},
            {"id": u(3), "mail": "u3@notprovisioned.com", "proxyAddresses": ["SMTP:u3@contoso.com"]},
            {"id": u(4), "mail": "a" * 64 + "@contoso.com", "proxyAddresses": ["smtp:" + "b" * 65 + "@contoso.com"]},
            {"id": u(5), "mail": "c" * 64 + "@" + LONG_OK, "proxyAddresses": ["smtp:" + "d" * 64 + "@" + LONG_BAD]},
            {"id": u(6), "mail": "O'Neil+Tag{x}@Contoso.com", "proxyAddresses": [
                "smtp:a/b=c?d^e`f|g~h#j$k%l&m*n@contoso.com", "smtp:.lead@contoso.com", "smtp:trail.@contoso.com",
                "smtp:sp ace@contoso.com", "smtp:jörg@contoso.com", "smtp:two@at@contoso.com", "smtp:@contoso.com",
                "smtp:dot@contoso.com.", "smtp:(c)x@contoso.com", "smtp:x@contoso..com", "SIP:sip@contoso.com",
                "EUM:123@contoso.com", "SPO:SPO_x@SPO_y", 'smtp:"q"@contoso.com']},
            {"id": u(7), "mail": "  Jo@BÜCHER.Example\t", "proxyAddresses": []},
            {"id": u(8), "mail": None, "proxyAddresses": ["SMTP:ALabel@XN--BCHER-KVA.EXAMPLE"]},
            {"id": DUP_A, "mail": "dup@contoso.com", "proxyAddresses": []},
            {"id": DUP_B, "mail": None, "proxyAddresses": ["SMTP:DUP@Contoso.com"]},
            {"id": DUP_C, "mail": " dup@CONTOSO.com", "proxyAddresses": []},
            {"id": u(12), "mail": "u12@contoso.com", "proxyAddresses": [], "userType": None},
            {"id": u(13), "mail": "u13@contoso.com", "proxyAddresses": []},
            {"id": u(14), "mail": "u14@contoso.com", "proxyAddresses": [], "userType": "GUEST"},
            {"id": u(15), "mail": "u15@contoso.com", "proxyAddresses": [], "userType": "Member"},
            {"id": u(16), "mail": "bad..dot@contoso.com", "proxyAddresses": ["SMTP:also..bad@contoso.com", "smtp:ok16@contoso.com"]},
            {"id": u(17), "mail": "", "proxyAddresses": ["SMTP:u17@contoso.com"]},
            {"id": u(18), "mail": "U18@contoso.com", "proxyAddresses": ["smtp:u18@CONTOSO.COM", "smtp:shared-alias@contoso.com"]},
            {"id": u(19), "mail": "u19@contoso.onmicrosoft.com", "proxyAddresses": ["SMTP:u19@contoso.onmicrosoft.com"]},
            {"id": u(20), "mail": "sysadmin@contoso.com", "proxyAddresses": ["SMTP:sysadmin@contoso.com", "smtp:admin@contoso.com"]},
        ],
        "groups": [
            {"id": g(1), "displayName": "Sales", "mail": "sales@contoso.com", "proxyAddresses": ["SMTP:sales@contoso.com"],
             "members": [DUP_A, DUP_B, g(2), c(1), DEVICE, SP, DANGLING]},
            {"id": g(2), "displayName": "", "mail": "Team@Contoso.com", "proxyAddresses": [], "members": [g(3), u(7)]},
            {"id": g(3), "displayName": None, "mail": None, "proxyAddresses": [], "members": [g(2), u(8)]},
            {"id": g(4), "displayName": None, "mail": "G4@Contoso.com",
             "proxyAddresses": ["SMTP:g4@contoso.com", "smtp:g4-alias@fabrikam.com", "smtp:g4@elsewhere.org"], "members": []},
            {"id": g(5), "displayName": "Empty", "mail": None, "proxyAddresses": [], "members": [u(14), u(15)]},
        ],
        "contacts": [
            {"id": c(1), "mail": "Ext@Fabrikam.COM", "proxyAddresses": ["SMTP:ext@fabrikam.com", "smtp:shared-alias@contoso.com"]},
            {"id": c(2), "mail": None, "proxyAddresses": ["smtp:c2@contoso.com", "X400:c=US;a= ;p=x"]},
        ],
        "devices": [{"id": DEVICE, "displayName": "laptop"}],
        "servicePrincipals": [{"id": SP, "displayName": "app"}],
    }


class Stack:
    def __init__(self, directory: dict, tmp: Path, domains: list[str] = DOMAINS, **env: str) -> None:
        self.graph = GraphEmulator(directory, max_page_size=3, max_members_per_page=2)
        self.receiver = SyncReceiver(domains=domains, credential=CREDENTIAL)
        self.env = {**base_env(self.graph.start(), self.receiver.start(), f"file:{tmp}/state"), **env}

    def run(self, action: str = "update", **env: str):
        return run_cli(action, {**self.env, **env}, "--json")

    def close(self) -> None:
        self.graph.stop()
        self.receiver.stop()


@pytest.fixture
def make(tmp_path):
    made: list[Stack] = []

    def _make(directory: dict, **kw: Any) -> Stack:
        s = Stack(directory, tmp_path / str(len(made)), **kw)
        made.append(s)
        return s

    yield _make
    for s in made:
        s.close()


PROVISIONED = set(DOMAINS)


@pytest.fixture(scope="module")
def nasty_run(tmp_path_factory):
    """One test-update then one update then a second update on the nasty directory."""
    s = Stack(nasty(), tmp_path_factory.mktemp("nasty"))
    try:
        dry = s.run("test-update")
        posted_after_dry = [r for r in s.receiver.request_log if r.method != "GET"]
        first = s.run("update")
        got = view(s.receiver)
        again = s.run("update")
        yield {"dry": dry, "posted_after_dry": posted_after_dry, "first": first, "view": got, "again": again}
    finally:
        s.close()


# --- candidate addresses, validity, provisioned domains --------------------------------------

def test_nasty_addresses_match_the_rules(nasty_run):
    # Candidates: mail and every proxy with an `smtp:` prefix in any case; stripped, lowercased,
    # IDN to A-label; kept only if valid per docs/sync-api.md (dot-atom <= 64, <= 254 in all, ASCII)
    # and on a provisioned domain. X500/SIP/EUM/SPO/X400 values are not addresses.
    assert nasty_run["first"].code == 0, nasty_run["first"].stderr
    assert nasty_run["view"]["addresses"] == reference(nasty(), PROVISIONED)["addresses"]


def test_nasty_groups_match_the_rules(nasty_run):
    # Group name: displayName, else mail, else id. parentIds: groups holding it as a direct member
    # (cycles included). Devices, service principals, contacts and dangling ids add nothing.
    assert nasty_run["view"]["groups"] == reference(nasty(), PROVISIONED)["groups"]


def test_nasty_users_match_the_rules(nasty_run):
    # Primary: kept mail, else the kept `SMTP:` (uppercase prefix) value, else no record.
    # A shared primary goes to the smaller id by string order. groupIds: direct parents only.
    got = nasty_run["view"]["users"]
    ref = reference(nasty(), PROVISIONED)["users"]
    assert got == ref
    assert DUP_B in got and DUP_A not in got and DUP_C not in got
    assert u(1) not in got and u(2) not in got  # only `Smtp:`/`smtp:` proxies: no primary


def test_summary_shape_and_counts(nasty_run):
    # --json: the last stdout line, with datasets.*.added/removed/rejected/excluded,
    # graphRequests, syncRequests, durationSeconds; added counts the upserts.
    s = nasty_run["first"].summary
    assert s["action"] == "update" and s["ok"] is True
    for ds in ("addresses", "groups", "users"):
        for k in ("added", "removed", "rejected", "excluded"):
            assert isinstance(s["datasets"][ds][k], int), (ds, k)
    assert isinstance(s["graphRequests"], int) and s["graphRequests"] > 0
    assert isinstance(s["syncRequests"], int) and s["syncRequests"] > 0
    assert isinstance(s["durationSeconds"], (int, float))
    ref = reference(nasty(), PROVISIONED)
    for ds in ("addresses", "groups", "users"):
        assert s["datasets"][ds]["added"] == len(ref[ds])
        assert s["datasets"][ds]["removed"] == 0
        assert s["datasets"][ds]["rejected"] == 0


def test_excluded_counts_candidates_and_users_left_out(nasty_run):
    # `excluded` counts the candidates and the users left out, whatever the reason (an invalid
    # value, an unprovisioned domain, no primary, a duplicate primary).
    s = nasty_run["first"].summary
    ref = reference(nasty(), PROVISIONED)["excluded"]
    assert s["datasets"]["users"]["excluded"] == ref["users"]
    assert s["datasets"]["addresses"]["excluded"] == ref["addresses"]


def test_test_update_sends_nothing_and_reports_what_update_sends(nasty_run):
    # test-update sends nothing, changes no state; its added/removed are what update would send.
    dry, first = nasty_run["dry"], nasty_run["first"]
    assert dry.code == 0 and nasty_run["posted_after_dry"] == []
    for ds in ("addresses", "groups", "users"):
        assert dry.summary["datasets"][ds]["added"] == first.summary["datasets"][ds]["added"]


def test_second_update_sends_nothing(nasty_run):
    # update sends only what changed since the last successful sync.
    s = nasty_run["again"].summary
    assert nasty_run["again"].code == 0
    assert all(s["datasets"][d]["added"] == 0 and s["datasets"][d]["removed"] == 0 for d in s["datasets"])
    # A delta round that changes nothing still reports the same exclusions as the full read.
    assert {d: s["datasets"][d]["excluded"] for d in s["datasets"]} == \
        {d: nasty_run["first"].summary["datasets"][d]["excluded"] for d in s["datasets"]}


# --- scope and exclusions ----------------------------------------------------------------------

def test_user_types_and_address_patterns(make):
    # EXCLUDE_USER_TYPES is compared case-insensitively (null/missing userType never matches);
    # EXCLUDE_ADDRESS_PATTERNS match the whole normalized address (A-label), case-insensitively,
    # and a user whose mail is excluded falls back to its kept SMTP: value.
    pats = [r"^JO@xn--bcher-kva\.example$", r".*@FABRIKAM\.com", r"dup@contoso\.com", r"u3@contoso\.com", "admin"]
    s = make(nasty(), EXCLUDE_USER_TYPES=" guest ,Nobody", EXCLUDE_ADDRESS_PATTERNS=",".join(pats))
    r = s.run()
    assert r.code == 0, r.stderr
    same(s.receiver, reference(nasty(), PROVISIONED, exclude_types={"guest", "nobody"}, patterns=pats))
    # "admin" matches neither sysadmin@ nor admin@contoso.com as a whole address.
    assert {"sysadmin@contoso.com", "admin@contoso.com"} <= view(s.receiver)["addresses"]


def test_address_domains_is_normalized_before_the_intersection(make):
    # ADDRESS_DOMAINS is intersected with the provisioned domains (which are lowercase A-labels).
    s = make(nasty(), ADDRESS_DOMAINS="CONTOSO.com, bücher.example")
    r = s.run()
    assert r.code == 0, r.stderr
    same(s.receiver, reference(nasty(), {"contoso.com", "xn--bcher-kva.example"}))


def test_scope_in_capitals_with_a_nested_cycle(make):
    # SYNC_SCOPE_GROUPS: the group, groups nested at any depth (a cycle ends), and their members;
    # parentIds/groupIds keep only groups in scope. Object ids are GUIDs: case does not matter.
    s = make(nasty(), SYNC_SCOPE_GROUPS=f" {g(2).upper()} ")
    r = s.run()
    assert r.code == 0, r.stderr
    same(s.receiver, reference(nasty(), PROVISIONED, scope={g(2)}))


LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR) ")


def test_scope_naming_no_group_fails_before_sending(make):
    # An id that names no group (a user's id is not a group's) fails the run before anything is
    # sent, with a message naming the setting and the id.
    s = make(nasty(), SYNC_SCOPE_GROUPS=f"{g(1)},{u(7)}")
    r = s.run()
    assert r.code != 0
    assert [x for x in s.receiver.request_log if x.method != "GET"] == []
    # One clear line: the last on stderr, and the only one that is not a log record (the
    # per-object warnings are log records on stderr too).
    lines = [x for x in r.stderr.strip().splitlines() if not LOG_RECORD.match(x)]
    assert lines == [r.stderr.strip().splitlines()[-1]]
    assert "SYNC_SCOPE_GROUPS" in lines[0] and u(7) in lines[0]


# --- settings errors: before any network call, one line naming the setting ----------------------

@pytest.mark.parametrize("env,names", [
    ({"EXCLUDE_ADDRESS_PATTERNS": "ok.*,(unclosed"}, ["EXCLUDE_ADDRESS_PATTERNS", "(unclosed"]),
    ({"EXO_MODE": "only", "GRAPH_TENANT_ID": "11111111-2222-3333-4444-555555555555", "EXO_BASE_URL": "http://127.0.0.1:9", "SYNC_DATASETS": "addresses,users"},
     ["EXO_MODE", "SYNC_DATASETS"]),
    ({"EXO_MODE": "sometimes"}, ["EXO_MODE"]),
    ({"EXO_MODE": "augment", "EXO_BASE_URL": "http://127.0.0.1:9"}, ["GRAPH_TENANT_ID"]),
    ({"SYNC_DATASETS": "addresses,mail"}, ["SYNC_DATASETS"]),
    ({"SYNC_API_URL": "http://example.com/v1"}, ["SYNC_API_URL"]),
])
def test_settings_errors_name_the_setting_before_any_request(make, env, names):
    s = make(nasty())
    r = s.run(**env)
    assert r.code != 0
    line = r.stderr.strip().splitlines()
    assert len(line) == 1, r.stderr
    assert all(n in line[0] for n in names), line
    assert s.graph.request_log == [] and s.receiver.request_log == []
    assert CREDENTIAL.split(":")[1] not in r.stderr + r.stdout


# --- delta rounds, the first one included ------------------------------------------------------

def _user_ref(uid: str, removed: bool = False) -> dict:
    e = {"@odata.type": "#microsoft.graph.user", "id": uid}
    return {**e, "@removed": {"reason": "deleted"}} if removed else e


def test_first_round_with_repeats_removals_and_slices(make):
    # The first round is a delta round: a repeated object's later entry is its newer state, an
    # @removed entry removes the object, a group's slices add up and a member @removed in a
    # later slice removes that member; a later slice's properties are the newer ones.
    final = {
        "users": [{"id": u(1), "mail": "new1@contoso.com", "proxyAddresses": []},
                  {"id": u(3), "mail": "u3@contoso.com", "proxyAddresses": []}],
        "groups": [{"id": g(1), "displayName": "New", "mail": None, "proxyAddresses": [], "members": [u(1)]}],
        "contacts": [],
    }
    s = make(final)
    s.graph.script_round("users", [
        [{"id": u(1), "mail": "old1@contoso.com", "proxyAddresses": ["smtp:old1@contoso.com"]},
         {"id": u(2), "mail": "u2@contoso.com", "proxyAddresses": []}],
        [{"id": u(3), "mail": "u3@contoso.com", "proxyAddresses": []}],
        [{"id": u(1), "mail": "new1@contoso.com", "proxyAddresses": []},
         {"id": u(2), "@removed": {"reason": "changed"}}],
    ])
    s.graph.script_round("groups", [
        [{"id": g(1), "displayName": "Old", "mail": None, "proxyAddresses": [], "members@delta": [_user_ref(u(1)), _user_ref(u(2))]}],
        [{"id": g(1), "displayName": "New", "mail": None, "proxyAddresses": [], "members@delta": [_user_ref(u(2), removed=True)]}],
    ])
    r = s.run()
    assert r.code == 0, r.stderr
    same(s.receiver, reference(final, PROVISIONED))


def test_partial_objects_in_a_later_round_keep_what_they_do_not_carry(make):
    # A later round carries only changed properties: an absent property keeps its value, an
    # explicit null clears it (so the user falls back to its SMTP: value).
    d = {"users": [{"id": u(1), "displayName": "A", "mail": "a@contoso.com", "proxyAddresses": ["SMTP:a@contoso.com", "smtp:a2@contoso.com"]},
                   {"id": u(2), "displayName": "B", "mail": "b@contoso.com", "proxyAddresses": ["SMTP:b-primary@contoso.com"]}],
         "groups": [{"id": g(1), "displayName": "G", "mail": "gm@contoso.com", "proxyAddresses": [], "members": [u(1)]}],
         "contacts": []}
    s = make(d)
    assert s.run().code == 0
    s.graph.upsert_user({"id": u(1), "displayName": "A2"})
    s.graph.upsert_user({"id": u(2), "mail": None})
    s.graph.upsert_group({"id": g(1), "displayName": ""})
    s.graph.script_round("users", [[{"id": u(1), "displayName": "A2"}, {"id": u(2), "mail": None}]])
    s.graph.script_round("groups", [[{"id": g(1), "displayName": ""}]])
    r = s.run()
    assert r.code == 0, r.stderr
    d2 = {**d, "users": [d["users"][0], {**d["users"][1], "mail": None}],
          "groups": [{**d["groups"][0], "displayName": ""}]}
    same(s.receiver, reference(d2, PROVISIONED))


def test_scope_follows_nesting_changes_in_delta_rounds(make):
    # Scope covers groups nested at any depth and their members: nesting a group (with its own
    # nested group) into the scope group brings all their members in; removing it takes them out.
    d = {"users": [{"id": u(n), "mail": f"u{n}@contoso.com", "proxyAddresses": []} for n in (1, 2, 3)],
         "groups": [{"id": g(1), "displayName": "Scope", "mail": None, "proxyAddresses": [], "members": [u(1)]},
                    {"id": g(2), "displayName": "Mid", "mail": None, "proxyAddresses": [], "members": [g(3), u(2)]},
                    {"id": g(3), "displayName": "Deep", "mail": "deep@contoso.com", "proxyAddresses": [], "members": [u(3)]}],
         "contacts": []}
    s = make(d, SYNC_SCOPE_GROUPS=g(1))
    assert s.run().code == 0
    same(s.receiver, reference(d, PROVISIONED, scope={g(1)}))
    s.graph.add_member(g(1), g(2))
    r = s.run()
    assert r.code == 0, r.stderr
    d["groups"][0]["members"] = [u(1), g(2)]
    same(s.receiver, reference(d, PROVISIONED, scope={g(1)}))
    s.graph.remove_member(g(1), g(2))
    r = s.run()
    assert r.code == 0, r.stderr
    d["groups"][0]["members"] = [u(1)]
    same(s.receiver, reference(d, PROVISIONED, scope={g(1)}))


def test_user_type_change_in_a_delta_round(make):
    # A user whose userType becomes an excluded type contributes nothing any more; back, it returns.
    d = {"users": [{"id": u(1), "mail": "a@contoso.com", "proxyAddresses": [], "userType": "Member"}],
         "groups": [{"id": g(1), "displayName": "G", "mail": None, "proxyAddresses": [], "members": [u(1)]}], "contacts": []}
    s = make(d, EXCLUDE_USER_TYPES="Guest")
    assert s.run().code == 0
    s.graph.upsert_user({"id": u(1), "userType": "guest"})
    assert s.run().code == 0
    same(s.receiver, reference({**d, "users": [{**d["users"][0], "userType": "guest"}]}, PROVISIONED, exclude_types={"guest"}))
    s.graph.upsert_user({"id": u(1), "userType": "Member"})
    assert s.run().code == 0
    same(s.receiver, reference(d, PROVISIONED, exclude_types={"guest"}))


# --- Exchange Online ----------------------------------------------------------------------------

TENANT = "11111111-2222-3333-4444-555555555555"


def exo_recipients() -> list[dict]:
    odd = recipient("e1", "DynamicDistributionGroup", " DDG@Contoso.COM ", emails=[
        "SMTP:ddg@contoso.com", "smtp:ddg-alias@fabrikam.com", "X500:/o=x/cn=ddg", "SPO:SPO_1@SPO_2", "sip:ddg@contoso.com",
        "Smtp:Mixed@contoso.com", "smtp:bad..x@contoso.com", "smtp:x@unprovisioned.com", "smtp:pf@BÜCHER.example"])
    empty = recipient("e2", "PublicFolder", "", emails=[])
    return [odd, empty]


EXO_KEPT = {"ddg@contoso.com", "ddg-alias@fabrikam.com", "mixed@contoso.com", "pf@xn--bcher-kva.example"}


def test_exo_augment_adds_addresses_only(make):
    # augment: Exchange recipients' PrimarySmtpAddress and smtp: values, normalized and kept by
    # the Graph rules, join addresses; no groups or users records; exoRequests is counted.
    with ExchangeEmulator(exo_recipients(), tenant=TENANT) as exo:
        s = make(nasty(), EXO_MODE="augment", GRAPH_TENANT_ID=TENANT, EXO_BASE_URL=exo.base_url)
        r = s.run()
        assert r.code == 0, r.stderr
        ref = reference(nasty(), PROVISIONED)
        ref["addresses"] |= EXO_KEPT
        same(s.receiver, ref)
        assert isinstance(r.summary["exoRequests"], int) and r.summary["exoRequests"] == len(exo.posts()) >= 1
        # The request as the contract spells it: path, Prefer, X-AnchorMailbox and the cmdlet body.
        import json
        first = exo.posts()[0]
        headers = {k.lower(): v for k, v in first.headers.items()}
        assert first.path.split("?")[0] == f"/adminapi/beta/{TENANT}/InvokeCommand"
        assert headers["prefer"] == "odata.maxpagesize=1000"
        assert headers["x-anchormailbox"] == f"APP:SystemMailbox{{bb558c35-97f1-4cb9-8ff7-d53741dc928c}}@{TENANT}"
        assert json.loads(first.body) == {"CmdletInput": {"CmdletName": "Get-Recipient", "Parameters": {
            "ResultSize": "Unlimited", "RecipientTypeDetails": ["DynamicDistributionGroup", "PublicFolder"]}}}


def test_exo_only_with_addresses_makes_no_graph_request(make):
    # only: Exchange alone, SYNC_DATASETS=addresses.
    with ExchangeEmulator(exo_recipients(), tenant=TENANT) as exo:
        s = make(nasty(), EXO_MODE="only", GRAPH_TENANT_ID=TENANT, EXO_BASE_URL=exo.base_url, SYNC_DATASETS="addresses")
        r = s.run()
        assert r.code == 0, r.stderr
        assert view(s.receiver)["addresses"] == EXO_KEPT
        assert s.graph.request_log == []
        assert r.summary["graphRequests"] == 0 and r.summary["exoRequests"] >= 1


# --- more delta-round shapes ----------------------------------------------------------------------

def test_first_round_repeat_is_partial_and_members_flip(make):
    # A repeated entry's carried properties replace the earlier values; the ones it does not
    # carry keep theirs. A member added, removed and added again across slices is a member; a
    # group @removed after its slices is gone, and so are the references to it.
    final = {
        "users": [{"id": u(1), "mail": "c@contoso.com", "proxyAddresses": ["SMTP:a@contoso.com", "smtp:b@contoso.com"]},
                  {"id": u(2), "mail": "u2@contoso.com", "proxyAddresses": []}],
        "groups": [{"id": g(1), "displayName": "G1", "mail": None, "proxyAddresses": [], "members": [u(1), u(2)]}],
        "contacts": [],
    }
    s = make(final)
    s.graph.script_round("users", [
        [{"id": u(1), "mail": "a@contoso.com", "proxyAddresses": ["SMTP:a@contoso.com", "smtp:b@contoso.com"]},
         {"id": u(2), "@removed": {"reason": "changed"}}],
        [{"id": u(1), "mail": "c@contoso.com"}, {"id": u(2), "mail": "u2@contoso.com", "proxyAddresses": []}],
    ])
    s.graph.script_round("groups", [
        [{"id": g(2), "displayName": "Gone", "mail": "gone@contoso.com", "proxyAddresses": [], "members@delta": [_user_ref(u(1))]},
         {"id": g(1), "displayName": "G1", "mail": None, "proxyAddresses": [], "members@delta": [_user_ref(u(1)), _user_ref(u(2))]}],
        [{"id": g(1), "displayName": "G1", "mail": None, "proxyAddresses": [],
          "members@delta": [_user_ref(u(2), removed=True), {"@odata.type": "#microsoft.graph.group", "id": g(2)}]}],
        [{"id": g(1), "displayName": "G1", "mail": None, "proxyAddresses": [],
          "members@delta": [_user_ref(u(2)), {"@odata.type": "#microsoft.graph.group", "id": g(2), "@removed": {"reason": "deleted"}}]},
         {"id": g(2), "@removed": {"reason": "deleted"}}],
    ])
    r = s.run()
    assert r.code == 0, r.stderr
    same(s.receiver, reference(final, PROVISIONED))


def test_group_entry_without_members_keeps_its_members(make):
    # A later round's group entry that carries only changed properties (no members@delta)
    # changes no membership; an @removed entry for an object never seen is a no-op.
    # A user soft-deleted and restored within the round (its full entry after the @removed one)
    # is there at the end of the round.
    d = {"users": [{"id": u(1), "mail": "a@contoso.com", "proxyAddresses": []},
                   {"id": u(2), "mail": "b@contoso.com", "proxyAddresses": ["smtp:b2@contoso.com"]}],
         "groups": [{"id": g(1), "displayName": "G", "mail": None, "proxyAddresses": [], "members": [u(1)]},
                    {"id": g(2), "displayName": "P", "mail": None, "proxyAddresses": [], "members": [g(1)]}],
         "contacts": []}
    s = make(d)
    assert s.run().code == 0
    s.graph.upsert_group({"id": g(1), "displayName": "Renamed"})
    s.graph.script_round("groups", [[{"id": g(1), "displayName": "Renamed"}, {"id": g(9), "@removed": {"reason": "deleted"}}]])
    s.graph.script_round("users", [[{"id": u(9), "@removed": {"reason": "changed"}}, {"id": u(2), "@removed": {"reason": "changed"}}],
                                   [{"id": u(2), "mail": "b@contoso.com", "proxyAddresses": ["smtp:b2@contoso.com"]}]])
    r = s.run()
    assert r.code == 0, r.stderr
    d["groups"][0]["displayName"] = "Renamed"
    same(s.receiver, reference(d, PROVISIONED))


def test_duplicate_primary_moves_when_the_winner_changes_address(make):
    # The shared primary belongs to the smaller id; when that user takes another address (a
    # round that names only it), the other user, unchanged, gets its record; when the smaller id
    # takes the address back, it wins again and the other loses its record.
    d = {"users": [{"id": DUP_B, "mail": "dup@contoso.com", "proxyAddresses": []},
                   {"id": DUP_A, "mail": "dup@contoso.com", "proxyAddresses": []}], "groups": [], "contacts": []}
    s = make(d)
    assert s.run().code == 0
    s.graph.upsert_user({"id": DUP_B, "mail": "other@contoso.com"})
    assert s.run().code == 0
    d["users"][0]["mail"] = "other@contoso.com"
    same(s.receiver, reference(d, PROVISIONED))
    s.graph.upsert_user({"id": DUP_B, "mail": "dup@contoso.com"})
    r = s.run()
    assert r.code == 0, r.stderr
    d["users"][0]["mail"] = "dup@contoso.com"
    same(s.receiver, reference(d, PROVISIONED))


def test_soft_deleted_user_restored_in_a_later_round(make):
    # @removed (changed) removes the object; restored later, it comes back with its addresses.
    d = {"users": [{"id": u(1), "mail": "a@contoso.com", "proxyAddresses": ["smtp:a2@contoso.com"]}],
         "groups": [{"id": g(1), "displayName": "G", "mail": None, "proxyAddresses": [], "members": [u(1)]}], "contacts": []}
    s = make(d)
    assert s.run().code == 0
    s.graph.delete_user(u(1))
    assert s.run().code == 0
    same(s.receiver, reference({**d, "users": [], "groups": [{**d["groups"][0], "members": []}]}, PROVISIONED))
    s.graph.upsert_user(d["users"][0])
    s.graph.add_member(g(1), u(1))
    r = s.run()
    assert r.code == 0, r.stderr
    same(s.receiver, reference(d, PROVISIONED))


def test_setting_changes_between_runs_follow_the_new_rules(make):
    # A change of SYNC_SCOPE_GROUPS / EXCLUDE_USER_TYPES / EXCLUDE_ADDRESS_PATTERNS /
    # ADDRESS_DOMAINS changes what the service should hold; the next update gets there.
    s = make(nasty())
    steps = [
        ({"SYNC_SCOPE_GROUPS": g(1)}, dict(scope={g(1)})),
        ({"SYNC_SCOPE_GROUPS": g(1), "EXCLUDE_ADDRESS_PATTERNS": r".*@fabrikam\.com"}, dict(scope={g(1)}, patterns=[r".*@fabrikam\.com"])),
        ({"EXCLUDE_USER_TYPES": "guest", "ADDRESS_DOMAINS": "contoso.com"}, dict(exclude_types={"guest"})),
    ]
    for env, rules in steps:
        r = s.run(**env)
        assert r.code == 0, r.stderr
        prov = {"contoso.com"} if "ADDRESS_DOMAINS" in env else PROVISIONED
        same(s.receiver, reference(nasty(), prov, **rules))


def test_rule_exclusions_name_their_setting(make):
    # test-update reports each object, address or user a setting leaves out, with a reason
    # that names the setting.
    s = make(nasty(), SYNC_SCOPE_GROUPS=g(5), EXCLUDE_USER_TYPES="Guest", EXCLUDE_ADDRESS_PATTERNS=r"u15@.*")
    r = s.run("test-update")
    assert r.code == 0, r.stderr
    text = r.stdout
    for setting, value in (("SYNC_SCOPE_GROUPS", u(20)), ("EXCLUDE_USER_TYPES", u(14)), ("EXCLUDE_ADDRESS_PATTERNS", "u15@contoso.com")):
        hits = [line for line in text.splitlines() if value in line and setting in line]
        assert hits, (setting, value)


@pytest.mark.parametrize("kill_after_posts", [1, 2])
def test_a_run_killed_mid_send_is_repaired_by_the_next(make, kill_after_posts):
    # Killed at any instant, with the directory changed afterwards (including undoing a change
    # the killed run had sent), the next update leaves the service equal to the directory.
    import signal
    import subprocess
    import sys
    import time

    from tests.stack import ROOT

    d = nasty()
    s = make(d)
    assert s.run().code == 0
    for n in (12, 13):
        s.graph.upsert_user({"id": u(n), "mail": f"moved{n}@contoso.com"})
    s.graph.delete_user(u(20))
    before = len(s.receiver.request_log)
    proc = subprocess.Popen([sys.executable, "-m", "shared", "update", "--json"], cwd=ROOT, env=s.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if sum(x.method == "POST" for x in s.receiver.request_log[before:]) >= kill_after_posts:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.001)
    proc.wait()
    # Churn: undo one change the killed run may have sent, make another.
    s.graph.upsert_user({"id": u(12), "mail": "u12@contoso.com"})
    s.graph.upsert_user({"id": u(20), "mail": "back20@contoso.com", "proxyAddresses": []})
    r = s.run()
    assert r.code == 0, r.stderr
    final = s.graph.snapshot()
    same(s.receiver, reference(final, PROVISIONED))
    assert s.receiver.keys_reused_with_different_body() == []


# --- scope edge cases ----------------------------------------------------------------------------

def test_scope_group_deleted_later_fails_the_run_and_sends_nothing(make):
    # A SYNC_SCOPE_GROUPS id that names no group of the directory fails the run before anything
    # is sent, naming the setting and the id; a scope group deleted in a delta round is such an id
    # (and the service keeps what it held: no deletions from a scope that vanished).
    d = nasty()
    s = make(d, SYNC_SCOPE_GROUPS=g(2))
    assert s.run().code == 0
    held = view(s.receiver)
    s.graph.delete_group(g(2))
    before = len(s.receiver.request_log)
    r = s.run()
    assert r.code != 0
    assert [x for x in s.receiver.request_log[before:] if x.method != "GET"] == []
    assert "SYNC_SCOPE_GROUPS" in r.stderr.strip().splitlines()[-1] and g(2) in r.stderr.strip().splitlines()[-1]
    assert view(s.receiver) == held


def test_scope_with_contacts_devices_and_dangling_members(make):
    # Contacts that are members are in scope (their addresses count); devices, service
    # principals and ids of no object add nothing. A scope listed with spaces and repeats.
    s = make(nasty(), SYNC_SCOPE_GROUPS=f"{g(1)} , {g(1)},{g(4)}")
    r = s.run()
    assert r.code == 0, r.stderr
    same(s.receiver, reference(nasty(), PROVISIONED, scope={g(1), g(4)}))


def test_duplicate_primary_when_the_smaller_id_is_left_out_by_a_setting(make):
    # A user left out by EXCLUDE_USER_TYPES (or out of scope) contributes no record, so it does
    # not take a shared primary from the user that is in.
    d = {"users": [{"id": DUP_B, "mail": "dup@contoso.com", "proxyAddresses": [], "userType": "Guest"},
                   {"id": DUP_A, "mail": "dup@contoso.com", "proxyAddresses": []},
                   {"id": DUP_C, "mail": "dup@contoso.com", "proxyAddresses": []}],
         "groups": [{"id": g(1), "displayName": "S", "mail": None, "proxyAddresses": [], "members": [DUP_B, DUP_A]}], "contacts": []}
    s = make(d, EXCLUDE_USER_TYPES="guest", SYNC_SCOPE_GROUPS=g(1))
    r = s.run()
    assert r.code == 0, r.stderr
    same(s.receiver, reference(d, PROVISIONED, scope={g(1)}, exclude_types={"guest"}))
    assert set(view(s.receiver)["users"]) == {DUP_A}


def test_exo_only_with_exclude_user_types_still_syncs_addresses(make):
    # EXO_MODE=only: the only settings error the contract names is SYNC_DATASETS other than
    # `addresses`. EXCLUDE_USER_TYPES is well formed (a user type list), so it is no settings error.
    with ExchangeEmulator(exo_recipients(), tenant=TENANT) as exo:
        s = make(nasty(), EXO_MODE="only", GRAPH_TENANT_ID=TENANT, EXO_BASE_URL=exo.base_url, SYNC_DATASETS="addresses",
                 EXCLUDE_USER_TYPES="Guest")
        r = s.run()
        assert r.code == 0, r.stderr
        assert view(s.receiver)["addresses"] == EXO_KEPT


# --- replace, refresh, rejections, test-update after churn ----------------------------------------

def test_replace_and_refresh_converge_on_a_service_holding_strays(make):
    # replace rebuilds each dataset to exactly what the directory implies; refresh rebuilds the
    # state from the service's copy, so the next update removes what the service holds in excess.
    s = make(nasty())
    stray = {"addresses": [{"address": "stray@contoso.com"}],
             "groups": [{"id": g(99), "name": "Stray", "parentIds": []}],
             "users": [{"id": u(99), "address": "stray@contoso.com", "groupIds": [g(99)]}]}
    for ds in ("groups", "users", "addresses"):
        s.receiver.load(ds, stray[ds])
    r = s.run("replace")
    assert r.code == 0, r.stderr
    same(s.receiver, reference(nasty(), PROVISIONED))
    for ds in ("groups", "users", "addresses"):
        s.receiver.load(ds, list(s.receiver.records(ds).values()) + stray[ds])
    r = s.run("refresh")
    assert r.code == 0, r.stderr
    r = s.run()
    assert r.code == 0, r.stderr
    same(s.receiver, reference(nasty(), PROVISIONED))
    assert r.summary["datasets"]["addresses"]["removed"] == 1 and r.summary["datasets"]["users"]["removed"] == 1
    assert r.summary["datasets"]["groups"]["removed"] == 1


def test_test_update_after_churn_counts_what_update_sends(make):
    # For test-update, added and removed count what update would send (test-update reads in
    # full, update reads a delta round: both must agree), and removed counts the keys deleted.
    d = nasty()
    s = make(d)
    assert s.run().code == 0
    s.graph.delete_user(DUP_B)                       # its primary passes to DUP_C (string order)
    s.graph.upsert_user({"id": u(18), "proxyAddresses": []})   # drops smtp:shared-alias (a contact keeps it)
    s.graph.remove_member(g(1), g(2))
    s.graph.upsert_contact({"id": c(2), "proxyAddresses": ["smtp:c2-new@contoso.com"]})
    s.graph.delete_group(g(5))
    s.graph.upsert_user({"id": u(30), "mail": "new30@contoso.com", "proxyAddresses": []})
    s.graph.upsert_group({"id": g(6), "displayName": "New", "mail": None, "proxyAddresses": [], "members": [u(30), u(7)]})
    s.graph.add_member(g(1), g(6))
    dry = s.run("test-update")
    before = len(s.receiver.request_log)
    r = s.run()
    assert dry.code == 0 and r.code == 0, r.stderr
    same(s.receiver, reference(s.graph.snapshot(), PROVISIONED))
    # Request order (docs/sync-api.md): group upserts, user upserts and deletes, address changes,
    # group deletes; nothing rejected, no Idempotency-Key reused for another body.
    steps = []
    for x in s.receiver.request_log[before:]:
        m = re.search(r"/datasets/(\w+)/changes$", x.path)
        if x.method == "POST" and m and isinstance(x.body, dict):
            ds = m.group(1)
            rank = {"groups": 0, "users": 1, "addresses": 2}[ds]
            if ds == "groups" and x.body.get("delete"):
                assert not x.body.get("upsert"), "group deletes travel after the addresses, on their own"
                rank = 3
            steps.append(rank)
    assert steps == sorted(steps) and 3 in steps, steps
    assert all(r.summary["datasets"][ds]["rejected"] == 0 for ds in ("addresses", "groups", "users"))
    assert s.receiver.keys_reused_with_different_body() == []
    for ds in ("addresses", "groups", "users"):
        for k in ("added", "removed"):
            assert dry.summary["datasets"][ds][k] == r.summary["datasets"][ds][k], (ds, k)
    assert r.summary["datasets"]["addresses"]["removed"] == 1  # c2@contoso.com
    assert r.summary["datasets"]["users"]["removed"] == 1      # DUP_B


def test_rejected_counts_records_the_service_refused(make, tmp_path):
    # rejected counts the records the service refused (here: another account's address).
    d = {"users": [{"id": u(1), "mail": "taken@contoso.com", "proxyAddresses": ["smtp:free@contoso.com"]}], "groups": [], "contacts": []}
    graph = GraphEmulator(d)
    rc = SyncReceiver(domains=DOMAINS, credential=CREDENTIAL, other_account_addresses={"taken@contoso.com"})
    try:
        env = base_env(graph.start(), rc.start(), f"file:{tmp_path}/st")
        r = run_cli("update", env, "--json")
        assert r.code == 0, r.stderr
        assert r.summary["datasets"]["addresses"]["rejected"] == 1
        assert {x["address"] for x in rc.records("addresses").values()} == {"free@contoso.com"}
    finally:
        graph.stop()
        rc.stop()


def test_later_round_slices_interleaved_with_member_flips(make):
    # In a later round too: a group's slices interleave with other groups, members removed in
    # one slice and added again in a later one are members, a later slice's displayName is the
    # newer one; a group named by nothing is named by its id, one by an unprovisioned mail by it.
    d = {"users": [{"id": u(n), "mail": f"u{n}@contoso.com", "proxyAddresses": []} for n in (1, 2, 3)],
         "groups": [{"id": g(1), "displayName": "", "mail": "Weird@NotProvisioned.com", "proxyAddresses": [], "members": [u(1), u(2)]},
                    {"id": g(2), "displayName": None, "mail": "", "proxyAddresses": [], "members": [g(1)]},
                    {"id": g(3), "displayName": "Three", "mail": None, "proxyAddresses": [], "members": []}],
         "contacts": []}
    s = make(d)
    assert s.run().code == 0
    same(s.receiver, reference(d, PROVISIONED))
    s.graph.remove_member(g(1), u(2))
    s.graph.add_member(g(1), u(3))
    s.graph.add_member(g(3), g(1))
    s.graph.upsert_group({"id": g(1), "displayName": "One"})
    s.graph.script_round("groups", [
        [{"id": g(1), "displayName": "Zero", "members@delta": [_user_ref(u(1), removed=True), _user_ref(u(2), removed=True)]},
         {"id": g(3), "displayName": "Three", "members@delta": [{"@odata.type": "#microsoft.graph.group", "id": g(1)}]}],
        [{"id": g(1), "displayName": "One", "members@delta": [_user_ref(u(3)), _user_ref(u(1))]}],
    ])
    r = s.run()
    assert r.code == 0, r.stderr
    d["groups"][0].update(displayName="One", members=[u(1), u(3)])
    d["groups"][2]["members"] = [g(1)]
    same(s.receiver, reference(d, PROVISIONED))


def test_exo_recipients_with_null_and_padded_values(make):
    # Exchange candidates are PrimarySmtpAddress and each smtp: value, normalized and kept by the
    # Graph rules; a null PrimarySmtpAddress or EmailAddresses contributes nothing and fails nothing.
    recs = [{**recipient("n1", "DynamicDistributionGroup", "x"), "PrimarySmtpAddress": None, "EmailAddresses": ["SMTP:n1@contoso.com"]},
            {**recipient("n2", "PublicFolder", "n2@contoso.com"), "EmailAddresses": None},
            {**recipient("n3", "PublicFolder", "N3@Contoso.com"), "EmailAddresses": ["smtp:n3-alias@contoso.com", "SMTP:n3@contoso.com"]},
            {**recipient("n4", "DynamicDistributionGroup", "ddg4@bücher.example"), "EmailAddresses": ["SMTP:DDG4@BÜCHER.example", "smtp:\tpad@contoso.com "]}]
    with ExchangeEmulator(recs, tenant=TENANT) as exo:
        s = make({"users": [], "groups": [], "contacts": []}, EXO_MODE="augment", GRAPH_TENANT_ID=TENANT, EXO_BASE_URL=exo.base_url)
        r = s.run()
        assert r.code == 0, r.stderr
        assert view(s.receiver)["addresses"] == {"n1@contoso.com", "n2@contoso.com", "n3@contoso.com", "n3-alias@contoso.com",
                                                 "ddg4@xn--bcher-kva.example", "pad@contoso.com"}


def test_exo_only_with_a_scope_names_the_id(make):
    # An id that names no group of the directory (with EXO_MODE=only no Entra group is read)
    # fails the run before anything is sent, with a message naming the setting and the id.
    s = make(nasty(), EXO_MODE="only", GRAPH_TENANT_ID=TENANT, EXO_BASE_URL="http://127.0.0.1:9", SYNC_DATASETS="addresses",
             SYNC_SCOPE_GROUPS=g(1))
    r = s.run()
    assert r.code != 0 and [x for x in s.receiver.request_log if x.method != "GET"] == []
    last = r.stderr.strip().splitlines()[-1]
    assert "SYNC_SCOPE_GROUPS" in last and g(1) in last, last


# --- generated candidates: the address rules as a class ---------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_LOCAL_CHARS = "abcXYZ09.!#$%&'*+-/=?^_`{|}~ \"(),:;<>@[]\\äß"
_DOMAIN_FORMS = ["contoso.com", "CONTOSO.COM", "Fabrikam.Com", "bücher.example", "BÜCHER.EXAMPLE", "xn--bcher-kva.example",
                 "contoso.com.", "sub.contoso.com", "contoso..com", "-contoso.com", "contoso.123", "elsewhere.org", ""]
_candidate = st.builds(lambda pad, local, domain, pad2: f"{pad}{local}@{domain}{pad2}",
                       st.sampled_from(["", " ", "\t"]),
                       st.one_of(st.from_regex(r"[A-Za-z0-9+_'{}~-]{1,12}(\.[a-z0-9#$%&=?^`|/!*]{1,6}){0,2}", fullmatch=True),
                                 st.integers(63, 66).map(lambda k: "q" * k), st.text(_LOCAL_CHARS, min_size=0, max_size=20)),
                       st.sampled_from(_DOMAIN_FORMS), st.sampled_from(["", " ", "\n"]))
_entry = st.tuples(st.sampled_from(["mail", "smtp:", "SMTP:", "Smtp:", "X500:", "sip:"]), _candidate)


@settings(max_examples=2, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.lists(_entry, min_size=1, max_size=4), min_size=20, max_size=30))
def test_generated_candidates_follow_the_address_rules(objects):
    # Every generated candidate (any prefix case, padding, dot-atom edge, IDN form, length,
    # unprovisioned or malformed domain) is kept exactly when the rules say so; users get the
    # primary the rules give (kept mail, else kept SMTP:, smaller id on a shared one).
    import tempfile

    users = []
    for n, entries in enumerate(objects):
        mail = next((v for p, v in entries if p == "mail"), None)
        users.append({"id": u(n), "mail": mail, "proxyAddresses": [p + v for p, v in entries if p != "mail"]})
    d = {"users": users, "groups": [], "contacts": []}
    s = Stack(d, Path(tempfile.mkdtemp()))
    try:
        r = s.run()
        assert r.code == 0, r.stderr
        same(s.receiver, reference(d, PROVISIONED))
    finally:
        s.close()


def test_a_nested_cycle_spanning_two_requests(make):
    # Over 1,000 groups go in two requests; a ring of nesting spans both, so a reference to a
    # group of the later request is sent once that group exists (docs/sync-api.md, request order).
    n = 1001
    d = {"users": [], "contacts": [],
         "groups": [{"id": g(i), "displayName": f"G{i}", "mail": None, "proxyAddresses": [], "members": [g((i + 1) % n)]} for i in range(n)]}
    s = make(d)
    s.graph.max_page_size, s.graph.max_members_per_page = 999, 500
    r = s.run()
    assert r.code == 0, r.stderr
    assert r.summary["datasets"]["groups"]["rejected"] == 0
    same(s.receiver, reference(d, PROVISIONED))
