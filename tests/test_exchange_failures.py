"""A page of Exchange Online that cannot be read in the end, as every action meets it
(docs/sync-rules.md, "The Exchange Online source": "if any page of either source could not be
read, the run fails and sends nothing"), over the whole small matrix: each kind of failure
(throttled with and without Retry-After, 503, another 5xx, a dropped connection, a malformed
page, 401, 403), on the first or a later page, for ``update`` (a first full read and a delta
round with changes in both sources), ``test-update`` and ``replace``. Each must fail with a line
that names Exchange Online, send nothing to the service (not even a replacement), count every
attempt in ``exoRequests``, and leave the state so that the next run, once Exchange answers
again, sends exactly what both sources then imply."""

from __future__ import annotations

import pytest

from devstack.exchange_emulator import ExchangeEmulator, recipient
from tests.spec_oracle import expected, view
from tests.stack import DOMAINS, EXPECTED, U, base_env, posts, service_view
from tests.test_conformance_oracle import run_cli

TENANT = "11111111-2222-3333-4444-555555555555"
ATTEMPTS = 6  # per page (shared/sources/exchange.py ExchangeSource.max_attempts)


def X(n: int) -> str:
    return f"e0fa0fa0-0000-4000-8000-{n:012d}"


EXO = {X(1): "ddg-one@contoso.com", X(2): "pf-two@fabrikam.com", X(3): "ddg-three@contoso.com"}
# (emulator fault, status, Retry-After): every way a page can keep failing
FAULTS = [("429", None, "0"), ("429", None, None), ("503", None, None), ("503", None, "0"), ("503", 500, None), ("503", 502, None),
          ("throttle", None, None), ("drop", None, None), ("malformed", None, None), ("401", None, None), ("403", None, None)]


@pytest.fixture
def stack(nasty_graph, receiver, tmp_path):
    types = ["DynamicDistributionGroup", "PublicFolder", "DynamicDistributionGroup"]
    exo = ExchangeEmulator([recipient(g, t, a) for (g, a), t in zip(EXO.items(), types, strict=True)], tenant=TENANT, max_page_size=2)
    exo.start()
    env = {**base_env(nasty_graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}"), "SYNC_TEST_BACKOFF_SECONDS": "0.001",
           "GRAPH_TENANT_ID": TENANT, "EXO_MODE": "augment", "EXO_BASE_URL": exo.base_url}
    yield env, exo, nasty_graph
    exo.stop()


def fails_sending_nothing(action: str, env: dict, exo: ExchangeEmulator, receiver, fault: tuple, page: int) -> None:
    kind, status, retry_after = fault
    receiver.clear_log()
    exo.fail(kind, status=status, retry_after=retry_after, on_page=page, times=99)
    r = run_cli(action, env, "--json")
    assert r.code not in (0, 4), r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "Exchange Online" in line and "nothing was sent" in line or "Exchange.ManageAsApp" in line, line
    assert posts(receiver) == []
    s = r.summary
    assert s["ok"] is False and s["syncRequests"] == len(receiver.request_log)  # reads of the service alone (GET)
    tries = 1 if kind in ("401", "403") else ATTEMPTS
    assert s["exoRequests"] == page + tries  # the pages before, then every attempt at the failing one
    exo.clear_faults()


@pytest.mark.parametrize("page", [0, 1])
@pytest.mark.parametrize("fault", FAULTS, ids=[f"{k}-{s}-{ra}" for k, s, ra in FAULTS])
def test_update_full_then_delta_sends_nothing_until_exchange_answers(stack, receiver, fault, page):
    env, exo, graph = stack
    fails_sending_nothing("update", env, exo, receiver, fault, page)
    assert service_view(receiver)["addresses"] == set()
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    assert service_view(receiver)["addresses"] == EXPECTED["addresses"] | set(EXO.values())
    # a delta round with changes in both sources, then the same failure
    graph.delete_user(U(1))
    exo.delete(X(1))
    exo.upsert(recipient(X(4), "PublicFolder", "pf-four@contoso.com"))
    fails_sending_nothing("update", env, exo, receiver, fault, page)
    assert service_view(receiver)["addresses"] == EXPECTED["addresses"] | set(EXO.values())
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    assert view(receiver) == expected(graph.snapshot(), DOMAINS, exo=exo.recipients())
    assert U(1) not in view(receiver)["users"] and "ddg-one@contoso.com" not in view(receiver)["addresses"]


@pytest.mark.parametrize("action", ["test-update", "replace"])
@pytest.mark.parametrize("fault", [FAULTS[1], FAULTS[4], FAULTS[7], FAULTS[10]], ids=["429", "500", "drop", "403"])
def test_test_update_and_replace_send_nothing_either(stack, receiver, action, fault):
    env, exo, _ = stack
    assert run_cli("update", env).code == 0
    held = service_view(receiver)
    fails_sending_nothing(action, env, exo, receiver, fault, 1)
    assert service_view(receiver) == held
    r = run_cli("update", env, "--json")  # the state was left as it was: nothing to send
    assert r.code == 0, r.stderr
    assert all(v["added"] == v["removed"] == 0 for v in r.summary["datasets"].values())
