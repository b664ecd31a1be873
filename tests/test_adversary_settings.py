"""Adversarial checks of the settings rules (the contract's Exchange Online and Settings sections),
driven through the real CLI as the harness runs it. Each test asserts what the contract says; a
test marked xfail (strict) records a disagreement the lead has to settle: fix the product, or the
rule."""

from __future__ import annotations

import pytest

from devstack.graph_emulator import GraphEmulator
from tests.stack import base_env, nasty_directory, run_cli

TENANT = "11111111-2222-3333-4444-555555555555"


@pytest.fixture
def graph():
    em = GraphEmulator(nasty_directory())
    em.start()
    yield em
    em.stop()


@pytest.mark.xfail(strict=True, reason="sync-rules, Exchange Online: with EXO_MODE=only, SYNC_DATASETS must be "
                   "addresses; its default is addresses,groups,users, so unset is a settings error naming both settings")
def test_exo_only_with_sync_datasets_left_at_its_default_is_a_settings_error(graph, receiver, tmp_path):
    env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    # an Exchange endpoint that is never reached: the settings must stop the run first
    env.update({"EXO_MODE": "only", "GRAPH_TENANT_ID": TENANT, "EXO_BASE_URL": "http://127.0.0.1:9"})
    assert "SYNC_DATASETS" not in env
    r = run_cli("update", env, "--json")
    assert r.code != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "SYNC_DATASETS" in last and "EXO_MODE" in last
    # "A setting that is missing or malformed stops the run before any network call."
    assert receiver.request_log == [] and graph.request_count == 0
