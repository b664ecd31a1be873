"""One retry policy per Graph request: ``GraphSource._fetch`` owns retries and no
other layer retries, so a throttled page costs at most ``max_attempts`` requests, counted
here by the Graph emulator (a real HTTP server on loopback) under 429 and 503 faults."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from devstack.graph_emulator import GraphEmulator
from shared.common.errors import IncompleteReadError
from shared.sources.graph import GraphSource
from tests.test_graph_emulator import small_directory

MAX_ATTEMPTS = 4


class _Sink:
    """A round sink (``shared.sources.graph.RoundSink``) that keeps the user ids it is handed."""

    def __init__(self) -> None:
        self.users: list[str] = []

    def take(self, collection: str, obj: dict[str, Any]) -> None:
        if collection == "users":
            self.users.append(obj["id"])


@pytest.fixture
def emulator():
    emu = GraphEmulator(small_directory(20))
    emu.start()
    yield emu
    emu.stop()


def _read(emu: GraphEmulator) -> tuple[_Sink, GraphSource]:
    async def go() -> tuple[_Sink, GraphSource]:
        source = GraphSource(emu.base_url, None, max_attempts=MAX_ATTEMPTS, backoff_seconds=0.01)
        sink = _Sink()
        try:
            await source.read_directory(sink)
        finally:
            await source.aclose()
        return sink, source

    return asyncio.run(go())


def _user_requests(emu: GraphEmulator) -> int:
    return sum(1 for _, target in emu.request_log if "/users" in target)


@pytest.mark.parametrize("kind", ["429", "503"])
@pytest.mark.parametrize("failures", [1, 2, MAX_ATTEMPTS - 1])
def test_a_throttled_page_is_retried_by_one_layer_only(emulator: GraphEmulator, kind: str, failures: int) -> None:
    emulator.inject_fault(kind, path_contains="/users", times=failures, retry_after=0)
    sink, source = _read(emulator)
    assert len(sink.users) == 20
    # One page of users: the failed attempts plus the one that worked, nothing more.
    assert _user_requests(emulator) == failures + 1
    assert source.stats.retries == failures


@pytest.mark.parametrize("kind", ["429", "503"])
def test_a_page_that_stays_throttled_costs_exactly_max_attempts_requests(emulator: GraphEmulator, kind: str) -> None:
    emulator.inject_fault(kind, path_contains="/users", times=1000, retry_after=0)
    with pytest.raises(IncompleteReadError, match=f"after {MAX_ATTEMPTS} attempts .*HTTP {kind}"):
        _read(emulator)
    # With a second retry layer (msgraph's RetryHandler, 3 retries) this would be (1 + 3) x MAX_ATTEMPTS.
    assert _user_requests(emulator) == MAX_ATTEMPTS
