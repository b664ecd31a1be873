"""Every character that moves or hides text on a terminal is escaped, exhaustively over Unicode:
the categories Cc (controls), Cf (format: bidirectional marks, zero-width and invisible
characters such as U+2060 WORD JOINER, U+00AD SOFT HYPHEN and the tag characters
U+E0001..U+E007F), Zl and Zp (line and paragraph separators). ``safe_text`` (log lines, run
reports, the terminal) escapes them visibly; ``terminal_json`` (the JSON that carries the records
test-update lists) escapes them losslessly, as JSON ``\\uXXXX`` escapes (a surrogate pair above
U+FFFF) that parse back to the same text."""

from __future__ import annotations

import json
import re
import sys
import unicodedata

from shared.common.summary import RunSummary
from shared.common.textsafe import _HIDING, _UNSAFE_LOG, safe_text, safe_tree, terminal_json

HIDING = ("Cc", "Cf", "Zl", "Zp")
UNSAFE_IN_JSON = re.compile(f"[{_HIDING}]")  # what terminal_json escapes (in two passes)


def _characters() -> tuple[list[str], list[str]]:
    """(every character of HIDING, every other assigned character), surrogates aside."""
    hiding, other = [], []
    for cp in range(sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        category = unicodedata.category(ch)
        if category in HIDING:
            hiding.append(ch)
        elif category != "Cn":
            other.append(ch)
    return hiding, other


HIDDEN, SHOWN = _characters()


def test_the_escaped_set_is_exactly_the_characters_that_move_or_hide_text():
    """Each pattern matches every character of Cc, Cf, Zl and Zp, and no other assigned one
    (JSON text's own controls aside: ``json.dumps`` escapes C0 inside strings, and outside them
    a newline or a tab is the indentation)."""
    text, shown = "".join(HIDDEN), "".join(SHOWN)
    assert _UNSAFE_LOG.sub("", text) == ""
    assert UNSAFE_IN_JSON.sub("", text) == "".join(ch for ch in HIDDEN if ord(ch) < 0x20)
    assert _UNSAFE_LOG.search(shown) is None and UNSAFE_IN_JSON.search(shown) is None


def test_safe_text_leaves_none_of_them_in_a_name():
    for ch in HIDDEN:
        out = safe_text(f"Sales{ch}Team")
        assert ch not in out and out.startswith("Sales\\") and out.endswith("Team"), hex(ord(ch))
    assert safe_text("Admins\U000e0041\u2060") == "Admins\\U000e0041\\u2060"  # an astral escape names its whole code point
    assert safe_tree({"name": "x\u00ady"}) == {"name": "x\\xady"}


def test_terminal_json_escapes_each_losslessly_compact_and_indented():
    names = ["".join(HIDDEN), "tags\U000e0001\U000e0041\U000e007f end", "wj\u2060 shy\u00ad fvs\u180e iaa\ufff9", "del\x7fete"]
    for doc in ({"changes": {"groups": {"added": [{"name": n} for n in names]}}}, names):
        for dumped in (json.dumps(doc, ensure_ascii=False), json.dumps(doc, ensure_ascii=False, indent=1)):
            out = terminal_json(dumped)
            assert not any(ch in out for ch in HIDDEN if ord(ch) >= 0x20), "a hiding character reached the text"
            assert json.loads(out) == doc  # the same JSON value: the records stay what update sends


def test_a_summary_keeps_a_test_update_name_exact_and_its_json_line_hides_nothing():
    name = "Finance\u2060\U000e0049\U000e0047\U000e004e"  # a word joiner, then tag characters (invisible)
    summary = RunSummary("test-update")
    summary.extra["changes"] = {"groups": {"added": [{"id": "g1", "name": name, "parentIds": []}], "removed": []}}
    summary.extra["exclusions"] = [{"name": name}]
    summary.sanitize()
    line = summary.to_json()
    assert not any(ch in line for ch in "\u2060\U000e0049\U000e0047\U000e004e")
    doc = json.loads(line)
    assert doc["changes"]["groups"]["added"][0]["name"] == name  # exact, as update sends it
    assert "\u2060" not in doc["exclusions"][0]["name"] and "\U000e0049" not in doc["exclusions"][0]["name"]


def test_terminal_json_of_plain_ascii_only_spells_out_delete():
    for doc in ({"a": "del\x7fete", "b": ["x" * 3]}, ["plain"]):
        text = json.dumps(doc)
        out = terminal_json(text)
        assert "\x7f" not in out and json.loads(out) == doc
        assert out == text.replace("\x7f", "\\u007f")
