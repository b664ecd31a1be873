"""A local working directory only this OS user can use, for the blob state's local copy.

The copy is reused between runs while its ETag stamp matches the blob's, so whoever can write
the directory can plant a database that the next run takes as the state. The directory is
therefore per user (``<temp>/dirsync-<uid>/``), created with mode 0700, and checked on every
open: a real directory (not a symbolic link), owned by this user, with no access for group or
others. Anything else raises ``StateError`` naming the directory and what is wrong."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from .errors import StateError


def default_base() -> Path:
    """``<temp>/dirsync-<uid>``: the per-user parent of the local copies."""
    uid = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    return Path(tempfile.gettempdir()) / f"dirsync-{uid}"


def private_dir(path: Path, base: Path | None = None) -> Path:
    """Create ``path`` (and ``base``, its parent, first) with mode 0700, or check the ones
    there: a directory, not a link, owned by this user, mode without group/other bits."""
    for d in ((base,) if base is not None else ()) + (path,):
        try:
            d.mkdir(mode=0o700, parents=base is None, exist_ok=True)
            st = os.lstat(d)
        except OSError as exc:
            raise StateError(f"cannot keep a local copy of the state in {d}: {exc.strerror or type(exc).__name__}") from None
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise StateError(f"the local state directory {d} is not a plain directory (a symbolic link?); remove it and run again")
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise StateError(f"the local state directory {d} belongs to uid {st.st_uid}, not to this user ({os.getuid()}); remove it and run again")
        if st.st_mode & 0o077:
            raise StateError(f"the local state directory {d} has mode {stat.S_IMODE(st.st_mode):o}: other users may write it; "
                             "it must be 700 (remove it and run again)")
    return path
