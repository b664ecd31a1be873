"""Operator actions on the state that need no directory read: approving held deletions, and
the status (last runs, held deletions, the newest preview started by ``POST test-update``)
shown by ``python -m shared status`` and ``GET status``."""

from __future__ import annotations

import logging
from typing import Any

from .common.errors import SettingsError, StateError, SyncError
from .common.redact import scrub
from .common.textsafe import safe_tree
from .config.settings import Settings
from .model.records import DATASETS
from .plan.approval import Approver, check_expected, held_count, held_digest, normalize_digest
from .plan.guard import approve
from .previews import preview_status
from .storage.backend import open_storage
from .storage.history import ReportStore
from .storage.stores import StateStore

log = logging.getLogger(__name__)


def approve_deletions(
    store: StateStore, dataset: str | None = None, *, expect: str | None = None, approver: Approver | None = None
) -> dict[str, Any]:
    """Mark exactly the deletions held now as approved: the next update sends those that the
    directory still implies. Deletions held later are not covered.

    ``expect`` is the digest of the held set the operator reviewed (``status`` and
    ``test-update`` show it; ``shared/plan/approval.py``): it is required whenever anything is held,
    and when the held set (of ``dataset``, or of all) differs, ``ApprovalMismatchError`` is
    raised and nothing is approved. ``approver`` is logged and returned with each dataset."""
    if dataset is not None and dataset not in DATASETS:
        raise SettingsError("--dataset", f"unknown dataset {dataset!r}", "users")
    if not store.exists():  # a mistyped SYNC_STATE must not read as "nothing to approve"
        raise StateError(f"no state at {store.where}: no update has run there, so no deletion is held there; "
                         "check SYNC_STATE (and the storage account) against the one the updates use")
    db = store.open()
    if db is None:
        raise StateError(f"no state at {store.where}")
    try:
        held = {d: keys for d, keys in db.held(dataset).items() if keys}
        approved: dict[str, Any] = {}
        if not held:
            log.info("no deletions are held%s; nothing to approve", f" for {dataset}" if dataset else "")
            return approved
        scope = f" of {dataset}" if dataset else ""
        if normalize_digest(expect) is None:
            raise SettingsError(
                "--expect",
                f"approving needs the digest of the held set that was reviewed; {held_count(held)} deletions{scope} are held: "
                "review them with 'python -m shared status' (or GET status), then pass the digest it shows as "
                "--expect DIGEST (or ?expect=DIGEST)",
                "--expect 3f9a0c1d2e4b5a69",
            )
        digest = check_expected(held, expect or "", scope)
        who = str(approver or "unrecorded")
        for d, keys in held.items():
            pending = sorted(k for k, ok in keys.items() if not ok)
            db.set_held(d, approve(keys))
            approved[d] = {"count": len(keys), "newlyApproved": len(pending), "keys": sorted(keys), "digest": held_digest({d: keys})}
            log.warning("approved %d held %s deletions (held-set digest %s) by %s; the next update sends those still implied by the directory",
                        len(keys), d, digest, who)
        db.last_action = "approve-deletions"
        db.commit()
        store.publish(db)
        return approved
    finally:
        db.close()


def held_counts(store: StateStore) -> dict[str, int]:
    """Deletions held now per dataset (datasets holding none left out): what an approval limited
    to a dataset that holds nothing reports as held elsewhere, so that its "nothing to approve"
    never reads as "nothing is held"."""
    facts = store.facts()  # the state's figures, without a copy of the database when it can
    return {d: len(keys) for d, keys in facts["held"].items()} if facts is not None else {}  # read_facts leaves out empty ones


# What a run report holds beyond what a compact status needs (with each dataset's rejections): record lists.
_BULKY_RUN_KEYS = ("changes", "exclusions")


def compact_run(report: dict[str, Any]) -> dict[str, Any]:
    """A run report as a compact status shows it: counts and outcome, no per-record lists
    (``changes``, ``exclusions``, each dataset's ``rejections*``)."""
    out = {k: v for k, v in report.items() if k not in _BULKY_RUN_KEYS}
    datasets = out.get("datasets")
    if isinstance(datasets, dict):
        out["datasets"] = {d: {k: v for k, v in c.items() if not k.startswith("rejections")} if isinstance(c, dict) else c
                           for d, c in datasets.items()}
    return out


async def status(settings: Settings, *, store: StateStore | None = None, reports: ReportStore | None = None, limit: int = 10,
                 compact: bool = False, full_preview: bool = False) -> dict[str, Any]:
    """The last runs and the held deletions, for ``python -m shared status`` and ``GET status``,
    and ``preview``, the newest preview started in the background (``shared/previews.py``;
    only when one ever was). Reads a snapshot: it never waits for, or blocks, a running update.

    ``compact`` (``GET status``): the runs without their record lists (``compact_run``), and
    the preview's ``result`` too unless ``full_preview``."""
    storage = open_storage(settings)  # the store and the reports over one client
    store = store or storage.store()
    out: dict[str, Any] = {"state": store.where, "heldDeletions": {}, "runs": []}
    facts = store.facts()  # the state's small figures, without copying the database when it can (shared/storage/stores.py)
    if facts is not None:
        held = facts["held"]  # datasets holding none are left out (facts.read_facts)
        for d, keys in held.items():
            out["heldDeletions"][d] = {"count": len(keys), "approved": sum(keys.values()), "keys": sorted(keys), "digest": held_digest({d: keys})}
        out["heldDigest"], out["heldCount"] = held_digest(held), held_count(held)
        out["lastFullRead"] = facts["lastFullRead"]
        out["savedAt"] = facts["savedAt"]
        out["records"] = {d: facts["records"].get(d, 0) for d in DATASETS}
    try:
        out["runs"] = (reports or storage.reports()).recent(limit)
    except SyncError as exc:
        out["runsError"] = scrub(str(exc))
    try:
        if (preview := preview_status(storage)) is not None:
            out["preview"] = preview
    except SyncError as exc:
        out["previewError"] = scrub(str(exc))
    # Keys and reports carry outside text: escaped and bounded (shared/common/textsafe.py); the
    # records a test-update listed stay what update sends (their JSON is escaped losslessly).
    doc = safe_tree(out, keep_records=True)
    if compact:
        doc["runs"] = [compact_run(r) for r in doc.get("runs", []) if isinstance(r, dict)]
        preview = doc.get("preview")
        if isinstance(preview, dict) and isinstance(preview.get("result"), dict) and not full_preview:
            preview["result"] = compact_run(preview["result"])
    return doc
