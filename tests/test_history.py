"""Run history: reports written next to the state, bounded in size, age and count, on both
backends, and the status text an operator reads."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import uuid
from types import SimpleNamespace

import pytest

from shared.common.errors import StateError
from shared.plan.approval import held_digest
from shared.storage.backend import open_storage
from shared.storage.history import BlobReportStore, FileReportStore, bounded
from shared.text import format_status

T0 = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


def summary(action: str = "update", **extra) -> dict:
    doc = {
        "action": action,
        "ok": True,
        "datasets": {
            "addresses": {"added": 3, "removed": 1, "rejected": 0, "excluded": 0},
            "groups": {"added": 0, "removed": 0, "rejected": 0, "excluded": 0},
            "users": {"added": 2, "removed": 0, "rejected": 1, "excluded": 0,
                      "rejections": [{"key": "u9", "code": "invalid", "message": "bad address"}]},
        },
        "graphRequests": 4,
        "syncRequests": 2,
        "durationSeconds": 1.234,
        "read": {"kind": "delta", "reason": "scheduled"},
    }
    doc.update(extra)
    return doc


def report_files(store: FileReportStore) -> list[str]:
    return sorted(os.listdir(store.dir))


# --- file store -------------------------------------------------------------------------------
def test_file_store_round_trip_newest_first(tmp_path):
    store = FileReportStore(tmp_path / "state")
    names = [store.write(summary(action, note=f"run {i} – café"), now=T0 + dt.timedelta(seconds=i))
             for i, action in enumerate(["refresh", "update", "test-update"])]

    assert all(n.startswith("runs/") and n.endswith(".json") for n in names)
    assert names == sorted(names), "names must sort by time"
    assert (tmp_path / "state" / "runs").is_dir()

    recent = store.recent()
    assert [r["action"] for r in recent] == ["test-update", "update", "refresh"]
    assert recent[0]["finishedAt"] == (T0 + dt.timedelta(seconds=2)).isoformat(timespec="seconds")
    assert recent[2]["finishedAt"] == T0.isoformat(timespec="seconds")
    assert recent[0]["datasets"]["users"]["rejections"][0]["key"] == "u9"
    assert recent[0]["read"] == {"kind": "delta", "reason": "scheduled"}
    assert [r["action"] for r in store.recent(limit=2)] == ["test-update", "update"]

    # UTF-8 without \u escapes, so the file is readable as it is
    raw = (tmp_path / "state" / names[0]).read_bytes()
    assert "café".encode() in raw and b"\\u00e9" not in raw


def test_write_does_not_change_the_callers_dict_and_finished_at_matches_the_name(tmp_path):
    store = FileReportStore(tmp_path)
    report = summary(finishedAt="1999-01-01T00:00:00+00:00")
    before = json.dumps(report, sort_keys=True)
    name = store.write(report, now=T0)
    assert json.dumps(report, sort_keys=True) == before
    assert name.startswith("runs/20250301T120000000000Z-update-")
    assert store.recent()[0]["finishedAt"] == "2025-03-01T12:00:00+00:00"


def test_odd_action_names_still_give_sortable_report_names(tmp_path):
    store = FileReportStore(tmp_path)
    a = store.write({"action": "Test Update/../x"}, now=T0)
    b = store.write({}, now=T0 + dt.timedelta(microseconds=1))
    assert a.startswith("runs/20250301T120000000000Z-test-update-x-")
    assert b.startswith("runs/20250301T120000000001Z-run-")
    assert [r.get("action") for r in store.recent()] == [None, "Test Update/../x"]


def test_file_writes_are_atomic_and_leave_no_temp_files(tmp_path, monkeypatch):
    store = FileReportStore(tmp_path)
    for i in range(3):
        store.write(summary(), now=T0 + dt.timedelta(seconds=i))
    files = report_files(store)
    assert len(files) == 3 and all(f.endswith(".json") and not f.startswith(".") for f in files)

    # a failure between the temp file and the rename leaves neither a partial report nor the temp file
    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StateError) as err:
        store.write(summary(), now=T0 + dt.timedelta(seconds=10))
    assert str(store.dir) in str(err.value) and "No space left" in str(err.value)
    assert report_files(store) == files


def test_write_failure_names_the_location(tmp_path):
    (tmp_path / "runs").write_text("a file where the runs folder should be")
    store = FileReportStore(tmp_path)
    with pytest.raises(StateError, match=r"cannot write the run report at file:.*runs"):
        store.write(summary())


def test_prune_by_age(tmp_path):
    lenient = FileReportStore(tmp_path, max_age_days=365)  # writes prune too; this one keeps all four
    for days in [40, 31, 29, 1]:
        lenient.write(summary(note=f"{days} days"), now=T0 - dt.timedelta(days=days))
    store = FileReportStore(tmp_path, max_age_days=30)
    (store.dir / "notes.txt").write_text("not a report, never pruned")
    assert len(store.recent(limit=100)) == 4

    assert store.prune(T0) == 2
    assert [r["note"] for r in store.recent(limit=100)] == ["1 days", "29 days"]
    assert (store.dir / "notes.txt").exists()
    assert store.prune(T0) == 0


def test_write_prunes_reports_that_have_aged_out(tmp_path):
    store = FileReportStore(tmp_path, max_age_days=30)
    store.write(summary(note="old"), now=T0 - dt.timedelta(days=31))
    store.write(summary(note="new"), now=T0)
    assert [r["note"] for r in store.recent()] == ["new"]


def test_prune_by_count_keeps_the_newest(tmp_path):
    store = FileReportStore(tmp_path, max_count=3)
    for i in range(5):
        store.write(summary(note=i), now=T0 + dt.timedelta(minutes=i))  # write prunes on the way
    assert [r["note"] for r in store.recent(limit=100)] == [4, 3, 2]
    assert len(report_files(store)) == 3


def test_a_failing_prune_does_not_fail_the_write(tmp_path, caplog):
    store = FileReportStore(tmp_path)

    def broken(now=None):
        raise StateError("cannot delete the old run report")

    store.prune = broken
    with caplog.at_level(logging.WARNING, logger="shared.history"):
        name = store.write(summary())
    assert (tmp_path / name).exists()
    assert "could not remove old reports" in caplog.text


def test_limits_are_validated(tmp_path):
    with pytest.raises(ValueError):
        FileReportStore(tmp_path, max_count=0)
    with pytest.raises(ValueError):
        FileReportStore(tmp_path, max_age_days=0)


def test_unreadable_reports_are_skipped_with_a_warning(tmp_path, caplog):
    store = FileReportStore(tmp_path)
    store.write(summary("refresh"), now=T0)
    store.write(summary("update"), now=T0 + dt.timedelta(seconds=1))
    torn = store.dir / "20250301T130000000000Z-update-0000abcd.json"
    torn.write_bytes(b'{"action": "upd')
    array = store.dir / "20250301T140000000000Z-update-0000beef.json"
    array.write_text("[1, 2]")
    with caplog.at_level(logging.WARNING, logger="shared.history"):
        recent = store.recent(limit=2)
    assert [r["action"] for r in recent] == ["update", "refresh"]  # the bad ones do not use up the limit
    assert torn.name in caplog.text and array.name in caplog.text


def test_recent_and_prune_before_any_run(tmp_path):
    store = FileReportStore(tmp_path / "never-written")
    assert store.recent() == []
    assert store.prune() == 0


# --- size bound -------------------------------------------------------------------------------
def test_bounded_cuts_long_lists_with_a_counter():
    doc = {
        "short": list(range(1000)),
        "long": list(range(1005)),
        "nested": {"rejections": [{"k": i} for i in range(1200)], "rejectionsTruncated": 7},
        "pairs": (1, 2, 3),
        "grid": [list(range(1003)), [1]],
        "text": "x" * 5000,
    }
    original = json.dumps(doc, sort_keys=True)
    out = bounded(doc)
    assert json.dumps(doc, sort_keys=True) == original, "the input must not be modified"
    assert out["short"] == list(range(1000)) and "shortTruncated" not in out
    assert out["long"] == list(range(1000)) and out["longTruncated"] == 5
    assert len(out["nested"]["rejections"]) == 1000
    assert out["nested"]["rejectionsTruncated"] == 7 + 200  # adds to the summary's own counter
    assert out["pairs"] == [1, 2, 3]
    assert len(out["grid"][0]) == 1000 and out["gridTruncated"] == 3
    assert out["text"] == "x" * 5000
    assert bounded({"a": [1, 2, 3]}, limit=2) == {"a": [1, 2], "aTruncated": 1}


def test_written_reports_are_bounded(tmp_path):
    store = FileReportStore(tmp_path)
    report = summary()
    report["datasets"]["users"]["rejections"] = [{"key": f"u{i}"} for i in range(2500)]
    report["heldDeletions"] = {"users": {"count": 1500, "keys": [f"u{i}" for i in range(1500)]}}
    report["changes"] = {"addresses": {"added": [f"a{i}@x.com" for i in range(1001)], "removed": []}}
    name = store.write(report, now=T0)

    stored = json.loads((tmp_path / name).read_text(encoding="utf-8"))
    users = stored["datasets"]["users"]
    assert len(users["rejections"]) == 1000 and users["rejectionsTruncated"] == 1500
    held = stored["heldDeletions"]["users"]
    assert held["count"] == 1500 and len(held["keys"]) == 1000 and held["keysTruncated"] == 500
    assert len(stored["changes"]["addresses"]["added"]) == 1000 and stored["changes"]["addresses"]["addedTruncated"] == 1
    assert "removedTruncated" not in stored["changes"]["addresses"]


# --- blob store (Azurite) ---------------------------------------------------------------------
@pytest.fixture
def container(azurite):
    from azure.storage.blob import BlobServiceClient

    svc = BlobServiceClient.from_connection_string(azurite.connection_string)
    client = svc.get_container_client(f"history-{uuid.uuid4().hex[:12]}")
    yield client
    try:
        client.delete_container()
    except Exception:  # noqa: S110 - best-effort cleanup; the container may never have been created
        pass


def test_blob_store_round_trip_and_prune(container):
    store = BlobReportStore(container, "blob:test", max_age_days=30, max_count=3)
    assert store.recent() == [] and store.prune() == 0  # the container does not exist yet

    # written through a lenient store, since a write prunes as of its own time
    BlobReportStore(container, "blob:test", max_age_days=365).write(summary("refresh", note="old"), now=T0 - dt.timedelta(days=45))
    lenient = BlobReportStore(container, "blob:test", max_age_days=365)
    for i, action in enumerate(["update", "test-update", "update"]):
        lenient.write(summary(action, note=i, text="naïve"), now=T0 + dt.timedelta(seconds=i))
    container.upload_blob("runs/readme.txt", b"not a report")

    names = sorted(b.name for b in container.list_blobs())
    assert len(names) == 5 and all(n.startswith("runs/") for n in names)
    blob = container.get_blob_client(next(n for n in names if n.endswith(".json")))
    assert blob.get_blob_properties().content_settings.content_type.startswith("application/json")

    recent = store.recent()
    assert [r["note"] for r in recent] == [2, 1, 0, "old"]
    assert recent[0]["finishedAt"] == (T0 + dt.timedelta(seconds=2)).isoformat(timespec="seconds")
    assert recent[0]["text"] == "naïve"

    # by age: the 45-day-old one goes; the three young ones fit the count
    assert store.prune(T0 + dt.timedelta(days=1)) == 1
    assert [r["note"] for r in store.recent()] == [2, 1, 0]
    # by count: one more write leaves the newest three
    store.write(summary(note=3), now=T0 + dt.timedelta(seconds=10))
    assert [r["note"] for r in store.recent()] == [3, 2, 1]
    assert "runs/readme.txt" in [b.name for b in container.list_blobs()]


def test_blob_store_skips_an_unparseable_report(container, caplog):
    store = BlobReportStore(container, "blob:test")
    store.write(summary(note="good"), now=T0)
    container.upload_blob("runs/20250302T000000000000Z-update-deadbeef.json", b"\xff\xfe not json")
    with caplog.at_level(logging.WARNING, logger="shared.history"):
        assert [r["note"] for r in store.recent()] == ["good"]
    assert "deadbeef" in caplog.text


def test_the_storage_reports_follow_the_state_location(tmp_path, azurite):
    file_store = open_storage(SimpleNamespace(state=SimpleNamespace(kind="file", where=str(tmp_path)))).reports()
    assert isinstance(file_store, FileReportStore) and file_store.dir == tmp_path / "runs"

    name = f"history-{uuid.uuid4().hex[:12]}"
    settings = SimpleNamespace(
        state=SimpleNamespace(kind="blob", where=name),
        storage_connection_string=azurite.connection_string,
        storage_blob_uri=None, storage_client_id=None, managed_identity_client_id=None,
    )
    blob_store = open_storage(settings).reports()
    assert isinstance(blob_store, BlobReportStore)
    assert name in blob_store.where and "AccountKey" not in blob_store.where
    written = blob_store.write(summary())
    assert [b.name for b in blob_store.container.list_blobs()] == [written]
    blob_store.container.delete_container()


# --- status text ------------------------------------------------------------------------------
def test_status_shows_runs_and_held_deletions_with_the_approval_command():
    failed = summary("update", ok=False, error="the sync API refused the credential\nTraceback: details", durationSeconds=125.0)
    runs = [failed | {"finishedAt": "2025-03-01T12:05:00+00:00"}, summary("refresh") | {"finishedAt": "2025-03-01T12:00:00+00:00"}]
    held = {"users": [f"user-{i:02d}" for i in range(25)], "groups": ["g-sales"], "addresses": []}
    text = format_status(runs, held)

    assert "2025-03-01 12:05:00Z" in text and "2025-03-01 12:00:00Z" in text
    assert text.index("12:05:00Z") < text.index("12:00:00Z"), "newest first, as given"
    assert "FAILED" in text and "the sync API refused the credential" in text and "Traceback" not in text
    assert "delta (scheduled)" in text and "+3 -1" in text and "+2 -0 rej 1" in text
    assert "2m05s" in text and "1.2s" in text

    assert "users: 25 held" in text and "groups: 1 held" in text and "addresses:" not in text.split("held deletions")[1]
    assert "user-00" in text and "user-19" in text and "user-20" not in text and "... and 5 more" in text
    assert "g-sales" in text
    digest = held_digest({"users": held["users"], "groups": held["groups"]})
    assert f"python -m shared approve-deletions --expect {digest}\n" in text
    assert f"python -m shared approve-deletions --dataset users --expect {held_digest({'users': held['users']})}" in text
    assert f"python -m shared approve-deletions --dataset groups --expect {held_digest({'groups': ['g-sales']})}" in text
    assert "no deletions are held" not in text


def test_status_without_held_deletions():
    text = format_status([summary() | {"finishedAt": "2025-03-01T12:00:00+00:00"}], {"users": []})
    assert "no deletions are held" in text
    assert "approve-deletions" not in text
    assert "no runs recorded yet" in format_status([], None)
    assert "no deletions are held" in format_status([], None)


def test_status_falls_back_to_the_last_recorded_held_deletions():
    runs = [
        summary() | {"finishedAt": "2025-03-02T00:00:00+00:00", "heldDeletions": {"users": {"count": 1500, "keys": ["u1", "u2"], "keysTruncated": 1498}}},
        summary() | {"finishedAt": "2025-03-01T00:00:00+00:00", "heldDeletions": {"groups": {"count": 1, "keys": ["old"]}}},
    ]
    text = format_status(runs, None)
    assert "as recorded by the run finished 2025-03-02 00:00:00Z" in text
    assert "users: 1,500 held" in text and "u1" in text and "... and 1,498 more" in text
    assert "old" not in text.split("held deletions")[1]
    # no digest from a report: an approval must name the state's held set, read when it can be
    assert "--expect" not in text and "the state could not be read" in text


def test_status_survives_odd_reports():
    text = format_status([{"finishedAt": 5, "datasets": "?", "read": "x", "durationSeconds": "slow", "ok": "yes"}, {}], {})
    assert text.count("FAILED") == 2 and "no deletions are held" in text
