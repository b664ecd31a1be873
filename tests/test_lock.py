"""One run at a time: the file lock and the blob lease, against real processes and Azurite."""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from devstack.azurite import DEV_KEY
from shared.common.errors import StateError, SyncError
from shared.storage.backend import open_storage
from shared.storage.lease_lock import BlobRunLock
from shared.storage.lock import (
    LOCK_NAME,
    FileRunLock,
    RunLockedError,
    default_holder,
)

ROOT = Path(__file__).resolve().parent.parent
ISO_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"

CHILD_FILE = """
import sys, time
from shared.storage.lock import FileRunLock
FileRunLock(sys.argv[1], sys.argv[2]).acquire()
print("READY", flush=True)
time.sleep(300)
"""

CHILD_BLOB = """
import os, sys, time
from azure.storage.blob import BlobServiceClient
from shared.storage.lease_lock import BlobRunLock
svc = BlobServiceClient.from_connection_string(os.environ["LOCK_TEST_CONNECTION"])
BlobRunLock(svc.get_container_client(sys.argv[1]), sys.argv[2], lease_seconds=15, renew_every=14).acquire()
print("READY", flush=True)
time.sleep(300)
"""


def start_child(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A child process that takes a lock, says READY, and then sleeps until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "READY":
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"the child did not take the lock: {line!r} {err[-2000:]}")
    return proc


def kill_hard(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)  # no finally, no atexit, no release: a crash
    proc.wait(timeout=10)
    proc.stdout.close()
    proc.stderr.close()


# --- the error ------------------------------------------------------------------------------
def test_the_error_names_holder_and_since_and_is_a_state_error():
    exc = RunLockedError("file:/data/state", "update by pid 1234 on host web-1", "2026-11-26T17:40:02+00:00")
    assert str(exc) == (
        'another run holds the lock on file:/data/state: "update by pid 1234 on host web-1" '
        "since 2026-11-26T17:40:02+00:00; nothing was changed; try again when it ends"
    )
    assert isinstance(exc, StateError) and isinstance(exc, SyncError)
    assert exc.exit_code == 3 and exc.holder.startswith("update by pid 1234") and exc.since.startswith("2026-11-26")
    assert "since" not in str(RunLockedError("file:/x", "an unnamed run", None))


def test_default_holder_names_action_pid_host_and_instance(monkeypatch):
    monkeypatch.delenv("WEBSITE_INSTANCE_ID", raising=False)
    assert default_holder("update").startswith(f"update by pid {os.getpid()} on host ")
    assert "instance" not in default_holder("update")
    monkeypatch.setenv("WEBSITE_INSTANCE_ID", "0123456789abcdef" * 4)
    assert default_holder("refresh").endswith("(instance 01234567)")


# --- file: ----------------------------------------------------------------------------------
def test_file_lock_refuses_a_second_run_and_names_the_first(tmp_path):
    where = tmp_path / "state" / "nested"  # created on demand
    first = FileRunLock(where, "update by pid 1 on host timer")
    first.acquire()
    second = FileRunLock(where, "update by pid 2 on host cli")
    started = time.monotonic()
    with pytest.raises(RunLockedError) as info:
        second.acquire()
    assert time.monotonic() - started < 1.0  # promptly, no waiting
    exc = info.value
    assert exc.holder == "update by pid 1 on host timer"
    assert exc.since == first.since
    assert f'file:{where}: "update by pid 1 on host timer" since {first.since}; nothing was changed' in str(exc)
    assert not second.held
    first.release()
    second.acquire()  # free once released
    assert second.held
    second.release()
    assert (where / LOCK_NAME).exists() and (where / LOCK_NAME).read_bytes() == b""  # kept, emptied


def test_file_lock_as_context_manager_and_release_is_idempotent(tmp_path):
    with FileRunLock(tmp_path, "refresh by pid 1") as lock:
        assert lock.held and not lock.lost
        with pytest.raises(RunLockedError, match="refresh by pid 1"), FileRunLock(tmp_path, "other"):
            pass
        with pytest.raises(RuntimeError):
            lock.acquire()
    lock.release()
    with FileRunLock(tmp_path, "other"):
        pass


def test_file_lock_does_not_trust_garbage_in_the_lock_file(tmp_path):
    first = FileRunLock(tmp_path, "update")
    first.acquire()
    os.pwrite(first._fd, b'{"holder": "evil\\u001b[2J\\nline", "since": 5}' + b" " * 50, 0)
    with pytest.raises(RunLockedError) as info:
        FileRunLock(tmp_path, "second").acquire()
    assert "\x1b" not in str(info.value) and "\n" not in str(info.value)
    first.release()


def test_file_lock_of_a_killed_process_is_free_at_once(tmp_path):
    holder = f"update by pid child-{uuid.uuid4().hex[:6]}"
    child = start_child(CHILD_FILE, str(tmp_path), holder)
    try:
        with pytest.raises(RunLockedError) as info:
            FileRunLock(tmp_path, "update from the command line").acquire()
        assert info.value.holder == holder and info.value.since
        assert f'"{holder}" since ' in str(info.value)
    finally:
        kill_hard(child)
    lock = FileRunLock(tmp_path, "update from the command line")
    lock.acquire()  # the kernel dropped the dead process's lock
    lock.release()


def test_file_lock_reports_an_unusable_directory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StateError, match="cannot open the run lock") as info:
        FileRunLock(blocker / "state", "update").acquire()
    assert not isinstance(info.value, RunLockedError)


# --- blob: ----------------------------------------------------------------------------------
@pytest.fixture
def container(azurite):
    from azure.storage.blob import BlobServiceClient

    svc = BlobServiceClient.from_connection_string(azurite.connection_string)
    return svc.get_container_client(f"lock-{uuid.uuid4().hex[:12]}")  # not created: the lock creates it


def test_a_storage_account_that_never_answers_names_the_setting_to_check():
    """AzureWebJobsStorage pointing where nothing listens (a typo, a firewall): the error names
    the setting and the network, not only the SDK's exception type."""
    from azure.storage.blob import BlobServiceClient

    from tests.loopback import closed_port

    conn = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" + "A" * 88
            + f";BlobEndpoint=http://127.0.0.1:{closed_port()}/devstoreaccount1;")
    svc = BlobServiceClient.from_connection_string(conn, retry_total=0)
    lock = BlobRunLock(svc.get_container_client("nowhere"), "update by pid 1 on host cli", lease_seconds=15)
    with pytest.raises(StateError) as info:
        lock.acquire()
    text = str(info.value)
    assert "cannot take the run lock" in text and "AzureWebJobsStorage" in text and "firewall" in text
    assert "A" * 20 not in text  # the key is never echoed


def test_blob_lock_refuses_a_second_run_and_names_the_first(azurite, container):
    first = BlobRunLock(container, "update by pid 1 on host timer", lease_seconds=15)
    first.acquire()  # creates the container and the lock blob
    second = BlobRunLock(container, "update by pid 2 on host cli", lease_seconds=15)
    started = time.monotonic()
    with pytest.raises(RunLockedError) as info:
        second.acquire()
    assert time.monotonic() - started < 5.0
    exc = info.value
    assert exc.holder == "update by pid 1 on host timer" and exc.since == first.since
    text = str(exc)
    assert f'blob:{container.container_name} (devstoreaccount1): "update by pid 1 on host timer" since {first.since}' in text
    assert "nothing was changed" in text and "expires by itself within 15 s" in text
    assert azurite.connection_string not in text and DEV_KEY not in text and "AccountKey" not in text
    first.release()
    assert not first.held and not first.lost
    with second:
        assert second.held
        with pytest.raises(RunLockedError, match="update by pid 2 on host cli"):
            BlobRunLock(container, "third").acquire()
    # The last holder's name stays until the next claim (clearing it before the lease is given
    # back would leave an unattributable lease after a kill in between); it holds no lease.
    assert container.get_blob_client(LOCK_NAME).get_blob_properties().lease.state == "available"


def test_blob_lock_tolerates_an_existing_container_and_blob(container):
    container.create_container()
    container.get_blob_client(LOCK_NAME).upload_blob(b"")
    with BlobRunLock(container, "update") as lock:
        assert lock.held


def test_blob_lock_validates_the_lease_duration(container):
    for bad in (14, 61, 0, -1, True, 30.5):
        with pytest.raises(ValueError, match="lease_seconds"):
            BlobRunLock(container, "x", lease_seconds=bad)
    for bad in (0, -1, 15, 20):
        with pytest.raises(ValueError, match="renew_every"):
            BlobRunLock(container, "x", lease_seconds=15, renew_every=bad)
    assert BlobRunLock(container, "x").renew_every == 20


@pytest.mark.slow
def test_blob_lease_is_renewed_past_its_duration(container):
    lock = BlobRunLock(container, "long update", lease_seconds=15, renew_every=2)
    lock.acquire()
    try:
        time.sleep(17)  # longer than the lease: only renewal keeps it
        with pytest.raises(RunLockedError, match="long update"):
            BlobRunLock(container, "second", lease_seconds=15).acquire()
        assert not lock.lost
    finally:
        lock.release()
    with BlobRunLock(container, "second", lease_seconds=15):  # free once released (and released again: no renewer left running)
        pass


@pytest.mark.slow
def test_blob_lease_of_a_killed_process_on_this_host_is_taken_over_at_once(azurite, container, caplog):
    holder = f"update by pid child-{uuid.uuid4().hex[:6]}"
    child = start_child(CHILD_BLOB, container.container_name, holder, env={"LOCK_TEST_CONNECTION": azurite.connection_string})
    with pytest.raises(RunLockedError) as info:  # alive: it holds the lock
        BlobRunLock(container, "update from the command line", lease_seconds=15).acquire()
    assert info.value.holder == holder
    kill_hard(child)
    killed = time.monotonic()
    lock = BlobRunLock(container, "update from the command line", lease_seconds=15)
    with caplog.at_level(logging.WARNING, logger="shared.lock"):
        lock.acquire()  # the holder is gone from this host: its lease is broken, not waited for
    assert time.monotonic() - killed < 5
    assert any("no longer running on this host" in r.getMessage() for r in caplog.records)
    lock.release()


@pytest.mark.slow
def test_blob_lease_of_a_crashed_run_elsewhere_expires_by_itself(container):
    """A holder on another host cannot be checked: its lease is left to expire."""
    from azure.storage.blob import BlobLeaseClient

    container.create_container()
    blob = container.get_blob_client(LOCK_NAME)
    blob.upload_blob(b"")
    lease = BlobLeaseClient(blob)
    lease.acquire(lease_duration=15)
    blob.set_blob_metadata({"holder": "update by pid 4242 on host far-away", "since": "2026-11-26T12:00:00+00:00",
                            "lease_seconds": "15", "pid": "4242", "host": "far-away", "instance": ""}, lease=lease)
    crashed = time.monotonic()  # nobody renews it from here on
    with pytest.raises(RunLockedError) as info:
        BlobRunLock(container, "update from the command line", lease_seconds=15).acquire()
    assert "far-away" in info.value.holder and "expires by itself within 15 s" in str(info.value)
    lock = BlobRunLock(container, "update from the command line", lease_seconds=15)
    while True:
        try:
            lock.acquire()
            break
        except RunLockedError:
            assert time.monotonic() - crashed < 25, "the lease of a crashed run did not expire"
            time.sleep(0.5)
    assert time.monotonic() - crashed > 5  # freed by expiry
    lock.release()


def test_blob_lock_is_lost_when_the_lease_is_broken(container, caplog):
    from azure.storage.blob import BlobLeaseClient

    lock = BlobRunLock(container, "update", lease_seconds=15, renew_every=0.5)
    lock.acquire()
    assert not lock.lost
    with caplog.at_level(logging.WARNING, logger="shared.lock"):
        BlobLeaseClient(container.get_blob_client(LOCK_NAME)).break_lease(lease_break_period=0)
        deadline = time.monotonic() + 10
        while not lock.lost and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lock.lost
        assert any(r.levelno == logging.ERROR and "lease was lost" in r.getMessage() for r in caplog.records)
        other = BlobRunLock(container, "other run", lease_seconds=15)
        other.acquire()
        lock.release()  # must not raise, nor touch the other run's lease
        assert lock.lost
    with pytest.raises(RunLockedError, match="other run"):
        BlobRunLock(container, "third").acquire()
    other.release()


# --- settings -------------------------------------------------------------------------------
def settings_for(kind: str, where: str, connection_string: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        state=SimpleNamespace(kind=kind, where=where),
        storage_connection_string=connection_string,
        storage_blob_uri=None,
        storage_client_id=None,
        managed_identity_client_id=None,
    )


def test_the_storage_builds_the_lock_for_the_state(tmp_path, azurite):
    file_lock = open_storage(settings_for("file", str(tmp_path))).lock("update")
    assert isinstance(file_lock, FileRunLock) and file_lock.where == f"file:{tmp_path}"
    name = f"lock-{uuid.uuid4().hex[:12]}"
    settings = settings_for("blob", name, azurite.connection_string)
    with open_storage(settings).lock("update by timer") as lock:
        assert isinstance(lock, BlobRunLock) and lock.lease_seconds == 60
        with pytest.raises(RunLockedError) as info:
            open_storage(settings).lock("update by cli").acquire()
    text = str(info.value)
    assert "update by timer" in text and name in text
    assert azurite.connection_string not in text and DEV_KEY not in text and "AccountKey" not in text


def test_blob_lock_survives_a_transient_renewal_failure_until_the_lease_runs_out(caplog):
    from azure.core.exceptions import ServiceRequestError

    class FlakyLease:
        renewals = 0

        def renew(self, **kwargs):
            FlakyLease.renewals += 1
            raise ServiceRequestError("connection reset")

        def release(self, **kwargs):
            raise AssertionError("a lost lease is not released")

    class FakeBlob:
        def acquire_lease(self, lease_duration):
            return FlakyLease()

        def set_blob_metadata(self, metadata, lease=None, **kwargs):
            pass

    fake_container = SimpleNamespace(container_name="fake", account_name="acct", get_blob_client=lambda name: FakeBlob())
    lock = BlobRunLock(fake_container, "update", lease_seconds=15, renew_every=0.2)
    with caplog.at_level(logging.WARNING, logger="shared.lock"):
        lock.acquire()
        time.sleep(1.0)
        assert FlakyLease.renewals >= 2 and not lock.lost  # retried: the lease still lasts
        lock._valid_until = time.monotonic() + 0.5  # as if 14.5 s had passed without a renewal
        deadline = time.monotonic() + 5
        while lock._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.lost and not lock._thread.is_alive()
        lock.release()
    messages = [r.getMessage() for r in caplog.records]
    assert any("retrying while the lease lasts" in m for m in messages)
    assert any("the lease was lost (ServiceRequestError)" in m for m in messages)


# --- every instant of the lock's life ---------------------------------------------------------
CHILD_KILLED_AT = """
import os, signal, sys
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobServiceClient
from shared.storage.lease_lock import BlobRunLock

target, when = int(sys.argv[3]), sys.argv[4]
count = 0
send = RequestsTransport.send

def counted(self, request, **kwargs):
    global count
    count += 1
    if count == target and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)  # the request is never sent
    response = send(self, request, **kwargs)
    if count == target and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)  # applied, and its answer never read
    return response

RequestsTransport.send = counted
svc = BlobServiceClient.from_connection_string(os.environ["LOCK_TEST_CONNECTION"])
lock = BlobRunLock(svc.get_container_client(sys.argv[1]), sys.argv[2], lease_seconds=15, renew_every=14)
lock.acquire()
lock.release()
print("CALLS", count, flush=True)
"""


@pytest.mark.slow
def test_a_run_killed_at_any_instant_of_the_blob_lock_never_locks_out_the_next(azurite):
    """Issue 9: a run killed before, between or after the claim, the lease and the release (each
    storage request, before it is sent and after it was answered) never leaves a lease that the
    next run on this host has to wait for. Deterministic: the child kills itself at request n."""
    from azure.storage.blob import BlobServiceClient

    svc = BlobServiceClient.from_connection_string(azurite.connection_string)
    env = {**os.environ, "LOCK_TEST_CONNECTION": azurite.connection_string}

    def child(container: str, n: int, when: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", CHILD_KILLED_AT, container, f"update killed at {when} {n}", str(n), when],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    def container(fresh: bool) -> str:
        name = f"lock-{uuid.uuid4().hex[:12]}"
        if not fresh:
            first = BlobRunLock(svc.get_container_client(name), "earlier run", lease_seconds=15)
            first.acquire()
            first.release()
        return name

    # A fresh container (the lock creates it and its blob) and an existing one.
    for fresh in (True, False):
        done = child(container(fresh), 0, "never")
        assert done.returncode == 0, done.stderr[-2000:]
        calls = int(done.stdout.split()[-1])
        assert calls >= 3  # claim, lease, release at least
        name = container(fresh)
        for n in range(1, calls + 1):
            for when in ("before", "after"):
                if fresh:
                    name = container(fresh)
                killed = child(name, n, when)
                assert killed.returncode == -signal.SIGKILL, (fresh, n, when, killed.stdout, killed.stderr[-2000:])
                started = time.monotonic()
                nxt = BlobRunLock(svc.get_container_client(name), "the next run", lease_seconds=15)
                nxt.acquire()  # raises RunLockedError if the killed run's lease were left to expire
                assert time.monotonic() - started < 5, (fresh, n, when)
                nxt.release()
