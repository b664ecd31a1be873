"""The scope and exclusion rules (docs/sync-rules.md, "Scope and exclusions"), as a stage alone
(shared/model/rules.py), inside the projection, and inside the directory cache a delta round is merged
into. The property tests compare the product with a straightforward reading of the rules written
here, over generated small directories and settings; no product code computes the expectation."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.common.errors import SettingsError
from shared.config.settings import load_settings
from shared.model.directory import SCHEMA, Affected, Cache, project
from shared.model.projection import candidates
from shared.model.rules import NO_RULES, ScopeError, Shape, judge, parse_rules, rule_exclusions_summary, rule_of

PROV = frozenset({"contoso.com", "fabrikam.com"})
USER = "#microsoft.graph.user"
GROUP = "#microsoft.graph.group"
CONTACT = "#microsoft.graph.orgContact"


def shape(groups: dict[str, list[str]], users: dict[str, Any] | None = None, contacts: tuple[str, ...] = ()) -> Shape:
    users = users or {}
    kinds = {**{g: "g" for g in groups}, **{u: "u" for u in users}}
    return Shape(frozenset(groups), users, frozenset(contacts), {g: [(m, kinds.get(m, "o")) for m in ms] for g, ms in groups.items()})


# --- settings ----------------------------------------------------------------------------------------------
def test_unset_settings_are_no_rules():
    assert parse_rules(None, None, None) == NO_RULES and not NO_RULES.active and NO_RULES.fingerprint() is None


def test_settings_are_split_on_commas_and_stripped():
    r = parse_rules(" g1 , g2,,g1 ", "Guest, MEMBER ", r"noreply@.*, .*@Contoso\.com ")
    assert r.scope_groups == ("g1", "g2")
    assert r.exclude_user_types == frozenset({"guest", "member"})
    assert [p.pattern for p in r.exclude_address_patterns] == ["noreply@.*", r".*@Contoso\.com"]


@pytest.mark.parametrize("bad", ["[unclosed", "(a", "(?P<x>a)(?P<x>b)", "*x", "x)"])
def test_an_invalid_pattern_is_a_settings_error_that_quotes_it(bad):
    with pytest.raises(SettingsError) as exc:
        parse_rules(None, None, f"ok@.*,{bad}")
    assert exc.value.setting == "EXCLUDE_ADDRESS_PATTERNS" and repr(bad) in str(exc.value)


@pytest.mark.parametrize(("name", "args"), [
    ("SYNC_SCOPE_GROUPS", (" , ", None, None)),
    ("EXCLUDE_USER_TYPES", (None, ",", None)),
    ("EXCLUDE_ADDRESS_PATTERNS", (None, None, " ,, ")),
    ("SYNC_SCOPE_GROUPS", ("a group", None, None)),
])
def test_a_setting_that_names_nothing_usable_is_refused(name, args):
    with pytest.raises(SettingsError) as exc:
        parse_rules(*args)
    assert exc.value.setting == name


def test_load_settings_reads_the_three_rule_settings():
    env = {"GRAPH_AUTH": "none", "GRAPH_BASE_URL": "http://127.0.0.1:1/v1.0", "SYNC_API_URL": "http://127.0.0.1:2/v1",
           "SYNC_API_CREDENTIAL": "x", "SYNC_STATE": "file:/tmp/x"}
    assert load_settings(env).rules == NO_RULES
    s = load_settings({**env, "SYNC_SCOPE_GROUPS": "g1", "EXCLUDE_USER_TYPES": "guest", "EXCLUDE_ADDRESS_PATTERNS": "x@.*"})
    assert s.rules.scope_groups == ("g1",) and s.rules.exclude_user_types == {"guest"}
    with pytest.raises(SettingsError, match=r"EXCLUDE_ADDRESS_PATTERNS.*'\(x'"):
        load_settings({**env, "EXCLUDE_ADDRESS_PATTERNS": "(x"})


# --- the scope ----------------------------------------------------------------------------------------------
def test_scope_is_transitive_at_any_depth():
    groups = {f"g{i}": [f"g{i + 1}", f"u{i}"] for i in range(30)} | {"g30": ["u30"], "other": ["u99"]}
    users = {f"u{i}": None for i in range(31)} | {"u99": None}
    v = judge(shape(groups, users), parse_rules("g0", None, None))
    assert v.groups_in == frozenset(f"g{i}" for i in range(31))
    assert set(v.left_out) == {"other", "u99"}


def test_cycles_are_in_scope_once_and_end():
    groups = {"a": ["b", "ua"], "b": ["c"], "c": ["a", "uc"], "self": ["self", "us"]}
    users = {"ua": None, "uc": None, "us": None}
    v = judge(shape(groups, users), parse_rules("b", None, None))
    assert v.groups_in == {"a", "b", "c"} and set(v.left_out) == {"self", "us"}
    v = judge(shape(groups, users), parse_rules("self", None, None))
    assert v.groups_in == {"self"} and set(v.left_out) == {"a", "b", "c", "ua", "uc"}


def test_a_group_that_contains_the_scope_is_not_in_it():
    # "outer" has the scope group as a member; its own members are not in scope.
    groups = {"outer": ["scope", "u_outer"], "scope": ["u_in"], "side": ["u_outer"]}
    v = judge(shape(groups, {"u_outer": None, "u_in": None}), parse_rules("scope", None, None))
    assert set(v.left_out) == {"outer", "side", "u_outer"}


def test_contacts_are_in_scope_as_members():
    groups = {"scope": ["c1", "dev"], "other": ["c2"]}
    v = judge(shape(groups, {}, ("c1", "c2", "c3")), parse_rules("scope", None, None))
    assert set(v.left_out) == {"other", "c2", "c3"}


def test_a_scope_id_that_names_no_group_fails_naming_the_setting_and_the_id():
    groups = {"g1": ["u1"]}
    with pytest.raises(ScopeError) as exc:
        judge(shape(groups, {"u1": None}), parse_rules("g1,u1", None, None))  # a user is not a group
    assert exc.value.setting == "SYNC_SCOPE_GROUPS" and "'u1'" in str(exc.value) and exc.value.exit_code == 2
    with pytest.raises(ScopeError, match="'nope'"):
        judge(shape(groups), parse_rules("nope", None, None))


@given(st.lists(st.sampled_from(["g1", "G1", "g2", "u1", "nope", "x-1", "NOPE"]), min_size=1, max_size=6))
def test_every_scope_id_that_names_no_group_is_named_at_once(ids):
    """An operator who pasted several wrong ids learns all of them from one run (each run that
    fails here has done a full read), in the order the setting lists them."""
    groups = {"g1": ["u1"], "g2": []}
    rules = parse_rules(",".join(ids), None, None)
    wrong = [g for g in rules.scope_groups if g.lower() not in groups]
    if not wrong:
        judge(shape(groups, {"u1": None}), rules)
        return
    with pytest.raises(ScopeError) as exc:
        judge(shape(groups, {"u1": None}), rules)
    text = str(exc.value)
    assert exc.value.setting == "SYNC_SCOPE_GROUPS"
    positions = [text.index(repr(g)) for g in wrong]
    assert positions == sorted(positions)
    assert all(repr(g) not in text for g in rules.scope_groups if g not in wrong)


def test_a_scope_id_in_capitals_names_the_same_group():
    gid = "3f2c1d4e-aaaa-4bbb-8ccc-000000000001"
    v = judge(shape({gid: ["u1"], "x": ["u2"]}, {"u1": None, "u2": None}), parse_rules(gid.upper(), None, None))
    assert set(v.left_out) == {"x", "u2"}


# --- user types ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("user_type", "setting", "excluded"), [
    ("Guest", "guest", True), ("GUEST", "Guest", True), ("guest", "GUEST", True), ("Member", "Guest", False),
    (None, "Guest", False), ("", "Guest", False), ("Guest ", "Guest", False), (17, "Guest", False),
])
def test_user_types_compare_case_insensitively_and_missing_is_kept(user_type, setting, excluded):
    v = judge(shape({}, {"u": user_type}), parse_rules(None, setting, None))
    assert (not v.keeps("u")) is excluded
    if excluded:
        assert "EXCLUDE_USER_TYPES" in v.reason("u")


def test_a_missing_user_type_property_is_kept_through_the_projection():
    d = {"users": [{"id": "u1", "mail": "a@contoso.com"}, {"id": "u2", "mail": "b@contoso.com", "userType": None},
                   {"id": "u3", "mail": "c@contoso.com", "userType": "gUeSt"}]}
    p = project(d, PROV, parse_rules(None, "Guest", None))
    assert set(p.datasets["users"]) == {"u1", "u2"} and set(p.datasets["addresses"]) == {"a@contoso.com", "b@contoso.com"}
    assert [(e.dataset, e.object_id) for e in p.exclusions] == [("addresses", "u3"), ("users", "u3")]


# --- address patterns --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("pattern", "address", "matches"), [
    ("noreply@.*", "noreply@contoso.com", True),
    ("noreply@.*", "x.noreply@contoso.com", False),  # whole match: no search inside
    ("noreply", "noreply@contoso.com", False),
    ("^noreply@contoso\\.com$", "noreply@contoso.com", True),  # anchors are harmless
    ("no.reply@contoso.com", "noxreply@contoso.com", True),  # an unescaped dot is any character
    ("no\\.reply@contoso\\.com", "noxreply@contoso.com", False),
    ("NoReply@CONTOSO\\.com", "noreply@contoso.com", True),  # case-insensitive
    (".*@bücher\\.example", "a@xn--bcher-kva.example", False),  # the address is normalized to A-labels
    (".*@xn--bcher-kva\\.example", "a@xn--bcher-kva.example", True),
    ("a|b@contoso\\.com", "a", True), ("a|b@contoso\\.com", "a@contoso.com", False),  # alternation is whole too
])
def test_patterns_match_the_whole_normalized_address_case_insensitively(pattern, address, matches):
    r = parse_rules(None, None, pattern)
    assert (r.address_reason(address) is not None) is matches


def test_a_user_whose_mail_matches_falls_back_to_its_smtp_value():
    r = parse_rules(None, None, r"^NoReply@.*")
    obj = {"mail": " NOREPLY@Contoso.com ", "proxyAddresses": ["smtp:noreply@contoso.com", "SMTP:Desk@Fabrikam.com", "smtp:x@contoso.com"]}
    c = candidates("u1", "user", obj, PROV, r)
    assert c.kept == ["desk@fabrikam.com", "x@contoso.com"] and c.primary == "desk@fabrikam.com"
    assert [(e.value, e.reason) for e in c.exclusions] == [("noreply@contoso.com", "matches EXCLUDE_ADDRESS_PATTERNS pattern '^NoReply@.*'")]
    # ...and when the SMTP: value matches too, the user has no primary address and no record.
    p = project({"users": [{"id": "u1", **obj, "proxyAddresses": ["SMTP:noreply@contoso.com"]}]}, PROV, r)
    assert p.datasets["users"] == {} and p.datasets["addresses"] == {}


# --- the projection with a scope ----------------------------------------------------------------------------
def test_parent_and_group_ids_keep_only_groups_in_scope():
    d = {
        "users": [{"id": "u1", "mail": "u1@contoso.com"}, {"id": "u2", "mail": "u2@contoso.com"}],
        "groups": [
            {"id": "top", "displayName": "Top", "members": ["scope", "u1"]},
            {"id": "scope", "displayName": "Scope", "members": ["sub", "u1"]},
            {"id": "sub", "displayName": "Sub", "mail": "sub@contoso.com", "members": ["u2", "scope"]},
        ],
        "contacts": [{"id": "c1", "mail": "c1@fabrikam.com"}],
    }
    p = project(d, PROV, parse_rules("scope", None, None))
    assert p.datasets["groups"] == {"scope": ("Scope", ("sub",)), "sub": ("Sub", ("scope",))}
    assert p.datasets["users"] == {"u1": ("u1@contoso.com", ("scope",)), "u2": ("u2@contoso.com", ("sub",))}
    assert set(p.datasets["addresses"]) == {"u1@contoso.com", "u2@contoso.com", "sub@contoso.com"}
    left = {(e.dataset, e.object_id, e.value) for e in p.exclusions}
    assert left == {("groups", "top", "Top"), ("addresses", "c1", "c1@fabrikam.com")}
    assert all("SYNC_SCOPE_GROUPS" in e.reason for e in p.exclusions)
    assert (p.excluded("addresses"), p.excluded("groups"), p.excluded("users")) == (1, 1, 0)


def test_an_out_of_scope_user_does_not_take_a_shared_primary_from_an_in_scope_one():
    d = {"users": [{"id": "a", "mail": "same@contoso.com"}, {"id": "b", "mail": "same@contoso.com"}],
         "groups": [{"id": "s", "displayName": "S", "members": ["b"]}]}
    p = project(d, PROV, parse_rules("s", None, None))
    assert p.datasets["users"] == {"b": ("same@contoso.com", ("s",))}


def test_the_summary_names_each_rule_and_counts_per_dataset():
    d = {"users": [{"id": "u1", "mail": "noreply@contoso.com", "userType": "Guest"}, {"id": "u2", "mail": "n@contoso.com"}],
         "groups": [{"id": "s", "displayName": "S", "members": ["u1", "u2"]}, {"id": "o", "displayName": "O"}]}
    p = project(d, PROV, parse_rules("s", "guest", "noreply@.*"))
    out = rule_exclusions_summary(p.exclusions, listed=2)
    assert out["counts"] == {"EXCLUDE_ADDRESS_PATTERNS": {"addresses": 1}, "EXCLUDE_USER_TYPES": {"users": 1},
                             "SYNC_SCOPE_GROUPS": {"groups": 1}}
    assert len(out["items"]) == 2 and out["itemsTruncated"] == 1


# --- an independent reading of the rules, and generated directories ---------------------------------------
LOCALS = ["a", "b", "noreply", "bxc", "b.c", "NoReply", "x"]
DOMAINS = ["contoso.com", "Fabrikam.com", "other.org"]
PATTERNS = [r"noreply@.*", r"^b.c@contoso\.com$", r".*@FABRIKAM\.COM", r"a", r"x@.*|y"]
TYPES = [None, "Guest", "guest", "GUEST", "Member", "member", "absent"]
UIDS, GIDS, CIDS = [f"u{i}" for i in range(5)], [f"g{i}" for i in range(5)], [f"c{i}" for i in range(3)]

address = st.builds(lambda lp, d: f"{lp}@{d}", st.sampled_from(LOCALS), st.sampled_from(DOMAINS))
proxy = st.builds(lambda pre, a: pre + a, st.sampled_from(["SMTP:", "smtp:", "X500:"]), address)


@st.composite
def directories(draw) -> dict[str, Any]:
    def props() -> dict[str, Any]:
        return {"mail": draw(st.one_of(st.none(), address)), "proxyAddresses": draw(st.lists(proxy, max_size=3))}

    users = []
    for uid in draw(st.lists(st.sampled_from(UIDS), unique=True)):
        u = {"id": uid, **props()}
        t = draw(st.sampled_from(TYPES))
        if t != "absent":
            u["userType"] = t
        users.append(u)
    gids = draw(st.lists(st.sampled_from(GIDS), unique=True))
    pool = UIDS + GIDS + CIDS
    groups = [{"id": g, "displayName": draw(st.sampled_from(["", f"Group {g}", None])), **props(),
               "members": draw(st.lists(st.sampled_from(pool), unique=True, max_size=5))} for g in gids]
    contacts = [{"id": c, **props()} for c in draw(st.lists(st.sampled_from(CIDS), unique=True))]
    return {"users": users, "groups": groups, "contacts": contacts}


rule_settings = st.tuples(
    st.one_of(st.none(), st.lists(st.sampled_from(GIDS), min_size=1, max_size=2, unique=True).map(",".join)),
    st.one_of(st.none(), st.lists(st.sampled_from(["Guest", "MEMBER", "guest"]), min_size=1, max_size=2).map(",".join)),
    st.one_of(st.none(), st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=2, unique=True).map(",".join)),
)


def reference(d: dict[str, Any], scope: str | None, types: str | None, patterns: str | None) -> dict[str, Any]:
    """The rules read plainly, for directories whose addresses are all valid ASCII."""
    groups = {g["id"]: g for g in d["groups"]}
    users = {u["id"]: u for u in d["users"]}
    contacts = {c["id"]: c for c in d["contacts"]}
    if scope is not None:
        roots = scope.split(",")
        if any(r not in groups for r in roots):
            return {"error": next(r for r in roots if r not in groups)}
        in_groups = set(roots)
        while True:
            more = {m for g in in_groups for m in groups[g]["members"] if m in groups} - in_groups
            if not more:
                break
            in_groups |= more
        members = {m for g in in_groups for m in groups[g]["members"]}
        in_objects = in_groups | {o for o in (*users, *contacts) if o in members}
    else:
        in_groups, in_objects = set(groups), set(groups) | set(users) | set(contacts)
    bad_types = {t.lower() for t in types.split(",")} if types else set()
    kept_objects = {o for o in in_objects if not (o in users and isinstance(users[o].get("userType"), str) and users[o]["userType"].lower() in bad_types)}
    pats = patterns.split(",") if patterns else []

    def keep(a: str) -> bool:
        return a.split("@")[1] in PROV and not any(re.fullmatch(p, a, re.IGNORECASE) for p in pats)

    def cands(o: dict[str, Any]) -> list[tuple[str, str]]:
        out = [("mail", o["mail"].lower())] if o.get("mail") else []
        out += [(p[:5], p[5:].lower()) for p in o["proxyAddresses"] if p[:5].lower() == "smtp:"]
        return out

    addresses: set[str] = set()
    excluded = {"addresses": 0, "groups": 0, "users": 0}
    for oid, o in (*users.items(), *groups.items(), *contacts.items()):
        distinct = {a for _, a in cands(o)}
        kept = {a for a in distinct if keep(a)} if oid in kept_objects else set()
        addresses |= kept
        excluded["addresses"] += len(distinct) - len(kept)
    excluded["groups"] = len(set(groups) - kept_objects)
    group_records = {
        g: (groups[g]["displayName"] or groups[g]["mail"] or g, tuple(sorted(p for p in groups if p in kept_objects and g in groups[p]["members"])))
        for g in groups if g in kept_objects
    }
    user_records: dict[str, tuple] = {}
    owners: dict[str, str] = {}
    for uid in sorted(users):
        if uid not in kept_objects:
            excluded["users"] += 1
            continue
        c = cands(users[uid])
        primary = next((a for k, a in c if k == "mail" and keep(a)), None) or next((a for k, a in c if k == "SMTP:" and keep(a)), None)
        if primary is None or primary in owners:
            excluded["users"] += 1
            continue
        owners[primary] = uid
        user_records[uid] = (primary, tuple(sorted(g for g in groups if g in kept_objects and uid in groups[g]["members"])))
    return {"datasets": {"addresses": dict.fromkeys(sorted(addresses), ()), "groups": group_records, "users": user_records},
            "excluded": excluded}


def props_settings(n: int) -> settings:
    return settings(derandomize=True, database=None, deadline=None, max_examples=n,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _typed(d: dict[str, Any], mid: str) -> dict[str, Any]:
    kind = USER if mid.startswith("u") else GROUP if mid.startswith("g") else CONTACT
    return {"@odata.type": kind, "id": mid}


def fresh_cache(rules) -> Cache:
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    return Cache(conn, PROV, rules)


def cache_records(cache: Cache, d: dict[str, Any]) -> dict[str, dict[str, tuple]]:
    keys = {
        "addresses": {a for (a,) in cache.conn.execute("SELECT address FROM kept")},
        "groups": {g["id"] for g in d["groups"]},
        "users": {u["id"] for u in d["users"]},
    }
    return {ds: dict(sorted((k, v) for k, v in cache.desired(ds, sorted(ks)).items() if v is not None)) for ds, ks in keys.items()}


def as_round(d: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The directory as Graph's first delta round shows it (typed member entries)."""
    return {
        "users": d["users"],
        "groups": [{**{k: v for k, v in g.items() if k != "members"}, "members@delta": [_typed(d, m) for m in g["members"]]} for g in d["groups"]],
        "contacts": d["contacts"],
    }


@props_settings(300)
@given(directories(), rule_settings)
def test_the_projection_equals_the_plain_reading_of_the_rules(d, setting):
    want = reference(d, *setting)
    rules = parse_rules(*setting)
    if "error" in want:
        with pytest.raises(ScopeError, match=re.escape(repr(want["error"]))):
            project(d, PROV, rules)
        return
    p = project(d, PROV, rules)
    assert p.datasets == want["datasets"]
    assert {ds: p.excluded(ds) for ds in want["excluded"]} == want["excluded"]
    # A rule's exclusion names its setting, and only a setting that is set leaves anything out.
    named = {rule_of(e.reason) for e in p.exclusions} - {None}
    is_set = {n for n, v in zip(("SYNC_SCOPE_GROUPS", "EXCLUDE_USER_TYPES", "EXCLUDE_ADDRESS_PATTERNS"), setting, strict=True) if v}
    assert named <= is_set


@props_settings(150)
@given(directories(), rule_settings)
def test_the_directory_cache_equals_the_plain_reading_of_the_rules(d, setting):
    """The round applied entry by entry to a cache that is not known to be empty (the delta
    path; ``project`` above loads it in bulk), read both per key (``desired``) and whole
    (``records``)."""
    want = reference(d, *setting)
    rules = parse_rules(*setting)
    applied = fresh_cache(rules)
    r = as_round(d)
    for coll in ("users", "groups", "contacts"):
        applied.apply(coll, r[coll], Affected())
    if "error" in want:
        with pytest.raises(ScopeError, match=re.escape(repr(want["error"]))):
            applied.desired("users", [])
        return
    assert cache_records(applied, d) == want["datasets"]
    assert {ds: applied.records(ds) for ds in want["datasets"]} == want["datasets"]
    assert applied.excluded() == want["excluded"]
    # Every object a rule leaves out is listed (docs/sync-rules.md, "Scope and exclusions": "Each
    # object, address or user that a setting leaves out is reported"); a contact with no address
    # to keep is listed, not counted.
    assert set(applied.verdict().left_out) <= {e.object_id for e in applied.exclusions()}
    assert {ds: sum(1 for e in applied.exclusions() if e.dataset == ds and e.counted) for ds in want["excluded"]} == want["excluded"]


def _round_between(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The delta round that takes directory ``a`` to ``b``: only what changed."""
    out: dict[str, list[dict[str, Any]]] = {"users": [], "groups": [], "contacts": []}
    for coll in ("users", "contacts"):
        old = {o["id"]: o for o in a[coll]}
        new = {o["id"]: o for o in b[coll]}
        out[coll] += [{"id": i, "@removed": {"reason": "deleted"}} for i in old if i not in new]
        out[coll] += [o for i, o in new.items() if old.get(i) != o]
    old = {g["id"]: g for g in a["groups"]}
    for g in b["groups"]:
        was = old.get(g["id"])
        before = set(was["members"]) if was else set()
        ops = [_typed(b, m) for m in g["members"] if m not in before]
        ops += [{"id": m, "@removed": {"reason": "deleted"}} for m in sorted(before - set(g["members"]))]
        props = {k: v for k, v in g.items() if k != "members"}
        if was is None or ops or {k: v for k, v in was.items() if k != "members"} != props:
            out["groups"].append({**props, "members@delta": ops})
    out["groups"] += [{"id": i, "@removed": {"reason": "deleted"}} for i in old if i not in {g["id"] for g in b["groups"]}]
    return out


@st.composite
def churned(draw) -> tuple[dict[str, Any], dict[str, Any]]:
    """A directory and the same directory after a little churn: memberships moved (so users and
    whole nested subtrees move in and out of scope without being named by the round), a
    userType or an address changed, an object deleted or added."""
    a = draw(directories())
    b = {k: [dict(o) for o in v] for k, v in a.items()}
    pool = UIDS + GIDS + CIDS
    for g in b["groups"]:
        if draw(st.booleans()):
            g["members"] = draw(st.lists(st.sampled_from(pool), unique=True, max_size=5))
    for u in b["users"]:
        if draw(st.integers(0, 4)) == 0:
            u["userType"] = draw(st.sampled_from(TYPES[:-1]))
        if draw(st.integers(0, 4)) == 0:
            u["mail"] = draw(st.one_of(st.none(), address))
    for coll, ids in (("users", UIDS), ("groups", GIDS), ("contacts", CIDS)):
        if b[coll] and draw(st.integers(0, 3)) == 0:
            b[coll].pop(draw(st.integers(0, len(b[coll]) - 1)))
        missing = [i for i in ids if i not in {o["id"] for o in b[coll]}]
        if missing and draw(st.integers(0, 3)) == 0:
            new = {"id": missing[0], "mail": draw(address), "proxyAddresses": []}
            if coll == "groups":
                new |= {"displayName": "New", "members": draw(st.lists(st.sampled_from(pool), unique=True, max_size=5))}
            b[coll].append(new)
    return a, b


@props_settings(200)
@given(churned(), rule_settings)
def test_a_delta_round_re_projects_everything_the_rules_move(ab, setting):
    a, b = ab
    """Only the keys a round names, plus those whose scope it changed, are projected again; the
    records after the round must equal the plain reading of the new directory."""
    rules = parse_rules(*setting)
    want_a, want_b = reference(a, *setting), reference(b, *setting)
    if "error" in want_a or "error" in want_b:
        return
    cache = fresh_cache(rules)
    first = as_round(a)
    for coll in ("users", "groups", "contacts"):
        cache.apply(coll, first[coll], Affected())
    held = {ds: dict(recs) for ds, recs in want_a["datasets"].items()}
    before = cache.verdict()
    affected = Affected()
    r = _round_between(a, b)
    for coll in ("users", "groups", "contacts"):
        cache.apply(coll, r[coll], affected)
    cache.rescope(before, affected)
    affected.users |= cache.claimants(affected.primaries)
    for ds in held:
        for k, v in cache.desired(ds, sorted(affected.keys(ds))).items():
            if v is None:
                held[ds].pop(k, None)
            else:
                held[ds][k] = v
    assert {ds: dict(sorted(recs.items())) for ds, recs in held.items()} == want_b["datasets"]
    assert cache.excluded() == want_b["excluded"]


def test_rule_exclusions_of_the_cache_match_the_projection():
    d = {"users": [{"id": "u1", "mail": "noreply@contoso.com", "proxyAddresses": ["SMTP:desk@contoso.com"]},
                   {"id": "u2", "mail": "g@contoso.com", "userType": "Guest"}, {"id": "u3", "mail": "out@contoso.com"}],
         "groups": [{"id": "s", "displayName": "S", "members": ["u1", "u2", "c1"]}, {"id": "o", "displayName": "O", "members": ["u3"]}],
         "contacts": [{"id": "c1", "mail": "c1@fabrikam.com"}]}
    rules = parse_rules("s", "guest", "noreply@.*")
    cache = fresh_cache(rules)
    r = as_round(d)
    for coll in ("users", "groups", "contacts"):
        cache.apply(coll, r[coll], Affected())
    p = project(d, PROV, rules)
    key = lambda e: (e.dataset, e.object_id, e.value or "", e.reason)  # noqa: E731
    assert sorted(map(key, cache.rule_exclusions())) == sorted(map(key, p.exclusions))
