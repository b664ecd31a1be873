"""The recovery guarantee with Exchange Online as a source (docs/sync-rules.md, "The recovery
guarantee"; tests/test_crash_matrix.py does the same for Graph's changes): a recipient changes
(vanishes, gains an alias, appears), an ``update`` is killed with SIGKILL while its address
write is applied but not answered, or during its final commit; Exchange then undoes the change;
ONE more ``update`` must leave the service equal to what both sources imply."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from devstack.exchange_emulator import ExchangeEmulator, recipient
from devstack.graph_emulator import GraphEmulator
from devstack.sync_receiver import SyncReceiver
from tests.spec_oracle import expected, view
from tests.stack import CREDENTIAL, DOMAINS, base_env
from tests.test_crash_matrix import Killer, commit_killed_update, directory, in_process_update, killed_update

TENANT = "11111111-2222-3333-4444-555555555555"
DDG = recipient("e0ec0ec0-0000-4000-8000-000000000001", "DynamicDistributionGroup", "all-staff@contoso.com",
                emails=["SMTP:all-staff@contoso.com", "smtp:staff@fabrikam.com"])
PF = recipient("e0ec0ec0-0000-4000-8000-000000000002", "PublicFolder", "pf@contoso.com")
NEW = recipient("e0ec0ec0-0000-4000-8000-000000000003", "PublicFolder", "new-pf@contoso.com", emails=["SMTP:new-pf@contoso.com", "smtp:np@fabrikam.com"])

# pattern -> (change, undo) on the Exchange emulator
PATTERNS: dict[str, tuple[Callable[[ExchangeEmulator], None], Callable[[ExchangeEmulator], None]]] = {
    "recipient vanished, then back": (lambda e: e.delete(DDG["Guid"]), lambda e: e.upsert(DDG)),
    "alias added, then removed": (lambda e: e.upsert({**PF, "EmailAddresses": ["SMTP:pf@contoso.com", "smtp:pf-alias@fabrikam.com"]}),
                                  lambda e: e.upsert(PF)),
    "recipient appeared, then vanished": (lambda e: e.upsert(NEW), lambda e: e.delete(NEW["Guid"])),
}


@pytest.fixture
def stack(tmp_path):
    graph = GraphEmulator(directory())
    receiver = SyncReceiver(domains=DOMAINS, credential=CREDENTIAL)
    exo = ExchangeEmulator([DDG, PF], tenant=TENANT)
    env = {**base_env(graph.start(), receiver.start(), f"file:{tmp_path / 'state'}"),
           "GRAPH_TENANT_ID": TENANT, "EXO_MODE": "augment", "EXO_BASE_URL": exo.start()}
    yield graph, receiver, exo, env
    for part in (graph, receiver, exo):
        part.stop()


def converged(graph: GraphEmulator, receiver: SyncReceiver, exo: ExchangeEmulator) -> bool:
    return view(receiver) == expected(graph.snapshot(), DOMAINS, exo=exo.recipients())


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_one_update_after_a_killed_run_and_an_undo_in_exchange_converges(stack, pattern):
    graph, receiver, exo, env = stack
    killer = Killer(receiver)
    assert in_process_update(env)["ok"] and converged(graph, receiver, exo)
    change, undo = PATTERNS[pattern]
    kills: list[tuple[str, Callable[[], object]]] = [
        ("with its address write applied, not answered", lambda: killed_update(env, killer, ("applied", 1))),
        ("between the commit and the publish", lambda: commit_killed_update(env, "between commit and publish")),
        ("before the database commit", lambda: commit_killed_update(env, "before the database commit")),
    ]
    for label, kill in kills:
        change(exo)
        kill()
        undo(exo)
        after = in_process_update(env)
        assert after["ok"], f"{pattern}, killed {label}: {after.get('error')}"
        assert after["read"]["kind"] == "delta", f"{pattern}, killed {label}: {after['read']}"
        assert converged(graph, receiver, exo), f"{pattern}, killed {label}: the service differs from what both sources imply"
        assert receiver.keys_reused_with_different_body() == []
