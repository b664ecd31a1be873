"""The timer-triggered function, called as the Functions host calls it."""

from __future__ import annotations

import asyncio
import datetime as dt

import azure.functions as func
import pytest

import function_app
from devstack.graph_emulator import GraphEmulator
from devstack.sync_receiver import SyncReceiver
from tests.stack import CREDENTIAL, DOMAINS, EXPECTED, app_functions, base_env, nasty_directory, service_view

FUNCTIONS = app_functions()


def timer_function():
    return FUNCTIONS["sync_timer"]


def test_the_timer_is_bound_to_sync_schedule():
    # "%SYNC_SCHEDULE%", or the hourly default when it is unset (tests/test_adversary_round7b.py)
    bindings = timer_function().get_bindings_dict()["bindings"]
    assert bindings == [{"direction": bindings[0]["direction"], "type": "timerTrigger", "name": "timer",
                         "schedule": function_app.TIMER_SCHEDULE, "runOnStartup": False, "useMonitor": True}]


def _timer(past_due: bool = False) -> func.TimerRequest:
    from azure.functions.timer import TimerRequest

    return TimerRequest(past_due=past_due, schedule_status={"Last": dt.datetime.now().isoformat()})


def test_the_timer_runs_update_against_the_stack(monkeypatch, tmp_path, azurite):
    with GraphEmulator(nasty_directory()) as graph, SyncReceiver(domains=DOMAINS, credential=CREDENTIAL) as receiver:
        env = base_env(graph.base_url, receiver.base_url, "blob:timer-state")
        env["AzureWebJobsStorage"] = azurite.connection_string
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        user_fn = timer_function().get_user_function()
        user_fn(_timer(past_due=True))
        assert service_view(receiver) == EXPECTED


def test_a_failed_run_raises_so_the_platform_records_a_failure(monkeypatch, tmp_path):
    with GraphEmulator(nasty_directory()) as graph, SyncReceiver(domains=DOMAINS, credential="someone:else") as receiver:
        for k, v in base_env(graph.base_url, receiver.base_url, f"file:{tmp_path}").items():
            monkeypatch.setenv(k, v)
        with pytest.raises(function_app.SyncRunFailed, match="401") as e:
            timer_function().get_user_function()(_timer())
        assert CREDENTIAL.split(":")[1] not in str(e.value)


def test_a_settings_error_raises_too(monkeypatch):
    monkeypatch.delenv("SYNC_API_URL", raising=False)
    monkeypatch.setenv("GRAPH_AUTH", "none")
    monkeypatch.setenv("GRAPH_BASE_URL", "http://127.0.0.1:9/v1.0")
    monkeypatch.setenv("SYNC_API_CREDENTIAL", "u:p")
    monkeypatch.setenv("SYNC_STATE", "file:/tmp/never-used")
    with pytest.raises(function_app.SyncRunFailed, match="SYNC_API_URL"):
        timer_function().get_user_function()(_timer())


def test_the_decorated_function_can_be_called_directly_even_inside_an_event_loop(monkeypatch, tmp_path):
    with GraphEmulator(nasty_directory()) as graph, SyncReceiver(domains=DOMAINS, credential=CREDENTIAL) as receiver:
        for k, v in base_env(graph.base_url, receiver.base_url, f"file:{tmp_path}").items():
            monkeypatch.setenv(k, v)

        async def from_async_code() -> None:
            function_app.sync_timer(_timer())  # the FunctionBuilder calls the user function

        asyncio.run(from_async_code())
        assert service_view(receiver) == EXPECTED
