"""The snapshot sources a run's settings configure beside Microsoft Graph: sources without a
delta query, read in full on every run, whose entries replace what they held before (today
Exchange Online, ``EXO_MODE``). The reading stage reads each one concurrently with Graph's
round through ``Snapshot.read`` and knows none of them by name: a new source plugs in here.

In: ``Settings``, the Graph client secret (Exchange signs in as the same app), the backoff
base (seconds). Out: ``Snapshot`` objects; ``Snapshot.read()`` returns the collection's
entries in arrival order (a list of the source's JSON objects) and the ``SourceRead``.
Errors: the source's own (``ExchangeError``, ``ExchangeAuthError``); a sign-in failure of the
SDK is turned into ``ExchangeError`` naming only its AADSTS code (no SDK text)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..common.errors import ExchangeError, SyncError
from ..common.redact import aadsts_code
from .base import ListSink, SourceRead


@dataclass
class Counters:
    """HTTP attempts and retries of one source, kept even when its read fails."""

    requests: int = 0
    retries: int = 0


@dataclass
class Snapshot:
    """One configured snapshot source.

    ``collection``: the collection its entries belong to (``recipients``). ``counter``: the
    run summary's prefix of its request counters (``exo`` → ``exoRequests``). ``summary``:
    what the summary's ``read`` block says of it under ``key`` (settings it was read with)."""

    key: str
    collection: str
    counter: str
    settings: Any
    secret: str | None
    backoff_seconds: float
    summary: dict[str, Any] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)

    async def read(self) -> tuple[list[dict[str, Any]], SourceRead]:
        """The source's complete read: (entries in arrival order, what the read says)."""
        # Imported here: a run with EXO_MODE=off never loads the Exchange adapter.
        from ..config.credentials import exchange_token_credential
        from .exchange import ExchangeSource, token_getter_for

        exo = self.settings.exo
        failure: SyncError | None = None
        source: ExchangeSource | None = None
        credential = None
        sink = ListSink()
        try:
            credential = exchange_token_credential(self.settings, self.secret)
            source = ExchangeSource(exo.base_url, exo.tenant or "", exo.recipient_types, token=token_getter_for(credential),
                                    backoff_seconds=self.backoff_seconds)
            return sink.entries, await source.read(sink)
        except SyncError:
            raise
        except Exception as exc:  # noqa: BLE001 - azure-identity raises its own types
            failure = exchange_failure(exc)
        finally:
            if source is not None:
                self.counters.requests += source.stats.requests
                self.counters.retries += source.stats.retries
                await source.aclose()
            if credential is not None and hasattr(credential, "close"):
                credential.close()
        # Raised outside the except block: the SDK's exception text stays out of __context__.
        raise failure


def snapshot_sources(settings: Any, graph_client_secret: str | None, backoff_seconds: float) -> list[Snapshot]:
    """The snapshot sources ``settings`` turn on, in a fixed order (none when EXO_MODE=off)."""
    exo = settings.exo
    if not exo.enabled:
        return []
    return [Snapshot("exchange", "recipients", "exo", settings, graph_client_secret, backoff_seconds,
                     {"mode": exo.mode, "recipientTypes": list(exo.recipient_types)})]


def exchange_failure(exc: Exception) -> SyncError:
    """An azure-identity failure to get the Exchange token, without its text beyond the code;
    any other exception is named by its type alone, as a failed read (not a sign-in)."""
    found = aadsts_code(exc)
    name = type(exc).__name__
    if not found and not type(exc).__module__.startswith(("azure.", "msal")):  # not from the sign-in (azure-identity, MSAL)
        return ExchangeError(f"reading Exchange Online failed ({name}); nothing was sent")
    code = f" (AADSTS{found})" if found else f" ({name})"
    return ExchangeError(f"signing in for Exchange Online failed{code}; check GRAPH_TENANT_ID, GRAPH_CLIENT_ID, GRAPH_AUTH and EXO_BASE_URL; nothing was sent")
