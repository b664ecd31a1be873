"""Secrets never reach a log line, an exception message or a summary.

``Secret`` hides its value from ``repr``/``str``; ``install_log_redaction`` scrubs every
registered secret value from every log record, as a last line of defence for messages that
third-party code (azure-identity, httpx) builds. A value is also scrubbed in the forms it
travels in: URL-encoded (the token request's form body) and base64 (the Basic header)."""

from __future__ import annotations

import base64
import logging
import re
import threading
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus

from .textsafe import safe_text

_lock = threading.Lock()
_values: set[str] = set()
_recent: deque[frozenset[str]] = deque(maxlen=16)  # short-lived secrets (access tokens), newest last
MASK = "***"
MIN_LENGTH = 4
MAX_LOG_MESSAGE = 64 * 1024  # characters of one log message; the rest is cut with a count


class Secret:
    """A secret value; ``name`` is the setting or vault secret it came from, ``where`` says where
    an operator finds it (e.g. "secret 'x' in Key Vault https://..."), ``fix`` how to replace it."""

    __slots__ = ("_value", "name", "where", "fix")

    def __init__(self, value: str, name: str, *, where: str | None = None, fix: str | None = None) -> None:
        self._value = value
        self.name = name
        self.where = where or name
        self.fix = fix
        register(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.name}={MASK})"

    __str__ = __repr__

    def __reduce__(self):  # never pickled or copied into a report by accident
        raise TypeError("a Secret cannot be serialized")


def _forms(value: str) -> set[str]:
    """The value as it may appear on the wire: raw, URL-encoded, base64 (without the padding,
    so that it also matches inside a longer base64 text that starts with it). A lone surrogate
    (``os.environ``'s stand-in for a byte that is not UTF-8) is encoded as it is
    (``surrogatepass``): registering a value must not raise an error that quotes it."""
    raw = value.encode("utf-8", "surrogatepass")
    return {
        value,
        quote(value, safe="", errors="surrogatepass"),
        quote_plus(value, errors="surrogatepass"),
        base64.b64encode(raw).decode("ascii").rstrip("="),
        base64.urlsafe_b64encode(raw).decode("ascii").rstrip("="),
    }


def register(value: str) -> None:
    if not value or len(value) < MIN_LENGTH:
        return
    found = _forms(value)
    if ":" in value:  # user:password → the password alone is secret too
        pw = value.split(":", 1)[1]
        if len(pw) >= MIN_LENGTH:
            found |= _forms(pw)
    with _lock:
        _values.update(f for f in found if len(f) >= MIN_LENGTH)


def register_short_lived(value: str) -> None:
    """An access token (it expires within hours): scrubbed like a registered secret while it is
    among the 16 newest, so that a long-lived host does not scrub against every token it ever had."""
    if value and len(value) >= MIN_LENGTH:
        with _lock:
            _recent.append(frozenset(f for f in _forms(value) if len(f) >= MIN_LENGTH))


def forget_all() -> None:
    """Drop every registered value. The registry lives as long as the process, which in
    production runs one configuration; a test suite runs many, one after another."""
    with _lock:
        _values.clear()
        _recent.clear()


def scrub(text: str) -> str:
    with _lock:
        values = sorted(_values.union(*_recent), key=len, reverse=True)
    for v in values:
        if v in text:
            text = text.replace(v, MASK)
    return text


def scrub_record(record: logging.LogRecord) -> None:
    """Remove every registered value from a record's message, traceback and stack, in place,
    and escape the control characters of its message (a newline or an ANSI escape from Graph
    or the sync API must not forge a log line: ``shared/common/textsafe.py``)."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a broken format must not break logging
        return
    clean = safe_text(scrub(message), MAX_LOG_MESSAGE, backslashes=False)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None:
        text = logging.Formatter().formatException(record.exc_info)
        clean_text = scrub(text)
        if clean_text != text:  # handlers would format the exception again: keep only the clean text
            record.exc_text, record.exc_info = clean_text, None
    elif record.exc_text:
        record.exc_text = scrub(record.exc_text)
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        scrub_record(record)
        return True


_filter = RedactingFilter()


def _redacting_factory(inner: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = inner(*args, **kwargs)
        scrub_record(record)
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    return factory


def install_log_redaction() -> None:
    """Scrub every record as it is made, whichever logger makes it and whichever handlers see
    it (a handler attached later, e.g. by the Functions host, or below the root, as the Azure
    SDK's docs show); the filter on the root's handlers stays for records made elsewhere."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "redacts", False):
        logging.setLogRecordFactory(_redacting_factory(factory))
    root = logging.getLogger()
    for h in root.handlers:
        if _filter not in h.filters:
            h.addFilter(_filter)
    if _filter not in root.filters:
        root.addFilter(_filter)


_AADSTS = re.compile(r"AADSTS(\d{5,})")


def aadsts_code(exc: BaseException) -> str | None:
    """The Entra ID error code (the digits of ``AADSTSnnnnn``) a sign-in failure's text names,
    read after scrubbing; the one part of an identity SDK's error text a message may repeat."""
    m = _AADSTS.search(scrub(str(exc)))
    return m.group(1) if m else None
