"""Text rendering, in one place: the human-readable report of a run (``python -m shared
<action>`` without ``--json``) and the text of ``python -m shared status`` (the last runs,
newest first, then the held deletions). Every outside string is escaped and bounded
(shared/common/textsafe.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from .common.summary import RunSummary
from .common.textsafe import safe_text, safe_tree
from .model.records import DATASETS
from .model.rules import rule_exclusion_lines
from .plan.approval import held_digest
from .storage.history import _utc

STATUS_KEYS_SHOWN = 20
EXCLUSIONS_SHOWN = 20  # exclusions a plain test-update report lists (--json lists every one)
REJECTIONS_SHOWN = 5  # rejections a plain report lists per dataset (--json lists up to 1,000)
APPROVE_COMMAND = "python -m shared approve-deletions"


def print_report(summary: RunSummary) -> None:
    """A human-readable account of the run, on stdout."""
    d = summary.as_dict()
    print(f"{summary.action}: {'ok' if summary.ok else 'FAILED'} in {d['durationSeconds']:.1f} s, "
          f"{summary.graph_requests} Graph requests, {summary.sync_requests} sync API requests")
    print(f"  {'dataset':<10} {'added':>8} {'removed':>8} {'rejected':>9} {'excluded':>9}")
    for name, c in summary.datasets.items():
        print(f"  {name:<10} {c.added:>8} {c.removed:>8} {c.rejected:>9} {c.excluded:>9}")
    _print_read_and_service(summary.extra)
    _print_rejections(summary)
    changes = summary.extra.get("changes")
    if changes:
        for name, ch in changes.items():
            if ch["added"] or ch["removed"]:
                print(f"  {name}: would add/update {len(ch['added'])}, would remove {len(ch['removed'])}")
                for rec in ch["added"][:5]:
                    print(f"    + {rec}")
                for key in ch["removed"][:5]:
                    print(f"    - {safe_text(key)}")
    _print_exclusions(summary.extra.get("exclusions"))
    for name, h in summary.extra.get("heldDeletions", {}).items():
        print(f"  HELD: {h['count']} {name} deletions (deletion guard); first: {', '.join(h['keys'][:5])}")
    if summary.extra.get("heldCount"):
        print(f"  held in the state: {summary.extra['heldCount']} deletions, digest {summary.extra.get('heldDigest')} (approve-deletions --expect)")
    for name, a in summary.extra.get("approved", {}).items():
        print(f"  approved {a['count']} held {name} deletions; the next update sends those still implied")
    if summary.action == "approve-deletions" and summary.ok and not summary.extra.get("approved"):
        dataset = summary.extra.get("dataset")
        print(f"  no {dataset} deletions are held; nothing to approve" if dataset else "  no deletions are held; nothing to approve")
        elsewhere = summary.extra.get("heldElsewhere") or {}
        if elsewhere:
            print(f"  {sum(elsewhere.values())} deletions are held in other datasets ({', '.join(sorted(elsewhere))}): "
                  "see 'python -m shared status' for their digests")
    for w in summary.extra.get("credentialWarnings", []):
        print(f"  warning: {w}")


def _print_read_and_service(extra: dict[str, Any]) -> None:
    """Which read ran and why (``read``), and what ``refresh`` read back from the service
    (``serviceRecords``): without them a refresh's report is a table of zeros."""
    read = extra.get("read")
    if isinstance(read, dict) and read.get("kind"):
        print("  " + safe_text(f"read: {read['kind']} ({read.get('reason') or 'no reason recorded'})"))
    service = extra.get("serviceRecords")
    if isinstance(service, dict) and service:
        counts = ", ".join(f"{name} {n:,}" for name, n in service.items() if isinstance(n, int))
        print(f"  read back from the service (GET .../records): {counts}; the state now holds these records")


def _print_rejections(summary: RunSummary, shown: int = REJECTIONS_SHOWN) -> None:
    """The records the service rejected, per dataset: how many, then the first ``shown`` as
    ``key: code (message)`` (--json lists up to 1,000). They do not fail the run; the next
    update offers them again (docs/sync-rules.md, "The recovery guarantee")."""
    for name, c in summary.datasets.items():
        if not c.rejections:
            continue
        print(f"  {name}: the service rejected {c.rejected:,} (offered again by the next update):")
        for r in c.rejections[:shown]:
            if isinstance(r, dict):
                message = f" ({r['message']})" if r.get("message") else ""
                print("    x " + safe_text(f"{r.get('key')}: {r.get('code')}{message}"))
        if c.rejected > shown:
            print(f"    ... and {c.rejected - shown:,} more (--json lists them)")


def _print_exclusions(exclusions: Any, shown: int = EXCLUSIONS_SHOWN) -> None:
    """test-update's exclusions with their reasons (docs/sync-rules.md, "Actions"): how many,
    then the first ``shown``, one a line (``dataset type id value: reason``); --json lists all."""
    if not isinstance(exclusions, list) or not exclusions:
        return
    print(f"  exclusions: {len(exclusions)} (candidates, groups and users left out, with why)")
    for e in exclusions[:shown]:
        if isinstance(e, dict):
            value = f" {e['value']}" if e.get("value") is not None else ""
            print("    ! " + safe_text(f"{e.get('dataset')} {e.get('objectType')} {e.get('objectId')}{value}: {e.get('reason')}"))
    if len(exclusions) > shown:
        print(f"    ... and {len(exclusions) - shown:,} more (--json lists every exclusion)")


def _preview_line(preview: dict[str, Any]) -> str:
    """``newest preview (POST test-update) <id>: finished, started <UTC>, ended <UTC>`` (and the
    error of a failed one)."""
    text = f"newest preview (POST test-update) {preview.get('id', '-')}: {preview.get('state', '-')}, started {preview.get('startedAt', '-')}"
    if preview.get("endedAt"):
        text += f", ended {preview['endedAt']}"
    if preview.get("error"):
        text += f": {preview['error']}"
    return text


def format_status(reports: list[dict[str, Any]], held: dict[str, list[str]] | None, preview: dict[str, Any] | None = None) -> str:
    """The text of ``python -m shared status``: the last runs, newest first, the newest preview
    started by ``POST test-update`` (``preview``, ``shared/previews.py``; none: no line), then the
    held deletions and how to approve them.

    ``held`` is the state's current held deletions per dataset. When it is None (the state
    could not be consulted), the newest report that recorded ``heldDeletions`` is shown
    instead, labelled as such. Reports are read defensively: an old or odd report renders
    as dashes, never as an exception. Every text is escaped and truncated
    (``shared/common/textsafe.py``): a report or a key may carry control characters from outside."""
    digests = {d: held_digest({d: v}) for d, v in held.items() if v} if held is not None else {}
    overall = held_digest(held) if held is not None else None
    held = safe_tree(held) if held is not None else None
    lines = _runs_table(reports)
    lines.extend(rule_exclusion_lines(reports))  # scope and exclusions (shared/model/rules.py)
    if isinstance(preview, dict):
        lines.append(_preview_line(safe_tree(preview)))
    lines.append("")
    source = "held deletions"
    counts: dict[str, int]
    keys: dict[str, list[str]]
    if held is not None:
        keys = {d: [str(k) for k in v] for d, v in held.items() if v}
        counts = {d: len(v) for d, v in keys.items()}
    else:
        counts, keys, when = _held_from_reports(reports)
        keys = safe_tree(keys)
        if when:
            source = f"held deletions (as recorded by the run finished {when})"
    if not counts:
        lines.append("no deletions are held")
        return "\n".join(lines) + "\n"
    lines.append(f"{source}:")
    for dataset in _ordered(counts):
        shown = keys.get(dataset, [])[:STATUS_KEYS_SHOWN]
        lines.append(f"  {dataset}: {counts[dataset]:,} held")
        lines.extend(f"    {k}" for k in shown)
        if counts[dataset] > len(shown):
            lines.append(f"    ... and {counts[dataset] - len(shown):,} more")
    lines.append("")
    lines.append("held deletions are not sent to the service until approved. The approval names the digest of")
    if overall is None:
        lines.append("the held set you reviewed; the state could not be read, so run status again when it can be.")
        return "\n".join(lines) + "\n"
    lines.append(f"the held set you reviewed ({sum(counts.values()):,} held, digest {overall}). To approve:")
    lines.append(f"  all:        {APPROVE_COMMAND} --expect {overall}")
    for dataset in _ordered(counts):
        lines.append(f"  {dataset + ':':<11} {APPROVE_COMMAND} --dataset {dataset} --expect {digests.get(dataset, '-')}")
    return "\n".join(lines) + "\n"


def _runs_table(reports: list[dict[str, Any]]) -> list[str]:
    if not reports:
        return ["no runs recorded yet"]
    datasets = _ordered({d for r in reports if isinstance(r.get("datasets"), dict) for d in r["datasets"]})
    header = ["FINISHED (UTC)", "ACTION", "RESULT", "READ", *(d.upper() for d in datasets), "DURATION", "ERROR"]
    rows = [[safe_text(cell, 40) for cell in header]]
    for r in reports:
        per = r.get("datasets") if isinstance(r.get("datasets"), dict) else {}
        rows.append(
            [safe_text(cell, 200) for cell in (
                _when(r.get("finishedAt")),
                str(r.get("action") or "-"),
                "ok" if r.get("ok") is True else "FAILED",
                _read(r.get("read")),
                *(_counts(per.get(d)) for d in datasets),
                _duration(r.get("durationSeconds")),
                _first_line(r.get("error")),
            )]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [f"last {len(reports)} run(s), newest first:"]
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)] + [row[-1]]
        lines.append(("  " + "  ".join(cells)).rstrip())
    return lines


def _held_from_reports(reports: list[dict[str, Any]]) -> tuple[dict[str, int], dict[str, list[str]], str | None]:
    for r in reports:
        recorded = r.get("heldDeletions")
        if not isinstance(recorded, dict):
            continue
        counts: dict[str, int] = {}
        keys: dict[str, list[str]] = {}
        for dataset, entry in recorded.items():
            if not isinstance(entry, dict):
                continue
            listed = [str(k) for k in entry["keys"]] if isinstance(entry.get("keys"), list) else []
            count = entry.get("count")
            count = count if isinstance(count, int) and not isinstance(count, bool) else len(listed)
            if count > 0:
                counts[dataset], keys[dataset] = max(count, len(listed)), listed
        return counts, keys, _when(r.get("finishedAt"))
    return {}, {}, None


def _ordered(names: Iterable[str]) -> list[str]:
    """Datasets in the product's order, unknown names after them."""
    names = set(names)
    return [d for d in DATASETS if d in names] + sorted(n for n in names if n not in DATASETS)


def _when(value: Any) -> str:
    if not isinstance(value, str):
        return "-"
    try:
        return _utc(dt.datetime.fromisoformat(value)).strftime("%Y-%m-%d %H:%M:%SZ")
    except ValueError:
        return value


def _read(value: Any) -> str:
    if not isinstance(value, dict) or not value.get("kind"):
        return "-"
    reason = value.get("reason")
    return f"{value['kind']} ({reason})" if reason else str(value["kind"])


def _counts(value: Any) -> str:
    if not isinstance(value, dict):
        return "-"
    text = f"+{_int(value.get('added'))} -{_int(value.get('removed'))}"
    rejected = _int(value.get("rejected"))
    return f"{text} rej {rejected}" if rejected else text


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _duration(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(int(round(value)), 60)
    return f"{minutes}m{seconds:02d}s"


def _first_line(value: Any) -> str:
    if not value:
        return ""
    lines = str(value).strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= 160 else line[:157] + "..."
