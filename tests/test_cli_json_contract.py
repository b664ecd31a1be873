"""The command line's ``--json`` promise, held for every way a run can end: standard output ends
with one JSON line (docs/sync-rules.md, "The run summary (`--json`)"). ``status --json`` prints
its own document on success; a ``status`` that fails (an unreadable state) must still end
standard output with the run summary, ``ok: false`` and the ``error``, exactly as a settings
error does, so that a script parsing the last line never meets an empty output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.stack import ROOT


def _env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {**keep, **extra}


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.launcher", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _last_json(stdout: str) -> dict:
    lines = stdout.strip().splitlines()
    assert lines, "--json printed nothing on standard output"
    return json.loads(lines[-1])


@pytest.mark.parametrize("action", ["status", "approve-deletions"])
def test_a_failed_state_only_action_still_ends_stdout_with_the_json_summary(tmp_path, action: str) -> None:
    """An unreadable ``state.db``: the action fails (exit 1, one ``error:`` line naming the
    state and ``refresh``), and ``--json`` still prints the summary with ``ok: false``."""
    (tmp_path / "state.db").write_bytes(b"not a database at all\n")
    r = _cli(action, "--json", env=_env(SYNC_STATE=f"file:{tmp_path}"))
    assert r.returncode == 1, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unreadable" in errors[0] and "refresh" in errors[0], r.stderr
    doc = _last_json(r.stdout)
    assert doc["action"] == action and doc["ok"] is False
    assert doc["error"] == errors[0].removeprefix("error: ")


def test_a_settings_error_of_status_ends_stdout_with_the_json_summary() -> None:
    """The case the docs name: a settings error prints the summary too (kept as it is)."""
    r = _cli("status", "--json", env=_env(SYNC_STATE="nowhere"))
    assert r.returncode == 2
    doc = _last_json(r.stdout)
    assert doc["action"] == "status" and doc["ok"] is False and "SYNC_STATE" in doc["error"]


def _state_holding(tmp_path, held: dict[str, list[str]]):
    from shared.storage.stores import FileStateStore

    store = FileStateStore(tmp_path)
    db = store.open()
    for dataset, keys in held.items():
        db.set_held(dataset, dict.fromkeys(keys, False))
    db.commit()
    store.publish(db)
    db.close()


def test_approving_a_dataset_that_holds_nothing_says_which_dataset_and_does_not_deny_the_others(tmp_path) -> None:
    """``approve-deletions --dataset groups`` while only users' deletions are held: nothing is
    approved (exit 0), and the report says that no *groups* deletions are held, naming the
    dataset. It never says "no deletions are held" while 2 are, which would send an operator
    away from a held set that still blocks the next update."""
    _state_holding(tmp_path, {"users": ["u1", "u2"]})
    r = _cli("approve-deletions", "--dataset", "groups", "--expect", "0123456789abcdef", env=_env(SYNC_STATE=f"file:{tmp_path}"))
    assert r.returncode == 0, r.stderr
    assert "no deletions are held" not in r.stdout
    assert "no groups deletions are held" in r.stdout
    assert "2 deletions are held in other datasets (users)" in r.stdout
    r = _cli("approve-deletions", "--dataset", "groups", "--expect", "0123456789abcdef", "--json", env=_env(SYNC_STATE=f"file:{tmp_path}"))
    doc = _last_json(r.stdout)
    assert doc["ok"] is True and doc["approved"] == {} and doc["dataset"] == "groups"


def test_approving_when_nothing_at_all_is_held_says_so(tmp_path) -> None:
    _state_holding(tmp_path, {})
    r = _cli("approve-deletions", env=_env(SYNC_STATE=f"file:{tmp_path}"))
    assert r.returncode == 0, r.stderr
    assert "no deletions are held; nothing to approve" in r.stdout
