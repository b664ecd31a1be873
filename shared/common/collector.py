"""Python's cyclic garbage collector during a run (``during_run``).

A full update allocates millions of container objects (a Graph page's dicts and lists, the
rows of each batch, the records) that live for a batch or a page, and the default collector
scans the young ones every 700 allocations and, every so often, every object of the process,
the tens of thousands of modules, classes and functions the imports made included. Measured
with ``gc.callbacks`` at 100,000 users (docs/performance.md): 0.80 s of a 10.7 s full update
went to collections; with the objects that exist at the start of the run left out of the scans
and a young collection every 5,000 allocations, 0.39 s, with the peak memory 3 MB higher. Since
the Graph read and the sync API left httpx (whose ``Response`` and stream refer to each other,
so each answer's body waited for a collection: 20 MB more at 20,000), a young collection every
20,000 allocations costs no memory: 0.15 s against 0.35 s at 5,000, the peak 161 MB either way
(docs/performance.md, "The Graph read on aiohttp").

The policy is process-wide and runs may overlap (a Functions worker can run a timer
invocation and an HTTP one at once), so it is counted: the first run to enter applies it, the
last to leave restores the thresholds it found and returns the frozen objects to the
collector."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 20_000  # allocations between young collections during a run (Python's default: 700)

_lock = threading.Lock()
_depth = 0
_saved: tuple[int, int, int] | None = None


@contextmanager
def during_run() -> Iterator[None]:
    """Apply the run's collector policy for the duration of the block: ``gc.freeze()`` (the
    objects alive now, mostly the imports, are not scanned again; ``gc.unfreeze()`` gives them
    back at the end, so nothing frozen is kept past the run) and a young-generation threshold
    of ``YOUNG_THRESHOLD`` (the older thresholds are left as they are). Re-entrant across
    overlapping runs; a collector disabled by the host (``gc.disable()``) stays disabled."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = gc.get_threshold()
            # The young generations' garbage first (an earlier run's last answers): frozen, it
            # would wait for the run's end. Older garbage does (a full collection before every
            # run costs 30-40 ms, a tenth of a warm incremental update).
            gc.collect(1)
            gc.freeze()
            young = _saved[0] and max(YOUNG_THRESHOLD, _saved[0])  # 0: the host turned collections off
            gc.set_threshold(young, _saved[1], _saved[2])
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                gc.unfreeze()
                _saved = None
