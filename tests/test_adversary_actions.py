"""Adversarial checks of the actions and commands (the contract's Actions and Commands sections)
through the real CLI, with the settings the contract names and nothing else, as an independent
harness runs it. A test marked xfail (strict) records a disagreement between the product and the
contract that the lead has to settle: fix the product, or the rule."""

from __future__ import annotations

import pytest

from tests.stack import EXPECTED, U, base_env, run_cli, service_view


@pytest.fixture
def graph(nasty_graph):
    return nasty_graph


def contract_env(graph, receiver, tmp_path) -> dict[str, str]:
    """Only the settings of the contract's settings table: the deletion guard's thresholds are
    not among them, so a harness runs with the product's defaults."""
    env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    env.pop("DELETE_THRESHOLD_PERCENT")
    env.pop("DELETE_THRESHOLD_COUNT")
    return env


def test_one_departure_in_a_small_tenant_is_sent_with_the_contract_settings(graph, receiver, tmp_path):
    env = contract_env(graph, receiver, tmp_path)
    assert run_cli("update", env).code == 0
    assert service_view(receiver) == EXPECTED
    graph.delete_user(U(8))  # Dave leaves: one users record of five, one address of ten
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    assert r.summary["datasets"]["users"]["removed"] == 1 and r.summary["datasets"]["addresses"]["removed"] == 1
    view = service_view(receiver)
    assert U(8) not in view["users"] and "dave@fabrikam.com" not in view["addresses"]


def test_a_failure_prints_one_line_on_stderr(graph, receiver, tmp_path):
    env = contract_env(graph, receiver, tmp_path)
    env["SYNC_API_CREDENTIAL"] = "sync-admin:not-the-password"
    r = run_cli("update", env)
    assert r.code != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "SYNC_API_CREDENTIAL" in lines[0] and "not-the-password" not in lines[0]
