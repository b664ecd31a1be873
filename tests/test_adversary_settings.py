"""Adversarial checks of the settings rules (the contract's Exchange Online and Settings sections),
driven through the real CLI as the harness runs it. Each test asserts what the contract says; a
test marked xfail (strict) records a disagreement the lead has to settle: fix the product, or the
rule."""

from __future__ import annotations

import pytest

from tests.stack import base_env, run_cli

TENANT = "11111111-2222-3333-4444-555555555555"


@pytest.fixture
def graph(nasty_graph):
    return nasty_graph


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


def _settings_error(r, setting: str, graph, receiver) -> str:
    """What the contract asks of a malformed setting: a non-zero exit before any network call,
    one line on stderr (no traceback) that names the setting, and the --json summary with ok false."""
    assert r.code != 0
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert setting in last, last
    assert r.summary["ok"] is False
    assert receiver.request_log == [] and graph.request_count == 0
    return last


@pytest.mark.parametrize("pattern", ["noreply{99999999999}@contoso\\.com", "(" * 600 + "x" + ")" * 600 + "@contoso\\.com"],
                         ids=["repeat-overflow", "nesting-recursion"])
def test_an_expression_python_cannot_compile_is_a_settings_error_that_quotes_it(graph, receiver, tmp_path, pattern):
    env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    env["EXCLUDE_ADDRESS_PATTERNS"] = f"ok@contoso\\.com,{pattern}"
    last = _settings_error(run_cli("test-update", env, "--json"), "EXCLUDE_ADDRESS_PATTERNS", graph, receiver)
    assert pattern[:40] in last


@pytest.mark.parametrize("token", ["t\u00f6k\u00e9n-Canary-4d2f", "tok\nen-Canary-4d2f"], ids=["non-ascii", "newline"])
def test_a_bearer_token_no_header_can_carry_is_a_settings_error(graph, receiver, tmp_path, token):
    env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    env["SYNC_API_CREDENTIAL"] = token
    r = run_cli("update", env, "--json")
    _settings_error(r, "SYNC_API_CREDENTIAL", graph, receiver)
    # no secret, nor a piece of it, in any output ("position 8" of the header names one of its characters)
    assert "Canary-4d2f" not in r.stderr + r.stdout and "\\xf6" not in r.stderr


@pytest.mark.parametrize("setting,value", [
    ("GRAPH_BASE_URL", "http://127.0.0.1:99999/v1.0"),
    ("GRAPH_BASE_URL", "http://127.0.0.1:abc/v1.0"),
    ("SYNC_API_URL", "http://127.0.0.1:99999/v1"),
    ("EXO_BASE_URL", "http://127.0.0.1:abc"),
])
def test_a_url_with_an_impossible_port_is_a_settings_error(graph, receiver, tmp_path, setting, value):
    env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    if setting == "EXO_BASE_URL":
        env.update({"EXO_MODE": "augment", "GRAPH_TENANT_ID": TENANT})
    env[setting] = value
    _settings_error(run_cli("update", env, "--json"), setting, graph, receiver)


@pytest.mark.parametrize("schedule", ["99 0 * * * *", "0 0 25 * * *", "0 0 * 32 * *", "0 0 * * * FOO", "x y z a b c", "25:99:99"])
def test_an_ncrontab_schedule_out_of_range_is_a_settings_error(graph, receiver, tmp_path, schedule):
    env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
    env["SYNC_SCHEDULE"] = schedule
    _settings_error(run_cli("update", env, "--json"), "SYNC_SCHEDULE", graph, receiver)
