"""The state's record values as stored in ``records.value`` (text), and the marker of a
record whose state at the service is unknown. Values are persisted and compared as text, so the
encoding is fixed: a group or user is ``json.dumps([first, [ids...]], separators=(",", ":"),
ensure_ascii=False)`` (written through orjson, byte for byte the same:
shared/common/fastjson.py); an address is the empty string."""

from __future__ import annotations

from ..common import fastjson

# A record whose state at the service is unknown: a batch naming it was sent, and its answer
# was never recorded (the process died in between). It equals no projected value, so the next
# run sends the key again: an upsert when the directory implies it, else a delete (a no-op
# for a missing key). ``value`` holds UNKNOWN_TEXT for it.
UNKNOWN: tuple = ("\x00unknown", ())
UNKNOWN_TEXT = "?"


def _encode(dataset: str, value: tuple) -> str:
    if value is UNKNOWN:
        return UNKNOWN_TEXT
    if dataset == "addresses":
        return ""
    return fastjson.dumps([value[0], list(value[1])])  # byte for byte json.dumps(..., separators=(",", ":"), ensure_ascii=False)


def _rows(dataset: str, upsert: dict[str, tuple]) -> list[tuple[str, str, str]]:
    """``(dataset, key, _encode(dataset, value))`` for each record of ``upsert``, without a call
    per record (tests/test_send_fast.py holds the two equal over generated records)."""
    if dataset == "addresses":
        return [(dataset, k, UNKNOWN_TEXT if v is UNKNOWN else "") for k, v in upsert.items()]
    dumps = fastjson.dumps  # a tuple is written as the list json writes of it
    return [(dataset, k, UNKNOWN_TEXT if v is UNKNOWN else dumps((v[0], v[1]))) for k, v in upsert.items()]


def _decode(dataset: str, text: str) -> tuple:
    if text == UNKNOWN_TEXT:
        return UNKNOWN
    if dataset == "addresses":
        return ()
    first, ids = fastjson.loads(text)
    if not isinstance(first, str) or not isinstance(ids, list):
        raise ValueError("bad record")
    return (first, tuple(ids))
