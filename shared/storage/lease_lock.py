"""The ``blob:`` run lock: a lease on ``run.lock`` in the state container (the protocol and the
``file:`` lock are in ``shared/storage/lock.py``). Azure blob leases last 15 to 60 s; the lease
is renewed by a daemon thread, and a holder that died on this very host (its process id and
start time are on the blob) is recognised and its lease broken at once."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from ..common.errors import StateError
from .blob import azure_reason, ensure_container, storage_problem
from .lock import LOCK_NAME, UNNAMED, RunLockedError, _clean, _LockBase, _now

log = logging.getLogger("shared.lock")  # the name its log lines have always carried

MIN_LEASE_SECONDS = 15  # Azure's bounds for a finite blob lease
MAX_LEASE_SECONDS = 60
_BUSY_CODES = frozenset({"LeaseAlreadyPresent", "LeaseIsBreakingAndCannotBeAcquired"})


def _process_tag() -> dict[str, str]:
    """Who holds a lease, precisely enough to tell whether that process still exists (the
    start time tells a reused process id from the holder's)."""
    return {"pid": str(os.getpid()), "host": _clean(socket.gethostname() or "unknown", 100),
            "instance": _clean(os.environ.get("WEBSITE_INSTANCE_ID", ""), 100),
            "pidStart": _process_start(os.getpid()) or ""}


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc/<pid>/stat`` field 22),
    or ``None`` where there is no such file."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        return data[data.rindex(b")") + 2 :].split()[19].decode("ascii")
    except (OSError, ValueError, IndexError):
        return None


def _process_alive(pid: int, started: str = "") -> bool:
    """Whether the process ``pid`` (started at ``started``, when known) still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    except OSError:
        return True
    if started:
        now = _process_start(pid)
        if now is not None and now != started:
            return False  # the id was reused by a later process
    return True


# --- blob: ----------------------------------------------------------------------------------
class BlobRunLock(_LockBase):
    """A lease on ``run.lock`` in the state container, renewed every ``renew_every`` seconds
    by a daemon thread. The holder and the start time are kept in the blob's metadata so that
    a blocked run can name them.

    ``lost`` turns true when the lease can no longer be trusted: a renewal was refused (the
    lease was broken or taken), or no renewal succeeded within the lease duration. A run that
    lost its lock must not write the state."""

    def __init__(self, container_client: Any, holder: str, lease_seconds: int = 60, renew_every: float | None = None) -> None:
        if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, int) or not MIN_LEASE_SECONDS <= lease_seconds <= MAX_LEASE_SECONDS:
            raise ValueError(f"lease_seconds must be an integer from {MIN_LEASE_SECONDS} to {MAX_LEASE_SECONDS} (Azure's bounds), not {lease_seconds!r}")
        if renew_every is None:
            renew_every = lease_seconds / 3
        if not 0 < renew_every < lease_seconds:
            raise ValueError(f"renew_every must be more than 0 and less than lease_seconds ({lease_seconds}), not {renew_every!r}")
        self.container = container_client
        self.blob = container_client.get_blob_client(LOCK_NAME)
        account = getattr(container_client, "account_name", None)
        self.where = f"blob:{container_client.container_name}" + (f" ({account})" if account else "")
        self.holder = _clean(holder) or UNNAMED
        self.lease_seconds = lease_seconds
        self.renew_every = float(renew_every)
        self.since: str | None = None
        self._lease: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost = False
        self._valid_until = 0.0  # time.monotonic() until which the lease is surely ours
        self._mutex = threading.Lock()

    @property
    def held(self) -> bool:
        return self._lease is not None

    @property
    def lost(self) -> bool:
        if self._lease is None:
            return self._lost
        return self._lost or time.monotonic() >= self._valid_until

    def _call_options(self) -> dict[str, Any]:
        # No SDK retries (its back-off is longer than a lease) and bounded socket waits: the
        # renewal loop retries by itself and must notice in time that the lease ran out.
        wait = max(2.0, min(10.0, self.renew_every))
        return {"retry_total": 0, "connection_timeout": wait, "read_timeout": wait}

    def acquire(self) -> None:
        from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

        if self._lease is not None:
            raise RuntimeError(f"the run lock on {self.where} is already held by this object")
        started = time.monotonic()
        self.since = _now()
        metadata = {"holder": self.holder, "since": self.since, "lease_seconds": str(self.lease_seconds), **_process_tag()}
        try:
            try:
                # Claim first, without a lease (refused while someone holds one): a run killed
                # right after taking the lease has then already left its name and process id,
                # so the next run can see that it is gone.
                self._claim(metadata)
                lease = self.blob.acquire_lease(lease_duration=self.lease_seconds)
            except ResourceNotFoundError:
                self._create_lock_blob()
                started = time.monotonic()
                self._claim(metadata)
                lease = self.blob.acquire_lease(lease_duration=self.lease_seconds)
        except HttpResponseError as exc:
            if getattr(exc, "error_code", None) in _BUSY_CODES or (exc.status_code == 409 and not getattr(exc, "error_code", None)):
                if self._holder_is_gone():
                    return self.acquire()
                holder, since, seconds = self._read_holder()
                note = f"its lease expires by itself within {seconds} s after a crashed run"
                raise RunLockedError(self.where, holder, since, note) from None
            raise StateError(f"cannot take the run lock on {self.where}: {storage_problem(exc)}") from None
        except AzureError as exc:
            raise StateError(f"cannot take the run lock on {self.where}: {storage_problem(exc)}") from None
        try:
            self.blob.set_blob_metadata(metadata, lease=lease)  # again: a racing claim may have overwritten ours
        except AzureError as exc:  # the lock is held; only the name shown to others is missing
            log.warning("run lock %s: could not record the holder (%s)", self.where, azure_reason(exc))
        with self._mutex:
            self._lease = lease
            self._lost = False
            self._valid_until = started + self.lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, args=(lease, self._stop), name=f"run-lock-renewal {self.where}", daemon=True)
        self._thread.start()

    def _create_lock_blob(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        ensure_container(self.container)
        try:
            self.blob.upload_blob(b"", overwrite=False)
        except ResourceExistsError:  # created meanwhile by another run (and maybe leased: fine)
            pass

    def _claim(self, metadata: dict[str, str]) -> None:
        from azure.core.exceptions import HttpResponseError

        try:
            self.blob.set_blob_metadata(metadata)
        except HttpResponseError as exc:
            if exc.status_code == 412 or getattr(exc, "error_code", None) in ("LeaseIdMissing", "LeaseIdMismatchWithBlobOperation"):
                # Leased by someone: acquire_lease below fails the same way and names the holder.
                return
            raise

    def _holder_is_gone(self) -> bool:
        """The lease belongs to a process of this very host that no longer exists (killed, or
        crashed): break it now rather than wait for it to expire. Anything else (another host,
        a live process, no record of who) is left to its lease."""
        from azure.core.exceptions import AzureError
        from azure.storage.blob import BlobLeaseClient

        try:
            metadata = self.blob.get_blob_properties().metadata or {}
        except AzureError:
            return False
        mine = _process_tag()
        if not metadata.get("pid") or metadata.get("host") != mine["host"] or metadata.get("instance", "") != mine["instance"]:
            return False
        try:
            pid = int(metadata["pid"])
        except ValueError:
            return False
        if pid == os.getpid() or _process_alive(pid, metadata.get("pidStart", "")):
            return False
        log.warning("run lock %s: its holder (%s) is no longer running on this host; breaking its lease",
                    self.where, _clean(metadata.get("holder") or UNNAMED))
        try:
            BlobLeaseClient(self.blob).break_lease(lease_break_period=0)
        except AzureError as exc:
            log.warning("run lock %s: could not break the stale lease (%s)", self.where, azure_reason(exc))
            return False
        return True

    def held_by_anyone(self) -> bool | None:
        """Whether a lease is on the lock blob now (a read of its properties; a lease being
        broken counts as held until it is). ``None`` when the storage cannot be read."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        if self._lease is not None:
            return True
        try:
            lease = self.blob.get_blob_properties(**self._call_options()).lease
        except ResourceNotFoundError:
            return False
        except AzureError:
            return None
        return getattr(lease, "state", None) in ("leased", "breaking")

    def _read_holder(self) -> tuple[str, str | None, int]:
        from azure.core.exceptions import AzureError

        try:
            metadata = self.blob.get_blob_properties().metadata or {}
        except AzureError:
            metadata = {}
        holder = _clean(metadata.get("holder") or "") or UNNAMED
        since = _clean(metadata.get("since") or "", 40) or None
        try:
            seconds = int(metadata.get("lease_seconds") or MAX_LEASE_SECONDS)
        except ValueError:
            seconds = MAX_LEASE_SECONDS
        return holder, since, max(MIN_LEASE_SECONDS, min(MAX_LEASE_SECONDS, seconds))

    def _renew_loop(self, lease: Any, stop: threading.Event) -> None:
        """Never raises: a failure is recorded in ``lost`` and logged."""
        from azure.core.exceptions import HttpResponseError

        wait = self.renew_every
        while not stop.wait(wait):
            started = time.monotonic()
            try:
                lease.renew(**self._call_options())
            except Exception as exc:  # a daemon thread must not die silently
                if stop.is_set():
                    return
                refused = isinstance(exc, HttpResponseError) and exc.status_code is not None and 400 <= exc.status_code < 500 and exc.status_code not in (408, 429)
                if refused or time.monotonic() >= self._valid_until:
                    log.error(
                        "run lock %s: the lease was lost (%s); another run may take the lock, so this run must not write the state",
                        self.where, azure_reason(exc),
                    )
                    with self._mutex:
                        self._lost = True
                    return
                log.warning("run lock %s: lease renewal failed (%s); retrying while the lease lasts", self.where, azure_reason(exc))
                wait = min(self.renew_every, 5.0)
                continue
            with self._mutex:
                self._valid_until = max(self._valid_until, started + self.lease_seconds)
            wait = self.renew_every

    def _stop_renewal(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=15)

    def release(self) -> None:
        """Stop renewing and give the lease back (best effort: if that fails, the lease
        expires by itself)."""
        from azure.core.exceptions import AzureError

        lease = self._lease
        if lease is None:
            return
        self._stop_renewal()
        lost = self.lost
        with self._mutex:
            self._lease = None
            self._lost = lost
        self.since = None
        if lost:
            log.warning("run lock %s: not releasing a lease that was lost during the run", self.where)
            return
        # The holder's name stays on the blob until the next run claims it: were it cleared
        # before the lease is given back, a run killed between the two would leave a lease
        # that nobody can attribute, and the next run would have to wait for it to expire.
        try:
            lease.release(**self._call_options())
        except AzureError as exc:
            log.warning("run lock %s: could not release the lease (%s); it expires by itself within %d s", self.where, azure_reason(exc), self.lease_seconds)
