"""Generated tenants through the real CLI, checked against an independent oracle.

Each example builds a nasty directory (odd ``proxyAddresses`` prefixes and casing, duplicates
across objects, unprovisioned domains and subdomains, IDN and unicode values, surrounding
whitespace, empty and null ``mail``, disabled accounts, guests, contacts, security and
mail-enabled groups, nested groups and cycles, devices as members) and a random choice of the
scope and exclusion settings, serves it from the Graph emulator (small pages, big groups in
slices), runs ``update`` against the strict receiver, and compares what the service holds with
``tests/spec_oracle.py``, which is written from docs/sync-rules.md alone. Then the directory
changes and a second ``update`` (a delta round) must again leave the service equal to the
oracle, with the summary's ``added``/``removed`` equal to what changed at the service and to
what ``test-update`` predicted. A second property scripts the delta rounds themselves (objects
repeated with partial newer state, ``@removed`` in the first round, group slices with member
removals) and folds the same entries by the contract's rule for the oracle.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from devstack.exchange_emulator import ExchangeEmulator, recipient
from devstack.graph_emulator import GraphEmulator
from devstack.sync_receiver import SyncReceiver
from tests import launcher, stack
from tests.spec_oracle import expected, view
from tests.stack import CREDENTIAL, CliResult, base_env

DOMAINS = ["contoso.com", "fabrikam.com", "xn--bcher-kva.example", "xn--r8jz45g.xn--zckzah", "sub.contoso.com"]
TENANT = "contoso.onmicrosoft.com"
RULE_SETTINGS = ("ADDRESS_DOMAINS", "SYNC_SCOPE_GROUPS", "EXCLUDE_USER_TYPES", "EXCLUDE_ADDRESS_PATTERNS")
EXO_TYPES = ("DynamicDistributionGroup", "PublicFolder")  # EXO_RECIPIENT_TYPES' default in augment


def U(n: int) -> str:
    return f"10000000-0000-4000-8000-{n:012d}"


def G(n: int) -> str:
    return f"20000000-0000-4000-8000-{n:012d}"


def C(n: int) -> str:
    return f"30000000-0000-4000-8000-{n:012d}"


DEVICE = "40000000-0000-4000-8000-000000000001"
USERS, GROUPS, CONTACTS = [U(i) for i in range(1, 7)], [G(i) for i in range(1, 5)], [C(i) for i in range(1, 3)]

LOCALS = ["alice", "Bob", "o'neil", "a.b", ".lead", "trail.", "a..b", "", "jörg", "x" * 64, "y" * 65, "sp ace", '"q"',
          "a+tag", "admin", "ADMIN", "info", "\u212aate", "\u0130nfo"]
HOSTS = ["contoso.com", "CONTOSO.COM", "sub.contoso.com", "deep.sub.contoso.com", "fabrikam.com", "bücher.example",
         "BÜCHER.example", "XN--BCHER-KVA.EXAMPLE", "notprov.org", "contoso.onmicrosoft.com", "contoso.com.", "例え.テスト",
         "xn--zz.example", "contoso"]
SPACE = ["", "", "", " ", "\t", "\n", "\u00a0", "\u3000", "\u200b"]
PREFIXES = ["SMTP:", "smtp:", "smtp:", "Smtp:", "sMtP:", "X500:", "SIP:", "EUM:", "SPO:", "x400:", "smtp", "", "SMTP: "]

# Shared values make duplicate primaries across users (and an address held by several objects).
SHARED = ["dup@contoso.com", " DUP@Contoso.com", "dup@BÜCHER.example", "Dup@xn--bcher-kva.example\t", "admin@contoso.com"]
PATTERNS = ["admin@.*", r".*@fabrikam\.com", r"a.b@contoso\.com|dup@contoso\.com", r".*@sub\.contoso\.com",
            "dup", r"alt|.*@fabrikam\.com"]  # the last two match whole addresses only as such


def uniform(make: Callable[[random.Random], Any]) -> st.SearchStrategy[Any]:
    """A value picked evenly from the pools above by a Random that Hypothesis seeds (so the
    examples are reproducible): Hypothesis' own choices lean to the first, plainest entries, and a
    few examples must still meet the nasty ones."""
    return st.randoms(use_true_random=True).map(make)


def _address(r: random.Random) -> str:
    return r.choice(SPACE) + r.choice(LOCALS) + "@" + r.choice(HOSTS) + r.choice(SPACE)


def _proxies(r: random.Random) -> list[str]:
    return [r.choice(PREFIXES) + (_address(r) if r.random() < 0.8 else r.choice(SHARED)) for _ in range(r.randint(0, 4))]


def _mail(r: random.Random) -> str | None:
    return r.choice([None, "", _address(r), _address(r), r.choice(SHARED)])


def _primary_proxy(r: random.Random) -> list[str]:
    """The uppercase SMTP: of a user whose mail may not be kept (the primary's fallback)."""
    return ["SMTP:" + r.choice(SHARED + ["alt@contoso.com", "Alt@Fabrikam.com"])] if r.random() < 0.5 else []


def _user_type(r: random.Random) -> str | None:
    return r.choice([None, "Member", "Guest", "guest", "GUEST"])


def _display(r: random.Random) -> str | None:
    return r.choice([None, "", "Sales", " ", "Team"])


def _rules(r: random.Random) -> dict[str, str]:
    """Each setting is set more often than not, so that few examples still meet every rule."""
    rules = {
        "SYNC_SCOPE_GROUPS": r.choice([None, " , ".join(r.sample(GROUPS, r.randint(1, 2)))]),
        "EXCLUDE_USER_TYPES": r.choice([None, "Guest", "guest, Member", "GUEST"]),
        "EXCLUDE_ADDRESS_PATTERNS": r.choice([None, *PATTERNS]),
        "ADDRESS_DOMAINS": r.choice([None, "contoso.com,bücher.example", "CONTOSO.COM", "fabrikam.com, sub.contoso.com, 例え.テスト"]),
    }
    return {k: v for k, v in rules.items() if v is not None}


def _tenant(r: random.Random) -> dict[str, Any]:
    users = [{"id": uid, "displayName": "u", "mail": r.choice(SHARED) if r.random() < 0.4 else _mail(r),
              "proxyAddresses": _proxies(r) + _primary_proxy(r), "userType": _user_type(r),
              "accountEnabled": r.choice([True, False, None])} for uid in USERS if uid == USERS[0] or r.random() < 0.8]
    contacts = [{"id": cid, "displayName": "c", "mail": _mail(r), "proxyAddresses": _proxies(r)} for cid in CONTACTS]
    ids = [u["id"] for u in users] + CONTACTS + GROUPS + [DEVICE]
    groups = [{"id": gid, "displayName": _display(r), "mail": _mail(r), "proxyAddresses": _proxies(r),
               "securityEnabled": r.random() < 0.5, "mailEnabled": r.random() < 0.5,
               "members": list(dict.fromkeys(r.sample(ids, r.randint(0, 5)) + r.sample(GROUPS, r.randint(0, 2))))}  # nesting, cycles
              for gid in GROUPS]
    return {"users": users, "groups": groups, "contacts": contacts, "devices": [{"id": DEVICE, "displayName": "laptop"}]}


OPERATIONS = ["mail", "proxies", "type", "delete_user", "new_user", "add_member", "remove_member", "group", "delete_group",
              "contact", "delete_contact"]
tenants = uniform(_tenant)
rule_settings = uniform(_rules)
# Changes to the directory between two runs: (operation, object index, a mail, proxies, a name).
changes = uniform(lambda r: [(r.choice(OPERATIONS), r.randint(0, 20), _mail(r), _proxies(r), _display(r)) for _ in range(r.randint(1, 5))])
exo_recipients = uniform(lambda r: None if r.random() < 0.5 else [
    recipient(f"e{i}", r.choice(EXO_TYPES + ("UserMailbox",)), r.choice(["", _address(r)]), emails=_proxies(r)) for i in range(r.randint(0, 3))])


def apply_change(graph: GraphEmulator, c: tuple) -> None:
    op, n, new_mail, new_proxies, name = c
    now = graph.snapshot()
    users, groups, contacts = now["users"], now["groups"], now["contacts"]
    pick = lambda xs: xs[n % len(xs)] if xs else None  # noqa: E731
    u, g, k = pick(users), pick(groups), pick(contacts)
    if op in ("mail", "proxies", "type") and u:
        u = {**u, **({"mail": new_mail} if op == "mail" else {"proxyAddresses": new_proxies} if op == "proxies" else
                     {"userType": [None, "Member", "Guest"][n % 3]})}
        graph.upsert_user(u)
    elif op == "delete_user" and u:
        graph.delete_user(u["id"], permanent=n % 2 == 0)
    elif op == "new_user":
        graph.upsert_user({"id": U(20 + n % 3), "mail": new_mail, "proxyAddresses": new_proxies, "userType": "Member"})
    elif op == "add_member" and g:
        member = ([x["id"] for x in users + groups + contacts] or [g["id"]])[(n * 7) % max(1, len(users + groups + contacts))]
        if member not in g["members"]:
            graph.add_member(g["id"], member)
    elif op == "remove_member" and g and g["members"]:
        graph.remove_member(g["id"], g["members"][n % len(g["members"])])
    elif op == "group" and g:
        graph.upsert_group({k2: v for k2, v in {**g, "displayName": name, "mail": new_mail, "proxyAddresses": new_proxies}.items()
                            if k2 != "members"})
    elif op == "delete_group" and g:
        graph.delete_group(g["id"], permanent=n % 2 == 0)
    elif op == "contact" and k:
        graph.upsert_contact({**k, "mail": new_mail, "proxyAddresses": new_proxies})
    elif op == "delete_contact" and k:
        graph.delete_contact(k["id"])


def changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(added, removed) per dataset as docs/sync-rules.md counts them: records upserted (new, or
    changed under the same key) and keys deleted."""
    out = {"addresses": (len(after["addresses"] - before["addresses"]), len(before["addresses"] - after["addresses"]))}
    for d in ("groups", "users"):
        out[d] = (sum(1 for k, v in after[d].items() if before[d].get(k) != v), sum(1 for k in before[d] if k not in after[d]))
    return out


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_cli(action: str, env: dict[str, str], *extra: str) -> CliResult:
    """``python -m shared <action> ...`` (through tests/launcher.py) run in this process, as a warm
    Functions host runs one invocation after another: the same entry point, settings from the
    environment, the summary on stdout. In-process, so that many generated tenants fit in seconds
    (tests/test_end_to_end.py runs the same door as a separate process)."""
    out, err = io.StringIO(), io.StringIO()
    with _environment(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = launcher.main([action, *extra])
    return CliResult(code, out.getvalue(), err.getvalue())


class Stack:
    def __init__(self, directory: dict[str, Any], rules: dict[str, str], exo: list[dict] | None = None) -> None:
        self.graph = GraphEmulator(directory, max_page_size=3, max_members_per_page=2)
        self.receiver = SyncReceiver(domains=DOMAINS, credential=CREDENTIAL)
        self.exo = ExchangeEmulator(exo, tenant=TENANT) if exo is not None else None
        self.rules = rules
        self.env = {**base_env(self.graph.start(), self.receiver.start(), f"file:{tempfile.mkdtemp(prefix='conf-')}/state"), **rules}
        if self.exo is not None:
            self.exo.start()
            self.env.update(EXO_MODE="augment", GRAPH_TENANT_ID=TENANT, EXO_BASE_URL=self.exo.base_url)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.graph.stop()
        self.receiver.stop()
        if self.exo is not None:
            self.exo.stop()

    def oracle(self) -> dict[str, Any]:
        exo = [r for r in self.exo.recipients() if r["RecipientTypeDetails"] in EXO_TYPES] if self.exo else []
        return expected(self.graph.snapshot(), DOMAINS, exo=exo, **self.rules)

    def update_matches(self, *, predict: bool = False) -> None:
        """One ``update`` (after a ``test-update`` when ``predict``): the service equals the oracle
        and the summary counts what changed there."""
        before = view(self.receiver)
        dry = run_cli("test-update", self.env, "--json") if predict else None
        r = run_cli("update", self.env, "--json")
        assert r.code == 0, r.stderr
        after = view(self.receiver)
        assert after == self.oracle()
        counted = {d: (v["added"], v["removed"]) for d, v in r.summary["datasets"].items()}
        assert counted == changed(before, after)
        if dry is not None:
            assert dry.code == 0, dry.stderr
            assert {d: (v["added"], v["removed"]) for d, v in dry.summary["datasets"].items()} == counted


# No shrinking: each step is a CLI run; a failure prints its (unshrunk) example at once.
@settings(max_examples=25, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.generate])
@given(tenants, rule_settings, exo_recipients, changes, st.sampled_from([None, "1", "2"]))
def test_generated_tenant_full_then_delta_matches_the_oracle(directory, rules, exo, changes, items):
    with Stack(directory, rules, exo) as s:
        if items:  # small requests: the contract's order and users.address uniqueness across batches
            s.env["SYNC_TEST_MAX_ITEMS"] = items
        s.update_matches()
        for c in changes:
            apply_change(s.graph, c)
        if rules.get("SYNC_SCOPE_GROUPS"):  # a deleted scope group fails the run: its own tests cover that
            alive = {g["id"] for g in s.graph.snapshot()["groups"]}
            if not all(x.strip() in alive for x in rules["SYNC_SCOPE_GROUPS"].split(",")):
                return
        s.update_matches(predict=True)


# --- scripted delta rounds, folded by the contract's rule --------------------------------------

TYPES = {"1": "#microsoft.graph.user", "2": "#microsoft.graph.group", "3": "#microsoft.graph.orgContact", "4": "#microsoft.graph.device"}
MEMBERS = USERS + GROUPS + CONTACTS + [DEVICE]


def _properties(r: random.Random, coll: str) -> dict[str, Any]:
    props: dict[str, Any] = {"mail": _mail(r), "proxyAddresses": _proxies(r)}
    if coll == "users":
        props["userType"] = _user_type(r)
    if coll == "groups":
        props["displayName"] = _display(r)
    return props


def delta_round(r: random.Random, state: dict[str, dict], first: bool) -> dict[str, list[dict]]:
    """The entries of one round per collection, in arrival order; ``state`` (id -> {"coll",
    "props", "members"}) is folded forward by the contract's rule as they are made."""
    out: dict[str, list[dict]] = {}
    for coll, ids in (("users", USERS), ("groups", GROUPS), ("contacts", CONTACTS)):
        per_id: dict[str, list[dict]] = {}
        for oid in ids:
            if not first and r.random() < 0.5:
                continue
            entries: list[dict] = []
            for _ in range(r.randint(1, 3)):
                if r.random() < 0.12:
                    entries.append({"id": oid, "@removed": {"reason": r.choice(["changed", "deleted"])}})
                    if coll == "groups":
                        break  # a group removed and back in the same round: not generated
                    continue
                props = _properties(r, coll)
                alive = (oid in state or bool(entries)) and not any("@removed" in e for e in entries)
                if alive and r.random() < 0.5:
                    props = {k: v for k, v in props.items() if r.random() < 0.5}  # a partial newer state
                entry = {"id": oid, **props}
                if coll == "groups":
                    entry["members@delta"] = [
                        {"@odata.type": TYPES[m[0]], "id": m, **({"@removed": {"reason": "deleted"}} if r.random() < 0.3 else {})}
                        for m in r.sample(MEMBERS, r.randint(0, 3))]
                entries.append(entry)
            per_id[oid] = entries
        # interleave the objects, each one's entries in order
        order: list[dict] = []
        while per_id:
            oid = r.choice(sorted(per_id))
            order.append(per_id[oid].pop(0))
            if not per_id[oid]:
                del per_id[oid]
        for e in order:
            oid = e["id"]
            if "@removed" in e:
                state.pop(oid, None)
                continue
            st_ = state.setdefault(oid, {"coll": coll, "props": {}, "members": []})
            st_["props"].update({k: v for k, v in e.items() if k not in ("id", "members@delta")})
            for m in e.get("members@delta", []):
                if "@removed" in m:
                    st_["members"] = [x for x in st_["members"] if x != m["id"]]
                elif m["id"] not in st_["members"]:
                    st_["members"].append(m["id"])
        out[coll] = order
    return out


def folded(state: dict[str, dict]) -> dict[str, Any]:
    d: dict[str, Any] = {"users": [], "groups": [], "contacts": []}
    for oid, s in sorted(state.items()):
        obj = {"id": oid, **s["props"]}
        if s["coll"] == "groups":
            obj["members"] = list(s["members"])
        d[s["coll"]].append(obj)
    return d


def paged(entries: list[dict], r: random.Random) -> list[list[dict]]:
    """The entries in pages of 1 to 3 (an empty round is one empty page)."""
    pages, k = [], 0
    while k < len(entries):
        n = r.randint(1, 3)
        pages.append(entries[k:k + n])
        k += n
    return pages or [[]]


# No shrinking: each step is a CLI run; a failure prints its (unshrunk) example at once.
@settings(max_examples=25, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.generate])
@given(st.randoms(use_true_random=True), rule_settings.map(lambda r: {k: v for k, v in r.items() if k != "SYNC_SCOPE_GROUPS"}))
def test_scripted_rounds_fold_as_the_contract_says(rnd, rules):
    state: dict[str, dict] = {}
    with Stack({}, rules) as s:
        for first in (True, False):
            for coll, entries in delta_round(rnd, state, first).items():
                s.graph.script_round(coll, paged(entries, rnd))
            r = run_cli("update", s.env, "--json")
            assert r.code == 0, r.stderr
            assert r.summary["read"]["kind"] == ("full" if first else "delta")
            assert view(s.receiver) == expected(folded(state), DOMAINS, **rules)


# --- test-update reports the records update sends ----------------------------------------------

# Group names as Entra holds them: right-to-left names carry marks (U+200F, U+200E), copied text
# zero-width spaces and no-break spaces, and a name may hold a tab, a backslash or an
# isolate/override. Each is 1 to 256 characters, so the service takes it as it is.
MARKED_NAMES = ["\u05de\u05db\u05d9\u05e8\u05d5\u05ea\u200f", "\u200eSales (EMEA)\u200e", "Team\u200bA", "R&D\u00a0Lab", "Ops\tNight",
                "C:\\Shares\\x09", "\u202eevil\u202c", "line\u2028sep", "del\x7fete", "\ufeffBOM"]


def test_test_update_lists_exactly_the_group_records_update_sends():
    # docs/sync-rules.md, "Actions": test-update reports what update would send, records per
    # dataset. A group's name is its displayName as it is; the --json line carries it as the
    # same JSON value (a terminal-safe \uXXXX escape is that value, a backslash spelled out is not).
    groups = [{"id": G(n), "displayName": name, "mail": None, "proxyAddresses": [], "members": []}
              for n, name in enumerate(MARKED_NAMES, start=1)]
    with Stack({"groups": groups}, {}) as s:
        dry = stack.run_cli("test-update", {**s.env, "PYTHONIOENCODING": "utf-8"}, "--json")  # a process, stdout in UTF-8
        assert dry.code == 0, dry.stderr
        line = dry.stdout.strip().splitlines()[-1]
        assert not any(ch in line for ch in "\u200f\u200e\u200b\u202e\u202c\u2028\x7f\ufeff\t")  # still safe on a terminal
        previewed = {r["id"]: r for r in dry.summary["changes"]["groups"]["added"]}
        s.receiver.clear_log()
        assert run_cli("update", s.env, "--json").code == 0
        sent = {r["id"]: r for q in s.receiver.request_log if q.method == "POST" for r in q.body.get("upsert", [])}
        assert previewed == sent == {g["id"]: {"id": g["id"], "name": g["displayName"], "parentIds": []} for g in groups}
        assert view(s.receiver) == s.oracle()
