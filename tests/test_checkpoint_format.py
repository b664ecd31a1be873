"""A checkpoint says what its merged pages hold (shared/reading.py ``CACHE_ROWS``): since the
full read derives each object's candidate rows with its batch, a checkpoint holds those rows
too. The release before compares the saved fingerprint verbatim, so it refuses such a
checkpoint and reads from the start (it would resume rows it does not maintain: a deleted
user's address would stay); this release resumes its own checkpoints and the release before's."""

from __future__ import annotations

from typing import Any

from shared.reading import CACHE_ROWS, Checkpoints

FINGERPRINT = {"select": ["id", "mail"], "exo": "off"}


class _State:
    """The part of ``StateDB`` a checkpoint uses."""

    def __init__(self) -> None:
        self.generation = 4
        self.full_read_progress: Any = None
        self.directory_cache = "complete"
        self.commits = 0

    def commit(self) -> None:
        self.generation += 1
        self.commits += 1


class _Store:
    def publish(self, db: Any) -> None:
        pass


LINKS = {"users": {"next": "https://graph.microsoft.com/v1.0/users/delta?$skiptoken=x"}, "groups": {"delta": "d"}}


def _saved() -> _State:
    db = _State()
    Checkpoints(db, _Store(), dict(FINGERPRINT), 0).save(LINKS)
    return db


def test_a_checkpoint_is_resumed_by_this_release_and_refused_by_a_verbatim_comparison() -> None:
    db = _saved()
    assert db.commits == 1 and db.directory_cache == "partial"
    assert Checkpoints(db, _Store(), dict(FINGERPRINT), 0).resume() == LINKS
    # The release before resumed only when the saved fingerprint was its own, verbatim.
    assert db.full_read_progress["fingerprint"] != FINGERPRINT
    assert db.full_read_progress["fingerprint"] == {**FINGERPRINT, **CACHE_ROWS}


def test_the_release_befores_checkpoint_is_resumed() -> None:
    db = _saved()
    db.full_read_progress["fingerprint"] = dict(FINGERPRINT)  # as the release before saved it
    assert Checkpoints(db, _Store(), dict(FINGERPRINT), 0).resume() == LINKS


def test_other_settings_or_a_later_commit_void_the_checkpoint() -> None:
    db = _saved()
    assert Checkpoints(db, _Store(), {**FINGERPRINT, "exo": "on"}, 0).resume() is None
    db.full_read_progress["fingerprint"] = {**FINGERPRINT, "cacheRows": "something else"}
    assert Checkpoints(db, _Store(), dict(FINGERPRINT), 0).resume() is None
    db = _saved()
    db.generation += 1  # another action committed since
    assert Checkpoints(db, _Store(), dict(FINGERPRINT), 0).resume() is None


def test_a_checkpoint_saved_before_the_select_was_recorded_is_resumed() -> None:
    """The release before did not record each collection's $select (it selected the same)."""
    db = _saved()
    db.full_read_progress["fingerprint"] = {k: v for k, v in db.full_read_progress["fingerprint"].items() if k != "select"}
    assert Checkpoints(db, _Store(), dict(FINGERPRINT), 0).resume() == LINKS
    db.full_read_progress["fingerprint"]["exo"] = "on"  # anything else that differs still voids it
    assert Checkpoints(db, _Store(), dict(FINGERPRINT), 0).resume() is None
