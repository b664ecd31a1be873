"""The sending stage: plain-data changes → the sync API, with nothing lost.

- ``BatchSender`` sends Update batches (``shared/plan/diff.py``'s ``Batch``: a dataset's upserts
  and deletes, at most ``MAX_ITEMS``) one at a time. Around each request the state journals its
  intent (the keys, before the request) and, once the service answered, the confirmation
  (``StateDB.record_intent`` / ``confirm``, shared/storage/state.py); what was confirmed and
  rejected is counted per dataset.
- ``stage_replacement`` posts a dataset's whole records into a staged replacement, commits it,
  and abandons it on any failure.
- ``send_split`` is the one answer to a 413 for both: the request is sent again as two halves,
  down to one item (docs/sync-api.md, 413).

The request bodies come from the adapter (``shared/target/syncapi.py``: ``changes_body``,
``replacement_body``), encoded once (``request_body``); this stage hashes the bytes it sends
with the state position into the Idempotency-Key (``idempotency_key``). A dry run
(``test-update``) is the same pipeline without this stage."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from .common import fastjson
from .common.errors import PayloadTooLargeError, SyncError
from .common.progress import Progress
from .common.summary import RunSummary
from .common.telemetry import phase
from .common.textsafe import safe_tree
from .model.records import DATASETS, Records, to_api_record
from .plan.diff import Batch
from .storage.codec import UNKNOWN
from .storage.state import StateDB
from .storage.stores import StateStore
from .target.syncapi import Rejection, SyncApiClient, WriteResult, changes_body, replacement_body, request_body

log = logging.getLogger("shared.engine")  # the name these log lines have always carried

T = TypeVar("T", bound=Sequence[Any] | Batch)


def idempotency_key(position: str, dataset: str, body: bytes | dict[str, Any]) -> str:
    """Same state position + same body → same key (a retry, or a rerun after a lost answer);
    anything else → a different key, so a key never stands for two different intentions.
    ``body``: the request body's bytes as sent, uncompressed (``request_body(...).raw``), which
    is what the service compares (docs/sync-api.md, "6. Idempotency"); a document stands for
    the bytes ``request_body`` writes of it. Returns 64 hex characters (SHA-256 of the position,
    the dataset and the body). The release before hashed a second, key-sorted dump instead: a
    batch it left in flight is sent again under another key and applied once more, which leaves
    the service as once does (the same upserts and deletes), never a key with two bodies."""
    raw = body if isinstance(body, bytes) else fastjson.dumps_bytes(body)
    h = hashlib.sha256()
    h.update(f"{position}|{dataset}|".encode())
    h.update(raw)
    return h.hexdigest()


async def send_split(part: T, post: Callable[[T], Awaitable[None]], halves: Callable[[T], tuple[T, T]]) -> None:
    """Send ``part`` in one request; when the service answers 413, send each half the same way.
    A single item that is still too large raises ``PayloadTooLargeError``."""
    try:
        await post(part)
    except PayloadTooLargeError:
        if len(part) <= 1:
            raise
        first, second = halves(part)
        await send_split(first, post, halves)
        await send_split(second, post, halves)


def batch_halves(batch: Batch) -> tuple[Batch, Batch]:
    """A batch's items (deletes first, then upserts) cut in two batches of the same phase."""
    items: list[tuple[str, Any]] = [("d", k) for k in batch.deletes] + [("u", kv) for kv in batch.upserts]
    half = len(items) // 2
    out = []
    for part in (items[:half], items[half:]):
        b = Batch(batch.dataset, phase=batch.phase)
        for kind, item in part:
            (b.deletes if kind == "d" else b.upserts).append(item)
        out.append(b)
    return out[0], out[1]


def list_halves(items: list[Any]) -> tuple[list[Any], list[Any]]:
    half = len(items) // 2
    return items[:half], items[half:]


def note_rejections(counts: Any, dataset: str, rejected: list[Rejection]) -> None:
    """Count and log the records the service rejected (its text bounded and escaped)."""
    counts.rejected += len(rejected)
    for r in rejected:
        entry = safe_tree(r.as_dict())  # the service's text, bounded and escaped (shared/common/textsafe.py)
        counts.rejections.append(entry)
        log.warning("sync API rejected %s record %s: %s %s", dataset, entry.get("key"), entry.get("code"), entry.get("message"))


def rejection_key(dataset: str, key: Any) -> str:
    text = str(key)
    return text.lower() if dataset == "addresses" else text


class BatchSender:
    """Sends Update batches one at a time and journals each confirmed one before the next.
    Input: ``Batch`` objects; output: ``upserted``/``deleted``/``rejected`` keys per dataset
    and the summary's counts."""

    def __init__(self, api: SyncApiClient, store: StateStore, state: StateDB, summary: RunSummary) -> None:
        self.api = api
        self.store = store
        self.state = state
        self.summary = summary
        self.upserted: dict[str, set[str]] = {d: set() for d in DATASETS}
        self.deleted: dict[str, set[str]] = {d: set() for d in DATASETS}
        self.rejected: dict[str, set[str]] = {d: set() for d in DATASETS}  # tried again next run
        self.unsent_groups: set[str] = set()  # groups this run creates that no request has carried yet

    async def send_all(self, batches: list[Batch], progress: Progress) -> None:
        """Send every batch in order (the plan's order, docs/sync-api.md §8), then count."""
        new = {k for b in batches if b.dataset == "groups" for k, _ in b.upserts}
        self.unsent_groups = new - self.state.values("groups", new).keys() if new else set()
        progress.sending(len(batches))
        with phase(self.summary, "send"):
            for batch in batches:
                await self.send(batch)
                progress.sent()
        progress.idle()
        self.finish_counts()

    async def send(self, batch: Batch) -> None:
        """One planned batch, split in halves on 413. A half of a groups batch that names a
        group of a later half in ``parentIds`` (a nested cycle inside the batch, or a parent
        cut off) is sent without that reference, and once more complete after the whole
        batch: every id must name a group that exists once the request is applied
        (docs/sync-api.md, "8. Ordering an update")."""
        deferred: dict[str, tuple] = {}
        await send_split(batch, lambda part: self._post(self._without_unsent(part, deferred)), batch_halves)
        if deferred:  # every group they name has been carried by now
            await send_split(Batch("groups", upserts=list(deferred.items()), phase="group references"), self._post, batch_halves)

    def _without_unsent(self, batch: Batch, deferred: dict[str, tuple]) -> Batch:
        """``batch`` with each ``parentIds`` entry naming a group that neither exists yet nor
        comes in this request left out; the complete records go to ``deferred``."""
        if batch.dataset != "groups" or not batch.upserts or not self.unsent_groups:
            return batch
        unsent = self.unsent_groups
        here = {k for k, _ in batch.upserts}
        stripped = False
        out = Batch(batch.dataset, deletes=list(batch.deletes), phase=batch.phase)
        for k, value in batch.upserts:
            name, parents = value
            kept = tuple(p for p in parents if p not in unsent or p in here)
            if len(kept) != len(parents):
                out.upserts.append((k, (name, kept)))
                deferred[k] = value
                stripped = True
            else:
                out.upserts.append((k, value))
        return out if stripped else batch

    async def _post(self, batch: Batch) -> None:
        d = batch.dataset
        body = request_body(changes_body(d, batch.upserts, batch.deletes))
        key = idempotency_key(self.state.position, d, body.raw)
        # The keys go to the journal before the request: if this process dies with the request
        # in flight, the next run knows these records may have changed at the service.
        token = self.state.record_intent(self.store, d, [k for k, _ in batch.upserts] + list(batch.deletes))
        try:
            result: WriteResult = await self.api.post_encoded_changes(d, body, key)
        except PayloadTooLargeError:
            self.state.withdraw_intent(self.store, token)
            raise
        except SyncError as exc:
            # An answer came (a refusal, a hostile body, 429/503 to the end): the run fails and
            # leaves the state as it was; the next round delivers the same changes again. When
            # an attempt may have been applied unseen, the intent stays: the next run sends
            # these records again, as after a crash.
            if not getattr(exc, "maybe_applied", False):
                self.state.withdraw_intent(self.store, token)
            raise
        rejected = {rejection_key(d, r.key) for r in result.rejected}
        self.rejected[d] |= rejected
        accepted = dict(batch.upserts) if not rejected else {k: v for k, v in batch.upserts if k not in rejected}
        self.state.confirm(self.store, d, accepted, batch.deletes)
        if d == "groups" and self.unsent_groups:
            self.unsent_groups.difference_update(k for k, _ in batch.upserts)
        self.upserted[d].update(accepted)
        self.deleted[d].update(batch.deletes)
        note_rejections(self.summary.datasets[d], d, result.rejected)
        if d == "groups" and batch.deletes:
            self._strip_deleted_groups(set(batch.deletes))

    def _strip_deleted_groups(self, removed: set[str]) -> None:
        """A deleted group's id leaves every ``parentIds`` and ``groupIds`` at the service
        (docs/sync-api.md, "4.3 Relations"). The records this run sent and the
        service took leave it out already (group deletes go last); one whose upsert the service
        rejected keeps its earlier value there, less that id: the state records that value too,
        journaled like a confirmed batch."""
        for d in ("groups", "users"):
            held = self.state.values(d, self.rejected[d]) if self.rejected[d] else {}
            stale = {k: (v[0], tuple(i for i in v[1] if i not in removed))
                     for k, v in held.items() if v is not UNKNOWN and not removed.isdisjoint(v[1])}
            if stale:
                self.state.confirm(self.store, d, stale, [])

    def finish_counts(self) -> None:
        for d in DATASETS:
            c = self.summary.datasets[d]
            c.added = len(self.upserted[d])
            c.removed = len(self.deleted[d] - self.upserted[d])


async def stage_replacement(api: SyncApiClient, dataset: str, records: Records, lineage: str, max_items: int, summary: RunSummary,
                            progress: Progress) -> set[str]:
    """Replace a dataset on the service: stage ``records`` in a new replacement in requests of
    at most ``max_items``, then commit it; on any failure the replacement is abandoned and the
    live data stays as it was. Rejections are counted in ``summary.datasets[dataset]``.
    Returns the keys of the records the service did not take as sent: rejected while staged,
    or changed at the commit (a dropped ``parentIds`` entry), as ``rejection_key`` writes them."""
    counts = summary.datasets[dataset]
    missed: set[str] = set()
    rid = await api.create_replacement(dataset)
    log.info("replace %s: staging %d records in replacement %s", dataset, len(records), rid)
    try:
        items = [to_api_record(dataset, k, v) for k, v in records.items()]

        async def post(chunk: list[dict[str, Any]]) -> None:
            body = request_body(replacement_body(chunk))
            key = idempotency_key(f"{lineage}:replace:{rid}", dataset, body.raw)
            result = await api.post_encoded_replacement_records(dataset, rid, body, key)
            note_rejections(counts, dataset, result.rejected)
            missed.update(rejection_key(dataset, r.key) for r in result.rejected)

        progress.sending(-(-len(items) // max_items))
        with phase(summary, "send"):
            for start in range(0, len(items), max_items):
                await send_split(items[start : start + max_items], post, list_halves)
                progress.sent()
        progress.idle()
        result = await api.commit_replacement(dataset, rid)
        note_rejections(counts, dataset, result.rejected)
        missed.update(rejection_key(dataset, r.key) for r in result.rejected)
    except BaseException:
        try:
            await asyncio.shield(api.abandon_replacement(dataset, rid))
        except Exception as exc:  # noqa: BLE001 - the first failure is the one to report
            log.warning("replace %s: could not abandon replacement %s (%s); it expires by itself", dataset, rid, type(exc).__name__)
        raise
    return missed
