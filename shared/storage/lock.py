"""One run at a time.

Two runs on the same state (the timer, and someone running ``update`` from the command line)
would both compute a diff from the same old state and both send it; the second would then
lose its state write to the first (ETag conflict) after having changed the service. So a run
takes a lock before it reads the state and holds it until it ends:

* ``file:<directory>``: an OS lock (``flock``) on ``<directory>/run.lock``. The kernel drops it
  when the process dies, however it dies, so a crash never leaves a stale lock.
* ``blob:<container>``: a lease on the blob ``run.lock`` in the state container, renewed by a
  background thread during long runs. After a crash nobody renews it and it expires by itself
  within ``lease_seconds`` (``shared/storage/lease_lock.py``).

A second run does not wait: it fails at once with :class:`RunLockedError`, which names who
holds the lock and since when, before anything was read or changed."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import time
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from ..common.errors import StateError

log = logging.getLogger("shared.lock")  # the name its log lines have always carried

LOCK_NAME = "run.lock"
UNNAMED = "an unnamed run"
_UNNAMED_TRIES = 5  # a lock held by no named holder is tried this often (each after _read_holder's wait)




class RunLockedError(StateError):
    """Another run holds the lock; this run changed nothing."""

    exit_code = 3
    http_status = 409  # Conflict: the operator endpoints' answer

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
    it was lost while held (then the state must not be written); and, for a reader such as
    ``status``, whether anyone holds it now without taking it (``None``: cannot tell)."""

    where: str

    def acquire(self) -> None: ...
    def release(self) -> None: ...

    @property
    def lost(self) -> bool: ...

    def held_by_anyone(self) -> bool | None: ...

    def __enter__(self) -> Self: ...
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None: ...


def default_holder(action: str) -> str:
    """Who is running, in words an operator can act on: ``update by pid 1234 on host web-1``."""
    text = f"{action} by pid {os.getpid()} on host {socket.gethostname() or 'unknown'}"
    instance = os.environ.get("WEBSITE_INSTANCE_ID", "").strip()
    if instance:  # set on Azure Functions; the host name alone may be shared by instances
        text += f" (instance {instance[:8]})"
    return text


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
            self._lock_or_name_holder(fd, fcntl)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.since = _now()
        info = {"holder": self.holder, "since": self.since, "pid": os.getpid(), "host": socket.gethostname()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode("utf-8") + b"\n", 0)
        except OSError as exc:  # the lock is held; only the name shown to others is missing
            log.warning("run lock %s: could not record the holder (%s)", self.where, exc.strerror)

    def _lock_or_name_holder(self, fd: int, fcntl: Any) -> None:
        """``flock`` the open lock file, or raise ``RunLockedError`` naming its holder. A lock
        whose file names nobody may be held for an instant by ``held_by_anyone`` (a status
        probe, which writes no name): it is tried again briefly before it counts as held."""
        for attempt in range(_UNNAMED_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                holder, since = self._read_holder(fd)
                if holder != UNNAMED or attempt == _UNNAMED_TRIES - 1:
                    raise RunLockedError(self.where, holder, since) from None
            except OSError as exc:
                raise StateError(f"cannot lock {self.where}: {exc.strerror}") from None

    def held_by_anyone(self) -> bool | None:
        """Whether some process holds this lock now (a read-only probe: it takes a shared lock
        for an instant when the lock is free, and never writes). ``None`` when it cannot tell."""
        if self._fd is not None:
            return True
        fcntl = _fcntl()
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

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


