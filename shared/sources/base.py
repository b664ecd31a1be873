"""The source interface: what the reading stage asks of a directory source, and what a source
says back. Microsoft Graph (``shared/sources/graph.py``) and Exchange Online
(``shared/sources/exchange.py``) implement it; the reading stage (``shared/reading.py``) runs
every configured source concurrently into one sink and knows no source by name.

A source hands each directory entry to the sink in arrival order, as ``take(collection,
entry)`` (``entry`` is the source's own JSON object; ``collection`` is one of the source's
``collections``), and returns a ``SourceRead`` once its read is complete. A read that cannot
be completed raises (``IncompleteReadError``, ``GraphError``, ``ExchangeError``): a partial read
never reaches the merge, so nothing is ever deleted from it (docs/sync-rules.md, "Reading
Microsoft Graph" and "The Exchange Online source")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class EntrySink(Protocol):
    """Where a source's entries go, in arrival order (``shared.model.directory.Round`` for a
    delta round; the reading stage routes a snapshot source's collection to a list)."""

    def take(self, collection: str, entry: dict[str, Any]) -> None: ...


class ListSink:
    """A sink that keeps a snapshot source's entries, in arrival order, in ``entries``."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def take(self, collection: str, entry: dict[str, Any]) -> None:
        self.entries.append(entry)


@dataclass
class SourceRead:
    """What one complete read of a source says about itself.

    ``links``: collection -> the round's deltaLink (a delta source; ``None`` where the delta
    endpoint was not served); empty for a snapshot source. ``requests``/``retries``: HTTP
    attempts, retries included, for the run summary. ``figures``: source-specific counts for
    the summary's ``read`` block (e.g. Exchange's recipients and pages)."""

    source: str
    complete: bool = True
    links: dict[str, str | None] = field(default_factory=dict)
    requests: int = 0
    retries: int = 0
    figures: dict[str, Any] = field(default_factory=dict)


class DirectorySource(Protocol):
    """A directory source.

    ``name``: its name in logs and messages. ``collections``: the collections its entries
    belong to. ``delta``: ``True`` when it serves delta rounds (``read`` with the links of the
    previous round reads only what changed); ``False`` for a snapshot source, whose every read
    is complete and replaces what it held before (Exchange Online has no delta query)."""

    name: str
    collections: tuple[str, ...]
    delta: bool

    async def read(self, sink: EntrySink, links: Mapping[str, str] | None = None) -> SourceRead: ...

    async def aclose(self) -> None: ...
