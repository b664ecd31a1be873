"""``python -m shared <action> [--json]``: one action with the settings from the environment."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from .engine import ACTIONS, Options, run
from .errors import SyncError
from .history import format_status
from .operations import status
from .redact import install_log_redaction, scrub
from .settings import load_settings
from .shutdown import run_cancellable
from .summary import RunSummary


def configure_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The Azure SDKs and httpx log every request at INFO: keep that noise out of a run's log.
    for noisy in ("azure", "httpx", "httpcore", "msal", "kiota_http", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_log_redaction()


def print_report(summary: RunSummary) -> None:
    """A human-readable account of the run, on stdout."""
    d = summary.as_dict()
    print(f"{summary.action}: {'ok' if summary.ok else 'FAILED'} in {d['durationSeconds']:.1f} s, "
          f"{summary.graph_requests} Graph requests, {summary.sync_requests} sync API requests")
    print(f"  {'dataset':<10} {'added':>8} {'removed':>8} {'rejected':>9} {'excluded':>9}")
    for name, c in summary.datasets.items():
        print(f"  {name:<10} {c.added:>8} {c.removed:>8} {c.rejected:>9} {c.excluded:>9}")
    changes = summary.extra.get("changes")
    if changes:
        for name, ch in changes.items():
            if ch["added"] or ch["removed"]:
                print(f"  {name}: would add/update {len(ch['added'])}, would remove {len(ch['removed'])}")
                for rec in ch["added"][:5]:
                    print(f"    + {rec}")
                for key in ch["removed"][:5]:
                    print(f"    - {key}")
    for name, h in summary.extra.get("heldDeletions", {}).items():
        print(f"  HELD: {h['count']} {name} deletions (deletion guard); first: {', '.join(h['keys'][:5])}")
    if summary.extra.get("heldCount"):
        print(f"  held in the state: {summary.extra['heldCount']} deletions, digest {summary.extra.get('heldDigest')} (approve-deletions --expect)")
    for name, a in summary.extra.get("approved", {}).items():
        print(f"  approved {a['count']} held {name} deletions; the next update sends those still implied")
    if summary.action == "approve-deletions" and not summary.extra.get("approved"):
        print("  no deletions are held; nothing to approve")
    for w in summary.extra.get("credentialWarnings", []):
        print(f"  warning: {w}")


def test_options(env: Mapping[str, str]) -> Options:
    """Knobs for the test suite only (never set in production): small batches, to crash
    between them, and short backoffs, so failure tests run in seconds."""
    options = Options()
    try:
        if env.get("SYNC_TEST_MAX_ITEMS"):
            options.max_items = max(1, int(env["SYNC_TEST_MAX_ITEMS"]))
        if env.get("SYNC_TEST_SEQUENTIAL_READ") == "1":
            options.graph_concurrent = False  # bench/: what reading the collections concurrently buys
        if env.get("SYNC_TEST_BACKOFF_SECONDS"):
            options.graph_backoff_seconds = options.sync_backoff_seconds = float(env["SYNC_TEST_BACKOFF_SECONDS"])
    except ValueError:
        pass
    return options


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared", description="Sync Microsoft Entra ID to the email-security directory sync API.")
    parser.add_argument(
        "action",
        choices=(*ACTIONS, "status"),
        help="test-update (dry run), update, replace, refresh, approve-deletions (lets the next update send the "
        "deletions the guard holds now), or status (the last runs and any held deletions)",
    )
    parser.add_argument("--dataset", choices=("addresses", "groups", "users"), help="approve-deletions: only this dataset")
    parser.add_argument("--expect", metavar="DIGEST", help="approve-deletions: the digest of the held set you reviewed, as status or test-update shows it (required)")
    parser.add_argument("--json", action="store_true", help="print the run summary as one JSON line, last on stdout")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.epilog = ("exit status: 0 ok, 1 failed, 2 bad setting, 3 another run holds the lock, 4 deletions held by the guard, "
                     "5 the held deletions are not the set reviewed (--expect)")
    args = parser.parse_args(argv)
    if (args.dataset or args.expect) and args.action != "approve-deletions":
        parser.error("--dataset and --expect go with approve-deletions")
    configure_logging(args.verbose)
    try:
        settings = load_settings(os.environ)
    except SyncError as exc:
        summary = RunSummary(args.action).finish(False, scrub(str(exc)))
        if args.json:
            print(summary.to_json(), flush=True)
        print(f"error: {scrub(str(exc))}", file=sys.stderr, flush=True)
        return exc.exit_code
    if args.action == "status":
        try:
            info = asyncio.run(status(settings))
        except SyncError as exc:
            print(f"error: {scrub(str(exc))}", file=sys.stderr, flush=True)
            return exc.exit_code
        if args.json:
            print(json.dumps(info, ensure_ascii=False, separators=(",", ":")), flush=True)
        else:
            held = {d: h["keys"] for d, h in info["heldDeletions"].items()}
            print(format_status(info["runs"], held), end="")
        return 0
    options = test_options(os.environ)
    summary = asyncio.run(run_cancellable(run(args.action, settings, options=options, dataset=args.dataset, expect=args.expect)))
    if args.json:
        print(summary.to_json(), flush=True)
    else:
        print_report(summary)
    if not summary.ok:
        code = summary.exception.exit_code if isinstance(summary.exception, SyncError) else 1
        print(f"error: {summary.error}", file=sys.stderr, flush=True)
        return code
    return 0
