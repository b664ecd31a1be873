"""The state's record values as stored in ``records.value`` (text), and the marker of a
record whose state at the service is unknown. Values are persisted and compared as text, so the
encoding is fixed: a group or user is ``json.dumps([first, [ids...]], separators=(",", ":"),
ensure_ascii=False)`` (written through orjson, byte for byte the same:
shared/common/fastjson.py); an address is the empty string."""

from __future__ import annotations

from ..common import fastjson
from ..common.bulkinsert import BulkInsert

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


_UPSERT = BulkInsert("records", ("dataset", "key", "value"), conflict="OR REPLACE")
# The same for one dataset: its name (and an address's empty value) in the statement, not bound per row.
_UPSERT_ADDRESSES = BulkInsert("records", ("dataset", "key", "value"), conflict="OR REPLACE", constants={"dataset": "addresses", "value": ""})
_UPSERT_NAMED = {d: BulkInsert("records", ("dataset", "key", "value"), conflict="OR REPLACE", constants={"dataset": d}) for d in ("groups", "users")}
# A record marked unknown (``StateDB.mark_unknown``): only its key is bound.
UPSERT_UNKNOWN = {d: BulkInsert("records", ("dataset", "key", "value"), conflict="OR REPLACE", constants={"dataset": d, "value": UNKNOWN_TEXT})
                  for d in ("addresses", "groups", "users")}


def _upsert_rows(dataset: str, upsert: dict[str, tuple]) -> tuple[BulkInsert, list[tuple[str, ...]]]:
    """The statement (``BulkInsert``: multi-row, shared/common/bulkinsert.py) and its rows that
    store ``upsert`` as the rows ``(dataset, key, _encode(dataset, value))`` of ``records``
    (``_UPSERT``), without a call per record and with one or two values bound per row
    (tests/test_send_fast.py holds the stored rows equal)."""
    if dataset == "addresses" and not any(v is UNKNOWN for v in upsert.values()):
        return _UPSERT_ADDRESSES, [(k,) for k in upsert]
    if dataset in _UPSERT_NAMED:  # (first, ids) as the list json writes of it, one call for all
        return _UPSERT_NAMED[dataset], fastjson.dumps_pairs(upsert, UNKNOWN, UNKNOWN_TEXT)
    return _UPSERT, [(dataset, k, _encode(dataset, v)) for k, v in upsert.items()]


def _decode(dataset: str, text: str, ids_seen: dict[str, str] | None = None) -> tuple:
    """A stored value → the record's value. ``ids_seen``: the group ids decoded so far, so
    that each group id is one string however many records name it (a whole dataset read at
    once: 300,000 memberships of 10,000 groups are 10,000 strings, not 300,000)."""
    if text == UNKNOWN_TEXT:
        return UNKNOWN
    if dataset == "addresses":
        return ()
    first, ids = fastjson.loads(text)
    if not isinstance(first, str) or not isinstance(ids, list):
        raise ValueError("bad record")
    if ids_seen is not None:
        return (first, tuple([ids_seen.setdefault(i, i) for i in ids]))
    return (first, tuple(ids))
