"""The state's journal and snapshot helpers: parsing the journal (a torn last write is
ignored), replaying it onto the last committed generation, and the snapshot a dry run reads.
See ``shared/storage/state.py`` for the protocol (``record_intent``, ``confirm``) they serve."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

from ..common.errors import StateError
from ..model.records import DATASETS

log = logging.getLogger("shared.state")  # the name its log lines have always carried


def parse_journal(data: bytes) -> tuple[list[dict[str, Any]], bool]:
    """The entries, and whether the journal ends in a torn write."""
    entries = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            return entries, True  # a torn last write: that batch was never recorded as confirmed
        if isinstance(entry, dict):
            entries.append(entry)
    return entries, False


def snapshot(source: Path, target: Path, where: str) -> None:
    try:
        # Not mode=ro: a read-only connection to a WAL database leaves its -wal/-shm files
        # behind; this one, if it is the last to close, removes them. It only reads.
        src = sqlite3.connect(source)
        try:
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise StateError(f"the state at {where} is busy (a running update is writing it); try again when it ends") from None
        raise StateError(f"the state at {where} is unreadable ({exc}); run 'refresh' to rebuild it from the service") from None
    except sqlite3.DatabaseError as exc:
        raise StateError(f"the state at {where} is unreadable ({exc}); run 'refresh' to rebuild it from the service") from None


def good_prefix(data: bytes) -> int:
    """Length of the journal up to the end of its last complete, parsable line."""
    end = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            json.loads(line)
        except ValueError:
            break
        end += len(line)
    return end


def replay_journal(db: Any, data: bytes) -> tuple[int, bool]:
    """Apply the journal in the open transaction of ``db`` (an open ``StateDB``). The position stays where the interrupted
    run left it, so a batch whose answer was lost is sent again under the same key. The keys
    of a batch that was sent but never confirmed are marked unknown (the service may or may
    not have applied it), in journal order, so a later confirmation overrides the mark."""
    entries, torn = parse_journal(data)
    ours = [e for e in entries if e.get("lineage") == db.lineage and e.get("generation") == db.generation]
    confirmed = {(e.get("run"), e.get("seq")) for e in ours if "intent" not in e}
    applied = unknown = 0
    unconfirmed: dict[Any, set[Any]] = {}  # seq -> the runs that sent a batch there unconfirmed
    for e in ours:
        if "intent" in e:
            if (e.get("run"), e.get("seq")) not in confirmed and e.get("dataset") in DATASETS and isinstance(e["intent"], list):
                keys = [str(k) for k in e["intent"]]
                db.mark_unknown(e["dataset"], keys)
                db.mark_recheck(e["dataset"], keys)
                unknown += len(keys)
                unconfirmed.setdefault(e.get("seq"), set()).add(e.get("run"))
        elif db.replay(e):
            applied += 1
    db.attempts = len(unconfirmed.get(db.seq + 1, ()))
    if applied:
        log.info("state %s: replayed %d confirmed batch(es) from the journal of an interrupted run", db.where, applied)
    if unknown:
        log.warning("state %s: %d record(s) of a batch sent without a recorded answer are marked unknown; this run sends them again",
                    db.where, unknown)
    return applied + (1 if unknown else 0), torn
