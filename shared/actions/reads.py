"""The reading stage of a run: the provisioned domains (``GET /domains`` ∩ ``ADDRESS_DOMAINS``),
one Graph read (full, or a delta round from saved links) concurrently with Exchange Online's
complete read, the read's fingerprint (what makes the next update read in full), the service's
own copy of a dataset, and sign-in failures mapped to one clear message.

In: ``Settings``, secrets, the state's meta. Out: a ``Read`` (``shared/reading.py``), the
summary's ``read`` block, ``Records`` of the service (docs/sync-api.md, ``GET .../records``)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..common.errors import CredentialExpiredError, GraphError, SyncApiProtocolError, SyncError
from ..common.redact import aadsts_code
from ..common.telemetry import phase
from ..config.credentials import graph_token_getter
from ..config.settings import Settings
from ..model.directory import Cache, Round
from ..model.records import Records, from_api_record
from ..model.rules import changed_settings, rule_exclusions_summary
from ..reading import Checkpoints, Read, fingerprint, read_full, why_full
from ..sources.configured import snapshot_sources
from ..sources.graph import GraphSource, gather_or_cancel
from ..storage.state import StateDB
from .base import RunParts

log = logging.getLogger("shared.engine")  # the name its log lines have always carried


class ReadStage(RunParts):
    """The reads of a run (a part of the engine's run class)."""

    async def _provisioned(self) -> frozenset[str]:
        domains = frozenset(await self.api.domains())
        if self.settings.address_domains is not None:
            domains &= self.settings.address_domains
        self.summary.extra["provisionedDomains"] = sorted(domains)
        if not domains:
            log.warning("no provisioned domain remains (GET /domains ∩ ADDRESS_DOMAINS is empty): no address will be kept")
        return domains

    def _source(self) -> GraphSource:
        token = graph_token_getter(self.settings, self.secrets.graph_client_secret)
        return GraphSource(self.settings.graph_base_url, token, scope=self.settings.graph_scope, backoff_seconds=self.options.graph_backoff_seconds,
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
        except Exception as exc:  # noqa: BLE001 - azure-identity raises its own types
            failure = _graph_failure(exc, self.settings)
        finally:
            self.graph_requests += source.stats.requests
            self.graph_retries += source.stats.retries
            self.progress.idle()
            await source.aclose()
        # Raised outside the except block, so the SDK's exception (whose text can echo the
        # token request, secret included) is not kept as the error's __context__.
        raise failure

    async def _with_snapshots(self, graph_work: Awaitable[Read] | None, reason: str) -> Read:
        """Graph's round and the snapshot sources' complete reads (shared/sources/configured.py;
        Exchange Online with EXO_MODE), concurrently: the first to fail cancels the others and
        fails the run before anything is sent (docs/sync-rules.md, "The Exchange Online
        source"). ``graph_work`` None: no Graph request at all (EXO_MODE=only)."""
        self.snapshots = snapshot_sources(self.settings, self.secrets.graph_client_secret, self.options.graph_backoff_seconds)
        if graph_work is not None and not self.snapshots:
            return await graph_work
        if graph_work is None:
            graph_work = _no_graph(reason)
        try:
            read, *reads = await gather_or_cancel(graph_work, *(snap.read() for snap in self.snapshots))
        finally:
            for snap in self.snapshots:  # counted even when a read failed
                setattr(self, f"{snap.counter}_requests", getattr(self, f"{snap.counter}_requests") + snap.counters.requests)
                setattr(self, f"{snap.counter}_retries", getattr(self, f"{snap.counter}_retries") + snap.counters.retries)
        for snap, (entries, _) in zip(self.snapshots, reads, strict=True):
            read.snapshots[snap.collection] = entries
        return read

    def _read_summary(self, read: Read) -> dict[str, Any]:
        out = read.summary(self.graph_retries)
        for snap in self.snapshots:
            out[snap.key] = {**snap.summary, snap.collection: len(read.snapshots.get(snap.collection, ())),
                             f"{snap.counter}Retries": getattr(self, f"{snap.counter}_retries")}
        return out

    async def _read_full(self, reason: str, cache: Cache, checkpoints: Checkpoints | None = None) -> Read:
        graph_work = None if self.settings.exo.mode == "only" else self._graph(lambda source: read_full(source, reason, cache, checkpoints))
        read = await self._with_snapshots(graph_work, reason)
        self.summary.extra["read"] = self._read_summary(read)
        log.info("read: full (%s)", reason)
        return read

    def _fingerprint(self, provisioned: frozenset[str]) -> dict[str, Any]:
        # The scope and exclusion settings too: a change of any of them reads in full.
        out = {**fingerprint(self.datasets, self.settings.address_domains, provisioned, self.settings.graph_base_url),
               "rules": self.settings.rules.fingerprint()}
        if self.settings.exo.enabled:
            out["exo"] = {"mode": self.settings.exo.mode, "types": list(self.settings.exo.recipient_types)}
        if self.settings.graph_tenant_id:  # another tenant is another directory: its delta links and cache are not this one's
            out["tenant"] = self.settings.graph_tenant_id.strip().lower()
        return out

    def _why_full(self, db: StateDB, provisioned: frozenset[str]) -> str | None:
        """Why this update must read the directory in full; ``None``: a delta round will do."""
        if self.settings.exo.mode == "only":
            return "EXO_MODE=only: Exchange Online has no delta query, so every run reads it in full"
        reason = why_full(db, self._fingerprint(provisioned), self.settings.full_sync_interval_hours, self.options.now())
        if reason is None or reason.startswith(("periodic", "FULL_SYNC_INTERVAL_HOURS")):
            changed = changed_settings((db.read_fingerprint or {}).get("rules"), self.settings.rules.fingerprint())
            if changed:
                return f"{', '.join(changed)} changed since the last full read"
        return reason

    def _note_rule_exclusions(self, exclusions: Any) -> None:
        """What the scope and exclusion settings left out, for the run report and status."""
        if self.settings.rules.active:
            self.summary.extra["ruleExclusions"] = rule_exclusions_summary(exclusions)


    async def _read_service(self, dataset: str) -> Records:
        out: Records = {}
        async for page in self.api.records(dataset):
            for rec in page:
                try:
                    key, value = from_api_record(dataset, rec)
                except ValueError as exc:  # the state is left as it was: nothing is written from this listing
                    raise SyncApiProtocolError(f"GET {dataset} records returned a record of the wrong shape: {exc}") from None
                if key in out:  # one listing of a keyed set names each key once (docs/sync-api.md, "3. Datasets and their records")
                    raise SyncApiProtocolError(f"GET {dataset} records listed a key twice across its pages, "
                                               f"so the listing is not one copy of the dataset; nothing was rebuilt from it")
                out[key] = value
        return out



def _graph_failure(exc: Exception, settings: Settings) -> SyncError:
    """Turn azure-identity exceptions into one clear message, without their text
    (which can echo request details) beyond the AADSTS code."""
    code = aadsts_code(exc)
    if code in ("7000222", "7000215", "7000221"):
        where = (
            f"secret {settings.graph_client_secret_name!r} in Key Vault {settings.key_vault_url}"
            if settings.key_vault_url
            else "GRAPH_CLIENT_SECRET"
        )
        what = "has expired" if code == "7000222" else "is not valid for this app"
        return CredentialExpiredError(
            f"Entra ID refused the Graph client secret (AADSTS{code}): the {where} {what}; "
            "rotate it with infra/scripts/rotate-graph-secret.sh"
        )
    if code:
        return GraphError(f"Entra ID sign-in for Graph failed (AADSTS{code}); check GRAPH_TENANT_ID, GRAPH_CLIENT_ID and GRAPH_AUTH")
    name = type(exc).__name__
    if name == "CredentialUnavailableError" and settings.graph_auth == "managed_identity":
        # No managed identity where this runs (a laptop, a build agent): say so, not only "check the settings".
        return GraphError(f"signing in to Graph failed ({name}): GRAPH_AUTH=managed_identity needs the Function app's managed "
                          "identity (AZURE_CLIENT_ID), which exists only in Azure; on a command line use GRAPH_AUTH=client_secret "
                          "with the app's client secret (GRAPH_CLIENT_SECRET, or KEY_VAULT_URL)")
    if "Authentication" in name or "Credential" in name:
        return GraphError(f"signing in to Graph failed ({name}); check GRAPH_TENANT_ID, GRAPH_CLIENT_ID and GRAPH_AUTH")
    return GraphError(f"reading Graph failed ({name}); nothing was sent")


async def _no_graph(reason: str) -> Read:
    """EXO_MODE=only: a full read with no Graph round (the snapshot sources' reads alone)."""
    return Read("full", reason, Round(), {}, "none (EXO_MODE=only)")
