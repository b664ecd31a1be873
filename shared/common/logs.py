"""Logging for both doors (``python -m shared`` and the Function app): one format on stderr,
the Azure SDKs' per-request INFO lines kept out, and secret redaction installed
(shared/common/redact.py)."""

from __future__ import annotations

import logging
import sys

from .redact import install_log_redaction


def configure_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The Azure SDKs and httpx log every request at INFO: keep that noise out of a run's log.
    for noisy in ("azure", "httpx", "httpcore", "msal", "kiota_http", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_log_redaction()
