"""Progress lines during long reads and sends: one line every ``PROGRESS_INTERVAL_SECONDS``
(default 30 s; see ``settings.progress_interval_seconds``), so a full read of a large tenant
does not stay silent for minutes.

    progress: reading Graph: 12,345 objects (users 10,000, groups 2,000, contacts 345), 41 pages, 1 retry; 60 s
    progress: sending: 3 of 12 batches sent; 95 s

The counters are read from the live ``GraphSource.stats`` (entries received per collection,
requests, retries) and from the batch sender; nothing here touches the data flow, and a line
that cannot be rendered is skipped: progress reporting never fails a run."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("shared.progress")


class Progress:
    """What a run has done so far; ``line()`` renders it, ``ticker()`` logs it periodically."""

    def __init__(self, interval_seconds: float, emit: Callable[[str], None] | None = None) -> None:
        self.interval = interval_seconds
        self.emit = emit or (lambda text: log.info("%s", text))
        self.started = time.monotonic()
        self.phase: str | None = None
        self._sources: list[Any] = []  # GraphSource-like: .stats.objects, .stats.requests, .stats.retries
        self.batches_total = 0
        self.batches_sent = 0

    # --- what the engine reports -------------------------------------------------------------
    def reading(self, source: Any) -> None:
        self.phase = "reading"
        self._sources.append(source)

    def sending(self, total_batches: int) -> None:
        self.phase = "sending"
        self.batches_total = total_batches
        self.batches_sent = 0

    def sent(self) -> None:
        self.batches_sent += 1

    def idle(self) -> None:
        self.phase = None

    # --- rendering ---------------------------------------------------------------------------
    def line(self) -> str | None:
        """The current progress line, or None between phases."""
        elapsed = f"{time.monotonic() - self.started:.0f} s"
        if self.phase == "reading":
            objects: dict[str, int] = {}
            requests = retries = 0
            for source in self._sources:
                for name, n in source.stats.entries.items():
                    objects[name] = objects.get(name, 0) + n
                requests += source.stats.requests
                retries += source.stats.retries
            total = sum(objects.values())
            each = ", ".join(f"{name} {n:,}" for name, n in objects.items())
            pages = max(0, requests - retries)
            retry_text = f", {retries} retr{'y' if retries == 1 else 'ies'}" if retries else ""
            return f"progress: reading Graph: {total:,} objects ({each}), {pages:,} pages{retry_text}; {elapsed}"
        if self.phase == "sending":
            return f"progress: sending: {self.batches_sent:,} of {self.batches_total:,} batches sent; {elapsed}"
        return None

    async def ticker(self) -> None:
        """Log ``line()`` every ``interval`` seconds until cancelled (never when interval is 0)."""
        if self.interval <= 0:
            return
        while True:
            await asyncio.sleep(self.interval)
            try:
                text = self.line()
            except Exception as exc:  # noqa: BLE001 - a progress line must never fail the run
                log.debug("progress line skipped (%s)", type(exc).__name__)
                continue
            if text is not None:
                self.emit(text)


@contextlib.asynccontextmanager
async def ticking(progress: Progress):
    """Run ``progress.ticker()`` for the duration of the block."""
    task = asyncio.create_task(progress.ticker())
    try:
        yield progress
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
