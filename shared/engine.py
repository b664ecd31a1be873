"""One run of an action: settings → Graph read → projection → diff against state → sync API →
state. ``function_app.py`` and ``python -m shared`` both call ``run``."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import StatusCode
from opentelemetry.trace import use_span as trace_use_span

from .common.errors import (
    CredentialExpiredError,
    DeletionsHeldError,
    DeltaExpiredError,
    ExchangeError,
    GraphError,
    RunCancelledError,
    StateError,
    SyncApiProtocolError,
    SyncError,
)
from .common.progress import Progress, ticking
from .common.redact import scrub
from .common.summary import RunSummary
from .common.telemetry import SUMMARY_EVENT, phase, summary_dimensions, tracer
from .config.credentials import exchange_token_credential, graph_auth_provider
from .config.settings import Settings
from .config.vault import Secrets, load_secrets
from .model.directory import Cache, Round, memory_cache
from .model.records import DATASETS, MAX_ITEMS, Records, from_api_record, to_api_record
from .model.rules import RULE_SETTINGS, ScopeError, rule_exclusions_summary
from .operations import approve_deletions
from .plan.approval import Approver, cli_approver, held_count, held_digest
from .plan.diff import DatasetDiff, diff_records, plan_update
from .plan.guard import Thresholds, judge_all
from .reading import (
    Checkpoints,
    Read,
    fingerprint,
    merge_delta,
    merge_full,
    read_delta,
    read_full,
    why_full,
)
from .send import BatchSender, stage_replacement
from .sources.exchange import ExchangeSource, token_getter_for
from .sources.graph import GraphSource, gather_or_cancel
from .storage.backend import open_storage
from .storage.history import ReportStore
from .storage.lock import RunLock, default_holder
from .storage.state import StateDB
from .storage.stores import StateStore
from .target.syncapi import SyncApiClient

log = logging.getLogger(__name__)

ACTIONS = ("test-update", "update", "replace", "refresh", "approve-deletions")
LOCKED_ACTIONS = ("update", "replace", "refresh", "approve-deletions")
REPLACE_ORDER = ("groups", "users", "addresses")  # users' groupIds are checked against live groups


@dataclass
class Options:
    """Knobs for tests and benchmarks; production uses the defaults."""

    graph_backoff_seconds: float = 1.0
    sync_backoff_seconds: float = 0.5
    max_items: int = MAX_ITEMS
    graph_concurrent: bool = True
    # Seconds between progress lines during long reads and sends (PROGRESS_INTERVAL_SECONDS;
    # 0: none). The CLI passes the setting; the Function logs one every 30 s.
    progress_interval: float = 30.0
    checkpoint_seconds: float = 300.0  # a full update's read commits its progress this often (shared/reading.py Checkpoints)
    # Which door ran this: "functions" (function_app.py) or "cli"; the summary record's `host`
    # dimension, which the missed-run alert counts (only timer runs in Azure).
    host: str = "cli"
    now: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))


async def run(
    action: str,
    settings: Settings,
    *,
    env: Mapping[str, str] | None = None,
    secrets: Secrets | None = None,
    store: StateStore | None = None,
    options: Options | None = None,
    lock: RunLock | None = None,
    reports: ReportStore | None = None,
    dataset: str | None = None,
    expect: str | None = None,
    approver: Approver | None = None,
) -> RunSummary:
    """Run one action; never raises for an expected failure: the summary says ``ok: false``
    and carries the error (``summary.exception`` keeps the exception for exit codes).

    Every action but ``test-update`` holds the run lock from before the state is read until
    the end, so a second run fails at once and changes nothing. Every run leaves a report
    next to the state and one ``SyncRunSummary`` log record (Application Insights)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
    summary = RunSummary(action)
    options = options or Options()
    taken: RunLock | None = None
    report = action != "test-update"  # a dry run over no state leaves nothing behind
    root = tracer.start_span(f"sync {action}")
    storage = open_storage(settings)  # the store, the lock and the reports over one client
    try:
        reports = reports or storage.reports()
        if action in LOCKED_ACTIONS:
            candidate = lock or storage.lock(default_holder(action))
            candidate.acquire()
            taken = candidate
        store = _LockedStore(store or storage.store(), taken)
        if action == "approve-deletions":
            who = approver or cli_approver()
            summary.extra["approver"] = who.as_dict()
            summary.extra["approved"] = approve_deletions(store, dataset, expect=expect, approver=who)
        else:
            secrets = secrets or load_secrets(settings, env)
            if secrets.expiry_warnings:
                summary.extra["credentialWarnings"] = secrets.expiry_warnings
            runner = _Run(action, settings, secrets, store, summary, options, reports)
            try:
                with trace_use_span(root, record_exception=False, set_status_on_exception=False):
                    await runner.go()
            finally:
                report = report or runner.found_state
            if runner.held_error is not None:
                raise runner.held_error
        summary.finish(True)
    except SyncError as exc:
        summary.exception = exc
        summary.finish(False, scrub(str(exc)))
    except asyncio.CancelledError as exc:  # SIGTERM (shared/common/shutdown.py): report, summary and lock release still happen
        summary.exception = RunCancelledError(f"the run was cancelled: {exc.args[0] if exc.args else 'cancelled'}; "
                                              "what the service confirmed is journaled and the next run goes on from there")
        summary.finish(False, str(summary.exception))
        report = report or action != "test-update"
    finally:
        if taken is not None:
            taken.release()
    summary.sanitize()  # every outside string escaped and bounded before the log, report and terminal
    # One structured record per run: the message keeps the JSON for humans; the same fields are
    # record attributes, which the OpenTelemetry mode turns into customDimensions (shared/common/telemetry.py).
    dims = summary_dimensions(summary, host=options.host)
    log.info("%s %s", SUMMARY_EVENT, summary.to_json(compact=True), extra=dims)
    root.set_attributes({k: v for k, v in dims.items() if k != "event"})
    if not summary.ok:
        root.set_status(StatusCode.ERROR)
    root.end()
    if report:
        _write_report(summary, reports or storage.reports())
    return summary


def _write_report(summary: RunSummary, reports: ReportStore) -> None:
    try:
        reports.write(summary.as_dict())
    except SyncError as exc:
        log.warning("could not write the run report: %s", scrub(str(exc)))
    except Exception as exc:  # noqa: BLE001 - a report must never fail a run that worked
        log.warning("could not write the run report (%s)", type(exc).__name__)


class _LockedStore:
    """The state store, refusing to write once the run lock was lost (a long run whose lease
    could not be renewed may no longer be the only writer)."""

    def __init__(self, inner: StateStore, lock: RunLock | None) -> None:
        self.inner = inner
        self.lock = lock
        self.where = inner.where

    def _check(self) -> None:
        if self.lock is not None and self.lock.lost:
            raise StateError(f"the run lock on {self.where} was lost during this run; the state was not written")

    def open(self, *, readonly: bool = False, rebuild: bool = False) -> StateDB | None:
        return self.inner.open(readonly=readonly, rebuild=rebuild)

    def append_journal(self, entry: dict[str, Any]) -> Any:
        self._check()
        return self.inner.append_journal(entry)

    def retract_journal(self, token: Any) -> None:
        self.inner.retract_journal(token)

    def publish(self, db: StateDB) -> None:
        self._check()
        self.inner.publish(db)


@dataclass
class _Plan:
    """What one read implies, before anything is sent."""

    kind: str  # "full" or "delta"
    reason: str
    diffs: dict[str, DatasetDiff]
    held_view: dict[str, Records]  # the state records plan_update needs
    excluded: dict[str, int]
    read: Read | None = None  # full: already merged into the state's cache; delta: merged on save


class _Run:
    def __init__(self, action: str, settings: Settings, secrets: Secrets, store: StateStore, summary: RunSummary, options: Options,
                 reports: ReportStore | None = None) -> None:
        self.reports = reports
        self.action = action
        self.settings = settings
        self.secrets = secrets
        self.store = store
        self.summary = summary
        self.options = options
        self.datasets = settings.datasets
        self.api = SyncApiClient(settings.sync_api_url, secrets.sync_api_credential, backoff_seconds=options.sync_backoff_seconds)
        self.held_error: DeletionsHeldError | None = None
        self.graph_requests = 0
        self.graph_retries = 0
        self.exo_requests = 0
        self.exo_retries = 0
        self.found_state = False
        self.progress = Progress(options.progress_interval)

    async def go(self) -> None:
        api = self.api
        db: StateDB | None = None
        try:
            # The state is opened first: a broken state fails the run before any Graph request.
            db = self.store.open(readonly=self.action == "test-update", rebuild=self.action == "refresh")
            self.found_state = db is not None
            await self._go(db)
        finally:
            self.summary.sync_requests = api.requests
            self.summary.graph_requests = self.graph_requests
            self.summary.extra["exoRequests"] = self.exo_requests
            await api.aclose()
            if db is not None:
                db.close()

    async def _go(self, db: StateDB | None) -> None:
        async with ticking(self.progress):
            if self.action == "test-update":
                await self._test_update(db, await self._provisioned())
                return
            if db is None:
                raise StateError(f"internal error: no state opened at {self.store.where}")
            if self.action == "refresh":
                await self._refresh(db)
            elif self.action == "update":
                await self._update(db, await self._provisioned())
            else:
                await self._replace(db, await self._provisioned())

    # --- reading -------------------------------------------------------------------------
    async def _provisioned(self) -> frozenset[str]:
        domains = frozenset(await self.api.domains())
        if self.settings.address_domains is not None:
            domains &= self.settings.address_domains
        self.summary.extra["provisionedDomains"] = sorted(domains)
        if not domains:
            log.warning("no provisioned domain remains (GET /domains ∩ ADDRESS_DOMAINS is empty): no address will be kept")
        return domains

    def _source(self) -> GraphSource:
        auth = graph_auth_provider(self.settings, self.secrets.graph_client_secret)
        return GraphSource(self.settings.graph_base_url, auth, backoff_seconds=self.options.graph_backoff_seconds,
                           concurrent=self.options.graph_concurrent)

    async def _graph(self, work: Callable[[GraphSource], Awaitable[Any]]) -> Any:
        source = self._source()
        failure: SyncError | None = None
        self.progress.reading(source)
        try:
            with phase(self.summary, "read"):
                return await work(source)
        except GraphError:
            raise
        except Exception as exc:  # noqa: BLE001 - azure-identity and kiota raise their own types
            failure = _graph_failure(exc, self.settings)
        finally:
            self.graph_requests += source.stats.requests
            self.graph_retries += source.stats.retries
            self.progress.idle()
            await source.aclose()
        # Raised outside the except block, so the SDK's exception (whose text can echo the
        # token request, secret included) is not kept as the error's __context__.
        raise failure

    async def _exchange(self) -> list[dict[str, Any]]:
        """Every recipient of EXO_RECIPIENT_TYPES, read in full (Exchange has no delta)."""
        exo = self.settings.exo
        failure: SyncError | None = None
        source: ExchangeSource | None = None
        credential = None
        try:
            credential = exchange_token_credential(self.settings, self.secrets.graph_client_secret)
            source = ExchangeSource(exo.base_url, exo.tenant or "", exo.recipient_types, token=token_getter_for(credential),
                                    backoff_seconds=self.options.graph_backoff_seconds)
            recipients = await source.read_recipients()
            log.info("read: Exchange Online, %d recipients of %s in %d pages", len(recipients), ",".join(exo.recipient_types), source.stats.pages)
            return recipients
        except SyncError:
            raise
        except Exception as exc:  # noqa: BLE001 - azure-identity raises its own types
            failure = _exchange_failure(exc)
        finally:
            if source is not None:
                self.exo_requests += source.stats.requests
                self.exo_retries += source.stats.retries
                await source.aclose()
            if credential is not None and hasattr(credential, "close"):
                credential.close()
        # Raised outside the except block: the SDK's exception text stays out of __context__.
        raise failure

    async def _with_exchange(self, graph_work: Awaitable[Read] | None, reason: str) -> Read:
        """Graph's round and Exchange Online's complete read, concurrently: the first to fail
        cancels the other and fails the run before anything is sent (docs/sync-rules.md,
        "Exchange Online"). ``graph_work`` None: EXO_MODE=only, no Graph request at all."""
        if graph_work is not None and not self.settings.exo.enabled:
            return await graph_work
        if graph_work is None:
            read = Read("full", reason, Round(), {}, "none (EXO_MODE=only)")
            read.recipients = await self._exchange()
            return read
        read, recipients = await gather_or_cancel(graph_work, self._exchange())
        read.recipients = recipients
        return read

    def _read_summary(self, read: Read) -> dict[str, Any]:
        out = read.summary(self.graph_retries)
        if self.settings.exo.enabled:
            out["exchange"] = {"mode": self.settings.exo.mode, "recipientTypes": list(self.settings.exo.recipient_types),
                               "recipients": len(read.recipients or ()), "exoRetries": self.exo_retries}
        return out

    async def _read_full(self, reason: str, cache: Cache, checkpoints: Checkpoints | None = None) -> Read:
        graph_work = None if self.settings.exo.mode == "only" else self._graph(lambda source: read_full(source, reason, cache, checkpoints))
        read = await self._with_exchange(graph_work, reason)
        self.summary.extra["read"] = self._read_summary(read)
        log.info("read: full (%s)", reason)
        return read

    def _fingerprint(self, provisioned: frozenset[str]) -> dict[str, Any]:
        # The scope and exclusion settings too: a change of any of them reads in full.
        out = {**fingerprint(self.datasets, self.settings.address_domains, provisioned), "rules": self.settings.rules.fingerprint()}
        if self.settings.exo.enabled:
            out["exo"] = {"mode": self.settings.exo.mode, "types": list(self.settings.exo.recipient_types)}
        return out

    def _why_full(self, db: StateDB, provisioned: frozenset[str]) -> str | None:
        """Why this update must read the directory in full; ``None``: a delta round will do."""
        if self.settings.exo.mode == "only":
            return "EXO_MODE=only: Exchange Online has no delta query, so every run reads it in full"
        reason = why_full(db, self._fingerprint(provisioned), self.settings.full_sync_interval_hours, self.options.now())
        if reason is None or reason.startswith(("periodic", "FULL_SYNC_INTERVAL_HOURS")):
            was = (db.read_fingerprint or {}).get("rules") or {}
            now = self.settings.rules.fingerprint() or {}
            changed = [setting for key, setting in RULE_SETTINGS if was.get(key) != now.get(key)]
            if changed:
                return f"{', '.join(changed)} changed since the last full read"
        return reason

    def _note_rule_exclusions(self, exclusions: Any) -> None:
        """What the scope and exclusion settings left out, for the run report and status."""
        if self.settings.rules.active:
            self.summary.extra["ruleExclusions"] = rule_exclusions_summary(exclusions)

    async def _plan(self, db: StateDB, provisioned: frozenset[str]) -> _Plan:
        reason = self._why_full(db, provisioned)
        if reason is None:
            links: dict[str, str] = db.delta_links
            try:
                reason_delta = "delta links saved by the last run"
                read = await self._with_exchange(self._graph(lambda source: read_delta(source, links, reason_delta)), reason_delta)
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
        return _Plan("full", reason, diffs, held_view, cache.excluded(), read=read)

    def _delta_plan(self, db: StateDB, provisioned: frozenset[str], read: Read) -> _Plan:
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
            excluded = cache.excluded()
            if self.settings.rules.active:
                self._note_rule_exclusions(cache.rule_exclusions())
        self.summary.extra["read"] = self._read_summary(read)
        log.info("read: delta (%s): %s changed objects", read.reason, read.objects)
        return _Plan("delta", read.reason, diffs, held_view, excluded, read=read)

    def _save_read(self, db: StateDB, plan: _Plan, provisioned: frozenset[str]) -> None:
        """After the service confirmed the run: the cache and links of this read become the state's."""
        read = plan.read
        if read is None:
            raise StateError("internal error: a read to save is missing")
        if read.kind == "full":  # already merged into the cache (see _plan, _replace)
            db.last_full_read = self.options.now().isoformat(timespec="seconds")
        else:
            merge_delta(db.cache(provisioned, self.settings.rules), read)
        db.directory_cache = "complete"
        db.delta_links = read.links if read.links_complete() else None
        db.read_fingerprint = self._fingerprint(provisioned)

    # --- the deletion guard --------------------------------------------------------------------
    def _guard(self, db: StateDB | None, plan: _Plan) -> dict[str, list[str]]:
        """Cut each dataset's deletions down to what the guard lets through; returns the held
        keys per dataset (and sets ``self.held_error`` when anything is held)."""
        thresholds = Thresholds(self.settings.delete_threshold_percent, self.settings.delete_threshold_count)
        before = db.held() if db is not None else {}
        deletions = {d: plan.diffs[d].deletes for d in self.datasets if plan.diffs[d].deletes}
        totals = {d: (db.count(d) if db is not None else 0) for d in deletions}
        held: dict[str, list[str]] = {}
        reasons = []
        for d, verdict in judge_all(deletions, totals, before, thresholds).items():
            plan.diffs[d].deletes = verdict.send
            if verdict.approved:
                log.warning("deletion guard: sending %d approved %s deletions", len(verdict.approved), d)
            if verdict.tripped:
                held[d] = verdict.hold
                reasons.append(f"{d}: {len(verdict.hold)} held ({verdict.reason})")
                log.error("deletion guard: holding %d %s deletions (%s); first: %s", len(verdict.hold), d, verdict.reason, ", ".join(verdict.hold[:10]))
        if held:
            self.held_error = DeletionsHeldError(
                "deletion guard tripped, deletions held and not sent: " + "; ".join(reasons)
                + ". Review them with 'python -m shared test-update' or 'python -m shared status', then approve with "
                "'python -m shared approve-deletions' (optionally --dataset NAME) or POST /api/approve-deletions; "
                "additions and updates were sent"
            )
        self.summary.extra["heldDeletions"] = {d: {"count": len(keys), "keys": keys} for d, keys in held.items()}
        return held

    # --- test-update ---------------------------------------------------------------------
    async def _test_update(self, db: StateDB | None, provisioned: frozenset[str]) -> None:
        cache = memory_cache(provisioned, self.settings.rules)  # a scratch cache: a dry run never writes the state
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
        plan = _Plan("full", "test-update", diffs, held_view, excluded)
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
            db.rejected = {d: sorted(keys) for d, keys in sender.rejected.items() if keys} or None
            # Everything was confirmed: this read's cache and links, and the held deletions, become the state.
            self._save_read(db, plan, provisioned)
            for d in DATASETS:
                db.set_held(d, dict.fromkeys(held.get(d, ()), False))
            for d in self.datasets:  # every such key was compared with this read (the plan's keys)
                db.clear_recheck(d)
            db.last_action = "update"
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
        log.warning("no change-tracking state at %s although %s: the state was lost (or this is the first run after the "
                    "desktop tool); the baseline is rebuilt from the service's own copy before the diff", self.store.where,
                    " and ".join(signals))
        for d, recs in service.items():
            db.replace_records(d, recs)

    async def _lost_state(self, db: StateDB | None) -> tuple[list[str], dict[str, Records]] | None:
        """``(signals, the service's records)`` when no run ever completed this state (``db``
        ``None``: there is none) although run reports exist or the service holds records;
        else ``None``. Sets the summary's ``stateRebuilt``."""
        if db is not None and (db.last_action is not None or db.converted_from is not None):
            return None
        signals: list[str] = []
        try:
            if self.reports is not None and self.reports.recent(1):
                signals.append("run reports exist")
        except Exception as exc:  # noqa: BLE001 - the service's copy below decides as well
            log.warning("could not look for earlier run reports (%s)", type(exc).__name__)
        service: dict[str, Records] = {}
        for d in self.datasets:
            service[d] = await self._read_service(d)
        held = {d: len(r) for d, r in service.items() if r}
        if held:
            signals.append("the service already holds " + ", ".join(f"{n} {d}" for d, n in held.items()))
        if not signals:
            return None
        self.summary.extra["stateRebuilt"] = {"signals": signals, "serviceRecords": {d: len(r) for d, r in service.items()}}
        return signals, service

    # --- replace -------------------------------------------------------------------------
    async def _replace(self, db: StateDB, provisioned: frozenset[str]) -> None:
        cache = db.cache(provisioned, self.settings.rules)
        # The cache is marked incomplete until the end: each dataset is committed as soon as the
        # service holds it, and a replace that fails later leaves a state whose next update
        # reads in full.
        db.directory_cache = None
        db.delta_links = None
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
            await self._replace_dataset(d, cache.records(d), db)
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
            # Durable now: a later dataset's failure must not leave this one's state behind the service.
            db.commit()
            self.store.publish(db)
        plan = _Plan("full", "replace", {}, {}, {}, read=read)
        self._save_read(db, plan, provisioned)
        db.last_action = "replace"
        db.commit()
        self.store.publish(db)

    async def _replace_dataset(self, dataset: str, records: Records, db: StateDB) -> None:
        await stage_replacement(self.api, dataset, records, db.lineage, self.options.max_items, self.summary, self.progress)

    # --- refresh -------------------------------------------------------------------------
    async def _refresh(self, db: StateDB) -> None:
        counts: dict[str, int] = {}
        for d in self.datasets:
            recs = await self._read_service(d)
            db.replace_records(d, recs)
            db.clear_recheck(d)
            counts[d] = len(recs)
        # The service's copy may differ from what the cache implies: the next update reads in full.
        db.directory_cache = None
        db.delta_links = None
        db.last_action = "refresh"
        self.summary.extra["serviceRecords"] = counts
        db.commit()
        self.store.publish(db)

    async def _read_service(self, dataset: str) -> Records:
        out: Records = {}
        async for page in self.api.records(dataset):
            for rec in page:
                try:
                    key, value = from_api_record(dataset, rec)
                except (KeyError, TypeError, ValueError, AttributeError):
                    raise SyncApiProtocolError(f"GET {dataset} records returned a record of the wrong shape") from None
                out[key] = value
        return out


_AADSTS = re.compile(r"AADSTS(\d{5,})")


def _exchange_failure(exc: Exception) -> SyncError:
    """An azure-identity failure to get the Exchange token, without its text beyond the code."""
    m = _AADSTS.search(scrub(str(exc)))
    code = f" (AADSTS{m.group(1)})" if m else f" ({type(exc).__name__})"
    return ExchangeError(f"signing in for Exchange Online failed{code}; check GRAPH_TENANT_ID, GRAPH_CLIENT_ID, GRAPH_AUTH and EXO_BASE_URL; nothing was sent")


def _graph_failure(exc: Exception, settings: Settings) -> SyncError:
    """Turn azure-identity/kiota exceptions into one clear message, without their text
    (which can echo request details) beyond the AADSTS code."""
    text = scrub(str(exc))
    m = _AADSTS.search(text)
    if m and m.group(1) in ("7000222", "7000215", "7000221"):
        where = (
            f"secret {settings.graph_client_secret_name!r} in Key Vault {settings.key_vault_url}"
            if settings.key_vault_url
            else "GRAPH_CLIENT_SECRET"
        )
        what = "has expired" if m.group(1) == "7000222" else "is not valid for this app"
        return CredentialExpiredError(
            f"Entra ID refused the Graph client secret (AADSTS{m.group(1)}): the {where} {what}; "
            "rotate it with infra/scripts/rotate-graph-secret.sh"
        )
    if m:
        return GraphError(f"Entra ID sign-in for Graph failed (AADSTS{m.group(1)}); check GRAPH_TENANT_ID, GRAPH_CLIENT_ID and GRAPH_AUTH")
    name = type(exc).__name__
    if "Authentication" in name or "Credential" in name:
        return GraphError(f"signing in to Graph failed ({name}); check GRAPH_TENANT_ID, GRAPH_CLIENT_ID and GRAPH_AUTH")
    return GraphError(f"reading Graph failed ({name}); nothing was sent")


__all__ = ["ACTIONS", "Options", "run"]
