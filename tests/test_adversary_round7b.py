"""Adversarial checks, round 7b: the Function's doors, the Exchange Online source and Graph's
shapes, against the contract (docs/sync-rules.md; docs/sync-api.md), through the real product
and the loopback emulators."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.exchange_emulator import ExchangeEmulator, recipient
from devstack.graph_emulator import GraphEmulator
from devstack.receiver_addresses import address_problem
from devstack.sync_receiver import SyncReceiver
from shared.common.netutil import same_origin
from shared.sources.exchange import ExchangeSource
from tests.stack import CREDENTIAL, EXPECTED, ROOT, U, base_env, nasty_directory, run_cli, service_view

_BINDINGS = (
    "import json, function_app\n"
    "fn = {f.get_function_name(): f for f in function_app.app.get_functions()}['sync_timer']\n"
    "print(json.dumps(fn.get_bindings_dict()['bindings'], default=str))\n"
)


def _timer_bindings(env: dict[str, str]) -> list[dict]:
    """The timer's bindings as the worker indexes them, in a process of its own (the host
    indexes function_app once, at start, with the app settings as its environment)."""
    proc = subprocess.run([sys.executable, "-c", _BINDINGS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("value", [None, "", "   "])
def test_the_timer_runs_hourly_when_sync_schedule_is_unset(tmp_path, value):
    """"The timer-triggered function in function_app.py runs update on SYNC_SCHEDULE", whose
    default is ``0 0 * * * *`` (hourly) (docs/sync-rules.md, Settings and Commands). The host
    cannot resolve ``%SYNC_SCHEDULE%`` when the app setting is absent and then runs no timer at all
    ("Error indexing method ... does not resolve to a value"), so an unset setting must bind the
    default itself."""
    env = base_env("http://127.0.0.1:9/v1.0", "http://127.0.0.1:9/v1", f"file:{tmp_path}")
    env.pop("SYNC_SCHEDULE", None)
    if value is not None:
        env["SYNC_SCHEDULE"] = value
    (timer,) = _timer_bindings(env)
    assert timer["type"] == "timerTrigger" and timer["schedule"] == "0 0 * * * *"


def test_a_set_sync_schedule_is_resolved_by_the_host(tmp_path):
    env = {**base_env("http://127.0.0.1:9/v1.0", "http://127.0.0.1:9/v1", f"file:{tmp_path}"), "SYNC_SCHEDULE": "0 */15 * * * *"}
    (timer,) = _timer_bindings(env)
    assert timer["schedule"] == "%SYNC_SCHEDULE%" and timer["useMonitor"] is True and timer["runOnStartup"] is False


@pytest.mark.parametrize("action", ["test-update", "update", "replace", "refresh"])
def test_every_summary_counts_exchange_requests_beside_graph_requests(tmp_path, action):
    """"The run summary counts these requests in exoRequests, beside graphRequests"
    (docs/sync-rules.md, "The Exchange Online source"): a run that a malformed setting stops before any
    request says 0 of each, as it says graphRequests."""
    env = {**base_env("http://127.0.0.1:9/v1.0", "http://127.0.0.1:9/v1", f"file:{tmp_path / 'state'}"),
           "GRAPH_TENANT_ID": "11111111-2222-3333-4444-555555555555", "EXO_MODE": "augment", "EXO_BASE_URL": "http://127.0.0.1:9",
           "EXO_RECIPIENT_TYPES": "DynamicDistributionGroup,NoSuchType"}
    r = run_cli(action, env, "--json")
    assert r.code == 2, r.stderr
    s = r.summary
    assert s["ok"] is False and "EXO_RECIPIENT_TYPES" in s["error"]
    assert s["graphRequests"] == 0 and s["exoRequests"] == 0


# --- Graph's real delta shapes, first round and later, end to end ---------------------------------
# Generated rounds as Graph serves them (docs/sync-rules.md, "Every round is a delta round, and
# entries are applied in arrival order"): objects repeated with newer state on any page, partial
# entries, @removed (changed / deleted) in any round, groups in slices with members@delta of every @odata.type and member removals, users with a null
# mail but proxyAddresses, prefixes in any case, guests. The oracle below reads the rules plainly
# and validates addresses with the receiver's own validator (written from docs/sync-api.md alone).
POOL_USERS = [f"10000000-0000-0000-0000-{n:012d}" for n in range(1, 6)]
POOL_GROUPS = [f"20000000-0000-0000-0000-{n:012d}" for n in range(1, 5)]
POOL_CONTACTS = [f"30000000-0000-0000-0000-{n:012d}" for n in range(1, 3)]
MEMBER_TYPES = {"#microsoft.graph.user": POOL_USERS, "#microsoft.graph.group": POOL_GROUPS,
                "#microsoft.graph.orgContact": POOL_CONTACTS, "#microsoft.graph.device": ["40000000-0000-0000-0000-000000000001"],
                "#microsoft.graph.servicePrincipal": ["50000000-0000-0000-0000-000000000001"]}
SHAPE_DOMAINS = ("contoso.com", "fabrikam.com")
_LOCALS = st.sampled_from(["a", "b", "Al.Ice", "shared", "bad..dot", "x y"])
_DOMAINS = st.sampled_from(["contoso.com", "Contoso.COM", "fabrikam.com", "elsewhere.org"])
_ADDRESS = st.builds(lambda pad, local, dom, tail: f"{pad}{local}@{dom}{tail}", st.sampled_from(["", " "]), _LOCALS, _DOMAINS,
                     st.sampled_from(["", " ", "\t"]))
_PROXY = st.builds(lambda prefix, addr: prefix + addr.strip(), st.sampled_from(["smtp:", "Smtp:", "sMTP:", "X500:", "SIP:", "spo:", "EUM:"]), _ADDRESS)


@st.composite
def _props(draw, kind: str) -> dict:
    """Selected properties, each present or not (a later round's entry carries only some)."""
    out: dict = {}
    if draw(st.booleans()):
        out["mail"] = draw(st.none() | _ADDRESS)
    if draw(st.booleans()):
        proxies = draw(st.lists(_PROXY, max_size=3))
        if draw(st.booleans()):  # at most one primary proxy address, as Exchange keeps it
            proxies.insert(draw(st.integers(0, len(proxies))), "SMTP:" + draw(_ADDRESS).strip())
        out["proxyAddresses"] = proxies
    if kind == "users" and draw(st.booleans()):
        out["userType"] = draw(st.sampled_from(["Member", "Guest", None]))
    if kind == "groups" and draw(st.booleans()):
        out["displayName"] = draw(st.sampled_from([None, "", "Sales", "Ops"]))
    return out


@st.composite
def _round(draw) -> dict[str, list[list[dict]]]:
    """One delta round: per collection, pages of entries in arrival order. A removed object may
    come back later in the round or in the next one (restored): from nothing, as Graph sends it."""
    rnd: dict[str, list[list[dict]]] = {}
    for kind, pool in (("users", POOL_USERS), ("groups", POOL_GROUPS), ("contacts", POOL_CONTACTS)):
        entries: list[dict] = []
        for _ in range(draw(st.integers(0, 6))):
            oid = draw(st.sampled_from(pool))
            if draw(st.integers(0, 5)) == 0:
                entries.append({"id": oid, "@removed": {"reason": draw(st.sampled_from(["changed", "deleted"]))}})
                continue
            entry = {"id": oid, **draw(_props(kind))}
            if kind == "groups":
                entry["members@delta"] = [
                    {"@odata.type": t, "id": draw(st.sampled_from(MEMBER_TYPES[t])), **({"@removed": {"reason": "deleted"}} if draw(st.booleans()) and draw(st.booleans()) else {})}
                    for t in draw(st.lists(st.sampled_from(sorted(MEMBER_TYPES)), max_size=4))]
            entries.append(entry)
        cut = sorted(draw(st.lists(st.integers(0, len(entries)), max_size=2)))
        bounds = [0, *cut, len(entries)]
        rnd[kind] = [entries[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    return rnd


def _oracle_apply(state: dict[str, dict[str, dict]], rnd: dict[str, list[list[dict]]]) -> None:
    """Graph's entries applied in arrival order: a carried property replaces, @removed removes,
    members@delta add up and a member entry with @removed removes that member."""
    for kind, pages in rnd.items():
        for entry in (e for page in pages for e in page):
            if "@removed" in entry:
                state[kind].pop(entry["id"], None)
                continue
            obj = state[kind].setdefault(entry["id"], {"members": set()} if kind == "groups" else {})
            obj.update({k: v for k, v in entry.items() if k not in ("id", "members@delta")})
            for m in entry.get("members@delta", ()):
                member = (m["@odata.type"], m["id"])
                (obj["members"].discard if "@removed" in m else obj["members"].add)(member)


def _kept(value) -> str | None:
    if not isinstance(value, str):
        return None
    address = value.strip().lower()
    return address if address_problem(address) is None and address.rpartition("@")[2] in SHAPE_DOMAINS else None


def _scope(state: dict[str, dict[str, dict]], root: str | None) -> set[str]:
    """Every object id when there is no scope; else the root group, the groups nested in it at
    any depth, and the users and contacts that are members of any of them."""
    if root is None:
        return {oid for kind in state.values() for oid in kind}
    groups, stack = set(), [root]
    while stack:
        gid = stack.pop()
        if gid in state["groups"] and gid not in groups:
            groups.add(gid)
            stack.extend(m for t, m in state["groups"][gid]["members"] if t == "#microsoft.graph.group")
    members = {m for g in groups for t, m in state["groups"][g]["members"] if t in ("#microsoft.graph.user", "#microsoft.graph.orgContact")}
    return groups | (members & (set(state["users"]) | set(state["contacts"])))


def _oracle_datasets(state: dict[str, dict[str, dict]], rules: dict[str, str]) -> dict:
    addresses: set[str] = set()
    primaries: dict[str, str] = {}
    pattern = rules.get("EXCLUDE_ADDRESS_PATTERNS")

    def kept(value) -> str | None:
        address = _kept(value)
        return None if address is None or (pattern and re.fullmatch(pattern, address, re.IGNORECASE)) else address

    in_scope = _scope(state, rules.get("SYNC_SCOPE_GROUPS"))
    for kind in ("users", "groups", "contacts"):
        for oid, obj in state[kind].items():
            if oid not in in_scope:
                continue
            if kind == "users" and "EXCLUDE_USER_TYPES" in rules and (obj.get("userType") or "").lower() == rules["EXCLUDE_USER_TYPES"]:
                continue
            proxies = obj.get("proxyAddresses") or []
            candidates = [kept(obj.get("mail"))] + [kept(p[5:]) for p in proxies if p[:5].lower() == "smtp:"]
            addresses.update(a for a in candidates if a)
            if kind == "users":
                primary = kept(obj.get("mail")) or next((kept(p[5:]) for p in proxies if p.startswith("SMTP:") and kept(p[5:])), None)
                if primary:
                    primaries[oid] = primary
    owners: dict[str, str] = {}
    for uid in sorted(primaries):
        owners.setdefault(primaries[uid], uid)
    groups = {g: obj for g, obj in state["groups"].items() if g in in_scope}

    def parents_of(oid: str, otype: str) -> list[str]:
        return sorted(g for g, obj in groups.items() if (otype, oid) in obj["members"])

    return {
        "addresses": addresses,
        "groups": {g: {"id": g, "name": obj.get("displayName") or obj.get("mail") or g, "parentIds": parents_of(g, "#microsoft.graph.group")}
                   for g, obj in groups.items()},
        "users": {u: {"id": u, "address": a, "groupIds": parents_of(u, "#microsoft.graph.user")} for u, a in primaries.items() if owners[a] == u},
    }


@settings(derandomize=True, database=None, deadline=None, max_examples=15,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_sequence_of_real_delta_shapes_leaves_the_service_at_the_last_state_graph_showed(tmp_path_factory, data):
    """The first (full) round and a later one, each of generated real shapes: after each
    ``update`` the service holds exactly what the rules make of the last state each round showed
    for each object (docs/sync-rules.md, "Every round is a delta round, and entries are applied in arrival order"; "The three datasets")."""
    rounds = [data.draw(_round()), data.draw(_round())]
    rules = data.draw(st.sampled_from([{}, {"EXCLUDE_USER_TYPES": "guest"}, {"EXCLUDE_ADDRESS_PATTERNS": "shared@.*"},
                                       {"SYNC_SCOPE_GROUPS": POOL_GROUPS[0]}]))
    state: dict[str, dict[str, dict]] = {"users": {}, "groups": {}, "contacts": {}}
    with GraphEmulator({"users": [], "groups": [], "contacts": []}) as graph, \
            SyncReceiver(domains=list(SHAPE_DOMAINS), credential=CREDENTIAL) as receiver:
        env = {**base_env(graph.base_url, receiver.base_url, f"file:{tmp_path_factory.mktemp('state')}"), **rules}
        for n, rnd in enumerate(rounds):
            for kind, pages in rnd.items():
                graph.script_round(kind, pages)
            before = service_view(receiver)
            _oracle_apply(state, rnd)
            r = run_cli("update", env, "--json")
            if rules.get("SYNC_SCOPE_GROUPS", "") not in ("", *state["groups"]):  # names no group: fails, sends nothing
                assert r.code == 2 and "SYNC_SCOPE_GROUPS" in r.stderr and service_view(receiver) == before, r.stderr
                return
            assert r.code == 0, r.stderr
            assert r.summary["read"]["kind"] == ("full" if n == 0 else "delta")
            assert service_view(receiver) == _oracle_datasets(state, rules), (n, rounds, rules)


_RECIPIENT_TYPES = ("DynamicDistributionGroup", "PublicFolder")


@st.composite
def _listing(draw) -> list[dict]:
    """One complete Get-Recipient listing: PrimarySmtpAddress and EmailAddresses as Exchange
    spells them, some recipients Entra objects (ExternalDirectoryObjectId), one Guid at most once."""
    out = []
    for n in draw(st.lists(st.integers(1, 5), unique=True, max_size=4)):
        emails = draw(st.lists(_PROXY, max_size=3))
        primary = draw(_ADDRESS).strip()
        out.append(recipient(f"e0c5e0c5-0000-4000-8000-{n:012d}", draw(st.sampled_from(_RECIPIENT_TYPES)), primary,
                             emails=["SMTP:" + primary, *emails], entra_id=draw(st.sampled_from(["", *POOL_USERS[:2]]))))
    return out


@settings(derandomize=True, database=None, deadline=None, max_examples=12,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data())
def test_exchange_recipients_join_the_addresses_by_the_graph_rules_in_every_run(tmp_path_factory, data):
    """EXO_MODE=augment: each run's addresses are the Graph objects' kept candidates plus each
    listed recipient's PrimarySmtpAddress and smtp: EmailAddresses, "normalized and kept by exactly
    the rules for Graph candidates"; recipients add no groups or users records; a recipient gone
    from the next listing takes away the addresses no other object still holds (docs/sync-rules.md,
    "The Exchange Online source")."""
    rounds = [data.draw(_round()), data.draw(_round())]
    listings = [data.draw(_listing()), data.draw(_listing())]
    rules = data.draw(st.sampled_from([{}, {"EXCLUDE_ADDRESS_PATTERNS": "shared@.*"}]))
    state: dict[str, dict[str, dict]] = {"users": {}, "groups": {}, "contacts": {}}
    tenant = "11111111-2222-3333-4444-555555555555"
    with GraphEmulator({"users": [], "groups": [], "contacts": []}) as graph, ExchangeEmulator(tenant=tenant, max_page_size=2) as exo, \
            SyncReceiver(domains=list(SHAPE_DOMAINS), credential=CREDENTIAL) as receiver:
        env = {**base_env(graph.base_url, receiver.base_url, f"file:{tmp_path_factory.mktemp('state')}"), **rules,
               "GRAPH_TENANT_ID": tenant, "EXO_MODE": "augment", "EXO_BASE_URL": exo.base_url}
        for rnd, listing in zip(rounds, listings, strict=True):
            for kind, pages in rnd.items():
                graph.script_round(kind, pages)
            for old in exo.recipients():
                exo.delete(old["Guid"])
            for rec in listing:
                exo.upsert(rec)
            _oracle_apply(state, rnd)
            r = run_cli("update", env, "--json")
            assert r.code == 0, r.stderr
            want = _oracle_datasets(state, rules)
            as_objects = {"users": {}, "groups": {}, "contacts": {f"x{n}": {"mail": rec["PrimarySmtpAddress"], "proxyAddresses": rec["EmailAddresses"]}
                                                                 for n, rec in enumerate(listing)}}
            want["addresses"] |= _oracle_datasets(as_objects, rules)["addresses"]
            assert service_view(receiver) == want, (rounds, listings, rules)
            assert r.summary["exoRequests"] == max(1, -(-len(listing) // 2)) and r.summary["datasets"]["addresses"]["rejected"] == 0


# --- a page's next link: followed on the same origin, however it is spelled ----------------------
@pytest.mark.parametrize(("base", "link", "same"), [
    ("https://graph.microsoft.com/v1.0", "https://graph.microsoft.com/v1.0/users/delta?$skiptoken=x", True),
    ("https://graph.microsoft.com/v1.0", "https://GRAPH.Microsoft.com/v1.0/users/delta?$skiptoken=x", True),
    ("https://graph.microsoft.com/v1.0", "https://graph.microsoft.com:443/v1.0/users/delta", True),
    ("https://graph.microsoft.com:443/v1.0", "https://graph.microsoft.com/v1.0/users/delta", True),
    ("HTTPS://outlook.office365.com", "https://outlook.office365.com/adminapi/beta/t/InvokeCommand", True),
    ("http://127.0.0.1:8080/v1.0", "http://localhost:8080/v1.0/users/delta", True),
    ("http://localhost:8080", "http://[::1]:8080/adminapi/beta/t/InvokeCommand", True),
    ("https://graph.microsoft.com/v1.0", "http://graph.microsoft.com/v1.0/users/delta", False),
    ("https://graph.microsoft.com/v1.0", "https://graph.microsoft.com:8443/v1.0/users/delta", False),
    ("https://graph.microsoft.com/v1.0", "https://evil.example/v1.0/users/delta", False),
    ("https://graph.microsoft.com/v1.0", "https://graph.microsoft.com.evil.example/v1.0", False),
    ("http://127.0.0.1:8080/v1.0", "http://127.0.0.1:8081/v1.0/users/delta", False),
    ("http://127.0.0.1:8080/v1.0", "http://evil.example:8080/v1.0/users/delta", False),
    ("https://outlook.office365.com", "https://user@outlook.office365.com/adminapi", False),
])
def test_a_next_link_is_on_the_same_origin_exactly_when_scheme_host_and_port_agree(base, link, same):
    """Scheme and host compare case-insensitively and an absent port is the scheme's default
    (RFC 3986, 6.2.3); a loopback host is one machine however it is spelled (localhost, 127.0.0.1,
    ::1: a local emulator may write its links either way). Anything else is another origin,
    which a bearer token never goes to."""
    assert same_origin(link, base) is same


def test_a_graph_emulator_that_spells_its_links_localhost_is_read_to_the_end(receiver, tmp_path):
    """Every page of a round is read to its deltaLink (docs/sync-rules.md, "Failures while
    reading") when GRAPH_BASE_URL names 127.0.0.1 while the emulator writes its nextLink and
    deltaLink with localhost, the same loopback host and port."""
    graph = GraphEmulator(nasty_directory(), max_page_size=2)
    graph.start(host="localhost")
    try:
        env = base_env(graph.base_url.replace("localhost", "127.0.0.1"), receiver.base_url, f"file:{tmp_path / 'state'}")
        first = run_cli("update", env, "--json")
        assert first.code == 0, first.stderr
        assert service_view(receiver) == EXPECTED
        graph.delete_user(U(8))
        again = run_cli("update", env, "--json")
        assert again.code == 0 and again.summary["read"]["kind"] == "delta", again.stderr
        assert "dave@fabrikam.com" not in service_view(receiver)["addresses"]
    finally:
        graph.stop()


def test_an_exchange_next_link_with_the_default_port_is_followed():
    """The same body is posted to the nextLink (docs/sync-rules.md, "The Exchange Online source"), when the
    link spells the endpoint's host in capitals with its default port."""
    tenant = "11111111-2222-3333-4444-555555555555"
    first = f"/adminapi/beta/{tenant}/InvokeCommand"
    pages = {first: {"value": [recipient("e0c5e0c5-0000-4000-8000-000000000001", "PublicFolder", "a@contoso.com")],
                     "@odata.nextLink": f"https://OUTLOOK.office365.com:443{first}?$skiptoken=2"},
             f"{first}?$skiptoken=2": {"value": [recipient("e0c5e0c5-0000-4000-8000-000000000002", "PublicFolder", "b@contoso.com")]}}
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(200, json=pages[seen[-1]])

    async def go() -> list[dict]:
        src = ExchangeSource("https://outlook.office365.com", tenant, _RECIPIENT_TYPES, token=None, transport=httpx.MockTransport(handler))
        try:
            return await src.read_recipients()
        finally:
            await src.aclose()

    assert [r["PrimarySmtpAddress"] for r in asyncio.run(go())] == ["a@contoso.com", "b@contoso.com"]
    assert seen == [first, f"{first}?$skiptoken=2"]
