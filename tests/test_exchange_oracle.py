"""Exchange Online beside Graph, generated, through the real CLI and checked against the
independent oracle (tests/spec_oracle.py, written from docs/sync-rules.md alone).

Each example serves a nasty generated tenant from the Graph emulator and a few recipients from
the Exchange emulator: every type EXO_RECIPIENT_TYPES may ask for (and some it does not),
PrimarySmtpAddress empty, odd or shared with Graph objects, EmailAddresses with other prefixes
and odd case, and ExternalDirectoryObjectId naming a Graph user, group or contact, an id Graph
does not have, or nothing. With a random choice of the scope and exclusion settings, ``update``
must leave the service equal to the oracle. Then both sources change (recipients appear,
vanish, change addresses or the Entra object they are; Graph objects change, move between
groups, vanish), and sometimes EXO_RECIPIENT_TYPES changes too: the next ``update`` (a delta
round for Graph, a full read of Exchange) must again equal the oracle, with its ``added`` and
``removed`` equal to what changed at the service and to what ``test-update`` predicted, and its
``excluded`` equal to those of ``test-update``, which reads both sources in full."""

from __future__ import annotations

import random
import tempfile
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from devstack.exchange_emulator import ExchangeEmulator, recipient
from devstack.graph_emulator import GraphEmulator
from devstack.sync_receiver import SyncReceiver
from shared.config.exo_settings import EXO_ALL_TYPES
from tests.spec_oracle import expected, view
from tests.stack import CREDENTIAL, base_env
from tests.test_conformance_oracle import (
    CONTACTS,
    DOMAINS,
    GROUPS,
    SHARED,
    USERS,
    _address,
    _proxies,
    _rules,
    _tenant,
    apply_change,
    changed,
    run_cli,
)

TENANT = "contoso.onmicrosoft.com"
AUGMENT = ("DynamicDistributionGroup", "PublicFolder")  # EXO_RECIPIENT_TYPES' default in augment
KINDS = ("DynamicDistributionGroup", "PublicFolder", "UserMailbox", "SharedMailbox", "MailUser", "GuestMailUser",
         "MailUniversalDistributionGroup", "MailContact")
TYPE_SETTINGS = (None, "DynamicDistributionGroup", "publicfolder, DynamicDistributionGroup", "UserMailbox,MailUser,GuestMailUser",
                 ",".join(KINDS))


def XG(n: int) -> str:
    return f"e0c5e0c5-0000-4000-8000-{n:012d}"


def _entra(r: random.Random) -> str | None:
    return r.choice([None, None, r.choice(USERS), r.choice(USERS), r.choice(GROUPS), r.choice(CONTACTS),
                     "99999999-0000-4000-8000-000000000009"])


def _valid(r: random.Random) -> str:
    """A plain address in a provisioned domain (most of _address's are nasty), so that changes
    move addresses the service holds."""
    return f"{r.choice(['ddg', 'pf', 'Team', 'x.y'])}{r.randint(0, 3)}@{r.choice(['contoso.com', 'fabrikam.com', 'Contoso.COM', 'bücher.example'])}"


def _emails(r: random.Random) -> list[str]:
    return _proxies(r)[:2] + [f"{r.choice(['smtp:', 'smtp:', 'Smtp:', 'SMTP:', 'X500:', 'sip:'])}{_valid(r)}" for _ in range(r.randint(1, 3))]


def _recipient(r: random.Random, n: int) -> dict[str, Any]:
    primary = r.choice(["", _address(r), _valid(r), _valid(r), r.choice(SHARED), "alice@contoso.com"])
    emails = _emails(r) + ([f"SMTP:{primary}"] if primary and r.random() < 0.7 else [])
    return recipient(XG(n), r.choice(KINDS), primary, emails=r.sample(emails, len(emails)), entra_id=_entra(r))


def _exchange(r: random.Random) -> list[dict[str, Any]]:
    return [_recipient(r, n) for n in range(r.randint(0, 5))]


def _exo_changes(r: random.Random) -> list[tuple[str, int, float]]:
    return [(r.choice(["delete", "new", "emails", "emails", "entra", "primary"]), r.randint(0, 6), r.random()) for _ in range(r.randint(1, 4))]


def apply_exo_change(exo: ExchangeEmulator, c: tuple[str, int, float]) -> None:
    op, n, seed = c
    r = random.Random(seed)
    now = exo.recipients()
    old = now[n % len(now)] if now else None
    if op == "new" or old is None:
        exo.upsert(_recipient(r, 10 + n))
    elif op == "delete":
        exo.delete(old["Guid"])
    elif op == "emails":
        kept = [e for e in old["EmailAddresses"] if r.random() < 0.3]  # most aliases go, some come
        exo.upsert({**old, "EmailAddresses": kept + _emails(r)})
    elif op == "entra":
        exo.upsert({**old, "ExternalDirectoryObjectId": _entra(r) or ""})
    else:
        exo.upsert({**old, "PrimarySmtpAddress": r.choice([_address(r), _valid(r), ""])})


class Stack:
    def __init__(self, directory: dict[str, Any], rules: dict[str, str], recipients: list[dict[str, Any]], types: str | None) -> None:
        self.graph = GraphEmulator(directory, max_page_size=3, max_members_per_page=2)
        self.receiver = SyncReceiver(domains=DOMAINS, credential=CREDENTIAL)
        self.exo = ExchangeEmulator(recipients, tenant=TENANT, max_page_size=2)
        self.rules = rules
        self.env = {**base_env(self.graph.start(), self.receiver.start(), f"file:{tempfile.mkdtemp(prefix='exo-oracle-')}/state"), **rules,
                    "EXO_MODE": "augment", "GRAPH_TENANT_ID": TENANT, "EXO_BASE_URL": self.exo.start()}
        self.types(types)

    def types(self, value: str | None) -> None:
        self.env.pop("EXO_RECIPIENT_TYPES", None)
        if value is not None:
            self.env["EXO_RECIPIENT_TYPES"] = value
        self.asked = {t.strip().lower() for t in (value or ",".join(AUGMENT)).split(",")}

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.graph.stop()
        self.receiver.stop()
        self.exo.stop()

    def oracle(self) -> dict[str, Any]:
        exo = [r for r in self.exo.recipients() if r["RecipientTypeDetails"].lower() in self.asked]
        return expected(self.graph.snapshot(), DOMAINS, exo=exo, **self.rules)

    def update_matches(self, kind: str | None) -> None:
        before = view(self.receiver)
        dry = run_cli("test-update", self.env, "--json")
        assert dry.code == 0, dry.stderr
        r = run_cli("update", self.env, "--json")
        assert r.code == 0, r.stderr
        s = r.summary
        if kind is not None:
            assert s["read"]["kind"] == kind
        assert s["exoRequests"] >= 1 and s["read"]["exchange"]["recipients"] == len(self.oracle_recipients())
        after = view(self.receiver)
        assert after == self.oracle()
        counted = {d: (v["added"], v["removed"]) for d, v in s["datasets"].items()}
        assert counted == changed(before, after)
        assert {d: (v["added"], v["removed"]) for d, v in dry.summary["datasets"].items()} == counted
        # test-update lists each candidate and user it counts as excluded, an Exchange recipient's
        # by its Guid and RecipientTypeDetails, with the reason (naming the setting for a rule); a
        # contact or recipient that the scope leaves out with no address to keep is listed without
        # a value, and not counted
        listed = dry.summary["exclusions"]
        counted_ = [e for e in listed if e["dataset"] != "addresses" or e["value"] is not None]
        assert {d: sum(1 for e in counted_ if e["dataset"] == d) for d in s["datasets"]} == {d: v["excluded"] for d, v in dry.summary["datasets"].items()}
        types = {r["Guid"]: r["RecipientTypeDetails"] for r in self.oracle_recipients()}
        for e in listed:
            if e["source"] == "Exchange Online":
                assert e["dataset"] == "addresses" and types[e["objectId"]] == e["objectType"], e
        # a delta round counts what is left out as a full read of both sources does
        assert {d: v["excluded"] for d, v in s["datasets"].items()} == {d: v["excluded"] for d, v in dry.summary["datasets"].items()}

    def oracle_recipients(self) -> list[dict[str, Any]]:
        return [r for r in self.exo.recipients() if r["RecipientTypeDetails"].lower() in self.asked]


def _graph_changes(r: random.Random) -> list[tuple]:
    ops = ["mail", "proxies", "type", "delete_user", "new_user", "add_member", "remove_member", "group"]
    return [(r.choice(ops), r.randint(0, 20), r.choice([None, _address(r)]), _proxies(r), r.choice([None, "Sales"])) for _ in range(r.randint(0, 3))]


def _some_rules(r: random.Random) -> dict[str, str]:
    """Each rule in a third of the examples: with all of them, few addresses are kept, and fewer
    are there to be deleted (a scope leaves out every recipient that is no Entra object)."""
    return {k: v for k, v in _rules(r).items() if r.random() < 0.35}


# No shrinking: each step is a CLI run; a failure prints its (unshrunk) example at once. One
# seed drives every choice of an example: Hypothesis' integers vary from the first examples on.
@settings(max_examples=25, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.generate])
@given(st.integers(0, 2**32), st.sampled_from(TYPE_SETTINGS), st.sampled_from([None, None, *TYPE_SETTINGS]))
def test_both_sources_full_then_delta_match_the_oracle(seed, types, new_types):
    r = random.Random(seed)
    with Stack(_tenant(r), _some_rules(r), _exchange(r), types) as s:
        s.update_matches("full")
        for c in _graph_changes(r):
            apply_change(s.graph, c)
        for c in _exo_changes(r):
            apply_exo_change(s.exo, c)
        kind: str | None = "delta"
        if new_types is not None and new_types != types:
            s.types(new_types)
            kind = None  # EXO_RECIPIENT_TYPES changed: Graph is read in full or as a delta round, as the engine sees fit
        s.update_matches(kind)


def test_a_recipient_that_drops_an_alias_has_it_deleted_unless_another_object_holds_it():
    """A recipient's changed EmailAddresses, read in full by a delta run: the alias it no longer
    has is deleted, the one a Graph user (or another recipient) still holds stays."""
    directory = {"users": [{"id": USERS[0], "mail": "shared@contoso.com", "proxyAddresses": [], "userType": "Member"}], "groups": [], "contacts": []}
    first = recipient(XG(1), "PublicFolder", "pf@contoso.com",
                      emails=["SMTP:pf@contoso.com", "smtp:gone@contoso.com", "smtp:Shared@Contoso.com", "smtp:both@fabrikam.com"])
    other = recipient(XG(2), "DynamicDistributionGroup", "ddg@contoso.com", emails=["SMTP:ddg@contoso.com", "smtp:both@fabrikam.com"])
    with Stack(directory, {}, [first, other], None) as s:
        s.update_matches("full")
        assert {"gone@contoso.com", "shared@contoso.com", "both@fabrikam.com"} <= view(s.receiver)["addresses"]
        s.exo.upsert({**first, "EmailAddresses": ["SMTP:pf@contoso.com", "smtp:new@contoso.com"]})
        s.update_matches("delta")
        held = view(s.receiver)["addresses"]
        assert "gone@contoso.com" not in held and {"new@contoso.com", "shared@contoso.com", "both@fabrikam.com"} <= held


@settings(max_examples=10, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.generate])
@given(st.integers(0, 2**32), st.sampled_from([None, "PublicFolder,UserMailbox,MailUser,GuestMailUser"]))
def test_exchange_alone_matches_the_oracle_run_after_run(seed, types):
    """EXO_MODE=only: no Graph request, the addresses dataset alone, every run a full read of
    Exchange whose vanished or changed recipients' addresses are deleted (the oracle over an
    empty Graph directory, Exchange's recipients of the asked types)."""
    r = random.Random(seed)
    rules = {k: v for k, v in _rules(r).items() if k != "SYNC_SCOPE_GROUPS" and r.random() < 0.4}
    empty = {"users": [], "groups": [], "contacts": []}
    with Stack(empty, rules, _exchange(r) + _exchange(r), types) as s:
        s.env.update(EXO_MODE="only", SYNC_DATASETS="addresses")
        s.asked = {t.lower() for t in (types.split(",") if types else EXO_ALL_TYPES)}
        for _ in range(2):
            before = view(s.receiver)["addresses"]
            u = run_cli("update", s.env, "--json")
            assert u.code == 0, u.stderr
            assert u.summary["graphRequests"] == 0 and u.summary["read"]["kind"] == "full"
            assert view(s.receiver) == expected(empty, DOMAINS, exo=s.oracle_recipients(), **rules)
            after = view(s.receiver)["addresses"]
            a = u.summary["datasets"]["addresses"]
            assert (a["added"], a["removed"]) == (len(after - before), len(before - after))
            for c in _exo_changes(r):
                apply_exo_change(s.exo, c)
