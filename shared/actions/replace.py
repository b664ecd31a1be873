"""The replace and refresh stages: ``replace`` rebuilds each dataset on the service through the
staged, atomic replace (groups, then users, then addresses) and then the state from the
service's copy; ``refresh`` rebuilds the state from the service's copy alone.

In: the state, the provisioned domains. Out: the state committed after each dataset, the
summary's counts (docs/sync-api.md, staged replace and ``GET .../records``)."""

from __future__ import annotations

from ..common.errors import StateError, SyncError
from ..common.redact import scrub
from ..model.records import DATASETS, Records
from ..reading import merge_full
from ..send import stage_replacement
from ..storage.state import StateDB
from .base import Plan
from .update import UpdateStage

REPLACE_ORDER = ("groups", "users", "addresses")  # users' groupIds are checked against live groups


class ReplaceStage(UpdateStage):
    """``replace`` and ``refresh`` (a part of the engine's run class)."""

    async def _replace(self, db: StateDB, provisioned: frozenset[str]) -> None:
        if self._moved(db) is not None:  # a state of another service: its records become this one's first (each dataset commits below)
            await self._baseline(db)
        cache = db.cache(provisioned, self.settings.rules)
        # The cache is marked incomplete until the end: each dataset is committed as soon as the
        # service holds it, and a replace that fails later leaves a state whose next update
        # reads in full.
        db.forget_reads()
        read = await self._read_full("replace always reads in full", cache)
        merge_full(cache, read)
        excluded = cache.excluded()  # a scope id that names no group fails here, before anything is sent
        if self.settings.rules.active:
            self._note_rule_exclusions(cache.rule_exclusions())
        for d in DATASETS:
            self.summary.datasets[d].excluded = excluded[d]
        for d in REPLACE_ORDER:
            if d not in self.datasets:
                continue
            before = db.records(d)
            counts = self.summary.datasets[d]
            missed = await self._replace_dataset(d, cache.records(d), db)
            try:
                after = await self._read_service(d)
            except SyncError as exc:
                raise StateError(
                    f"the replacement of {d} was committed on the service, but its records could not be read back "
                    f"({scrub(str(exc))}); run 'refresh' to rebuild the state from the service"
                ) from None
            counts.added = sum(1 for k, v in after.items() if before.get(k) != v)
            counts.removed = sum(1 for k in before if k not in after)
            db.replace_records(d, after)
            db.set_held(d, {})  # an operator's replace supersedes held deletions
            db.clear_recheck(d)
            if missed:  # sent again by the next update, as its own rejections are: a delta round names only what changed
                db.rejected = {**(db.rejected or {}), d: sorted(set((db.rejected or {}).get(d, ())) | missed)}
            # Durable now: a later dataset's failure must not leave this one's state behind the service.
            db.commit()
            self.store.publish(db)
        plan = Plan("full", "replace", {}, {}, {}, read=read)
        self._save_read(db, plan, provisioned)
        db.last_action = "replace"
        db.service = self._service()
        db.commit()
        self.store.publish(db)

    async def _replace_dataset(self, dataset: str, records: Records, db: StateDB) -> set[str]:
        """Stage and commit ``records``; the keys the service did not take as sent (``stage_replacement``)."""
        return await stage_replacement(self.api, dataset, records, db.lineage, self.options.max_items, self.summary, self.progress)

    # --- refresh -------------------------------------------------------------------------
    async def _refresh(self, db: StateDB) -> None:
        counts: dict[str, int] = {}
        # Pointed at another service, every dataset is read: the state then names this one for all.
        for d in (DATASETS if self._moved(db) is not None else self.datasets):
            recs = await self._read_service(d)
            db.replace_records(d, recs)
            db.clear_recheck(d)
            counts[d] = len(recs)
        # The service's copy may differ from what the cache implies: the next update reads in full.
        db.forget_reads()
        db.last_action = "refresh"
        db.service = self._service()
        self.summary.extra["serviceRecords"] = counts
        db.commit()
        self.store.publish(db)
