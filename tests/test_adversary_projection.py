"""Adversarial checks of the projection rules (the contract's datasets, scope and exclusions
sections) on nasty data, through the real CLI against the Graph emulator and the strict
receiver, as the harness runs it. A test marked xfail (strict) records a disagreement between
the product and the contract that the lead has to settle: fix the product, or the rule."""

from __future__ import annotations

import pytest

from devstack.graph_emulator import GraphEmulator
from tests.stack import U, base_env, run_cli, service_view
from tests.test_scope import RULES, scope_directory


def run(directory: dict, receiver, tmp_path, action: str = "update", **settings: str):
    graph = GraphEmulator(directory)
    graph.start()
    try:
        env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
        env.update(settings)
        r = run_cli(action, env, "--json")
        assert r.code == 0, r.stderr
        return r.summary
    finally:
        graph.stop()


@pytest.mark.parametrize("blank", ["   ", "\t"])
def test_a_blank_display_name_is_the_group_name(receiver, tmp_path, blank):
    gid = "20000000-0000-0000-0000-00000000000b"
    directory = {"groups": [{"id": gid, "displayName": blank, "mail": "team@contoso.com", "proxyAddresses": [], "members": []}]}
    run(directory, receiver, tmp_path)
    assert service_view(receiver)["groups"] == {gid: {"id": gid, "name": blank, "parentIds": []}}


def test_a_user_left_out_by_the_address_patterns_is_reported_naming_the_setting(receiver, tmp_path):
    s = run(scope_directory(), receiver, tmp_path, "test-update", **RULES)
    # U(10): mail and SMTP: are both info-desk@contoso.com, which the pattern info.desk@contoso\.com matches,
    # so the user has no primary address because of EXCLUDE_ADDRESS_PATTERNS alone.
    assert U(10) not in {u["id"] for u in s["changes"]["users"]["added"]}
    reasons = [e["reason"] for e in s["exclusions"] if e["dataset"] == "users" and e["objectId"] == U(10)]
    assert reasons and all("EXCLUDE_ADDRESS_PATTERNS" in why for why in reasons)
