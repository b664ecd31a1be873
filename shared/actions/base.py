"""What every stage of a run shares: the run ``Options``, the run's plain data (``RunParts``,
the attributes ``shared/engine.py`` sets up before any stage runs) and ``Plan``, what one read
implies before anything is sent."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..common.errors import DeletionsHeldError
from ..common.progress import Progress
from ..common.summary import RunSummary
from ..config.settings import Settings
from ..config.vault import Secrets
from ..model.records import MAX_ITEMS, Records
from ..plan.diff import DatasetDiff
from ..reading import Read
from ..sources.configured import Snapshot
from ..storage.history import ReportStore
from ..storage.stores import StateStore
from ..target.syncapi import SyncApiClient


@dataclass
class Options:
    """Knobs for tests and benchmarks; production uses the defaults."""

    graph_backoff_seconds: float = 1.0
    sync_backoff_seconds: float = 0.5
    max_items: int = MAX_ITEMS
    graph_concurrent: bool = True
    # Seconds between progress lines during long reads and sends (PROGRESS_INTERVAL_SECONDS;
    # 0: none). The CLI and the Function's timer (function_app.py) pass the setting.
    progress_interval: float = 30.0
    checkpoint_seconds: float = 300.0  # a full update's read commits its progress this often (shared/reading.py Checkpoints)
    # Which door ran this: "functions" (function_app.py) or "cli"; the summary record's `host`
    # dimension, which the missed-run alert counts (only timer runs in Azure).
    host: str = "cli"
    now: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))


@dataclass
class Plan:
    """What one read implies, before anything is sent."""

    kind: str  # "full" or "delta"
    reason: str
    diffs: dict[str, DatasetDiff]
    held_view: dict[str, Records]  # the state records plan_update needs
    excluded: dict[str, int]
    read: Read | None = None  # full: already merged into the state's cache; delta: merged on save
    figures: dict[str, int] | None = None  # what ``excluded`` is made of (shared/model/counts.py); None: not kept


class RunParts:
    """The state of one run that the stages read and write; ``shared/engine.py``'s run class
    sets every attribute in its ``__init__`` and combines the stages."""

    action: str
    settings: Settings
    secrets: Secrets
    store: StateStore
    summary: RunSummary
    options: Options
    reports: ReportStore | None
    datasets: Any
    api: SyncApiClient
    held_error: DeletionsHeldError | None
    graph_requests: int
    graph_retries: int
    exo_requests: int
    exo_retries: int
    snapshots: list[Snapshot]  # the snapshot sources this run read (shared/sources/configured.py)
    found_state: bool
    progress: Progress
