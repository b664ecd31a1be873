"""Run history: one JSON report per run, kept next to the change-tracking state.

The log line of a run is gone once the log retention ends and is hard to find before that;
an operator asking "what did the last runs do, and is anything waiting for me?" needs the
answer from the same place the state lives. Each report is the run summary plus the time it
finished. Reports are named ``runs/<UTC timestamp>-<action>-<random>.json`` so that a plain
name sort is a time sort and age can be judged without opening them. They are kept for a
bounded time and count, and each one is bounded in size, so history can never grow without
limit next to the state.

Backends mirror the state's: ``file:<directory>`` writes ``<directory>/runs/``, and
``blob:<container>`` writes blobs under ``runs/`` in the same container."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from ..common.errors import StateError
from ..common.textsafe import safe_tree, terminal_json
from .blob import azure_reason, ensure_container, storage_problem

log = logging.getLogger("shared.history")  # the name its log lines have always carried

RUNS_PREFIX = "runs/"
MAX_LIST_ENTRIES = 1000
DEFAULT_MAX_AGE_DAYS = 30
DEFAULT_MAX_COUNT = 2000
MAX_REPORT_BYTES = 4 * 1024 * 1024  # one report file, at most (status reads up to 50: 200 MiB at worst)
_BULKY = ("changes", "exclusions", "rejections", "heldDeletions", "approved")

_STAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"
# <stamp>-<action>-<8 hex>.json; anything else in runs/ is not ours and is never touched.
_REPORT_NAME = re.compile(r"^(?P<stamp>\d{8}T\d{12}Z)-(?P<action>[a-z0-9-]+)-(?P<rand>[0-9a-f]{8})\.json$")
_ACTION_UNSAFE = re.compile(r"[^a-z0-9]+")


class ReportStore(Protocol):
    where: str

    def write(self, report: dict[str, Any], now: dt.datetime | None = None) -> str: ...
    def recent(self, limit: int = 10) -> list[dict[str, Any]]: ...
    def prune(self, now: dt.datetime | None = None) -> int: ...


# --- helpers shared by both backends ----------------------------------------------------------
def bounded(doc: Any, limit: int = MAX_LIST_ENTRIES) -> Any:
    """A copy of ``doc`` in which no list has more than ``limit`` entries, so that one run
    with a million rejections cannot write a report of gigabytes.

    A list under a dict key ``name`` that is cut gets a sibling ``nameTruncated`` holding the
    number of entries left out (added to a counter already there, e.g. the summary's own
    ``rejectionsTruncated``). A list nested directly in a list has no key for a counter; the
    entries it loses are added to the counter of the nearest enclosing key. Tuples are
    treated as lists; the input is not modified."""
    if limit < 0:
        raise ValueError("limit must not be negative")
    out, _ = _bounded(doc, limit)
    return out


def _bounded(value: Any, limit: int) -> tuple[Any, int]:
    """(bounded copy, entries left out of lists nested directly in ``value``, which the
    caller must account for because they have no key of their own)."""
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        counters: dict[str, int] = {}
        for key, item in value.items():
            if isinstance(item, (list, tuple)):
                kept, dropped = _bounded_list(item, limit)
                out[key] = kept
                if dropped:
                    counters[f"{key}Truncated"] = dropped
            else:
                out[key], _ = _bounded(item, limit)
        for name, dropped in counters.items():
            already = out.get(name)
            out[name] = (already if isinstance(already, int) and not isinstance(already, bool) else 0) + dropped
        return out, 0
    if isinstance(value, (list, tuple)):
        return _bounded_list(value, limit)
    return value, 0


def _bounded_list(items: list[Any] | tuple[Any, ...], limit: int) -> tuple[list[Any], int]:
    dropped = max(0, len(items) - limit)
    kept = []
    for item in items[:limit]:
        copy, nested_dropped = _bounded(item, limit)
        kept.append(copy)
        dropped += nested_dropped
    return kept, dropped


def _utc(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    if now.tzinfo is None:  # a naive time is taken as UTC, never as the host's local time
        return now.replace(tzinfo=dt.UTC)
    return now.astimezone(dt.UTC)


def _report_name(action: Any, now: dt.datetime) -> str:
    slug = _ACTION_UNSAFE.sub("-", str(action or "").lower()).strip("-")[:40].strip("-") or "run"
    return f"{RUNS_PREFIX}{now.strftime(_STAMP_FORMAT)}-{slug}-{secrets.token_hex(4)}.json"


def _stamp_of(name: str) -> dt.datetime | None:
    """The time encoded in a report name (``runs/`` prefix optional); None if not a report."""
    m = _REPORT_NAME.match(name.removeprefix(RUNS_PREFIX))
    if not m:
        return None
    try:
        return dt.datetime.strptime(m["stamp"], _STAMP_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def _document(report: dict[str, Any], now: dt.datetime, max_bytes: int | None = None) -> tuple[dict[str, Any], bytes]:
    """The report as stored: lists bounded, every string escaped and truncated
    (``shared/common/textsafe.py``), and at most ``max_bytes`` (``MAX_REPORT_BYTES``) in all: past
    that, the record lists (preview, exclusions, rejections) are left out, largest first, and
    ``reportTruncated`` names what was left out; past that again, only the scalar fields stay."""
    max_bytes = MAX_REPORT_BYTES if max_bytes is None else max_bytes
    # finishedAt comes first for a human reading the file, and always matches the name.
    doc = {"finishedAt": now.isoformat(timespec="seconds"), **{k: v for k, v in report.items() if k != "finishedAt"}}
    doc = safe_tree(bounded(doc), keep_records=True)  # test-update's records stay what update sends
    data = _encode(doc)
    if len(data) <= max_bytes:
        return doc, data
    size, dropped = len(data), []
    for bulky in _BULKY:
        if bulky == "rejections":
            for counts in (doc.get("datasets") or {}).values():
                if isinstance(counts, dict) and counts.pop("rejections", None) is not None:
                    dropped.append("rejections")
        elif doc.pop(bulky, None) is not None:
            dropped.append(bulky)
        doc["reportTruncated"] = {"bytes": size, "maxBytes": max_bytes, "left out": sorted(set(dropped))}
        data = _encode(doc)
        if len(data) <= max_bytes:
            return doc, data
    doc = {k: v for k, v in doc.items() if not isinstance(v, (dict, list))}
    doc["reportTruncated"] = {"bytes": size, "maxBytes": max_bytes, "left out": "every list and object"}
    data = _encode(doc)
    if len(data) > max_bytes:
        doc = {"finishedAt": doc["finishedAt"], "reportTruncated": doc["reportTruncated"]}
        data = _encode(doc)
    return doc, data


def _encode(doc: dict[str, Any]) -> bytes:
    # default=str: an odd value in a summary must not cost the run its report.
    return terminal_json(json.dumps(doc, ensure_ascii=False, indent=1, default=str)).encode("utf-8")


def _parse_report(data: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested past the parser's depth
        return None
    return doc if isinstance(doc, dict) else None


def _to_prune(names: Iterable[str], now: dt.datetime, max_age_days: float, max_count: int) -> list[str]:
    """Report names older than the age limit, then the oldest beyond the count limit."""
    cutoff = now - dt.timedelta(days=max_age_days)
    dated = sorted(((stamp, name) for name in names if (stamp := _stamp_of(name)) is not None), reverse=True)
    doomed = [name for stamp, name in dated if stamp < cutoff]
    young = [name for stamp, name in dated if stamp >= cutoff]
    doomed.extend(young[max_count:])
    return doomed


def _check_limits(max_age_days: float, max_count: int) -> None:
    if max_age_days <= 0:
        raise ValueError("max_age_days must be positive")
    if max_count < 1:
        raise ValueError("max_count must be at least 1")


def _prune_quietly(store: ReportStore, now: dt.datetime) -> None:
    """Pruning is housekeeping: its failure is reported, never allowed to fail a run."""
    try:
        store.prune(now)
    except Exception as exc:  # any failure here must stay a warning
        log.warning("run history %s: could not remove old reports (%s); the next run will try again", store.where, exc)


def _newest(store: Any, limit: int) -> list[dict[str, Any]]:
    """Newest first, from the store's ``_names`` and ``_read`` (``None``: skip that one)."""
    out: list[dict[str, Any]] = []
    for name in sorted(store._names(), reverse=True):
        if len(out) >= limit:
            break
        data = store._read(name)
        if data is None:
            continue
        if len(data) > MAX_REPORT_BYTES:
            log.warning("run history %s: skipping report %s, it is larger than %d bytes", store.where, name, MAX_REPORT_BYTES)
            continue
        doc = _parse_report(data)
        if doc is None:
            log.warning("run history %s: skipping report %s, it is not a JSON object", store.where, name)
            continue
        out.append(doc)
    return out


# --- file: ------------------------------------------------------------------------------------
class FileReportStore:
    """Reports as files in ``<directory>/runs/``; each one appears complete or not at all."""

    def __init__(self, directory: str | os.PathLike[str], max_age_days: float = DEFAULT_MAX_AGE_DAYS, max_count: int = DEFAULT_MAX_COUNT) -> None:
        _check_limits(max_age_days, max_count)
        self.dir = Path(directory) / RUNS_PREFIX.rstrip("/")
        self.where = f"file:{self.dir}"
        self.max_age_days = max_age_days
        self.max_count = max_count

    def write(self, report: dict[str, Any], now: dt.datetime | None = None) -> str:
        """Write one report and prune old ones; returns the report's name (``runs/...``).
        ``now`` is the finishing time (tests pass it to control ages)."""
        now = _utc(now)
        name = _report_name(report.get("action"), now)
        _, data = _document(report, now)
        path = self.dir / name.removeprefix(RUNS_PREFIX)
        tmp = self.dir / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(self.dir)
        except OSError as exc:
            raise StateError(f"cannot write the run report at {self.where}: {exc.strerror or type(exc).__name__}") from None
        _prune_quietly(self, now)
        return name

    def _names(self) -> list[str]:
        try:
            with os.scandir(self.dir) as entries:
                return [f"{RUNS_PREFIX}{e.name}" for e in entries if _stamp_of(e.name) is not None]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StateError(f"cannot list the run reports at {self.where}: {exc.strerror or type(exc).__name__}") from None

    def recent(self, limit: int = 10) -> list[dict[str, Any]]:
        """The newest ``limit`` readable reports, newest first. A report that cannot be read
        or parsed is skipped with a warning: one bad file must not hide the others."""
        return _newest(self, limit)

    def _read(self, name: str) -> bytes | None:
        try:
            with open(self.dir / name.removeprefix(RUNS_PREFIX), "rb") as fh:
                return fh.read(MAX_REPORT_BYTES + 1)  # a larger one is skipped by _newest
        except FileNotFoundError:
            return None  # pruned by a concurrent run since the listing
        except OSError as exc:
            log.warning("run history %s: skipping report %s, it cannot be read (%s)", self.where, name, exc.strerror or type(exc).__name__)
            return None

    def prune(self, now: dt.datetime | None = None) -> int:
        """Delete reports older than ``max_age_days`` and the oldest beyond ``max_count``;
        returns how many were deleted. Files that are not reports are left alone."""
        deleted = 0
        for name in _to_prune(self._names(), _utc(now), self.max_age_days, self.max_count):
            try:
                (self.dir / name.removeprefix(RUNS_PREFIX)).unlink()
                deleted += 1
            except FileNotFoundError:
                pass  # a concurrent run pruned it first
            except OSError as exc:
                raise StateError(f"cannot delete the old run report {name} at {self.where}: {exc.strerror or type(exc).__name__}") from None
        return deleted


def _fsync_dir(path: Path) -> None:
    """Make the rename durable where the platform allows it (not on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- blob: ------------------------------------------------------------------------------------
class BlobReportStore:
    """Reports as blobs under ``runs/`` in the state's container. A block-blob upload is atomic,
    so a reader never sees half a report."""

    def __init__(
        self, container_client: Any, where: str, max_age_days: float = DEFAULT_MAX_AGE_DAYS, max_count: int = DEFAULT_MAX_COUNT
    ) -> None:
        _check_limits(max_age_days, max_count)
        self.container = container_client
        self.where = where
        self.max_age_days = max_age_days
        self.max_count = max_count

    def write(self, report: dict[str, Any], now: dt.datetime | None = None) -> str:
        """Write one report and prune old ones; returns the blob name (``runs/...``)."""
        from azure.core.exceptions import AzureError
        from azure.storage.blob import ContentSettings

        now = _utc(now)
        name = _report_name(report.get("action"), now)
        _, data = _document(report, now)
        try:
            ensure_container(self.container)
            # overwrite=False: a name collision must fail, not replace another run's report.
            self.container.get_blob_client(name).upload_blob(
                data, overwrite=False, content_settings=ContentSettings(content_type="application/json; charset=utf-8")
            )
        except AzureError as exc:
            raise StateError(f"cannot write the run report at {self.where}: {storage_problem(exc)}") from None
        _prune_quietly(self, now)
        return name

    def _names(self) -> list[str]:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            return [b.name for b in self.container.list_blobs(name_starts_with=RUNS_PREFIX) if _stamp_of(b.name) is not None]
        except ResourceNotFoundError:
            return []  # no container yet: no run has written anything
        except AzureError as exc:
            raise StateError(f"cannot list the run reports at {self.where}: {storage_problem(exc)}") from None

    def recent(self, limit: int = 10) -> list[dict[str, Any]]:
        """The newest ``limit`` readable reports, newest first. A report that cannot be parsed
        is skipped with a warning; a storage failure raises ``StateError``."""
        return _newest(self, limit)

    def _read(self, name: str) -> bytes | None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            # at most one byte past the cap: a larger report is skipped by _newest
            return self.container.get_blob_client(name).download_blob(offset=0, length=MAX_REPORT_BYTES + 1).readall()
        except ResourceNotFoundError:
            return None  # pruned by a concurrent run since the listing
        except AzureError as exc:
            raise StateError(f"cannot read the run report {name} at {self.where}: {storage_problem(exc)}") from None

    def prune(self, now: dt.datetime | None = None) -> int:
        """Delete reports older than ``max_age_days`` and the oldest beyond ``max_count``;
        returns how many were deleted. Blobs that are not reports are left alone."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        deleted = 0
        for name in _to_prune(self._names(), _utc(now), self.max_age_days, self.max_count):
            try:
                self.container.get_blob_client(name).delete_blob()
                deleted += 1
            except ResourceNotFoundError:
                pass  # a concurrent run pruned it first
            except AzureError as exc:
                raise StateError(f"cannot delete the old run report {name} at {self.where}: {azure_reason(exc)}") from None
        return deleted
