"""Adversarial checks, round 7b: the Function's doors, the Exchange Online source and Graph's
shapes, against the contract (docs/sync-rules.md; docs/sync-api.md), through the real product
and the loopback emulators."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.stack import ROOT, base_env, run_cli

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
    (docs/sync-rules.md, Exchange Online): a run that a malformed setting stops before any
    request says 0 of each, as it says graphRequests."""
    env = {**base_env("http://127.0.0.1:9/v1.0", "http://127.0.0.1:9/v1", f"file:{tmp_path / 'state'}"),
           "GRAPH_TENANT_ID": "11111111-2222-3333-4444-555555555555", "EXO_MODE": "augment", "EXO_BASE_URL": "http://127.0.0.1:9",
           "EXO_RECIPIENT_TYPES": "DynamicDistributionGroup,NoSuchType"}
    r = run_cli(action, env, "--json")
    assert r.code == 2, r.stderr
    s = r.summary
    assert s["ok"] is False and "EXO_RECIPIENT_TYPES" in s["error"]
    assert s["graphRequests"] == 0 and s["exoRequests"] == 0
