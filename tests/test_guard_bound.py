"""The deletion guard counts a dataset's records only as far as its percentage needs
(``Thresholds.total_bound``, shared/plan/guard.py): over every small case (deletions,
approvals, records, the three thresholds, percentages with fractions), ``judge`` gives the same
verdict, reason included, with ``min(total, bound)`` as with the total; and the state counts
at most ``limit`` records."""

from __future__ import annotations

import itertools

from shared.plan.guard import Thresholds, judge
from shared.storage.state import StateDB

PERCENTS = [0, 0.1, 1, 10, 12.5, 33.3, 50, 99.9, 100]
COUNTS = [0, 1, 3, 500]
FLOORS = [0, 4, 25]


def test_a_bounded_count_gives_the_verdict_of_the_total() -> None:
    for percent, count, floor, deletions, approved, total in itertools.product(PERCENTS, COUNTS, FLOORS, range(0, 13), range(0, 3), range(0, 160)):
        if approved > deletions:
            continue
        thresholds = Thresholds(percent, count, floor)
        keys = [f"k{i:03d}" for i in range(deletions)]
        prior = {k: True for k in keys[:approved]}
        bound = thresholds.total_bound(deletions)
        counted = total if bound is None else min(total, bound)
        assert judge("users", keys, counted, prior, thresholds) == judge("users", keys, total, prior, thresholds), (percent, count, floor, deletions, total)


def test_the_state_counts_at_most_the_limit(tmp_path) -> None:
    db = StateDB(tmp_path / "state.db", "file: test")
    try:
        db.apply("groups", {f"g{i}": (f"Group {i}", ()) for i in range(40)}, ())
        assert db.count("groups") == 40
        assert [db.count("groups", n) for n in (0, 1, 39, 40, 41, 1000)] == [0, 1, 39, 40, 40, 40]
        assert db.count("users", 5) == 0
    finally:
        db.close()
