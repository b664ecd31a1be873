"""The background preview's bookkeeping (``shared/previews.py``) on ``file:`` state, with the
preview's work replaced by coroutines that end as the test needs: an unexpected exception is
recorded as a failure (by its type only) and gives the lock back; a holder whose record says it
ended but that never gives the lock back is still refused, after a bounded wait. The endpoint
itself, with the real engine, is tested in ``tests/test_operator_endpoints.py``."""

from __future__ import annotations

import threading

import pytest

from shared.common.summary import RunSummary
from shared.config.state_settings import load_state_settings
from shared.previews import PreviewRunningError, newest_preview, preview_lock, preview_records, start_preview
from shared.storage.backend import open_storage


@pytest.fixture
def storage(tmp_path):
    return open_storage(load_state_settings({"SYNC_STATE": f"file:{tmp_path / 'state'}"}))


def join_previews() -> None:
    for thread in [t for t in threading.enumerate() if t.name.startswith("preview ")]:
        thread.join(30)
        assert not thread.is_alive()


def test_an_unexpected_exception_is_recorded_as_failed_by_its_type_and_frees_the_lock(storage):
    async def broken() -> RunSummary:
        raise RuntimeError("token request for client_secret=hunter2 failed")

    started = start_preview(storage, broken)
    join_previews()
    record = newest_preview(storage)
    assert record["id"] == started["id"] and record["state"] == "failed"
    assert record["error"] == "the preview stopped unexpectedly (RuntimeError)" and "hunter2" not in str(record)

    async def fine() -> RunSummary:
        return RunSummary("test-update").finish(True)

    again = start_preview(storage, fine)  # the lock was given back
    join_previews()
    record = newest_preview(storage)
    assert record["id"] == again["id"] and record["state"] == "finished" and record["result"]["ok"] is True
    assert [r["state"] for r in preview_records(storage).recent(10)] == ["finished", "running", "failed", "running"]


def test_a_holder_that_says_it_ended_but_keeps_the_lock_is_still_refused(storage):
    holder = preview_lock(storage, "test-update 00000000000000aa by pid 1 on host elsewhere")
    holder.acquire()
    try:
        preview_records(storage).write({"action": "test-update", "id": "00000000000000aa", "state": "finished", "startedAt": holder.since})

        async def never() -> RunSummary:
            raise AssertionError("must not run")

        with pytest.raises(PreviewRunningError) as refused:
            start_preview(storage, never)
        assert refused.value.preview_id == "00000000000000aa" and refused.value.started == holder.since
        assert refused.value.exit_code == 3
    finally:
        holder.release()
    assert newest_preview(storage)["id"] == "00000000000000aa"  # the refused start recorded nothing
