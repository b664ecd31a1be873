"""One run of an action: settings → Graph read → projection → diff against state → sync API →
state. ``function_app.py`` and ``python -m shared`` both call ``run``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .credentials import graph_auth_provider
from .diff import Batch, DatasetDiff, diff_records, plan_update
from .errors import (
    CredentialExpiredError,
    GraphError,
    PayloadTooLargeError,
    StateError,
    SyncError,
)
from .graph import GraphSource, ReadStats
from .projection import DATASETS, Projection, Projector, Records, from_api_record, to_api_record
from .redact import scrub
from .settings import Settings
from .state import StateStore, SyncState, open_store
from .summary import RunSummary
from .syncapi import MAX_ITEMS, Rejection, SyncApiClient, WriteResult
from .vault import Secrets, load_secrets

log = logging.getLogger(__name__)

ACTIONS = ("test-update", "update", "replace", "refresh")
REPLACE_ORDER = ("groups", "users", "addresses")  # users' groupIds are checked against live groups


@dataclass
class Options:
    """Knobs for tests and benchmarks; production uses the defaults."""

    graph_backoff_seconds: float = 1.0
    sync_backoff_seconds: float = 0.5
    max_items: int = MAX_ITEMS


async def run(
    action: str,
    settings: Settings,
    *,
    env: Mapping[str, str] | None = None,
    secrets: Secrets | None = None,
    store: StateStore | None = None,
    options: Options | None = None,
) -> RunSummary:
    """Run one action; never raises for an expected failure: the summary says ``ok: false``
    and carries the error (``summary.exception`` keeps the exception for exit codes)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
    summary = RunSummary(action)
    options = options or Options()
    try:
        secrets = secrets or load_secrets(settings, env)
        if secrets.expiry_warnings:
            summary.extra["credentialWarnings"] = secrets.expiry_warnings
        store = store or open_store(settings)
        runner = _Run(action, settings, secrets, store, summary, options)
        await runner.go()
        summary.finish(True)
    except SyncError as exc:
        summary.exception = exc
        summary.finish(False, scrub(str(exc)))
    log.info("sync summary %s", summary.to_json(compact=True))
    return summary


def idempotency_key(position: str, dataset: str, body: dict[str, Any]) -> str:
    """Same state position + same body → same key (a retry, or a rerun after a lost answer);
    anything else → a different key, so a key never stands for two different intentions."""
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode("utf-8")
    h = hashlib.sha256()
    h.update(f"{position}|{dataset}|".encode())
    h.update(raw)
    return h.hexdigest()


class _Run:
    def __init__(self, action: str, settings: Settings, secrets: Secrets, store: StateStore, summary: RunSummary, options: Options) -> None:
        self.action = action
        self.settings = settings
        self.secrets = secrets
        self.store = store
        self.summary = summary
        self.options = options
        self.datasets = settings.datasets
        self.api = SyncApiClient(settings.sync_api_url, secrets.sync_api_credential, backoff_seconds=options.sync_backoff_seconds)

    async def go(self) -> None:
        api = self.api
        try:
            if self.action == "refresh":
                await self._refresh()
                return
            # The state is read first: a broken state fails the run before any Graph request.
            state = self.store.load()
            if state is None and self.action != "test-update":
                state = SyncState.new()
                self.store.save(state)  # the lineage is durable before any batch is journaled
            provisioned = await self._provisioned()
            projection = await self._read(provisioned)
            for d in DATASETS:
                self.summary.datasets[d].excluded = projection.excluded(d)
            if self.action == "test-update":
                self._test_update(projection, state)
            elif state is not None and self.action == "update":
                await self._update(projection, state)
            elif state is not None:
                await self._replace(projection, state)
        finally:
            self.summary.sync_requests = api.requests
            await api.aclose()

    # --- reading -------------------------------------------------------------------------
    async def _provisioned(self) -> frozenset[str]:
        domains = frozenset(await self.api.domains())
        if self.settings.address_domains is not None:
            domains &= self.settings.address_domains
        self.summary.extra["provisionedDomains"] = sorted(domains)
        if not domains:
            log.warning("no provisioned domain remains (GET /domains ∩ ADDRESS_DOMAINS is empty): no address will be kept")
        return domains

    async def _read(self, provisioned: frozenset[str]) -> Projection:
        auth = graph_auth_provider(self.settings, self.secrets.graph_client_secret)
        source = GraphSource(self.settings.graph_base_url, auth, backoff_seconds=self.options.graph_backoff_seconds)
        projector = Projector(provisioned)
        try:
            stats = await source.read_directory(projector)
        except GraphError:
            raise
        except Exception as exc:  # noqa: BLE001 - azure-identity and kiota raise their own types
            raise _graph_failure(exc, self.settings) from None
        finally:
            self.summary.graph_requests = source.stats.requests
            await source.aclose()
        self._note_read(stats)
        return projector.result()

    def _note_read(self, stats: ReadStats) -> None:
        self.summary.extra["read"] = {"kind": "full", "objects": stats.objects, "membershipRead": stats.membership_read, "graphRetries": stats.retries}

    # --- test-update ---------------------------------------------------------------------
    def _test_update(self, projection: Projection, state: SyncState | None) -> None:
        preview: dict[str, Any] = {}
        for d in self.datasets:
            diff = diff_records(d, projection.datasets[d], state.records(d) if state else {})
            self.summary.datasets[d].added = len(diff.upserts)
            self.summary.datasets[d].removed = len(diff.deletes)
            preview[d] = {
                "added": [to_api_record(d, k, v) for k, v in diff.upserts.items()],
                "removed": diff.deletes,
            }
        self.summary.extra["changes"] = preview
        self.summary.extra["exclusions"] = [e.as_dict() for e in projection.exclusions if e.dataset in self.datasets]

    # --- update --------------------------------------------------------------------------
    async def _update(self, projection: Projection, state: SyncState) -> None:
        diffs: dict[str, DatasetDiff] = {
            d: diff_records(d, projection.datasets[d], state.records(d)) for d in self.datasets
        }
        # The plan is complete before the first batch changes the state, so it may read it directly.
        batches = plan_update(diffs, {d: state.records(d) for d in self.datasets}, self.options.max_items)
        sender = _BatchSender(self.api, self.store, state, self.summary)
        for batch in batches:
            await sender.send(batch)
        sender.finish_counts()
        if batches or state.seq:
            state.meta["lastAction"] = "update"
            self.store.save(state.advanced())
        # Nothing changed: the state on disk is already exact, so it is not rewritten.

    # --- replace -------------------------------------------------------------------------
    async def _replace(self, projection: Projection, state: SyncState) -> None:
        for d in REPLACE_ORDER:
            if d not in self.datasets:
                continue
            before = dict(state.records(d))
            counts = self.summary.datasets[d]
            await self._replace_dataset(d, projection.datasets[d], state)
            after = await self._read_service(d)
            counts.added = sum(1 for k, v in after.items() if before.get(k) != v)
            counts.removed = sum(1 for k in before if k not in after)
            state.datasets[d] = after
        state.meta["lastAction"] = "replace"
        self.store.save(state.advanced())

    async def _replace_dataset(self, dataset: str, records: Records, state: SyncState) -> None:
        api = self.api
        counts = self.summary.datasets[dataset]
        rid = await api.create_replacement(dataset)
        log.info("replace %s: staging %d records in replacement %s", dataset, len(records), rid)
        try:
            items = [to_api_record(dataset, k, v) for k, v in records.items()]

            async def post(chunk: list[dict[str, Any]]) -> None:
                body = {"records": chunk}
                key = idempotency_key(f"{state.lineage}:replace:{rid}", dataset, body)
                try:
                    result = await api.post_replacement_records(dataset, rid, chunk, key)
                except PayloadTooLargeError:
                    if len(chunk) <= 1:
                        raise
                    half = len(chunk) // 2
                    await post(chunk[:half])
                    await post(chunk[half:])
                    return
                _note_rejections(counts, dataset, result.rejected)

            for start in range(0, len(items), self.options.max_items):
                await post(items[start : start + self.options.max_items])
            result = await api.commit_replacement(dataset, rid)
            _note_rejections(counts, dataset, result.rejected)
        except BaseException:
            try:
                await asyncio.shield(api.abandon_replacement(dataset, rid))
            except Exception as exc:  # noqa: BLE001 - the first failure is the one to report
                log.warning("replace %s: could not abandon replacement %s (%s); it expires by itself", dataset, rid, type(exc).__name__)
            raise

    # --- refresh -------------------------------------------------------------------------
    async def _refresh(self) -> None:
        try:
            state = self.store.load()
        except StateError as exc:
            log.warning("refresh: the current state is unusable (%s); rebuilding it from the service", exc)
            state = None
        fresh = SyncState.new() if state is None else state
        counts: dict[str, int] = {}
        for d in self.datasets:
            fresh.datasets[d] = await self._read_service(d)
            counts[d] = len(fresh.datasets[d])
        fresh.meta["lastAction"] = "refresh"
        self.summary.extra["serviceRecords"] = counts
        self.store.save(fresh.advanced())

    async def _read_service(self, dataset: str) -> Records:
        out: Records = {}
        async for page in self.api.records(dataset):
            for rec in page:
                try:
                    key, value = from_api_record(dataset, rec)
                except (KeyError, TypeError, ValueError, AttributeError):
                    from .errors import SyncApiProtocolError

                    raise SyncApiProtocolError(f"GET {dataset} records returned a record of the wrong shape") from None
                out[key] = value
        return out


class _BatchSender:
    """Sends Update batches one at a time and journals each confirmed one before the next."""

    def __init__(self, api: SyncApiClient, store: StateStore, state: SyncState, summary: RunSummary) -> None:
        self.api = api
        self.store = store
        self.state = state
        self.summary = summary
        self.upserted: dict[str, set[str]] = {d: set() for d in DATASETS}
        self.deleted: dict[str, set[str]] = {d: set() for d in DATASETS}

    async def send(self, batch: Batch) -> None:
        d = batch.dataset
        body = {"upsert": [to_api_record(d, k, v) for k, v in batch.upserts], "delete": list(batch.deletes)}
        key = idempotency_key(self.state.position, d, body)
        try:
            result: WriteResult = await self.api.post_changes(d, body["upsert"], body["delete"], key)
        except PayloadTooLargeError:
            if len(batch) <= 1:
                raise
            for half in _halves(batch):
                await self.send(half)
            return
        rejected = {_rejection_key(d, r.key) for r in result.rejected}
        accepted = {k: v for k, v in batch.upserts if k not in rejected}
        entry = self.state.journal_entry(d, accepted, batch.deletes)
        self.store.append_journal(entry)
        self.state.apply(d, accepted, batch.deletes)
        self.state.seq += 1
        self.upserted[d].update(accepted)
        self.deleted[d].update(batch.deletes)
        _note_rejections(self.summary.datasets[d], d, result.rejected)

    def finish_counts(self) -> None:
        for d in DATASETS:
            c = self.summary.datasets[d]
            c.added = len(self.upserted[d])
            c.removed = len(self.deleted[d] - self.upserted[d])


def _halves(batch: Batch) -> list[Batch]:
    items: list[tuple[str, Any]] = [("d", k) for k in batch.deletes] + [("u", kv) for kv in batch.upserts]
    half = len(items) // 2
    out = []
    for part in (items[:half], items[half:]):
        b = Batch(batch.dataset, phase=batch.phase)
        for kind, item in part:
            (b.deletes if kind == "d" else b.upserts).append(item)
        out.append(b)
    return out


def _rejection_key(dataset: str, key: Any) -> str:
    text = str(key)
    return text.lower() if dataset == "addresses" else text


def _note_rejections(counts: Any, dataset: str, rejected: list[Rejection]) -> None:
    counts.rejected += len(rejected)
    for r in rejected:
        counts.rejections.append(r.as_dict())
        log.warning("sync API rejected %s record %s: %s %s", dataset, r.key, r.code, r.message)


_AADSTS = re.compile(r"AADSTS(\d{5,})")


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


__all__ = ["ACTIONS", "Options", "run", "idempotency_key"]
