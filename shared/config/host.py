"""The Functions host's time limit for one execution, as the timer's run must respect it.

``functionTimeout`` (host.json, or the app setting ``AzureFunctionsJobHost__functionTimeout``,
which overrides host.json) is how long an execution may last; past it the host records a
timeout and restarts the language worker: a kill, so a run cut there leaves no report and no
summary record, and its blob lease is left to expire. On Flex Consumption the default is 30
minutes and there is no maximum ("-1": unbounded). Source: Microsoft Learn, "Function app
timeout duration" (functions-scale / functions-host-json ``functionTimeout``).

``run_time_limit`` → seconds the run may take (``functionTimeout`` less ``margin``: a tenth of
it, at most 120 s, for the report, the summary and the lock's release), or ``None`` when the
executions are unbounded. An unreadable value is logged (naming the setting) and the plan's
default is kept."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger("shared.host")

SETTING = "AzureFunctionsJobHost__functionTimeout"
DEFAULT_SECONDS = 30 * 60  # Flex Consumption's default functionTimeout
MAX_MARGIN_SECONDS = 120.0
HOST_JSON = Path(__file__).resolve().parents[2] / "host.json"
# A TimeSpan as the host reads it (TimeSpan.Parse, invariant culture): [ws]{ d | [d.]hh:mm[:ss[.ff]] }[ws],
# a lone number being days (.NET, "System.TimeSpan.Parse method"); hh 0-23, mm and ss 0-59, ff 1-7 digits.
_TIMESPAN = re.compile(r"^(?:(?P<days>\d+)|(?:(?P<d>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{1,2})(?::(?P<s>\d{1,2})(?P<f>\.\d{1,7})?)?)$", re.ASCII)


def function_timeout_seconds(env: Mapping[str, str], host_json: Path = HOST_JSON) -> float | None:
    """``functionTimeout`` in seconds (``None``: unbounded), the app setting over host.json."""
    raw = env.get(SETTING)
    where = f"the app setting {SETTING}"
    if raw is None:
        where = f"functionTimeout in {host_json.name}"
        try:
            doc = json.loads(host_json.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return DEFAULT_SECONDS
        except (OSError, ValueError) as exc:
            log.warning("%s cannot be read (%s), so its functionTimeout is unknown; assuming the plan's default of %d s",
                        host_json.name, type(exc).__name__, DEFAULT_SECONDS)
            return DEFAULT_SECONDS
        if not isinstance(doc, dict):
            log.warning("%s is not a JSON object, so functionTimeout cannot be read; assuming the plan's default of %d s",
                        host_json.name, DEFAULT_SECONDS)
            return DEFAULT_SECONDS
        raw = doc.get("functionTimeout")
        if raw is None:
            return DEFAULT_SECONDS
    text = str(raw).strip()
    if text == "-1":
        return None
    seconds = _timespan_seconds(text)
    if seconds <= 0:
        log.warning("%s is %r, not a TimeSpan like 00:30:00 (or -1, unbounded); assuming the plan's default of %d s",
                    where, text[:40], DEFAULT_SECONDS)
        return DEFAULT_SECONDS
    return seconds


def _timespan_seconds(text: str) -> float:
    """``text`` as TimeSpan.Parse reads it, in seconds; 0 for what it refuses (or a component
    out of its range)."""
    m = _TIMESPAN.match(text)
    if m is None:
        return 0
    if m["days"] is not None:
        return int(m["days"]) * 86400
    hours, minutes, secs = int(m["h"]), int(m["m"]), int(m["s"] or 0)
    if hours > 23 or minutes > 59 or secs > 59:
        return 0
    return int(m["d"] or 0) * 86400 + hours * 3600 + minutes * 60 + secs + float(m["f"] or 0)


def run_time_limit(env: Mapping[str, str], host_json: Path = HOST_JSON) -> float | None:
    """Seconds a timer run may take before it ends itself: ``functionTimeout`` less a margin."""
    timeout = function_timeout_seconds(env, host_json)
    if timeout is None:
        return None
    return timeout - min(MAX_MARGIN_SECONDS, timeout / 10)
