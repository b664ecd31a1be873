"""One storage factory for ``file:`` and ``blob:`` (shared/storage/backend.py): a run's state
store, run lock and run reports share one blob service client, so one credential, against
Azurite; a ``file:`` run builds none."""

from __future__ import annotations

import asyncio

import pytest
from azure.storage.blob import BlobServiceClient

from devstack.graph_emulator import GraphEmulator
from devstack.sync_receiver import SyncReceiver
from shared.config.settings import load_settings
from shared.engine import run
from shared.operations import status
from tests.stack import CREDENTIAL, DOMAINS, EXPECTED, base_env, nasty_directory, service_view


@pytest.fixture
def built(monkeypatch) -> list[str]:
    """The account URL of every BlobServiceClient built while the test runs."""
    made: list[str] = []
    original = BlobServiceClient.__init__

    def counting(self, account_url, *args, **kwargs):
        made.append(account_url)
        original(self, account_url, *args, **kwargs)

    monkeypatch.setattr(BlobServiceClient, "__init__", counting)
    return made


def test_one_blob_run_builds_one_blob_client(azurite, built):
    with GraphEmulator(nasty_directory()) as graph, SyncReceiver(domains=DOMAINS, credential=CREDENTIAL) as receiver:
        env = base_env(graph.base_url, receiver.base_url, "blob:one-client")
        env["AzureWebJobsStorage"] = azurite.connection_string
        settings = load_settings(env)
        summary = asyncio.run(run("update", settings, env=env))
        assert summary.ok, summary.error
        assert service_view(receiver) == EXPECTED
        assert len(built) == 1  # the lock, the state and the report of this run
        built.clear()
        again = asyncio.run(run("update", settings, env=env))
        assert again.ok and len(built) == 1
        built.clear()
        shown = asyncio.run(status(settings))
        assert [r["action"] for r in shown["runs"]] == ["update", "update"]
        assert len(built) == 1  # the state and the reports read by status


def test_a_file_run_builds_no_blob_client(tmp_path, built):
    with GraphEmulator(nasty_directory()) as graph, SyncReceiver(domains=DOMAINS, credential=CREDENTIAL) as receiver:
        env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path}")
        summary = asyncio.run(run("update", load_settings(env), env=env))
        assert summary.ok, summary.error
        assert service_view(receiver) == EXPECTED
        assert built == []
