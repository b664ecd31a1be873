"""One escaping for every string from outside (Microsoft Graph, the sync API) that reaches a
log line, a run report or the terminal.

A Graph object id, a display name or a sync API ``detail`` can hold a newline (a forged log
line), ANSI escape sequences (a rewritten terminal), Unicode line or paragraph separators, or
40 MB of text. ``safe_text`` turns every control character (C0, DEL, C1, and the Unicode
format/separator characters that move or hide text: U+2028, U+2029, bidirectional overrides,
zero-width and invisible characters, tag characters) into a visible ``\\xNN`` / ``\\uNNNN`` /
``\\UNNNNNNNN`` escape, and truncates to ``limit`` characters with a marker
saying how many were cut. Backslashes are escaped too, so an escaped text cannot be confused
with one that already spelled ``\\n``.

``safe_tree`` applies it to every string (keys and values) of a JSON-shaped document, leaving
backslashes as they are: JSON already escapes them, so nothing there can pass for an escape,
and a reason that quotes a pattern (``EXCLUDE_ADDRESS_PATTERNS``) quotes it exactly.

The records ``test-update`` lists (under a ``changes`` key) are what ``update`` sends, so they
stay exact: a group name with a right-to-left mark is that name. ``safe_tree(...,
keep_records=True)`` leaves them as they are, and ``terminal_json`` makes the JSON text that
carries them safe to print without changing its value: each of those characters becomes a JSON
``\\uXXXX`` escape, which parses back to the same character."""

from __future__ import annotations

import re
from typing import Any

MAX_TEXT = 500  # characters kept of one outside string
# Every character past C0 that moves or hides text on a terminal: the Unicode categories Cc, Cf
# (bidirectional marks, zero-width and invisible characters: U+00AD, U+2060..U+2064, the tag
# characters U+E0001..U+E007F, ...), Zl and Zp, as of Unicode 15.1 (tests/test_hidden_characters.py
# checks them against unicodedata, code point by code point).
_HIDING_BMP = ("\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u2028-\u202e"
               "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb")
_HIDING_ASTRAL = ("\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
                  "\U000e0001\U000e0020-\U000e007f")
_HIDING = _HIDING_BMP + _HIDING_ASTRAL
_UNSAFE = re.compile(f"[\\\\\x00-\x1f{_HIDING}]")


def _escape(m: re.Match[str]) -> str:
    ch = m.group(0)
    if ch == "\\":
        return "\\\\"
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


_UNSAFE_LOG = re.compile(f"[\x00-\x1f{_HIDING}]")


def safe_text(value: Any, limit: int | None = MAX_TEXT, *, backslashes: bool = True) -> str:
    """``value`` as text with every control character escaped, at most ``limit`` characters
    of the original kept (then ``…[N more characters]``; None keeps all). ``backslashes``
    False leaves a backslash as it is (log lines, where Windows paths are common)."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) - limit if limit is not None else 0
    if cut > 0:
        text = text[:limit]
    text = (_UNSAFE if backslashes else _UNSAFE_LOG).sub(_escape, text)
    return f"{text}…[{cut} more characters]" if cut > 0 else text


# What json.dumps leaves as it is: C0 controls are always escaped inside strings, and outside
# them JSON text is ASCII punctuation and whitespace (indentation), which must stay.
# In two passes, for a long JSON text: a class with characters past U+FFFF is matched about
# three times slower, and most texts have none (measured on 11 MB of records).
_UNSAFE_IN_JSON_BMP = re.compile(f"[{_HIDING_BMP}]")
_UNSAFE_IN_JSON_ASTRAL = re.compile(f"[{_HIDING_ASTRAL}]")
_ANY_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
RECORDS_KEY = "changes"  # the records test-update lists (shared/actions/preview.py)


def terminal_json(text: str) -> str:
    """JSON ``text`` (from ``json.dumps``, compact or indented) with every character that moves
    or hides text on a terminal written as a JSON ``\\uXXXX`` escape: the same JSON value."""
    if text.isascii():
        return text.replace("\x7f", "\\u007f")
    text = _UNSAFE_IN_JSON_BMP.sub(_json_escape, text)
    return _UNSAFE_IN_JSON_ASTRAL.sub(_json_escape, text) if _ANY_ASTRAL.search(text) else text


def _json_escape(m: re.Match[str]) -> str:
    code = ord(m.group(0))
    if code > 0xFFFF:  # JSON spells a character past U+FFFF as its UTF-16 surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def safe_tree(doc: Any, limit: int = MAX_TEXT, *, keep_records: bool = False) -> Any:
    """Every string in a JSON-shaped ``doc`` (dict keys too) through ``safe_text``;
    ``keep_records`` leaves the value of every ``changes`` key as it is (the records update
    sends; their JSON goes out through ``terminal_json``)."""
    if isinstance(doc, str):
        return _safe(doc, limit)
    if isinstance(doc, dict):
        return {_safe(k, limit) if isinstance(k, str) else k:
                v if keep_records and k == RECORDS_KEY else safe_tree(v, limit, keep_records=keep_records) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [safe_tree(v, limit, keep_records=keep_records) for v in doc]
    return doc


def _safe(text: str, limit: int) -> str:
    # The common case in C: short and printable (str.isprintable is False for every character
    # _UNSAFE_LOG matches: Cc, Cf, Zl, Zp): nothing to escape or cut.
    if len(text) <= limit and text.isprintable():
        return text
    return safe_text(text, limit, backslashes=False)
