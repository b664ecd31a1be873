"""One run at a time.

Two runs on the same state (the timer, and someone running ``update`` from the command line)
would both compute a diff from the same old state and both send it; the second would then
lose its state write to the first (ETag conflict) after having changed the service. So a run
takes a lock before it reads the state and holds it until it ends:

* ``file:<directory>``: an OS lock (``flock``) on ``<directory>/run.lock``. The kernel drops it
  when the process dies, however it dies, so a crash never leaves a stale lock.
* ``blob:<container>``: a lease on the blob ``run.lock`` in the state container, renewed by a
  background thread during long runs. After a crash nobody renews it and it expires by itself
  within ``lease_seconds``.

A second run does not wait: it fails at once with :class:`RunLockedError`, which names who
holds the lock and since when, before anything was read or changed."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from ..common.errors import StateError
from .blob import azure_reason, ensure_container

log = logging.getLogger("shared.lock")  # the name its log lines have always carried

LOCK_NAME = "run.lock"
MIN_LEASE_SECONDS = 15  # Azure's bounds for a finite blob lease
MAX_LEASE_SECONDS = 60
UNNAMED = "an unnamed run"
_BUSY_CODES = frozenset({"LeaseAlreadyPresent", "LeaseIsBreakingAndCannotBeAcquired"})


class RunLockedError(StateError):
    """Another run holds the lock; this run changed nothing."""

    exit_code = 3

    def __init__(self, where: str, holder: str, since: str | None, note: str | None = None) -> None:
        self.where = where
        self.holder = holder
        self.since = since
        text = f'another run holds the lock on {where}: "{holder}"'
        if since:
            text += f" since {since}"
        text += "; nothing was changed; try again when it ends"
        if note:
            text += f" ({note})"
        super().__init__(text)


class RunLock(Protocol):
    """What the engine needs: take the lock or fail at once, give it back, and know whether
    it was lost while held (then the state must not be written)."""

    where: str

    def acquire(self) -> None: ...
    def release(self) -> None: ...

    @property
    def lost(self) -> bool: ...

    def __enter__(self) -> Self: ...
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None: ...


def default_holder(action: str) -> str:
    """Who is running, in words an operator can act on: ``update by pid 1234 on host web-1``."""
    text = f"{action} by pid {os.getpid()} on host {socket.gethostname() or 'unknown'}"
    instance = os.environ.get("WEBSITE_INSTANCE_ID", "").strip()
    if instance:  # set on Azure Functions; the host name alone may be shared by instances
        text += f" (instance {instance[:8]})"
    return text


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


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _clean(value: Any, limit: int = 200) -> str:
    """Printable ASCII only: the text is read back from a file or blob metadata that anyone
    with access could have written, and it ends up in a message and a header."""
    text = "".join(c if " " <= c <= "~" else "?" for c in str(value))
    return text.strip()[:limit]


class _LockBase(ABC):
    """The context-manager half shared by both locks."""

    where: str

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    @abstractmethod
    def acquire(self) -> None: ...

    @abstractmethod
    def release(self) -> None: ...


# --- file: ----------------------------------------------------------------------------------
def _fcntl() -> Any:
    try:
        import fcntl
    except ImportError:  # Windows: not a target (Functions run on Linux)
        raise StateError("the file: state needs POSIX file locks (fcntl), which this platform lacks; use blob: state") from None
    return fcntl


class FileRunLock(_LockBase):
    """``flock`` on ``<directory>/run.lock``; the holder is written into the file so that a
    blocked run can name it. The file is never deleted: deleting a locked file lets two runs
    lock two different files of the same name."""

    def __init__(self, directory: str | os.PathLike[str], holder: str) -> None:
        self.dir = Path(directory)
        self.path = self.dir / LOCK_NAME
        self.where = f"file:{self.dir}"
        self.holder = _clean(holder) or UNNAMED
        self.since: str | None = None
        self._fd: int | None = None

    @property
    def lost(self) -> bool:
        return False  # an OS lock cannot be taken away from a live process

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"the run lock on {self.where} is already held by this object")
        fcntl = _fcntl()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(f"cannot open the run lock at {self.where}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder, since = self._read_holder(fd)
            finally:
                os.close(fd)
            raise RunLockedError(self.where, holder, since) from None
        except OSError as exc:
            os.close(fd)
            raise StateError(f"cannot lock {self.where}: {exc.strerror}") from None
        self._fd = fd
        self.since = _now()
        info = {"holder": self.holder, "since": self.since, "pid": os.getpid(), "host": socket.gethostname()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode("utf-8") + b"\n", 0)
        except OSError as exc:  # the lock is held; only the name shown to others is missing
            log.warning("run lock %s: could not record the holder (%s)", self.where, exc.strerror)

    @staticmethod
    def _read_holder(fd: int) -> tuple[str, str | None]:
        """The holder as written by the run that has the lock. It writes right after locking,
        so an empty file may only mean "not yet": look again a few times, briefly."""
        for attempt in range(5):
            try:
                data = os.pread(fd, 4096, 0)
            except OSError:
                break
            if data.strip():
                try:
                    info = json.loads(data)
                except ValueError:
                    info = None
                if isinstance(info, dict):
                    holder = _clean(info.get("holder") or "") or UNNAMED
                    since = _clean(info.get("since") or "", 40) or None
                    return holder, since
            if attempt < 4:
                time.sleep(0.02)
        return UNNAMED, None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        fcntl = _fcntl()
        try:
            os.ftruncate(fd, 0)  # no stale name for the next reader; the file itself stays
        except OSError:
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass
        finally:
            os.close(fd)  # closing drops the lock in any case
        self.since = None


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
            raise StateError(f"cannot take the run lock on {self.where}: {azure_reason(exc)}") from None
        except AzureError as exc:
            raise StateError(f"cannot take the run lock on {self.where}: {azure_reason(exc)}") from None
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
