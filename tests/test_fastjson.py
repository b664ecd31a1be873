"""shared/common/fastjson.py writes exactly what ``json`` writes and reads what ``json`` reads,
over generated values (hypothesis): any Unicode text (lone surrogates, control characters,
quotes, backslashes, U+2028), integers past 64 bits, nested lists, tuples and dicts. The state's
record values, the cached objects and the Idempotency-Key's canonical body are these bytes."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.common import fastjson

text = st.text(st.characters(codec=None, categories=None), max_size=12) | st.sampled_from(["\ud800", "a\udfffb", '"\\\x00\x1f\x7f\u2028', ""])
scalars = st.none() | st.booleans() | st.integers() | text
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
                      | st.dictionaries(text, inner, max_size=4), max_leaves=20)


@settings(max_examples=1500, deadline=None)
@given(values)
def test_writes_what_json_writes(value: Any) -> None:
    assert fastjson.dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert fastjson.dumps_ascii(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=True)
    assert _outcome(fastjson.dumps_sorted_bytes, value) == _outcome(
        lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode("utf-8"), value)


def _outcome(encode: Any, value: Any) -> Any:
    """The bytes, or the error (a lone surrogate cannot be UTF-8: neither way sends it)."""
    try:
        return encode(value)
    except UnicodeEncodeError as exc:
        return type(exc)


@settings(max_examples=1500, deadline=None)
@given(values)
def test_reads_what_json_reads(value: Any) -> None:
    for encoded in (json.dumps(value, ensure_ascii=True), json.dumps(value, ensure_ascii=False, indent=1)):
        assert fastjson.loads(encoded) == json.loads(encoded)
    ascii_bytes = json.dumps(value).encode("ascii")
    assert fastjson.loads(ascii_bytes) == json.loads(ascii_bytes)


class Record(NamedTuple):
    address: str
    group_ids: tuple[str, ...]


def test_types_orjson_refuses_take_the_json_path() -> None:
    rec = Record("a@contoso.com", ("g1",))
    assert fastjson.dumps([rec, 2**70]) == json.dumps([rec, 2**70], separators=(",", ":"), ensure_ascii=False)
    (nan,) = fastjson.loads("[NaN]")  # orjson refuses it; json reads a float NaN
    assert isinstance(nan, float) and nan != nan
    with pytest.raises(ValueError):
        fastjson.loads(b"<html>")
