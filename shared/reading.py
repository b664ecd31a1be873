"""The reading stage: which read a run needs (a full round or a delta round, and why), the
read itself (Graph → a ``Round`` of entries in arrival order), and its merge into the
directory cache. Full reads and delta rounds go through the same merge
(``shared.model.directory.Round`` and ``Cache.apply_round``): a full read is a first delta round
applied to an empty cache, and the full projection is computed from that cache by the same
rules as a delta round's affected keys (docs/sync-rules.md, "Every round is a delta round, and entries are applied in arrival order").

Shapes: ``Read.kind`` is ``"full"`` or ``"delta"``; ``Read.links`` maps each collection to the
round's ``@odata.deltaLink`` (``None`` where the delta endpoint was not served);
``Read.objects`` counts distinct objects per collection. Errors: ``DeltaExpiredError`` when
Graph no longer honours a saved link, ``IncompleteReadError`` when a page could not be read
(the run then sends nothing)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .common.errors import DeltaExpiredError
from .common.netutil import endpoint_key, same_origin
from .model.directory import Affected, Cache, Round
from .sources.graph import COLLECTIONS, SELECTS, GraphSource

log = logging.getLogger("shared.reading")


@dataclass
class Read:
    """One round read from Graph, not yet merged."""

    kind: str  # "full" or "delta"
    reason: str
    round: Round
    links: dict[str, str | None] = field(default_factory=dict)
    membership_read: str = "groups/delta"
    counted: dict[str, int] | None = None  # ``objects``, kept when the fold is dropped
    # The snapshot sources' complete reads (shared/sources/configured.py), merged with the
    # round: collection -> entries in arrival order (``recipients``: Exchange Online's).
    snapshots: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    merged: bool = False  # a delta round already merged into the state's cache (merge_delta)
    resumed: bool = False  # a full read that continued an interrupted one's checkpoint

    @property
    def objects(self) -> dict[str, int]:
        """Distinct objects per collection: for a full read those that exist at the end of the
        round, for a delta round those it named (an object sent twice counts once)."""
        if self.counted is not None:
            return self.counted
        return self.round.present() if self.kind == "full" else self.round.distinct()

    def summary(self, graph_retries: int) -> dict[str, Any]:
        """The run summary's ``read``."""
        out = {"kind": self.kind, "reason": self.reason, "objects": self.objects, "membershipRead": self.membership_read,
               "graphRetries": graph_retries}
        if self.kind == "full":
            out["resumedFromCheckpoint"] = self.resumed
        return out

    def links_complete(self) -> bool:
        return links_complete(self.links)


def links_complete(links: Mapping[str, str | None]) -> bool:
    """Every collection's round ended with a deltaLink."""
    return all(isinstance(links.get(c), str) for c in COLLECTIONS)


# What a checkpoint's merged pages hold, saved beside the read's settings: since this release,
# each merged object's candidate rows (kept, users) too (shared/model/loading.py). A release
# that compares the saved fingerprint verbatim (the one before) refuses such a checkpoint and
# reads from the start, instead of resuming rows it would not maintain; this one resumes both.
CACHE_ROWS = {"cacheRows": "per-batch"}


class Checkpoints:
    """A full read that outlives one invocation (a Function's timeout, a killed process): every
    ``interval`` seconds, at a page boundary, the pages merged so far and each collection's next
    link (or its deltaLink, once its round is complete) are committed to the state, marked
    partial (``directoryCache`` = ``partial``, so no delta round and no deletion is ever computed
    from them). The next full update resumes from those links instead of from zero, when nothing
    else was committed since and the read's settings (``fingerprint``) are the same; Graph
    refusing a saved link (410, a sync reset) starts the round over. ``db`` is the run's
    ``StateDB``, ``store`` its state store (``publish`` after each commit)."""

    def __init__(self, db: Any, store: Any, fingerprint: dict[str, Any], interval: float) -> None:
        self.db, self.store, self.fingerprint, self.interval = db, store, fingerprint, interval
        self.saved = 0

    def resume(self) -> dict[str, dict[str, Any]] | None:
        """The saved links per collection, when they may be resumed."""
        saved = self.db.full_read_progress
        if not isinstance(saved, dict) or saved.get("generation") != self.db.generation:
            return None
        # Plain: saved by a release before CACHE_ROWS; without "select": by a release before that
        # was recorded, which selected what this one does (reading.fingerprint).
        before = {k: v for k, v in self.fingerprint.items() if k != "select"}
        if saved.get("fingerprint") not in (self.fingerprint, {**self.fingerprint, **CACHE_ROWS}, before, {**before, **CACHE_ROWS}):
            return None
        links = saved.get("links")
        if not isinstance(links, dict) or not all(c in COLLECTIONS and isinstance(v, dict) for c, v in links.items()):
            return None
        return links

    def attach(self, load: Any) -> None:
        load.checkpoint, load.interval = self.save, self.interval

    def save(self, links: dict[str, dict[str, Any]]) -> None:
        db = self.db
        db.directory_cache = "partial"
        # The generation this commit makes: any later commit (another action) voids the checkpoint.
        db.full_read_progress = {"generation": db.generation + 1, "fingerprint": {**self.fingerprint, **CACHE_ROWS}, "links": links,
                                 "savedAt": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        db.commit()
        self.store.publish(db)
        self.saved += 1
        log.info("full read: checkpoint %d saved (%s)", self.saved, ", ".join(f"{c}: {'done' if 'delta' in p else 'in progress'}" for c, p in links.items()))

    def done(self) -> None:
        """The round is complete: the checkpoint goes with the run's commit."""
        if self.db.full_read_progress is not None:
            self.db.full_read_progress = None


async def read_full(source: GraphSource, reason: str, cache: Cache, checkpoints: Checkpoints | None = None) -> Read:
    """A first delta round over users, groups (with members) and contacts, streamed into
    ``cache`` as it arrives (the cache is emptied first: ``Cache.load``), so the read never
    holds the whole directory; with ``checkpoints``, its progress is saved as it goes and an
    interrupted read is resumed. Each merged batch brings its objects' candidate rows; once the
    round is complete, the indexes are built (``Cache.finish_load``) and the objects counted."""
    resume = checkpoints.resume() if checkpoints is not None else None
    load = cache.load(keep=resume is not None)
    if checkpoints is not None:
        checkpoints.attach(load)
    try:
        if resume is None:
            stats = await source.read_directory(load)
        else:
            stats = await source.read_directory(load, resume)
            # The directory did not wait for this invocation: what changed since the checkpoint
            # (to objects of pages read before it, too) comes in one more round from the links the
            # resumed round ended with, into the same cache, so the run reflects the directory now
            # (docs/sync-rules.md, "The recovery guarantee").
            if links_complete(stats.links):
                stats = await source.read_changes({c: str(stats.links[c]) for c in COLLECTIONS}, load)
    except DeltaExpiredError as exc:
        # A link of this round refused (a resumed checkpoint's, or a nextLink of the round itself):
        # Graph says to restart with a full synchronization ("Synchronization reset"), so the
        # round starts over, once, into the emptied cache; a second refusal fails the read.
        if resume is not None:
            log.warning("%s: the interrupted full read starts over", exc)
            reason = f"{reason}; the checkpoint of an interrupted full read was refused ({exc}), read from the start"
        else:
            log.warning("%s: the full read's round starts over", exc)
            reason = f"{reason}; the round was started over ({exc})"
        resume = None
        source.stats.links.clear()
        load = cache.load()
        if checkpoints is not None:
            checkpoints.attach(load)
        stats = await source.read_directory(load)
    if resume is not None:
        reason = f"{reason}; resumed from the checkpoint of an interrupted full read"
    read = Read("full", reason, Round(), dict(stats.links), stats.membership_read, resumed=resume is not None)
    read.counted = cache.finish_load()
    if checkpoints is not None:
        checkpoints.done()
    return read


async def read_delta(source: GraphSource, links: Mapping[str, str], reason: str) -> Read:
    """A delta round from saved links (raises ``DeltaExpiredError`` when one is refused)."""
    rnd = Round()
    try:
        await source.read_changes(dict(links), rnd)
    finally:
        got = dict(source.stats.links)
    return Read("delta", reason, rnd, got)


def merge_full(cache: Cache, read: Read) -> None:
    """A full read replaces the cache (``read_full`` streamed its round into the emptied
    cache; with EXO_MODE=only there is no Graph round and the cache is emptied here); then
    Exchange Online's recipients are merged."""
    if read.counted is None:
        read.counted = cache.finish_load()
    if "recipients" in read.snapshots:
        cache.apply_recipients(read.snapshots["recipients"], None)


def merge_delta(cache: Cache, read: Read) -> Affected:
    """A delta round merged into the cache; returns the record keys it can affect. A round is
    merged once: merged again (saving a run planned on the merged cache), it changes nothing."""
    affected = Affected()
    if read.merged:
        return affected
    read.merged = True
    cache.apply_round(read.round, affected)
    if "recipients" in read.snapshots:  # no delta: a snapshot source's complete read replaces what it held
        cache.apply_recipients(read.snapshots["recipients"], affected)
    return affected


def fingerprint(datasets: tuple[str, ...] | list[str], address_domains: frozenset[str] | None, provisioned: frozenset[str],
                graph_base_url: str | None = None) -> dict[str, Any]:
    """What the cached projection depends on beyond the directory: a change forces a full read.
    ``select``: each collection's $select, which Graph encodes into the round's links (``SELECTS``).
    ``graph``: the Graph endpoint (``GRAPH_BASE_URL``, ``netutil.endpoint_key``) whose links a saved
    checkpoint holds; a delta link is judged by its own origin (``why_full``)."""
    out: dict[str, Any] = {
        "datasets": list(datasets),
        "addressDomains": sorted(address_domains) if address_domains is not None else None,
        "provisioned": sorted(provisioned),
        "select": {c: list(SELECTS[c]) for c in COLLECTIONS},  # what the saved links track
    }
    if graph_base_url is not None:
        out["graph"] = endpoint_key(graph_base_url)  # the same endpoint spelled another way is the same key
    return out


def why_full(db: Any, new_fingerprint: dict[str, Any], interval_hours: float, now: dt.datetime) -> str | None:
    """Why this update must read the directory in full; ``None``: a delta round will do.
    ``db`` is the state (``StateDB``), read through its named meta accessors."""
    links = db.delta_links
    if db.directory_cache != "complete" or not isinstance(links, dict):
        if db.converted_from:
            return "the state was converted from the previous release and has no directory cache yet"
        if db.last_full_read is None:
            return "first run: no directory cache yet"
        return "no directory cache (after refresh, a replace that did not finish, or an endpoint that does not serve delta)"
    if not links_complete(links):
        return "a collection has no delta link (its delta endpoint was not served)"
    endpoint = new_fingerprint.get("graph")
    if endpoint is not None and not all(same_origin(links[c], endpoint) for c in COLLECTIONS):
        # The links belong to the endpoint that gave them (a proxy put in front of Graph, a
        # national cloud fixed, an emulator on another port): they are not followed elsewhere.
        return "GRAPH_BASE_URL changed since the last full read: the saved delta links are on another endpoint"
    old = db.read_fingerprint or {}
    if "tenant" in old and old.get("tenant") != new_fingerprint.get("tenant"):  # a state saved before it was recorded: not judged
        return "GRAPH_TENANT_ID changed since the last full read: the cache and the delta links are another tenant's"
    if "select" in old and old.get("select") != new_fingerprint.get("select"):  # likewise
        return "the properties read from Graph ($select) changed since the last full read: the saved delta links track the old ones"
    for key, setting in (("datasets", "SYNC_DATASETS"), ("addressDomains", "ADDRESS_DOMAINS"), ("provisioned", "the provisioned domains (GET /domains)"),
                         ("exo", "EXO_MODE or EXO_RECIPIENT_TYPES")):
        if old.get(key) != new_fingerprint.get(key):
            return f"{setting} changed since the last full read"
    last = _parse_time(db.last_full_read)
    if interval_hours <= 0:
        return "FULL_SYNC_INTERVAL_HOURS is 0: every run reads in full"
    if last is None or now - last >= dt.timedelta(hours=interval_hours):
        return f"periodic full reconcile (FULL_SYNC_INTERVAL_HOURS={interval_hours:g}; last full read {db.last_full_read})"
    return None


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)
