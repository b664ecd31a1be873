"""Properties of the projection (docs/sync-rules.md) on arbitrary directory data.

Every record the projection produces is checked with the receiver's validator
(devstack/receiver_records.py, devstack/receiver_addresses.py), which is written from the
sync API contract alone and shares no code with the product. The expected membership relation
and the owner of a shared primary address are computed here, from the generated data, without
the product's code. Hypothesis runs derandomized, without an example database, with bounded
example counts: the same examples on every run, in a few seconds.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.receiver_addresses import address_problem
from devstack.receiver_addresses import normalize_domain as receiver_domain
from devstack.receiver_records import RecordValidator
from shared.model.addresses import InvalidAddress, normalize_address, normalize_address_fully
from shared.model.directory import project, project_entries
from shared.model.records import to_api_record

PROVISIONED = frozenset(receiver_domain(d) for d in ("contoso.com", "fabrikam.com", "bücher.example"))
VALIDATOR = RecordValidator(PROVISIONED, ())
USER = "#microsoft.graph.user"
GROUP = "#microsoft.graph.group"
OTHER_TYPES = ("#microsoft.graph.orgContact", "#microsoft.graph.device", "#microsoft.graph.servicePrincipal")


def props(max_examples: int) -> settings:
    return settings(
        derandomize=True,
        database=None,
        deadline=None,
        max_examples=max_examples,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


# --- values ----------------------------------------------------------------------------------------
ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
# Full Unicode: control characters, lone surrogates, unassigned and private-use code points.
any_text = st.text(st.characters(exclude_categories=()), max_size=30)
whitespace = st.sampled_from(["", "", " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\x0b", "\x1c"])
atom = st.text(st.sampled_from(ATEXT), min_size=1, max_size=10)
local_part = st.one_of(
    st.lists(atom, min_size=1, max_size=4).map(".".join),
    st.sampled_from(["", ".a", "a.", "a..b", '"quoted"', "ünï", "a b", "a@b", "\ud800", "K\u212aelvin", "İ", "l" * 64, "l" * 65]),
    any_text,
)
domain = st.one_of(
    st.sampled_from([
        "contoso.com", "CONTOSO.COM", "Contoso.Com", "fabrikam.com", "FABRIKAM.com", "bücher.example", "BÜCHER.EXAMPLE",
        "xn--bcher-kva.example", "XN--BCHER-KVA.example", "bücher\u3002example", "ｃｏｎｔｏｓｏ.com", "con\u00adtoso.com",
        "contoso.com.", "sub.contoso.com", "contoso.onmicrosoft.com", "elsewhere.org", "-contoso.com", "contoso-.com",
        "contoso..com", ".contoso.com", "xn--zz.example", "xn--.example", "contoso.123", "c_o.com", "contoso", "",
        " contoso.com", "contoso .com", "\u3000contoso.com", "\x1ccontoso.com", ("a" * 64) + ".com", ("a." * 127) + "com",
        "\ud800.com", "bücher.example\u200d", "\u0645\u062b\u0627\u0644.example",
    ]),
    st.lists(st.text(st.sampled_from("abcxyz019-"), min_size=0, max_size=8), min_size=1, max_size=4).map(".".join),
    any_text,
)
address_like = st.builds(lambda w1, loc, d, w2: f"{w1}{loc}@{d}{w2}", whitespace, local_part, domain, whitespace)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A plausible address with one character inserted, replaced or removed somewhere."""
    value = draw(address_like)
    i = draw(st.integers(0, len(value)))
    char = draw(st.characters(exclude_categories=()))
    how = draw(st.sampled_from(["insert", "replace", "delete"]))
    if how == "insert":
        return value[:i] + char + value[i:]
    if how == "replace":
        return value[:i] + char + value[i + 1 :]
    return value[:i] + value[i + 1 :]


very_long = st.sampled_from([
    ("a" * 64) + "@" + ("b" * 63) + "." + ("c" * 63) + "." + ("d" * 63) + ".com",  # 64 + 1 + 196: too long in all
    ("a" * 60) + "@contoso.com",
    "x" * 100_000,
    ("y" * 50_000) + "@contoso.com",
    "@" * 1000,
])
candidate = st.one_of(address_like, address_like, mutated(), any_text, very_long,
                      st.sampled_from(["", " ", "@", "@@", "a@", "@contoso.com", "smtp:", "SMTP:", "SMTP:a@contoso.com"]))
prefix = st.sampled_from(["smtp:", "SMTP:", "sMtP:", "Smtp:", "X500:", "SIP:", "EUM:", "SPO:", "x400:", "", "smtp", "SMTP :", " smtp:", "smtp:smtp:"])
junk = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.binary(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=2)),
    max_leaves=6,
)
proxy = st.one_of(st.builds(str.__add__, prefix, candidate), any_text, junk)
mail = st.one_of(candidate, candidate, junk)
proxies = st.one_of(st.lists(proxy, max_size=6), junk, any_text)
display_name = st.one_of(st.none(), st.just(""), st.just("   "), any_text, st.just("n" * 257), st.just("n" * 256), junk)


@st.composite
def directories(draw: st.DrawFn) -> dict[str, list[dict[str, Any]]]:
    """Users, groups and contacts with arbitrary mail/proxyAddresses, some of them absent."""

    def obj(oid: str, *, group: bool = False) -> dict[str, Any]:
        o: dict[str, Any] = {"id": oid}
        if draw(st.integers(0, 9)):
            o["mail"] = draw(mail)
        if draw(st.integers(0, 9)):
            o["proxyAddresses"] = draw(proxies)
        if group:
            o["displayName"] = draw(display_name)
            o["members"] = []
        return o

    users = [obj(f"u{i}") for i in range(draw(st.integers(0, 5)))]
    groups = [obj(f"g{i}", group=True) for i in range(draw(st.integers(0, 3)))]
    contacts = [obj(f"c{i}") for i in range(draw(st.integers(0, 3)))]
    for g in groups:
        g["members"] = draw(st.lists(st.sampled_from([o["id"] for o in users + groups + contacts] or ["x"]), max_size=4))
    return {"users": users, "groups": groups, "contacts": contacts}


def api_records(p: Any) -> dict[str, list[dict[str, Any]]]:
    return {d: [to_api_record(d, k, v) for k, v in recs.items()] for d, recs in p.datasets.items()}


def assert_valid_for_the_service(p: Any) -> None:
    """Every record passes the receiver's own checks; references name groups of the projection."""
    for address in p.datasets["addresses"]:
        assert address_problem(address) is None, address
        assert address == address.lower() and address.rpartition("@")[2] in PROVISIONED, address
    for dataset, records in api_records(p).items():
        for record in records:
            if dataset == "groups" and len(record["name"]) > 256:
                # The rules make displayName the name as it is: an over-long one is sent and the
                # service rejects it (reported), rather than silently replaced by mail or id.
                record = {**record, "name": record["name"][:256]}
            checked = VALIDATOR.check(dataset, record)
            assert checked.rejected is None, (dataset, record, checked.rejected)
    groups = set(p.datasets["groups"])
    for gid, (_, parents) in p.datasets["groups"].items():
        assert set(parents) <= groups, gid
    for uid, (address, group_ids) in p.datasets["users"].items():
        assert address in p.datasets["addresses"], uid
        assert set(group_ids) <= groups, uid
    assert len({a for a, _ in p.datasets["users"].values()}) == len(p.datasets["users"])
    # The whole report (records, exclusions) can be printed as UTF-8 JSON, as --json does.
    report = {"records": api_records(p), "exclusions": [e.as_dict() for e in p.exclusions]}
    json.dumps(report, ensure_ascii=False).encode("utf-8")


# --- the properties ----------------------------------------------------------------------------------
@props(400)
@given(directories())
def test_arbitrary_values_never_crash_and_only_valid_records_come_out(directory: dict[str, list[dict[str, Any]]]) -> None:
    p = project(directory, PROVISIONED)
    assert_valid_for_the_service(p)
    ids = {o["id"] for coll in directory.values() for o in coll}
    assert {e.object_id for e in p.exclusions} <= ids
    assert set(p.datasets["groups"]) == {g["id"] for g in directory["groups"]}
    assert set(p.datasets["users"]) <= {u["id"] for u in directory["users"]}


@props(1000)
@given(st.one_of(candidate, st.builds(str.__add__, prefix, candidate)))
def test_normalize_address_is_idempotent_and_what_it_accepts_is_valid(value: str) -> None:
    try:
        address = normalize_address(value)
    except InvalidAddress:
        return
    assert address_problem(address) is None, (value, address)
    assert address.isascii() and address == address.lower()
    assert normalize_address(address) == address



def _outcome(normalize: Any, value: str) -> tuple[str, str]:
    try:
        return "ok", normalize(value)
    except InvalidAddress as exc:
        return "invalid", str(exc)


@props(2000)
@given(st.one_of(candidate, st.builds(str.__add__, prefix, candidate), st.text(st.sampled_from("aZ0.-_@ \t+é\u212aİ"), max_size=80),
                 st.builds(lambda n, d: "a" * n + "@" + d, st.integers(60, 70), st.sampled_from(["contoso.com", "x" * 190 + ".com", "c.-d"]))))
def test_the_fast_path_for_plain_ascii_equals_the_full_normalization(value: str) -> None:
    """normalize_address's compiled fast path gives exactly what the full path gives (the same
    address, or the same refusal) on every value, plain ASCII or not."""
    assert _outcome(normalize_address, value) == _outcome(normalize_address_fully, value)


ascii_text = st.text(st.characters(max_codepoint=127), max_size=20)
ascii_candidate = st.one_of(
    address_like.filter(str.isascii),
    st.builds(lambda a, b, c: a + b + c, ascii_text, st.sampled_from(["@", "@contoso.com", ".", "@xn--", "-", " @ "]), ascii_text),
    mutated().filter(str.isascii),
)


@props(1000)
@given(ascii_candidate)
def test_an_ascii_value_is_kept_exactly_when_the_service_would_accept_it(value: str) -> None:
    """For ASCII, normalizing is stripping and lowercasing (no IDN step), so the receiver's
    validator is an exact oracle: accepted iff the stripped, lowercased value is valid."""
    expected = value.strip().lower()
    service_accepts = address_problem(expected) is None
    try:
        address = normalize_address(value)
    except InvalidAddress as exc:
        assert not service_accepts, f"{value!r} refused ({exc}) but the service accepts {expected!r}"
        return
    assert service_accepts, f"{value!r} accepted as {address!r}, but the service refuses {expected!r}: {address_problem(expected)}"
    assert address == expected


def _normalized_value(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return normalize_address(value)
    except InvalidAddress:
        return value


def _normalized_proxy(value: Any) -> Any:
    if isinstance(value, str) and value[:5].lower() == "smtp:":
        return value[:5] + _normalized_value(value[5:])
    return value


def _normalized_directory(directory: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for coll, objs in directory.items():
        out[coll] = []
        for o in objs:
            o = dict(o)
            if "mail" in o:
                o["mail"] = _normalized_value(o["mail"])
            if isinstance(o.get("proxyAddresses"), list):
                o["proxyAddresses"] = [_normalized_proxy(v) for v in o["proxyAddresses"]]
            out[coll].append(o)
    return out


@props(300)
@given(directories())
def test_projecting_already_normalized_values_gives_the_same_datasets(directory: dict[str, list[dict[str, Any]]]) -> None:
    before = project(directory, PROVISIONED)
    after = project(_normalized_directory(directory), PROVISIONED)
    assert after.datasets["addresses"] == before.datasets["addresses"]
    assert after.datasets["users"] == before.datasets["users"]
    assert {k: v[1] for k, v in after.datasets["groups"].items()} == {k: v[1] for k, v in before.datasets["groups"].items()}
    mails = {g["id"]: g.get("mail") for g in directory["groups"]}
    for gid, (name, _) in before.datasets["groups"].items():
        # The name falls back to the raw mail (docs/sync-rules.md), which normalizing may change.
        assert after.datasets["groups"][gid][0] == name or name == mails[gid]
    assert [e.as_dict() for e in after.exclusions] == [e.as_dict() for e in before.exclusions]


# --- group graphs ----------------------------------------------------------------------------------
@st.composite
def group_graphs(draw: st.DrawFn) -> dict[str, Any]:
    """Groups and users with random direct-membership edges: cycles, self-membership, duplicate
    entries, members that are contacts, devices, service principals or ids of nothing, entries
    marked @removed, big groups spread over several pages, and every way Graph tags a member."""
    users = [f"u{i}" for i in range(draw(st.integers(0, 6)))]
    groups = [f"g{i}" for i in range(draw(st.integers(1, 7)))]
    contacts, devices, sps, unknown = ["c0", "c1"], ["d0"], ["sp0"], ["x0", "x1"]
    kind = {**dict.fromkeys(users, USER), **dict.fromkeys(groups, GROUP), **dict.fromkeys(contacts, OTHER_TYPES[0]),
            **dict.fromkeys(devices, OTHER_TYPES[1]), **dict.fromkeys(sps, OTHER_TYPES[2])}
    addressed = {u for u in users if draw(st.integers(0, 4))}
    everyone = users + groups + contacts + devices + sps + unknown
    edges = draw(st.lists(st.tuples(st.sampled_from(groups), st.sampled_from(everyone), st.sampled_from(["typed", "typed", "untyped", "bare", "removed"])), max_size=40))
    # A member id that names nothing may still carry a type (a member the read did not list).
    unknown_types = {x: draw(st.sampled_from([None, USER, GROUP, OTHER_TYPES[1]])) for x in unknown}
    pages = {g: draw(st.integers(1, 3)) for g in groups}
    return {"users": users, "groups": groups, "contacts": contacts, "kind": kind, "addressed": addressed, "edges": edges,
            "unknown_types": unknown_types, "pages": pages, "order_seed": draw(st.randoms(use_true_random=False)),
            "via": draw(st.sampled_from(["delta", "per-group", "project"]))}


def _member(graph: dict[str, Any], mid: str, style: str) -> Any:
    otype = graph["kind"].get(mid) or graph["unknown_types"].get(mid)
    if style == "bare":
        return mid
    if style == "untyped":
        return {"id": mid}
    entry = {"@odata.type": otype, "id": mid} if otype else {"id": mid}
    if style == "removed":
        entry["@removed"] = {"reason": "deleted"}
    return entry


def _live(graph: dict[str, Any]) -> set[tuple[str, str]]:
    """The direct memberships the read shows: Graph's entries apply in arrival order, so a
    member is live when its last entry is not @removed (docs/sync-rules.md, "Reading
    Microsoft Graph"); the per-group /members read lists live members only."""
    if graph["via"] == "per-group":
        return {(g, m) for g, m, style in graph["edges"] if style != "removed"}
    last: dict[tuple[str, str], str] = {}
    for g in graph["groups"]:
        own = [(m, style) for gid, m, style in graph["edges"] if gid == g]
        n = graph["pages"][g] if graph["via"] == "delta" else 1
        for chunk in (own[i::n] for i in range(n)):  # the order _feed sends them in
            for m, style in chunk:
                last[(g, m)] = style
    return {pair for pair, style in last.items() if style != "removed"}


def _feed(graph: dict[str, Any]) -> Any:
    def user(uid: str) -> dict[str, Any]:
        return {"id": uid, "mail": f"{uid}@contoso.com" if uid in graph["addressed"] else None, "proxyAddresses": []}

    members: dict[str, list[Any]] = {g: [] for g in graph["groups"]}
    for gid, mid, style in graph["edges"]:
        members[gid].append(_member(graph, mid, style))
    if graph["via"] == "project":
        directory = {
            "users": [user(u) for u in graph["users"]],
            "contacts": [{"id": c, "mail": f"{c}@contoso.com"} for c in graph["contacts"]],
            "groups": [{"id": g, "displayName": g.upper(), "members": members[g]} for g in graph["groups"]],
        }
        return project(directory, PROVISIONED)
    rng = graph["order_seed"]
    ops: list[tuple[str, Any]] = [("user", user(u)) for u in graph["users"]]
    ops += [("contact", {"id": c, "mail": f"{c}@contoso.com"}) for c in graph["contacts"]]
    for g in graph["groups"]:
        entries = [m if isinstance(m, dict) else {"id": m} for m in members[g]]  # Graph always sends objects
        n = graph["pages"][g]
        chunks = [entries[i::n] for i in range(n)]
        if graph["via"] == "delta":  # the group, then its continuation pages, each with more members@delta
            ops.append(("group", {"id": g, "displayName": g.upper(), "members@delta": chunks[0]}))
            ops += [("group", {"id": g, "members@delta": chunk}) for chunk in chunks[1:]]
        else:  # /groups, then each group's /members pages
            ops.append(("group", {"id": g, "displayName": g.upper()}))
            ops += [("members", (g, [e for e in chunk if "@removed" not in e])) for chunk in chunks]
    # Any interleaving of objects, but each group's own pages stay in order.
    order = list(range(len(ops)))
    rng.shuffle(order)
    slots: dict[str, list[int]] = {}
    for position, i in enumerate(order):
        op = ops[i]
        gid = op[1]["id"] if op[0] == "group" else op[1][0] if op[0] == "members" else None
        if gid is not None:
            slots.setdefault(gid, []).append(position)
    shuffled = [ops[i] for i in order]
    for gid, positions in slots.items():
        own = [op for op in ops if (op[0] == "group" and op[1]["id"] == gid) or (op[0] == "members" and op[1][0] == gid)]
        for position, op in zip(sorted(positions), own, strict=True):
            shuffled[position] = op
    entries: list[tuple[str, dict[str, Any]]] = []
    for what, arg in shuffled:
        if what == "user":
            entries.append(("users", arg))
        elif what == "contact":
            entries.append(("contacts", arg))
        elif what == "group":
            entries.append(("groups", arg))
        else:  # a /members page: its members as members@delta entries of the group (graph.py's fallback)
            entries.append(("groups", {"id": arg[0], "members@delta": list(arg[1])}))
    return project_entries(entries, PROVISIONED)


@props(400)
@given(group_graphs())
def test_parent_and_group_ids_are_exactly_the_direct_membership_relation(graph: dict[str, Any]) -> None:
    p = _feed(graph)
    groups, users = set(graph["groups"]), set(graph["users"])
    live = _live(graph)
    expected_parents = {g: sorted({p_ for p_, m in live if m == g}) for g in graph["groups"]}
    expected_users = {u: sorted({g for g, m in live if m == u}) for u in graph["addressed"]}
    assert {k: list(v[1]) for k, v in p.datasets["groups"].items()} == expected_parents
    assert {k: list(v[1]) for k, v in p.datasets["users"].items()} == expected_users
    assert {k: v[0] for k, v in p.datasets["groups"].items()} == {g: g.upper() for g in groups}
    assert set(p.datasets["users"]) <= users
    assert_valid_for_the_service(p)


# --- a primary address shared by several users -----------------------------------------------------
POOL = ["shared@contoso.com", "Other@Fabrikam.com", "x@xn--bcher-kva.example"]


@st.composite
def sharing_users(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Users whose primary address (mail, or the uppercase SMTP: value) comes from a small pool,
    spelled in different cases and with whitespace; returns the users and each one's primary."""
    ids = draw(st.lists(st.text(st.sampled_from("0123456789abcdefAB-é"), min_size=1, max_size=6), min_size=1, max_size=8, unique=True))
    users, primary = [], {}
    for uid in ids:
        address = draw(st.sampled_from(POOL))
        spelled = draw(st.sampled_from([address, address.upper(), address.lower(), f"  {address}\t"]))
        secondary = [f"smtp:{draw(st.sampled_from(POOL))}"] if draw(st.booleans()) else []
        how = draw(st.sampled_from(["mail", "proxy", "invalid mail", "unprovisioned mail"]))
        if how == "mail":
            users.append({"id": uid, "mail": spelled, "proxyAddresses": secondary})
        else:
            mail = {"proxy": None, "invalid mail": "not an address", "unprovisioned mail": f"{uid}@elsewhere.org"}[how]
            users.append({"id": uid, "mail": mail, "proxyAddresses": [*secondary, f"SMTP:{spelled}"]})
        primary[uid] = address.lower()
    return users, primary


@props(400)
@given(sharing_users(), st.randoms(use_true_random=False))
def test_a_shared_primary_address_stays_with_the_smallest_user_id(drawn: tuple[list[dict[str, Any]], dict[str, str]], rng: Any) -> None:
    users, primary = drawn
    rng.shuffle(users)  # the read order does not matter
    p = project({"users": users}, PROVISIONED)
    owners: dict[str, str] = {}
    for uid, address in primary.items():
        owners[address] = min(owners.get(address, uid), uid)
    assert {k: v[0] for k, v in p.datasets["users"].items()} == {uid: address for address, uid in owners.items()}
    left_out = {e.object_id: e for e in p.exclusions if e.dataset == "users"}
    assert set(left_out) == set(primary) - set(owners.values())
    for uid, e in left_out.items():
        assert owners[primary[uid]] in e.reason and e.value == primary[uid]
    assert_valid_for_the_service(p)
