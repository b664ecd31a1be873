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
    uniform,
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


def _recipient(r: random.Random, n: int) -> dict[str, Any]:
    primary = r.choice(["", _address(r), r.choice(SHARED), "alice@contoso.com"])
    emails = _proxies(r) + ([f"SMTP:{primary}"] if primary and r.random() < 0.7 else [])
    return recipient(XG(n), r.choice(KINDS), primary, emails=r.sample(emails, len(emails)), entra_id=_entra(r))


def _exchange(r: random.Random) -> list[dict[str, Any]]:
    return [_recipient(r, n) for n in range(r.randint(0, 5))]


def _exo_changes(r: random.Random) -> list[tuple[str, int, float]]:
    return [(r.choice(["delete", "new", "emails", "entra", "primary"]), r.randint(0, 6), r.random()) for _ in range(r.randint(0, 4))]


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
        exo.upsert({**old, "EmailAddresses": _proxies(r)})
    elif op == "entra":
        exo.upsert({**old, "ExternalDirectoryObjectId": _entra(r) or ""})
    else:
        exo.upsert({**old, "PrimarySmtpAddress": _address(r)})


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
        # a delta round counts what is left out as a full read of both sources does
        assert {d: v["excluded"] for d, v in s["datasets"].items()} == {d: v["excluded"] for d, v in dry.summary["datasets"].items()}

    def oracle_recipients(self) -> list[dict[str, Any]]:
        return [r for r in self.exo.recipients() if r["RecipientTypeDetails"].lower() in self.asked]


# No shrinking: each step is a CLI run; a failure prints its (unshrunk) example at once.
@settings(max_examples=20, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.generate])
@given(uniform(_tenant), uniform(_rules), uniform(_exchange), st.sampled_from(TYPE_SETTINGS),
       uniform(lambda r: [(r.choice(["mail", "proxies", "type", "delete_user", "new_user", "add_member", "remove_member", "group"]),
                           r.randint(0, 20), r.choice([None, _address(r)]), _proxies(r), r.choice([None, "Sales"]))
                          for _ in range(r.randint(0, 3))]),
       uniform(_exo_changes), st.sampled_from([None, None, *TYPE_SETTINGS]))
def test_both_sources_full_then_delta_match_the_oracle(directory, rules, recipients, types, graph_changes, exo_changes, new_types):
    with Stack(directory, rules, recipients, types) as s:
        s.update_matches("full")
        for c in graph_changes:
            apply_change(s.graph, c)
        for c in exo_changes:
            apply_exo_change(s.exo, c)
        kind: str | None = "delta"
        if new_types is not None and new_types != types:
            s.types(new_types)
            kind = None  # EXO_RECIPIENT_TYPES changed: Graph is read in full or as a delta round, as the engine sees fit
        s.update_matches(kind)
