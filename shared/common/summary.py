"""The run summary: one plain-data record per run, logged as one structured line."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from ..model.records import DATASETS
from .textsafe import safe_text, safe_tree, terminal_json

MAX_LISTED_REJECTIONS = 1000
MAX_ERROR_TEXT = 4000  # characters of a run's error message (it may quote several outside texts)


@dataclass
class DatasetCounts:
    added: int = 0
    removed: int = 0
    rejected: int = 0
    excluded: int = 0
    rejections: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"added": self.added, "removed": self.removed, "rejected": self.rejected, "excluded": self.excluded}
        if self.rejections:
            out["rejections"] = self.rejections[:MAX_LISTED_REJECTIONS]
            if len(self.rejections) > MAX_LISTED_REJECTIONS:
                out["rejectionsTruncated"] = len(self.rejections) - MAX_LISTED_REJECTIONS
        return out


def _first_keys(entry: Any, shown: int = 20) -> Any:
    """A copy with at most ``shown`` keys listed (the log record stays small; the report and
    ``--json`` keep them all)."""
    if not isinstance(entry, dict) or len(entry.get("keys", ())) <= shown:
        return entry
    return {**entry, "keys": entry["keys"][:shown], "keysShown": shown}


@dataclass
class RunSummary:
    action: str
    ok: bool = False
    datasets: dict[str, DatasetCounts] = field(default_factory=lambda: {d: DatasetCounts() for d in DATASETS})
    graph_requests: int = 0
    exo_requests: int = 0  # Exchange Online requests (EXO_MODE), beside graph_requests (docs/sync-rules.md)
    sync_requests: int = 0
    started: float = field(default_factory=time.monotonic)
    duration: float = 0.0
    error: str | None = None
    exception: Exception | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def finish(self, ok: bool, error: str | None = None) -> RunSummary:
        self.ok = ok
        self.error = error
        self.duration = time.monotonic() - self.started
        return self

    def sanitize(self) -> RunSummary:
        """Every string from outside (Graph ids and names, the sync API's messages) escaped
        and truncated (``shared/common/textsafe.py``), before the summary reaches a log line, a run
        report, the terminal or an HTTP answer. The records of ``changes`` stay exactly the
        records ``update`` sends (docs/sync-rules.md, "Actions": test-update reports what update
        would send); the JSON encoders make them terminal-safe losslessly (``terminal_json``)."""
        self.extra = safe_tree(self.extra, keep_records=True)
        if self.error is not None:
            self.error = safe_text(self.error, MAX_ERROR_TEXT)
        for counts in self.datasets.values():
            counts.rejections = safe_tree(counts.rejections)
        return self

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "action": self.action,
            "ok": self.ok,
            "datasets": {d: c.as_dict() for d, c in self.datasets.items()},
            "graphRequests": self.graph_requests,
            "exoRequests": self.exo_requests,
            "syncRequests": self.sync_requests,
            "durationSeconds": round(self.duration, 3),
        }
        if self.error:
            out["error"] = self.error
        out.update(self.extra)
        return out

    def to_json(self, compact: bool = False) -> str:
        """``compact`` leaves out the per-record preview and exclusions (for the log line)."""
        doc = self.as_dict()
        if compact:
            for bulky in ("changes", "exclusions"):
                doc.pop(bulky, None)
            for counts in doc["datasets"].values():
                counts.pop("rejections", None)
            if isinstance(doc.get("ruleExclusions"), dict):  # the log keeps the counts per rule
                doc["ruleExclusions"] = {k: v for k, v in doc["ruleExclusions"].items() if k == "counts"}
            for listing in ("heldDeletions", "approved"):
                if isinstance(doc.get(listing), dict):
                    doc[listing] = {d: _first_keys(e) for d, e in doc[listing].items()}
        return terminal_json(json.dumps(doc, separators=(",", ":"), ensure_ascii=False))
