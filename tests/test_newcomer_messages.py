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
