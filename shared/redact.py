"""Secrets never reach a log line, an exception message or a summary.

``Secret`` hides its value from ``repr``/``str``; ``install_log_redaction`` scrubs every
registered secret value from every log record, as a last line of defence for messages that
third-party code (azure-identity, httpx) builds."""

from __future__ import annotations

import logging
import threading

_lock = threading.Lock()
_values: set[str] = set()
MASK = "***"


class Secret:
    __slots__ = ("_value", "name")

    def __init__(self, value: str, name: str) -> None:
        self._value = value
        self.name = name
        register(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.name}={MASK})"

    __str__ = __repr__

    def __reduce__(self):  # never pickled or copied into a report by accident
        raise TypeError("a Secret cannot be serialized")


def register(value: str) -> None:
    if value and len(value) >= 4:
        with _lock:
            _values.add(value)
            if ":" in value:  # user:password → the password alone is secret too
                pw = value.split(":", 1)[1]
                if len(pw) >= 4:
                    _values.add(pw)


def scrub(text: str) -> str:
    with _lock:
        values = sorted(_values, key=len, reverse=True)
    for v in values:
        if v in text:
            text = text.replace(v, MASK)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not _values:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format must not break logging
            return True
        clean = scrub(message)
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = scrub(text)
            record.exc_info = None
        if clean != message:
            record.msg, record.args = clean, None
        return True


_filter = RedactingFilter()


def install_log_redaction() -> None:
    """Attach the filter to every handler of the root logger (and future ones via the root)."""
    root = logging.getLogger()
    for h in root.handlers:
        if _filter not in h.filters:
            h.addFilter(_filter)
    if _filter not in root.filters:
        root.addFilter(_filter)
