"""JSON on the hot paths through orjson, byte for byte what ``json`` writes.

orjson (a compiled, well-kept library) encodes and parses several times faster than the
standard library. Where the text is persisted, sent or hashed (the state's record values and
journal, the cached objects, the request bodies whose bytes the Idempotency-Key hashes), it must
not change: orjson's compact output is exactly ``json.dumps(value, separators=(",", ":"),
ensure_ascii=False)`` for the values the product writes (str, int, bool, None, lists, tuples,
NamedTuples and dicts with str keys; never a float, which orjson would write differently: NaN as
null). A NamedTuple (the state's records) is written as the list ``json`` makes of it, through
orjson's ``default`` hook. What orjson refuses (a lone surrogate from a JSON escape, an integer
over 64 bits, a type neither serializes) goes through ``json``, so every result stays what
``json`` gives; tests/test_fastjson.py compares the two over generated values."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

import orjson

_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_ASCII = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode
_SORTED = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode
_orjson_dumps = orjson.dumps
K = TypeVar("K")


def _tuple_as_list(value: Any) -> Any:
    """orjson's ``default`` hook: a tuple subclass (a NamedTuple) is the list ``json`` writes;
    any other type orjson refuses is left to ``json`` (the TypeError sends it there)."""
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(type(value).__name__)


def dumps(value: Any) -> str:
    """``json.dumps(value, separators=(",", ":"), ensure_ascii=False)``."""
    try:
        return orjson.dumps(value, default=_tuple_as_list).decode("utf-8")
    except TypeError:
        return _COMPACT(value)


def dumps_pairs(pairs: Mapping[K, Any], marker: Any, marker_text: str) -> list[tuple[K, str]]:
    """``[(k, marker_text if v is marker else dumps([v[0], v[1]])) for k, v in pairs.items()]``:
    each value a pair (a tuple, NamedTuple or list of two) of plain types (str, int, bool, None,
    list, plain tuple, dict with str keys), which orjson writes itself as the array
    ``[first, second]``: no ``default`` hook and no Python call per value (the state's record
    values, shared/storage/codec.py, where ``marker`` is UNKNOWN). When orjson refuses one (a
    lone surrogate, an integer over 64 bits, a NamedTuple or another type inside), every pair is
    written again, each by ``dumps`` (orjson, or else ``json``): each text is always
    ``json.dumps([first, second], separators=(",", ":"), ensure_ascii=False)``."""
    encode = _orjson_dumps
    try:
        return [(k, marker_text if v is marker else encode((v[0], v[1])).decode()) for k, v in pairs.items()]
    except TypeError:
        return [(k, marker_text if v is marker else dumps((v[0], v[1]))) for k, v in pairs.items()]


def dumps_bytes(value: Any) -> bytes:
    """``json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")``: a
    request body as sent. A lone surrogate raises ``UnicodeEncodeError``, as it does there."""
    try:
        return orjson.dumps(value, default=_tuple_as_list)
    except TypeError:
        return _COMPACT(value).encode("utf-8")


def dumps_ascii(value: Any) -> str:
    """``json.dumps(value, separators=(",", ":"), ensure_ascii=True)`` (text SQLite can hold
    whatever it carries: a lone surrogate survives as its escape)."""
    try:
        raw = orjson.dumps(value, default=_tuple_as_list)
    except TypeError:
        return _ASCII(value)
    # ensure_ascii escapes DEL (0x7f) as \u007f, which orjson writes as it is.
    return raw.decode("ascii") if raw.isascii() and b"\x7f" not in raw else _ASCII(value)


def dumps_sorted_bytes(value: Any) -> bytes:
    """``json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)`` as UTF-8."""
    try:
        return orjson.dumps(value, default=_tuple_as_list, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return _SORTED(value).encode("utf-8")


def loads(data: str | bytes) -> Any:
    """``json.loads``: what orjson cannot parse (a lone surrogate escape, NaN, a BOM) is parsed
    by ``json``, which raises ``ValueError`` for what is not JSON at all (and for JSON nested
    deeper than its recursion allows, which it would raise as ``RecursionError``). One difference: an
    integer literal outside the 64-bit range comes back as a float (orjson's reading); nothing
    this product reads carries one (Graph pages, the state's record values)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data)
    except RecursionError:  # nested past both parsers' depth: not JSON this product can read
        raise ValueError("JSON nested too deeply to read") from None
