"""The update stage of a run: the plan (a full read's diff, or a delta round's affected keys
plus everything held, rejected, unknown or to recheck), the deletion guard, the sending stage,
and the one commit; a state no run ever completed gets its baseline from the service first.

In: the state, the provisioned domains. Out: batches sent (``shared/send.py``), the state
committed, the summary's counts and ``heldDeletions`` (docs/sync-rules.md, "The deletion guard")."""

from __future__ import annotations

import logging

from ..common.errors import DeletionsHeldError, DeltaExpiredError, StateError
from ..common.telemetry import phase
from ..model.counts import baseline
from ..model.records import DATASETS, Records
from ..model.rules import ScopeError
from ..plan.diff import DatasetDiff, diff_records, plan_update
from ..plan.guard import Thresholds, judge_all
from ..reading import Checkpoints, Read, merge_delta, merge_full, read_delta
from ..send import BatchSender
from ..storage.codec import UNKNOWN
from ..storage.state import StateDB
from ..target.syncapi import service_address
from .base import Plan
from .reads import ReadStage

log = logging.getLogger("shared.engine")  # the name its log lines have always carried
_NONE = (None,)  # the address of a user the service does not hold


class UpdateStage(ReadStage):
    """``update``, the plan and the deletion guard (a part of the engine's run class)."""

    waiting: tuple[str, ...] = ()  # set by _guard: users that wait for a held deletion (_wait_for_held)
    moved: str | None = None  # set by _baseline: the state's records were another sync API's (why), and are now this one's

    async def _plan(self, db: StateDB, provisioned: frozenset[str]) -> Plan:
        reason = self._why_full(db, provisioned)
        if reason is None and self.moved is not None:  # every record is compared with the new service's copy
            reason = f"{self.moved}, whose every record is compared"
        if reason is None:
            links: dict[str, str] = db.delta_links
            try:
                reason_delta = "delta links saved by the last run"
                read = await self._with_snapshots(self._graph(lambda source: read_delta(source, links, reason_delta)), reason_delta)
            except DeltaExpiredError as exc:
                reason = f"{exc}; reading in full"
                log.warning("%s", reason)
            else:
                return self._delta_plan(db, provisioned, read)
        # Streamed into the state's cache in the run's transaction (checkpoints: shared/reading.py); incomplete until _save_read.
        cache = db.cache(provisioned, self.settings.rules)
        db.directory_cache = None
        read = await self._read_full(reason, cache, Checkpoints(db, self.store, self._fingerprint(provisioned), self.options.checkpoint_seconds))
        merge_full(cache, read)
        held_view = {d: db.records(d) for d in self.datasets}
        diffs = {d: diff_records(d, cache.records(d), held_view[d]) for d in self.datasets}
        if self.settings.rules.active:
            self._note_rule_exclusions(cache.rule_exclusions())
        excluded, figures = cache.excluded_since(None)
        return Plan("full", reason, diffs, held_view, excluded, read=read, figures=figures)

    def _delta_plan(self, db: StateDB, provisioned: frozenset[str], read: Read) -> Plan:
        # Held deletions and last run's rejections are looked at again, whatever changed.
        held_keys = {d: set(keys) for d, keys in db.held().items()}
        for d, keys in (db.rejected or {}).items():
            held_keys.setdefault(d, set()).update(keys)
        for d in self.datasets:  # records a lost answer left unknown
            held_keys.setdefault(d, set()).update(db.unknown_keys(d))
            # Every key an interrupted run's batches named (confirmed or only intended): the
            # directory may have undone that change since, in objects this round never names.
            held_keys[d].update(db.recheck_keys(d))
        with db.planning():  # the merge stays in the run's transaction: committed only after the service confirmed
            cache = db.cache(provisioned, self.settings.rules)
            try:
                before = cache.verdict()
            except ScopeError:
                before = None  # judged again after the round; then every object is looked at
            affected = merge_delta(cache, read)
            if self.settings.rules.judges_objects:
                cache.verdict()  # a scope id that names no group fails the run here, before anything is sent
                cache.rescope(before, affected)  # users and subtrees the round moved in or out of scope
            affected.users |= cache.claimants(affected.primaries)
            diffs: dict[str, DatasetDiff] = {}
            held_view: dict[str, Records] = {}
            for d in self.datasets:
                keys = affected.keys(d) | held_keys.get(d, set())
                want = cache.desired(d, sorted(keys))
                have = db.values(d, keys)
                upserts = {k: v for k, v in want.items() if v is not None and have.get(k) != v}
                deletes = sorted(k for k, v in want.items() if v is None and k in have)
                diffs[d] = DatasetDiff(d, upserts, deletes)
                held_view[d] = have
            # Counted from the objects the round named, when the state holds the figures before it.
            excluded, figures = cache.excluded_since(baseline(db.excluded_figures, db.generation))
            if self.settings.rules.active:
                self._note_rule_exclusions(cache.rule_exclusions())
        self.summary.extra["read"] = self._read_summary(read)
        log.info("read: delta (%s): %s changed objects", read.reason, read.objects)
        return Plan("delta", read.reason, diffs, held_view, excluded, read=read, figures=figures)

    def _save_read(self, db: StateDB, plan: Plan, provisioned: frozenset[str]) -> None:
        """After the service confirmed the run: the cache and links of this read become the state's."""
        read = plan.read
        if read is None:
            raise StateError("internal error: a read to save is missing")
        full_at = None
        if read.kind == "full":  # already merged into the cache (see _plan, _replace)
            full_at = self.options.now().isoformat(timespec="seconds")
        else:
            merge_delta(db.cache(provisioned, self.settings.rules), read)
        db.record_read(read.links if read.links_complete() else None, self._fingerprint(provisioned), full_at)

    # --- the deletion guard --------------------------------------------------------------------
    def _guard(self, db: StateDB | None, plan: Plan) -> dict[str, list[str]]:
        """Cut each dataset's deletions down to what the guard lets through; returns the held
        keys per dataset (and sets ``self.held_error`` when anything is held)."""
        thresholds = Thresholds(self.settings.delete_threshold_percent, self.settings.delete_threshold_count, self.settings.delete_threshold_floor)
        # A state pointed at another service holds that service's held deletions: none of this one's
        # (update drops them with the baseline; a preview reads the state as it is).
        before = db.held() if db is not None and self._moved(db) is None else {}
        deletions = {d: plan.diffs[d].deletes for d in self.datasets if plan.diffs[d].deletes}
        # Counted only as far as the percentage needs (Thresholds.total_bound).
        totals = {d: (db.count(d, thresholds.total_bound(len(keys))) if db is not None else 0) for d, keys in deletions.items()}
        held: dict[str, list[str]] = {}
        reasons = []
        for d, verdict in judge_all(deletions, totals, before, thresholds).items():
            plan.diffs[d].deletes = verdict.send
            if verdict.approved:
                log.warning("deletion guard: sending %d approved %s deletions", len(verdict.approved), d)
            if verdict.tripped:
                held[d] = verdict.hold
                reasons.append(f"{d}: {len(verdict.hold)} held ({verdict.reason})")
                # INFO: the run's error says the same (a failure's stderr is its one error line); the Function logs INFO.
                log.info("deletion guard: holding %d %s deletions (%s); first: %s", len(verdict.hold), d, verdict.reason, ", ".join(verdict.hold[:10]))
        self._wait_for_held(plan, held)
        if held:
            # Not every update was sent when users wait: the summary's waitingUsers names them.
            waits = (f", except that {len(self.waiting)} users wait for the held deletion of the user that holds their "
                     "address (waitingUsers), sent with it once approved") if self.waiting else ""
            self.held_error = DeletionsHeldError(
                "deletion guard tripped, deletions held and not sent: " + "; ".join(reasons)
                + ". Review them with 'python -m shared test-update' or 'python -m shared status', then approve the set you "
                "reviewed with 'python -m shared approve-deletions --expect DIGEST' (the digest status shows; optionally "
                "--dataset NAME) or POST /api/approve-deletions?expect=DIGEST; additions and updates were sent" + waits
            )
        self.summary.extra["heldDeletions"] = {d: {"count": len(keys), "keys": keys} for d, keys in held.items()}
        if self.waiting:
            self.summary.extra["waitingUsers"] = {"count": len(self.waiting), "keys": list(self.waiting)}
        return held

    def _wait_for_held(self, plan: Plan, held: dict[str, list[str]]) -> None:
        """A user whose primary address a user with a held deletion still holds is not sent: the
        service keeps ``users.address`` unique (docs/sync-api.md, "4.3 Relations") and would reject
        it as ``duplicate_address``, run after run. It waits with that deletion (keeping its
        record at the service, so a user that would take its old address waits too), and is
        looked at again by the next run, as a rejected record is (``_update``), until the
        deletion is approved and sent. Sets ``self.waiting``."""
        users = plan.diffs.get("users")
        have = plan.held_view.get("users", {})
        self.waiting = ()
        if users is None or not held.get("users"):
            return
        # One pass over the upserts, then the chain along the index: a rescan per link would be
        # quadratic in a long chain of address moves (tests/test_wait_for_held.py).
        # Only users that take an address they do not hold already (users.address is unique at
        # the service, so one that keeps its own is no other user's): a groupIds rewrite is no index.
        taking: dict[str, list[str]] = {}  # address -> the upserted users that take it
        for k, v in users.upserts.items():
            if have.get(k, _NONE)[0] != v[0]:
                taking.setdefault(v[0], []).append(k)
        taken = [have[k][0] for k in held["users"] if k in have and have[k] is not UNKNOWN]
        waits: set[str] = set()
        while taken:  # addresses a held or waiting user still holds at the service
            for k in taking.pop(taken.pop(), ()):
                waits.add(k)
                if k in have and have[k] is not UNKNOWN:
                    taken.append(have[k][0])
        if waits:
            self.waiting = tuple(k for k in users.upserts if k in waits)
            for k in self.waiting:
                del users.upserts[k]
            log.info("deletion guard: %d users wait for a held deletion of the user that holds their address; first: %s",
                     len(self.waiting), ", ".join(self.waiting[:10]))

    # --- update --------------------------------------------------------------------------
    async def _update(self, db: StateDB, provisioned: frozenset[str]) -> None:
        await self._baseline(db)
        plan = await self._plan(db, provisioned)
        for d in DATASETS:
            self.summary.datasets[d].excluded = plan.excluded[d]
        with phase(self.summary, "plan"):
            held = self._guard(db, plan)
            batches = plan_update(plan.diffs, plan.held_view, self.options.max_items)
        sender = BatchSender(self.api, self.store, db, self.summary)  # the sending stage (shared/send.py)
        await sender.send_all(batches, self.progress)
        with phase(self.summary, "commit"):
            again = {d: set(keys) for d, keys in sender.rejected.items()}  # rejections, and users that wait (_wait_for_held)
            again["users"].update(self.waiting)
            db.rejected = {d: sorted(keys) for d, keys in again.items() if keys} or None
            # Everything was confirmed: this read's cache and links, and the held deletions, become the state.
            self._save_read(db, plan, provisioned)
            for d in DATASETS:
                db.set_held(d, dict.fromkeys(held.get(d, ()), False))
            for d in self.datasets:  # every such key was compared with this read (the plan's keys)
                db.clear_recheck(d)
            db.last_action = "update"
            db.service = self._service()
            # The cache's figures as this commit leaves it (shared/model/counts.py), for the next delta round.
            db.excluded_figures = None if plan.figures is None else {"generation": db.generation + 1, **plan.figures}
            db.commit()
            self.store.publish(db)

    async def _baseline(self, db: StateDB) -> None:
        """A state that no run ever completed (a first run, or a lost state: the file deleted,
        the blob removed, a new storage account) gets its records from the service's own copy
        (``GET .../records``, as ``refresh`` does) before the diff, so that records the service
        holds and the directory no longer implies are deleted, and judged by the deletion
        guard like any others. Without it, the diff against an empty state sends no deletion.
        The state counts as lost when run reports exist or the service already holds records.
        Reads: ``GET /datasets/{dataset}/records`` per synced dataset (docs/sync-api.md)."""
        lost = await self._lost_state(db)
        if lost is None:
            return
        signals, service = lost
        moved = self._moved(db)
        if moved is not None:
            log.warning("%s: the baseline is rebuilt from that service's own copy before the diff; held deletions of the "
                        "other service are dropped", moved)
        else:
            log.warning("no change-tracking state at %s although %s: the state was lost (or this is the first run after the "
                        "desktop tool, or every earlier run failed before its first commit); the baseline is rebuilt from the "
                        "service's own copy before the diff", self.store.where, " and ".join(signals))
        self._rebase(db, service)
        self.moved = moved

    def _rebase(self, db: StateDB, service: dict[str, Records]) -> None:
        """The state's records become ``service`` (every dataset), its held deletions none, and
        the service it names this one, in one transaction: whatever commits them first (a
        checkpoint of the full read, the run's commit) commits all three together, so a run
        killed after that never leaves one service's records under another's name."""
        for d, recs in service.items():
            db.replace_records(d, recs)
            db.set_held(d, {})
        db.service = self._service()

    def _service(self) -> str:
        """The sync API this run's records describe (``SYNC_API_URL``, ``service_address``)."""
        return service_address(self.settings.sync_api_url)

    def _moved(self, db: StateDB | None) -> str | None:
        """Why the state's records describe another sync API than ``SYNC_API_URL`` names now, or
        ``None``: a state that a run completed against another service is a lost state for
        this one (its records say nothing of what this service holds). A state written before
        the service was recorded is taken as this service's."""
        then = db.service if db is not None and db.last_action is not None else None
        now = self._service()
        if then is None or then == now:
            return None
        return f"SYNC_API_URL names {now}, and the state's records describe {then}"

    async def _lost_state(self, db: StateDB | None) -> tuple[list[str], dict[str, Records]] | None:
        """``(signals, the service's records)`` when no run ever completed this state (``db``
        ``None``: there is none) although run reports exist or the service holds records;
        else ``None``. Sets the summary's ``stateRebuilt``."""
        signals: list[str] = []
        if db is not None and (db.last_action is not None or db.converted_from is not None):
            moved = self._moved(db)
            if moved is None:
                return None
            signals.append(moved)
        else:
            try:
                if self.reports is not None and self.reports.recent(1):
                    signals.append("run reports exist")
            except Exception as exc:  # noqa: BLE001 - the service's copy below decides as well
                log.warning("could not look for earlier run reports (%s)", type(exc).__name__)
        service: dict[str, Records] = {}
        # Every dataset, synced or not: the state then names this service for all of them.
        for d in DATASETS:
            service[d] = await self._read_service(d)
        held = {d: len(r) for d, r in service.items() if r}
        if held:
            signals.append("the service already holds " + ", ".join(f"{n} {d}" for d, n in held.items()))
        if not signals:
            return None
        self.summary.extra["stateRebuilt"] = {"signals": signals, "serviceRecords": {d: len(r) for d, r in service.items()}}
        return signals, service
