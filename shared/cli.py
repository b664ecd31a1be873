"""``python -m shared [--json] <action> [--json]``: one action with the settings from the environment."""

from __future__ import annotations

import argparse
import asyncio
import codecs
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__
from .common.errors import SyncError
from .common.logs import cli_log_level, configure_logging
from .common.redact import scrub
from .common.shutdown import run_cancellable
from .common.summary import RunSummary
from .common.telemetry import configure_telemetry, flush_telemetry
from .common.textsafe import safe_text, terminal_json
from .config.settings import load_settings, progress_interval_seconds
from .config.state_settings import load_state_settings
from .engine import ACTIONS, Options, perform
from .model.records import DATASETS
from .text import format_status, print_report

SETTINGS_LINE = (
    "Settings come from environment variables (locally) or the Function app's app settings (in Azure); "
    "see README, 'Settings'."
)
STATE_ONLY_ACTIONS = ("status", "approve-deletions")
_ACTION_HELP = {
    "test-update": ("Dry run: read the directory and report what update would send, with every exclusion and "
                    "any deletion the guard would hold. Sends nothing, changes no state.",
                    "python -m shared test-update --json > preview.json"),
    "update": ("Send only what changed since the last successful sync (delta rounds, a full read when needed) "
               "and advance the state as far as the service confirmed.",
               "python -m shared update"),
    "replace": ("Rebuild each dataset on the service through the staged, atomic replace, then rebuild the state "
                "from the service's copy.",
                "python -m shared replace --json"),
    "refresh": ("Rebuild the change-tracking state from the service's own copy; sends no change. The next update "
                "reads in full.",
                "python -m shared refresh"),
    "approve-deletions": ("Let the next update send exactly the deletions the guard holds now (all datasets, or one). "
                          "Needs only the state settings (SYNC_STATE and the storage account).",
                          "python -m shared approve-deletions --dataset users --expect DIGEST"),
    "status": ("The last runs (from the run reports) and any held deletions, with the approval command. Needs only "
               "the state settings (SYNC_STATE and the storage account).",
               "python -m shared status --json"),
}


class _Parser(argparse.ArgumentParser):
    """A command-line mistake is one line on stderr, like any other failure (exit status 2;
    docs/sync-rules.md, "Commands and exit statuses")."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}; see '{self.prog} --help'\n")


def _first_sentence(text: str) -> str:
    """An action's one-line summary for the top-level help: its description's first sentence,
    whole (``Dry run: read the directory and report ...``, not ``Dry run``)."""
    return text.split(". ", 1)[0].rstrip(".")


def build_parser() -> argparse.ArgumentParser:
    """``python -m shared [--version] [--json] <action> [options]``, with ``--help`` for each
    action; ``--json`` and ``-v`` may come before the action or after it."""
    parser = _Parser(
        prog="python -m shared",
        description="Sync Microsoft Entra ID to the email-security directory sync API.",
        epilog=f"{SETTINGS_LINE} 'python -m shared ACTION --help' describes one action. "
        "Exit status: 0 ok, 1 failed, 2 bad setting, 3 another run holds the lock, 4 deletions held by the guard, "
        "5 the held deletions are not the set reviewed (--expect), 143 cancelled (SIGTERM).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    json_help = "print the result as one JSON line, last on stdout"
    verbose_help = "log more on stderr: -v the run's INFO lines (the summary record, reads, retries), -vv debug"
    parser.add_argument("--json", action="store_true", help=json_help)
    parser.add_argument("-v", "--verbose", action="count", default=0, help=verbose_help)
    # After the action: without defaults of their own, so they never undo the same option given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=json_help)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=verbose_help)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True,
                                    title="actions", description=", ".join((*ACTIONS, "status")))
    for name in (*ACTIONS, "status"):
        text, example = _ACTION_HELP[name]
        sub = actions.add_parser(name, parents=[common], help=_first_sentence(text), description=text,
                                 epilog=f"example: {example}\n\n{SETTINGS_LINE}",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == "approve-deletions":
            sub.add_argument("--dataset", choices=DATASETS, help="approve only this dataset's held deletions")
            sub.add_argument("--expect", metavar="DIGEST", required=False,
                             help="the digest of the held set you reviewed, as status or test-update shows it (required when deletions are held)")
    return parser


def main(argv: Sequence[str] | None = None, *, options: Options | None = None) -> int:
    """``python -m shared``: parse the command line, run the action, print; returns the exit
    status. ``options`` are the engine's run options (defaults in production)."""
    _stdout_takes_any_text()
    args = build_parser().parse_args(argv)
    args.dataset = getattr(args, "dataset", None)
    args.expect = getattr(args, "expect", None)
    configure_logging(cli_log_level(args.verbose))
    configure_telemetry(os.environ)
    try:
        return _main(args, options or Options())
    finally:
        flush_telemetry()


def _stdout_takes_any_text() -> None:
    """Standard output in a legacy encoding (a Windows console, an ISO-8859 locale, a pipe with
    PYTHONIOENCODING) cannot carry every character a group name or an exclusion holds: the
    report escapes what it cannot encode (``\\u2013``) instead of failing a run that succeeded,
    and the ``--json`` line is written in ASCII escapes then (``_json_line``), which parse to the
    same text (docs/sync-rules.md, "Commands and exit statuses")."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")


def _stdout_is_utf8() -> bool:
    try:
        return codecs.lookup(getattr(sys.stdout, "encoding", None) or "ascii").name == "utf-8"
    except LookupError:  # an encoding Python does not know: treated as not UTF-8
        return False


def _json_line(doc: Any) -> str:
    """One JSON line for standard output: UTF-8 text where stdout is UTF-8, else ASCII with
    ``\\uXXXX`` escapes (the same JSON value). Either way a character that moves or hides text
    on a terminal is a ``\\uXXXX`` escape (``terminal_json``), so the records it lists stay exact."""
    return terminal_json(json.dumps(doc, ensure_ascii=not _stdout_is_utf8(), separators=(",", ":")))


def _main(args: argparse.Namespace, options: Options) -> int:
    try:
        if args.action in STATE_ONLY_ACTIONS:
            settings = load_state_settings(os.environ)
        else:
            settings = load_settings(os.environ)
        progress_interval = progress_interval_seconds(os.environ)
    except SyncError as exc:
        # One line: a value the message quotes (a pattern, a host) may hold a newline or another control character.
        message = safe_text(scrub(str(exc)), None, backslashes=False)
        summary = RunSummary(args.action).finish(False, message)
        if args.json:
            print(_json_line(summary.as_dict()), flush=True)
        print(f"error: {message}", file=sys.stderr, flush=True)
        return exc.exit_code
    options.progress_interval = progress_interval
    summary = asyncio.run(run_cancellable(perform(args.action, settings, options=options, dataset=args.dataset, expect=args.expect)))
    if summary.ok and args.action == "status":
        info = summary.extra["status"]
        if args.json:
            print(_json_line(info), flush=True)
        else:
            held = {d: h["keys"] for d, h in info["heldDeletions"].items()}
            print(format_status(info["runs"], held, info.get("preview")), end="")
        return 0
    if args.json:  # a failed status too ends stdout with the run summary, as a settings error does
        print(_json_line(summary.as_dict()), flush=True)
    elif args.action != "status":
        print_report(summary)
    if not summary.ok:
        code = summary.exception.exit_code if isinstance(summary.exception, SyncError) else 1
        print(f"error: {summary.error}", file=sys.stderr, flush=True)
        return code
    return 0
