"""shared/common/fastjson.py writes exactly what ``json`` writes and reads what ``json`` reads,
over generated values (hypothesis): any Unicode text (lone surrogates, control characters,
quotes, backslashes, U+2028), integers past 64 bits, nested lists, tuples, NamedTuples (the
state's records) and dicts. The state's record values, the journal's lines, the cached objects,
the request bodies and the Idempotency-Key's body are these bytes."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.common import fastjson
from shared.model.records import AddressRecord, GroupRecord, UserRecord

text = st.text(st.characters(codec=None, categories=None), max_size=12) | st.sampled_from(["\ud800", "a\udfffb", '"\\\x00\x1f\x7f\u2028', ""])
scalars = st.none() | st.booleans() | st.integers() | text
records = (st.builds(AddressRecord) | st.builds(GroupRecord, text, st.tuples(text, text))
           | st.builds(UserRecord, text, st.lists(text, max_size=3).map(tuple)))
values = st.recursive(scalars | records, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
                      | st.dictionaries(text, inner, max_size=4), max_leaves=20)
# Integers at the edges of 64 bits, which orjson writes itself or refuses (json writes them).
# Writing only: orjson *reads* an integer literal past 64 bits as a float (see loads).
huge = st.integers(min_value=2**63 - 2, max_value=2**64 + 2) | st.integers(min_value=-(2**63) - 2, max_value=-(2**63) + 2)
written = st.recursive(scalars | huge | records, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
                       | st.dictionaries(text, inner, max_size=4), max_leaves=20)


@settings(max_examples=1500, deadline=None)
@given(written)
def test_writes_what_json_writes(value: Any) -> None:
    assert fastjson.dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert fastjson.dumps_ascii(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=True)
    assert _outcome(fastjson.dumps_sorted_bytes, value) == _outcome(
        lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode("utf-8"), value)
    assert _outcome(fastjson.dumps_bytes, value) == _outcome(
        lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode("utf-8"), value)


def _outcome(encode: Any, value: Any) -> Any:
    """The bytes, or the error (a lone surrogate cannot be UTF-8: neither way sends it)."""
    try:
        return encode(value)
    except UnicodeEncodeError as exc:
        return type(exc)


# Reading: integers within 64 bits (signed or unsigned), the range orjson reads as integers.
in_range = st.integers(min_value=-(2**63), max_value=2**64 - 1)
read = st.recursive(st.none() | st.booleans() | in_range | text | records, lambda inner: st.lists(inner, max_size=4)
                    | st.tuples(inner, inner) | st.dictionaries(text, inner, max_size=4), max_leaves=20)


@settings(max_examples=1500, deadline=None)
@given(read)
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
    assert fastjson.dumps_bytes({"k": rec}) == b'{"k":["a@contoso.com",["g1"]]}'  # a NamedTuple is a list, as json writes it
    with pytest.raises(TypeError):
        fastjson.dumps_bytes({"k": {1.5j}})  # neither library writes a set: json's own error
    with pytest.raises(UnicodeEncodeError):
        fastjson.dumps_bytes(["\ud800"])  # a lone surrogate is no UTF-8 body, as with json
    (nan,) = fastjson.loads("[NaN]")  # orjson refuses it; json reads a float NaN
    assert isinstance(nan, float) and nan != nan
    with pytest.raises(ValueError):
        fastjson.loads(b"<html>")


def test_every_ascii_character_is_written_as_json_writes_it() -> None:
    """Exhaustive over the 128 ASCII characters, alone, inside text and as a key: ensure_ascii
    escapes DEL (0x7f) as ``\\u007f`` although it is ASCII, which orjson does not."""
    for c in map(chr, range(128)):
        for value in (c, f"a{c}b", {c: [c, 1]}):
            assert fastjson.dumps_ascii(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=True)
            assert fastjson.dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


MARK = ("\x00mark", ())  # a marker equal to a pair but not the same object: only ``is`` makes its text


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(text, written, written).map(lambda t: (t[0], (t[1], t[2]))) | st.tuples(text, st.just(MARK)), max_size=6))
def test_pairs_are_written_as_json_writes_each(items: list[tuple[str, Any]]) -> None:
    """``dumps_pairs``: each value ``[first, second]`` as json writes it, or the marker's text;
    generated values include lone surrogates, integers past 64 bits and NamedTuples, which send
    the whole batch through the fallback."""
    pairs = dict(items)
    assert fastjson.dumps_pairs(pairs, MARK, "?") == [
        (k, "?" if v is MARK else json.dumps([v[0], v[1]], separators=(",", ":"), ensure_ascii=False)) for k, v in pairs.items()]


def test_pairs_orjson_refuses_take_the_json_path() -> None:
    """One pair orjson refuses (a lone surrogate, an integer over 64 bits, a NamedTuple inside)
    among plain ones and a NamedTuple pair (a state record): every text is still json's."""
    rec = Record("a@contoso.com", ("g1",))
    for odd in (("a\ud800", ("g1",)), ("b", (2**70,)), ("c", (rec,))):
        with pytest.raises(TypeError):
            orjson.dumps(odd)
        pairs = {"k1": ("Zürich – 東京", ("g0",)), "k2": odd, "k3": rec, "k4": MARK, "k5": ("x", [])}
        assert fastjson.dumps_pairs(pairs, MARK, "?") == [
            ("k1", '["Zürich – 東京",["g0"]]'), ("k2", json.dumps(list(odd), separators=(",", ":"), ensure_ascii=False)),
            ("k3", '["a@contoso.com",["g1"]]'), ("k4", "?"), ("k5", '["x",[]]')]
    equal = tuple(["\x00mark", ()])
    assert equal == MARK and equal is not MARK
    assert fastjson.dumps_pairs({"k": equal}, MARK, "?") == [("k", '["\\u0000mark",[]]')]  # equal is not the marker
