"""Messages a newcomer meets on a machine with no Azure settings name what is wrong and what to
do about it (README, "Settings"; docs/sync-rules.md, "Settings")."""

from __future__ import annotations

import pytest

from shared.common.errors import SettingsError
from shared.config.state_settings import load_state_settings


@pytest.mark.parametrize("env", [{}, {"SYNC_STATE": "blob:sync-state"}, {"SYNC_STATE": "blob:other-state"}])
def test_blob_state_without_a_storage_account_names_both_ways_out(env: dict[str, str]) -> None:
    """``status`` on a laptop with nothing set: the default state is ``blob:sync-state``, which
    needs a storage account. The error names the setting, the two ways to give the account,
    and the local alternative, ``SYNC_STATE=file:<directory>``."""
    with pytest.raises(SettingsError) as caught:
        load_state_settings(env)
    message = str(caught.value)
    assert message.startswith("setting AzureWebJobsStorage:")
    assert f"SYNC_STATE={env.get('SYNC_STATE', 'blob:sync-state')}" in message
    assert "AzureWebJobsStorage__blobServiceUri" in message
    assert "SYNC_STATE=file:<directory>" in message


def test_the_read_reason_without_a_cache_does_not_blame_a_complete_replace() -> None:
    """A complete ``replace`` keeps the directory cache and delta links of its full read, so
    the next update reads delta rounds; only one that stopped part-way leaves no cache. The
    reason an update gives for its full read says so (docs/sync-rules.md, "Full read or delta read")."""
    import datetime as dt
    from types import SimpleNamespace

    from shared.reading import why_full

    db = SimpleNamespace(delta_links=None, directory_cache="partial", converted_from=None,
                         last_full_read="2026-01-01T00:00:00+00:00", read_fingerprint={})
    reason = why_full(db, {}, 24.0, dt.datetime.now(dt.UTC))
    assert reason is not None and "after refresh" in reason and "a replace that did not finish" in reason


def test_the_demo_scope_preview_says_what_each_rule_leaves_out_even_nothing() -> None:
    """README, "The two commands", step 4: the scoped preview lists what each rule leaves out.
    In the demo's scope every excluded object is already outside SYNC_SCOPE_GROUPS, so the run's
    ``ruleExclusions`` counts name that setting alone: the guest and no-reply rules must still
    get their line ("leaves out nothing here"), not vanish below the eight largest reasons."""
    from devstack.demo import rule_lines

    summary = {"ruleExclusions": {"counts": {"SYNC_SCOPE_GROUPS": {"addresses": 3250, "groups": 260, "users": 2516},
                                             "EXCLUDE_ADDRESS_PATTERNS": {"addresses": 3}}}}
    rules = {"SYNC_SCOPE_GROUPS": "g", "EXCLUDE_USER_TYPES": "Guest", "EXCLUDE_ADDRESS_PATTERNS": "no-?reply@.*"}
    assert rule_lines(summary, rules) == [
        "    rule SYNC_SCOPE_GROUPS leaves out: addresses 3250, groups 260, users 2516",
        "    rule EXCLUDE_USER_TYPES leaves out nothing here",
        "    rule EXCLUDE_ADDRESS_PATTERNS leaves out: addresses 3",
    ]


@pytest.mark.parametrize(("datasets", "warned"), [("users", True), ("addresses,users", True), ("groups,users", False),
                                                   ("addresses", False), ("addresses,groups,users", False)])
def test_users_without_groups_is_warned_about(datasets: str, warned: bool, caplog) -> None:
    """``SYNC_DATASETS=users`` without ``groups``: every user record's ``groupIds`` names
    groups this sync does not send, so the service rejects each member of a group with
    ``unknown_group`` unless something else keeps its groups (docs/sync-api.md, 4.3). The
    setting is allowed; a warning names both datasets and the way out."""
    import logging

    from shared.config.settings import load_settings

    env = {"GRAPH_AUTH": "none", "GRAPH_BASE_URL": "http://127.0.0.1:1/v1.0", "SYNC_API_URL": "http://127.0.0.1:1/v1",
           "SYNC_API_CREDENTIAL": "token", "SYNC_STATE": "file:/nonexistent/state", "SYNC_DATASETS": datasets}
    with caplog.at_level(logging.WARNING, logger="shared"):
        load_settings(env)
    messages = [r.getMessage() for r in caplog.records if "SYNC_DATASETS" in r.getMessage()]
    assert bool(messages) == warned
    if warned:
        assert "unknown_group" in messages[0] and "add groups to SYNC_DATASETS" in messages[0]
