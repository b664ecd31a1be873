"""Operator actions on the state that need no directory read: approving held deletions, and
the status (last runs, held deletions) shown by ``python -m shared status`` and ``GET status``."""

from __future__ import annotations

import logging
from typing import Any

from .errors import SettingsError, StateError, SyncError
from .guard import approve
from .history import ReportStore, open_reports
from .projection import DATASETS
from .redact import scrub
from .settings import Settings
from .state import StateStore, open_store

log = logging.getLogger(__name__)


def approve_deletions(store: StateStore, dataset: str | None = None) -> dict[str, Any]:
    """Mark exactly the deletions held now as approved: the next update sends those that the
    directory still implies. Deletions held later are not covered."""
    if dataset is not None and dataset not in DATASETS:
        raise SettingsError("--dataset", f"unknown dataset {dataset!r}", "users")
    db = store.open()
    if db is None:
        raise StateError(f"no state at {store.where}")
    try:
        held = db.held(dataset)
        approved: dict[str, Any] = {}
        for d, keys in held.items():
            pending = sorted(k for k, ok in keys.items() if not ok)
            db.set_held(d, approve(keys))
            approved[d] = {"count": len(keys), "newlyApproved": len(pending), "keys": sorted(keys)}
            log.warning("approved %d held %s deletions; the next update sends those still implied by the directory", len(keys), d)
        if not approved:
            log.info("no deletions are held%s; nothing to approve", f" for {dataset}" if dataset else "")
            return approved
        db.set_meta("lastAction", "approve-deletions")
        db.commit()
        store.publish(db)
        return approved
    finally:
        db.close()


async def status(settings: Settings, *, store: StateStore | None = None, reports: ReportStore | None = None, limit: int = 10) -> dict[str, Any]:
    """The last runs and the held deletions, for ``python -m shared status`` and ``GET status``.
    Reads a snapshot: it never waits for, or blocks, a running update."""
    store = store or open_store(settings)
    out: dict[str, Any] = {"state": store.where, "heldDeletions": {}, "runs": []}
    db = store.open(readonly=True)
    if db is not None:
        try:
            for d, keys in db.held().items():
                out["heldDeletions"][d] = {"count": len(keys), "approved": sum(keys.values()), "keys": sorted(keys)}
            out["lastFullRead"] = db.get_meta("lastFullRead")
            out["savedAt"] = db.get_meta("savedAt")
            out["records"] = {d: db.count(d) for d in DATASETS}
        finally:
            db.close()
    try:
        out["runs"] = (reports or open_reports(settings)).recent(limit)
    except SyncError as exc:
        out["runsError"] = scrub(str(exc))
    return out
