"""``status``'s lines about what the scope and exclusion settings left out (shared/model/rules.py
``rule_exclusion_lines``), through the real CLI against the Graph emulator and the strict
receiver: the "... and N more" line says how many listed exclusions it does not show, also when
some of them are contacts the scope leaves out with no address to keep, which are listed but not
counted (docs/sync-rules.md, "Scope and exclusions")."""

from __future__ import annotations

import re

import pytest

from devstack.graph_emulator import GraphEmulator
from tests.stack import C, G, U, base_env, run_cli

CONTACTS = 12  # contacts outside the scope, none with an address: listed, not counted


def directory() -> dict:
    return {
        "users": [
            {"id": U(1), "mail": "in@contoso.com", "proxyAddresses": []},
            {"id": U(2), "mail": "out@contoso.com", "proxyAddresses": []},  # outside the scope: 1 address, 1 user
        ],
        "groups": [
            {"id": G(1), "displayName": "Scope", "mail": None, "members": [U(1)]},
            {"id": G(2), "displayName": "Elsewhere", "mail": None, "members": [U(2)]},  # outside: 1 group
        ],
        "contacts": [{"id": C(n), "displayName": f"contact {n}", "mail": None, "proxyAddresses": []} for n in range(1, CONTACTS + 1)],
    }


@pytest.fixture
def graph():
    em = GraphEmulator(directory())
    em.start()
    yield em
    em.stop()


def test_status_says_how_many_exclusions_it_does_not_show(graph, receiver, tmp_path):
    env = {**base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}"), "SYNC_SCOPE_GROUPS": G(1)}
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    rules = r.summary["ruleExclusions"]
    assert rules["counts"] == {"SYNC_SCOPE_GROUPS": {"addresses": 1, "groups": 1, "users": 1}}
    listed = rules["items"]
    assert len(listed) == CONTACTS + 3 and "itemsTruncated" not in rules
    status = run_cli("status", env)
    assert status.code == 0, status.stderr
    shown = [line for line in status.stdout.splitlines() if line.startswith("    ") and "SYNC_SCOPE_GROUPS" in line and "..." not in line]
    assert len(shown) == 10
    more = re.search(r"\.\.\. and ([\d,]+) more", status.stdout)
    assert more is not None, status.stdout
    assert int(more.group(1).replace(",", "")) == len(listed) - len(shown)


def test_status_does_not_say_nothing_was_left_out_while_it_lists_what_was(tmp_path, receiver):
    """Only contacts with no address outside the scope: nothing is counted, but each is listed."""
    em = GraphEmulator({"users": [{"id": U(1), "mail": "in@contoso.com", "proxyAddresses": []}],
                        "groups": [{"id": G(1), "displayName": "Scope", "mail": None, "members": [U(1)]}],
                        "contacts": [{"id": C(1), "displayName": "contact", "mail": None, "proxyAddresses": []}]})
    em.start()
    try:
        env = {**base_env(em.base_url, receiver.base_url, f"file:{tmp_path / 'state'}"), "SYNC_SCOPE_GROUPS": G(1)}
        r = run_cli("update", env, "--json")
        assert r.code == 0, r.stderr
        assert r.summary["ruleExclusions"]["counts"] == {}
        assert [(i["objectId"], i["value"]) for i in r.summary["ruleExclusions"]["items"]] == [(C(1), None)]
        status = run_cli("status", env)
    finally:
        em.stop()
    assert status.code == 0, status.stderr
    assert C(1) in status.stdout
    block = status.stdout.split("left out by the scope and exclusion settings", 1)[1]
    assert "  nothing" not in block.split(C(1), 1)[0], status.stdout
