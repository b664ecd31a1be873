"""The deletion guard: how many deletions an unattended run may send on its own.

A wrong filter, a wiped OU or a broken read looks, to a sync, like a mass departure, and
deleting valid addresses makes the service reject real mail. So when a run would delete more
of a dataset than the thresholds allow, its deletions are held (everything else is sent) until
an operator approves them. Once held, deletions stay held, run after run, until approved; a
held deletion the directory no longer implies simply drops out. Approval covers exactly the
deletions held when it was given.

One dataset tripping holds the other datasets' deletions of that run too: a mass departure of
users also takes their addresses, and those can be few next to the groups' and contacts'
addresses, so the addresses alone might stay under the thresholds. The damage the guard is
for is exactly those addresses.

Plain data in, plain data out: the engine feeds it each dataset's deletions, the dataset's
record count and what the state holds (key → approved), and stores what it returns."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Thresholds:
    """When a run's deletions of one dataset are a mass deletion. ``count``: more than this
    many always are. ``percent``: more than this share of the dataset's records are, once
    they are more than ``floor`` deletions: a few deletions are never a mass deletion, however
    small the dataset (one departure of five users is 20 %, and holding it would page an
    operator for nothing). Entra Connect's and Entra provisioning's accidental-deletion
    thresholds are a count alone (500 by default); the percentage above the floor adds the
    tenant's size (a tenant of 300 users losing 60 is held, far below 500). ``floor`` 0 applies
    the percentage to any number of deletions."""

    percent: float = 10.0  # DELETE_THRESHOLD_PERCENT: of the dataset's records
    count: int = 500  # DELETE_THRESHOLD_COUNT: per dataset and run
    floor: int = 25  # DELETE_THRESHOLD_FLOOR: deletions per dataset and run that the percentage never holds

    def exceeded(self, deletions: int, total: int) -> bool:
        """More than ``count``, or more than ``floor`` and more than ``percent`` of ``total``
        (equal to a threshold is allowed)."""
        if deletions > self.count:
            return True
        return deletions > self.floor and total > 0 and deletions * 100 > self.percent * total

    def describe(self) -> str:
        """The thresholds as the settings that set them (for a held deletion's reason)."""
        return (f"more than DELETE_THRESHOLD_COUNT={self.count}, or more than DELETE_THRESHOLD_PERCENT={self.percent:g} "
                f"of the records once above DELETE_THRESHOLD_FLOOR={self.floor}")

    def total_bound(self, deletions: int) -> int | None:
        """How many of a dataset's records must be counted to judge ``deletions`` of them:
        a dataset with at least that many records is past the percentage either way, so
        ``judge`` decides (and words its reason) the same with ``min(total, bound)`` as with
        the total. ``None``: count them all (the count threshold is passed, and its reason
        names the total; or a percentage of 0). A delta run then counts a few rows, not the
        whole dataset (tests/test_guard_bound.py)."""
        if deletions > self.count or self.percent <= 0:
            return None
        if deletions <= self.floor:
            return 0  # the percentage does not apply: nothing to count
        bound = math.floor(deletions * 100 / self.percent) + 1
        while self.exceeded(deletions, bound):  # a float's rounding: the bound must be past the percentage
            bound += 1
        return bound


@dataclass
class Verdict:
    """For one dataset: the deletions to send now, and those to hold."""

    send: list[str]
    hold: list[str]
    approved: list[str] = field(default_factory=list)  # sent because an operator approved them
    reason: str = ""

    @property
    def tripped(self) -> bool:
        return bool(self.hold)


def judge(dataset: str, deletions: list[str], total: int, prior: Mapping[str, bool], thresholds: Thresholds) -> Verdict:
    """``prior``: what the state holds for this dataset, key → approved."""
    approved = sorted(k for k in deletions if prior.get(k) is True)
    pending = sorted(k for k in deletions if prior.get(k) is not True)
    if not pending:
        return Verdict(send=approved, hold=[], approved=approved)
    still_held = any(k in prior for k in pending)
    over = thresholds.exceeded(len(pending), total)
    if not (over or still_held):
        return Verdict(send=approved + pending, hold=[], approved=approved)
    if over:
        share = f"{100.0 * len(pending) / total:.1f}%" if total else "all"
        reason = f"{len(pending)} of {total} {dataset} records ({share}) is {thresholds.describe()}"
    else:
        reason = "deletions held by an earlier run still await approval"
    return Verdict(send=approved, hold=pending, approved=approved, reason=reason)


def judge_all(
    deletions: Mapping[str, list[str]], totals: Mapping[str, int], prior: Mapping[str, Mapping[str, bool]], thresholds: Thresholds
) -> dict[str, Verdict]:
    """Every dataset of one run; when one trips, the others' unapproved deletions are held too."""
    verdicts = {d: judge(d, keys, totals.get(d, 0), prior.get(d, {}), thresholds) for d, keys in deletions.items()}
    tripped = [d for d, v in verdicts.items() if v.tripped]
    if tripped:
        for d, v in verdicts.items():
            if not v.tripped:
                pending = sorted(k for k in v.send if k not in v.approved)
                if pending:
                    verdicts[d] = Verdict(send=v.approved, hold=pending, approved=v.approved,
                                          reason=f"held with the {' and '.join(tripped)} deletions of the same run")
    return verdicts


def approve(held: Mapping[str, bool]) -> dict[str, bool]:
    """Approval: every deletion held now becomes approved (and nothing else)."""
    return dict.fromkeys(held, True)
