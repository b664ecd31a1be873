"""The collector policy of a run (shared/common/collector.py): applied inside, restored after,
counted across overlapping runs, and a host's choice (collections off) kept."""

from __future__ import annotations

import gc
import threading

import pytest

from shared.common import collector


@pytest.fixture(autouse=True)
def _restore_gc():
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


def test_applied_inside_and_restored_after() -> None:
    gc.set_threshold(700, 10, 10)
    with collector.during_run():
        assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, 10, 10)
        assert gc.get_freeze_count() > 0  # the objects alive at the start are out of the scans
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0  # given back: nothing frozen outlives the run


def test_restored_when_the_run_raises() -> None:
    gc.set_threshold(900, 11, 12)
    with pytest.raises(RuntimeError), collector.during_run():
        raise RuntimeError("the run failed")
    assert gc.get_threshold() == (900, 11, 12)
    assert gc.get_freeze_count() == 0


def test_a_higher_threshold_of_the_host_is_kept_and_zero_stays_zero() -> None:
    gc.set_threshold(50_000, 10, 10)
    with collector.during_run():
        assert gc.get_threshold()[0] == 50_000
    gc.set_threshold(0, 10, 10)  # the host turned automatic collections off
    with collector.during_run():
        assert gc.get_threshold()[0] == 0
    assert gc.get_threshold() == (0, 10, 10)


@pytest.mark.parametrize("order", ["nested", "first ends first", "second ends first"])
def test_overlapping_runs_restore_once_the_last_one_ends(order: str) -> None:
    gc.set_threshold(700, 10, 10)
    first, second = collector.during_run(), collector.during_run()
    first.__enter__()
    second.__enter__()
    ends = [first, second] if order == "first ends first" else [second, first]
    ends[0].__exit__(None, None, None)
    assert gc.get_threshold()[0] == collector.YOUNG_THRESHOLD  # the other run is still going
    assert gc.get_freeze_count() > 0
    ends[1].__exit__(None, None, None)
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_runs_in_threads_end_with_the_thresholds_they_found() -> None:
    gc.set_threshold(700, 10, 10)
    barrier = threading.Barrier(4)
    seen: list[int] = []

    def one() -> None:
        with collector.during_run():
            barrier.wait(timeout=30)
            seen.append(gc.get_threshold()[0])
            barrier.wait(timeout=30)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert seen == [collector.YOUNG_THRESHOLD] * 4
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_cycles_made_during_a_run_are_still_collected() -> None:
    class Node:
        pass

    gc.set_threshold(700, 10, 10)
    gc.collect()
    with collector.during_run():
        a, b = Node(), Node()
        a.other, b.other = b, a  # type: ignore[attr-defined]
        del a, b
        assert gc.collect() >= 2  # the run's own garbage is not frozen


def test_an_update_runs_under_the_policy_and_leaves_the_collector_as_it_found_it(tmp_path, receiver, monkeypatch) -> None:
    """A real update (Graph emulator, receiver, file: state) in this process: while it plans
    and sends, the run's threshold is set and the objects alive at its start are frozen; the
    host's thresholds are back after it. (Observed from inside the update stage, not from
    collections: whether one happens depends on how much the run allocates, which depends on
    what earlier tests imported.)"""
    from devstack.graph_emulator import GraphEmulator
    from shared.actions.update import UpdateStage
    from shared.config.settings import load_settings
    from shared.engine import run, run_to_end
    from tests.stack import base_env, nasty_directory

    seen: list[tuple[int, int]] = []
    inner = UpdateStage._update

    async def observed(self, *args, **kwargs):
        seen.append((gc.get_threshold()[0], gc.get_freeze_count()))
        return await inner(self, *args, **kwargs)

    monkeypatch.setattr(UpdateStage, "_update", observed)
    graph = GraphEmulator(nasty_directory(), max_page_size=3, max_members_per_page=2)
    try:
        for key, value in base_env(graph.start(), receiver.base_url, f"file:{tmp_path}/state").items():
            monkeypatch.setenv(key, value)
        gc.set_threshold(700, 10, 10)
        summary = run_to_end(run("update", load_settings()))
    finally:
        graph.stop()
    assert summary.ok, summary.error
    assert sum(c.added for c in summary.datasets.values()) > 0
    assert len(seen) == 1 and seen[0][0] == collector.YOUNG_THRESHOLD and seen[0][1] > 0
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0
