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
# TimeSpan as host.json writes it: [d.]hh:mm:ss[.fraction]
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):([0-5]\d):([0-5]\d)(\.\d+)?$")


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
    m = _TIMESPAN.match(text)
    seconds = (int(m[1] or 0) * 86400 + int(m[2]) * 3600 + int(m[3]) * 60 + int(m[4]) + float(m[5] or 0)) if m and int(m[2]) < 24 else 0
    if seconds <= 0:
        log.warning("%s is %r, not a TimeSpan like 00:30:00 (or -1, unbounded); assuming the plan's default of %d s",
                    where, text[:40], DEFAULT_SECONDS)
        return DEFAULT_SECONDS
    return seconds


def run_time_limit(env: Mapping[str, str], host_json: Path = HOST_JSON) -> float | None:
    """Seconds a timer run may take before it ends itself: ``functionTimeout`` less a margin."""
    timeout = function_timeout_seconds(env, host_json)
    if timeout is None:
        return None
    return timeout - min(MAX_MARGIN_SECONDS, timeout / 10)
