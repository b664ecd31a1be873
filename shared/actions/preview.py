"""The preview stage: ``test-update`` reads in full into a scratch directory cache, diffs it
against what ``update`` would diff against, and reports the changes, the exclusions and what the
deletion guard would hold, without sending or writing anything.

In: the state (read only; ``None`` when there is none), the provisioned domains. Out: the
summary's ``changes``, ``exclusions``, ``heldDeletions``, ``heldDigest`` and ``heldCount``."""

from __future__ import annotations

from typing import Any

from ..model.directory import scratch_cache
from ..model.records import DATASETS, to_api_record
from ..plan.approval import held_count, held_digest
from ..plan.diff import diff_records
from ..reading import merge_full
from ..storage.state import StateDB
from .base import Plan
from .update import UpdateStage


class PreviewStage(UpdateStage):
    """``test-update`` (a part of the engine's run class)."""

    async def _test_update(self, db: StateDB | None, provisioned: frozenset[str]) -> None:
        cache = scratch_cache(provisioned, self.settings.rules)  # a scratch cache: a dry run never writes the state
        try:
            read = await self._read_full("test-update always reads in full", cache)
            merge_full(cache, read)
            del read
            projection = cache.projection(self.datasets)
            excluded = cache.excluded()
            lost = await self._lost_state(db)  # what update would diff against (see _baseline)
            held_view = lost[1] if lost else {d: (db.records(d) if db else {}) for d in self.datasets}
            diffs = {d: diff_records(d, projection.datasets[d], held_view[d]) for d in self.datasets}
            # Each added address with where it comes from (Graph or Exchange Online) and its recipient type.
            sources = cache.sources(diffs["addresses"].upserts) if "addresses" in diffs else None
        finally:
            cache.conn.close()
        plan = Plan("full", "test-update", diffs, held_view, excluded)
        self._guard(db, plan)
        self.held_error = None  # a preview reports held deletions; it does not fail for them
        stored = {d: keys for d, keys in (db.held() if db is not None else {}).items() if keys}
        # what approve-deletions --expect compares against: the held set in the state (shared/plan/approval.py)
        self.summary.extra["heldDigest"], self.summary.extra["heldCount"] = held_digest(stored), held_count(stored)
        preview: dict[str, Any] = {}
        for d in DATASETS:
            self.summary.datasets[d].excluded = plan.excluded[d]
        for d in self.datasets:
            diff = diffs[d]
            self.summary.datasets[d].added = len(diff.upserts)
            self.summary.datasets[d].removed = len(diff.deletes)
            preview[d] = {
                "added": [to_api_record(d, k, v) for k, v in diff.upserts.items()],
                "removed": diff.deletes,
            }
        if sources is not None:
            preview["addresses"]["addedFrom"] = sources
        self.summary.extra["changes"] = preview
        self.summary.extra["exclusions"] = [e.as_dict() for e in projection.exclusions if e.dataset in self.datasets]
        self._note_rule_exclusions(projection.exclusions)
