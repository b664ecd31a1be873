"""The test suite's door into the product: ``python -m tests.launcher <action> ...`` is
``python -m shared <action> ...`` with the tests' own run options, which production never sets:
small batches (to crash between them), short backoffs (failure tests run in seconds) and, for
bench/incremental_sync.py, sequential collection reads. They come from the environment of the
test that starts the process:

- ``SYNC_TEST_MAX_ITEMS``: items per request (``Options.max_items``)
- ``SYNC_TEST_BACKOFF_SECONDS``: the Graph and sync API backoff base
- ``SYNC_TEST_SEQUENTIAL_READ=1``: read the Graph collections one after another
- ``SYNC_TEST_CHECKPOINT_SECONDS``: how often a full read commits its progress (``Options.checkpoint_seconds``)

It calls the same entry point as ``python -m shared`` (``shared.cli.main``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from shared.cli import main as cli_main
from shared.engine import Options


def test_options(env: Mapping[str, str]) -> Options:
    """The run options the test-only variables ask for; a malformed value leaves the defaults."""
    options = Options()
    try:
        if env.get("SYNC_TEST_MAX_ITEMS"):
            options.max_items = max(1, int(env["SYNC_TEST_MAX_ITEMS"]))
        if env.get("SYNC_TEST_SEQUENTIAL_READ") == "1":
            options.graph_concurrent = False  # bench/: what reading the collections concurrently buys
        if env.get("SYNC_TEST_CHECKPOINT_SECONDS"):
            options.checkpoint_seconds = float(env["SYNC_TEST_CHECKPOINT_SECONDS"])
        if env.get("SYNC_TEST_BACKOFF_SECONDS"):
            options.graph_backoff_seconds = options.sync_backoff_seconds = float(env["SYNC_TEST_BACKOFF_SECONDS"])
    except ValueError:
        pass
    return options


test_options.__test__ = False  # a helper, not a test for pytest to collect


def main(argv: list[str] | None = None) -> int:
    return cli_main(argv, options=test_options(os.environ))


if __name__ == "__main__":
    sys.exit(main())
