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
