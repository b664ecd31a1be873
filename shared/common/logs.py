"""Logging for both doors (``python -m shared`` and the Function app): one format on stderr,
the Azure SDKs' per-request INFO lines kept out, and secret redaction installed
(shared/common/redact.py)."""

from __future__ import annotations

import logging
import sys

from .redact import install_log_redaction

PROGRESS_LOGGER = "shared.progress"  # shared/common/progress.py: a long run's progress lines


def configure_logging(level: int = logging.INFO) -> None:
    """Log records at ``level`` and above to stderr, one line each. The Function app logs at
    INFO (its ``SyncRunSummary`` record feeds Application Insights). The CLI shows warnings
    and errors only unless asked (``-v``: INFO, ``-vv``: DEBUG; ``cli_log_level``), so a
    failure's stderr is its one ``error:`` line (docs/sync-rules.md, "Commands and exit
    statuses") plus any warning the run gave; a long run's progress lines are shown at every
    level. Only stderr is quieter: the loggers still pass INFO records to any other handler
    (a CLI run's telemetry exports its ``SyncRunSummary``, shared/common/telemetry.py)."""
    logging.basicConfig(level=min(level, logging.INFO), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level > logging.INFO:
        for handler in logging.getLogger().handlers:
            if getattr(handler, "stream", None) is sys.stderr:
                handler.addFilter(_StderrLevel(level))
    # The Azure SDKs and the HTTP clients log every request at INFO: keep that noise out of a run's log.
    for noisy in ("azure", "httpx", "httpcore", "msal", "aiohttp", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_log_redaction()


class _StderrLevel(logging.Filter):
    """Records at ``level`` and above, and progress lines, on the stderr handler."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or record.name == PROGRESS_LOGGER


def cli_log_level(verbosity: int) -> int:
    """The CLI's log level for ``-v`` given ``verbosity`` times: WARNING, INFO, then DEBUG."""
    return (logging.WARNING, logging.INFO)[verbosity] if verbosity < 2 else logging.DEBUG
