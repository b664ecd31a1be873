"""Adversarial checks of the actions and commands (the contract's Actions and Commands sections)
through the real CLI, with the settings the contract names and nothing else, as an independent
harness runs it. A test marked xfail (strict) records a disagreement between the product and the
contract that the lead has to settle: fix the product, or the rule."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.loopback import closed_port
from tests.stack import EXPECTED, ROOT, U, base_env, run_cli, service_view


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


FAILURES = {
    # kind of failure: (what it changes, exit status, a word the error line names)
    "a malformed setting": ({"EXCLUDE_ADDRESS_PATTERNS": "(\nunclosed"}, 2, "EXCLUDE_ADDRESS_PATTERNS"),
    "a refused credential": ({"SYNC_API_CREDENTIAL": "sync-admin:not-the-password"}, 1, "SYNC_API_CREDENTIAL"),
    "a scope that names no group": ({"SYNC_SCOPE_GROUPS": "00000000-0000-0000-0000-0000000000ff"}, 2, "SYNC_SCOPE_GROUPS"),
    "Graph unreachable": ({"GRAPH_BASE_URL": "closed"}, 1, "GRAPH_BASE_URL"),
    "Graph's root without its version": ({"GRAPH_BASE_URL": "no-version"}, 1, "GRAPH_BASE_URL"),
    "the deletion guard": ({"DELETE_THRESHOLD_FLOOR": "0", "departure": "yes"}, 4, "deletion guard"),
}


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_every_kind_of_failure_ends_stderr_with_its_one_error_line(graph, receiver, tmp_path, kind):
    """Whatever fails, stderr holds the run's warnings (the nasty directory's invalid values)
    and then one error line, last; no INFO, ERROR or traceback lines (docs/sync-rules.md,
    "Commands and exit statuses")."""
    change, status, named = FAILURES[kind]
    env = contract_env(graph, receiver, tmp_path)
    if change.get("departure"):
        assert run_cli("update", env).code == 0
        graph.delete_user(U(8))
    env.update({k: v for k, v in change.items() if k != "departure"})
    if env.get("GRAPH_BASE_URL") == "closed":
        env["GRAPH_BASE_URL"] = f"http://127.0.0.1:{closed_port()}/v1.0"
    if env.get("GRAPH_BASE_URL") == "no-version":  # the emulator's root, as an operator might paste it
        env["GRAPH_BASE_URL"] = contract_env(graph, receiver, tmp_path)["GRAPH_BASE_URL"].removesuffix("/v1.0")
    r = run_cli("update", env)
    assert r.code == status, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert errors == [len(lines) - 1], lines
    assert named in lines[-1], lines[-1]
    assert all(" WARNING " in line for line in lines[:-1]), lines


# --- standard output that cannot carry every character --------------------------------------------
SCOPE, SOUTH = "20000000-0000-0000-0000-000000000001", "20000000-0000-0000-0000-000000000002"
UNICODE_DIRECTORY = {
    "users": [{"id": U(1), "mail": "jörg@contoso.com", "proxyAddresses": ["SMTP:joerg@contoso.com"]}],
    "groups": [{"id": SCOPE, "displayName": "Zürich", "mail": None, "proxyAddresses": [], "members": [U(1)]},
               {"id": SOUTH, "displayName": "Vertrieb – Süd 🚀", "mail": None, "proxyAddresses": [], "members": []}],
    "contacts": [],
}


def _run_in(encoding: str, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """The CLI with standard streams in ``encoding`` (their bytes decoded as such)."""
    p = subprocess.run([sys.executable, "-m", "tests.launcher", *args], cwd=ROOT, env={**env, "PYTHONIOENCODING": encoding},
                       capture_output=True, timeout=120)
    return p.returncode, p.stdout.decode(encoding), p.stderr.decode(encoding, "replace")


@pytest.mark.parametrize("encoding", ["ascii", "latin-1", "cp1252"])
@pytest.mark.parametrize("action", ["test-update", "update"])
def test_a_summary_with_any_text_reaches_a_stdout_of_any_encoding(receiver, tmp_path, encoding, action):
    """A group name or an exclusion in any script, with standard output in a legacy encoding (a
    Windows console, an ISO-8859 locale, a pipe with PYTHONIOENCODING): ``--json`` still ends
    stdout with the one JSON line, holding the same text, and a run that succeeded exits 0
    (docs/sync-rules.md, "Commands and exit statuses"); without ``--json`` the report is printed, never a traceback."""
    from devstack.graph_emulator import GraphEmulator

    graph = GraphEmulator(UNICODE_DIRECTORY)
    graph.start()
    try:
        # The scope leaves "Vertrieb – Süd 🚀" out: the summary names it among what the rules left out.
        env = {**base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}"), "SYNC_SCOPE_GROUPS": SCOPE}
        code, out, err = _run_in(encoding, env, action, "--json")
        assert code == 0 and "Traceback" not in err, err
        s = json.loads(out.strip().splitlines()[-1])
        assert s["ok"] is True
        assert "Vertrieb – Süd 🚀" in [e["value"] for e in s["ruleExclusions"]["items"]]
        if action == "test-update":
            assert [g["name"] for g in s["changes"]["groups"]["added"]] == ["Zürich"]
            assert "jörg@contoso.com" in [e["value"] for e in s["exclusions"]]
        else:
            assert [g["name"] for g in receiver.records("groups").values()] == ["Zürich"]
        code, out, err = _run_in(encoding, env, action)  # without --json: the report
        assert code == 0 and "Traceback" not in err, err
        assert "Vertrieb" in out or action == "update", out  # (the second update has nothing to send)
    finally:
        graph.stop()
