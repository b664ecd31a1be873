"""The vocabulary of a sync, at the bottom of every stage: the dataset names, the typed record
of each dataset, the conversion to and from the API's JSON records (docs/sync-api.md), and the
one limit on the items of a request (``MAX_ITEMS``).

Records are kept in a compact canonical form keyed by the record key, with sorted id lists,
which is also what the state stores, so a diff is a plain comparison. Each record type is a
``NamedTuple``: it equals (and hashes as) the plain tuple of its fields, so a record read back
from the state compares equal to one just projected.

    addresses: address -> AddressRecord()                 (no fields)
    groups:    id -> GroupRecord(name, parent_ids)         parent ids sorted
    users:     id -> UserRecord(address, group_ids)        group ids sorted
"""

from __future__ import annotations

from typing import Any, NamedTuple

DATASETS: tuple[str, ...] = ("addresses", "groups", "users")

MAX_ITEMS = 1000
"""At most this many items (upserts plus deletes) in one request (docs/sync-api.md)."""


class AddressRecord(NamedTuple):
    """A valid recipient address; the key is the address itself (lowercase)."""


class GroupRecord(NamedTuple):
    """A group: its ``name`` and the sorted ids of the groups it is a direct member of."""

    name: str
    parent_ids: tuple[str, ...]


class UserRecord(NamedTuple):
    """A user: its primary ``address`` and the sorted ids of the groups it is a direct member of."""

    address: str
    group_ids: tuple[str, ...]


Records = dict[str, tuple]
"""One dataset's records: key -> AddressRecord | GroupRecord | UserRecord (or the equal plain tuple)."""


def to_api_record(dataset: str, key: str, value: tuple) -> dict[str, Any]:
    """The canonical record as the JSON object docs/sync-api.md defines."""
    if dataset == "addresses":
        return {"address": key}
    if dataset == "groups":
        return {"id": key, "name": value[0], "parentIds": list(value[1])}
    if dataset == "users":
        return {"id": key, "address": value[0], "groupIds": list(value[1])}
    raise ValueError(f"unknown dataset {dataset!r}")


def from_api_record(dataset: str, record: dict[str, Any]) -> tuple[str, tuple]:
    """A record as the service returns it (``GET .../records``) → (key, canonical value).

    Every field docs/sync-api.md ("3. Datasets and their records", "4.1 Shape") shows for the dataset is required: ``id``,
    ``address`` and ``name`` strings (an id or address not empty), ``parentIds`` / ``groupIds``
    lists of non-empty strings; members the contract does not name are ignored. A value of
    another shape raises ``ValueError`` naming the field, never a coerced record (a string
    ``parentIds`` read as its characters, a number read as an address)."""
    if dataset == "addresses":
        return _text(record, "address").lower(), AddressRecord()
    if dataset == "groups":
        return _text(record, "id"), GroupRecord(_text(record, "name"), _ids(record, "parentIds"))
    if dataset == "users":
        return _text(record, "id"), UserRecord(_text(record, "address").lower(), _ids(record, "groupIds"))
    raise ValueError(f"unknown dataset {dataset!r}")


def _text(record: dict[str, Any], field: str) -> str:
    value = record.get(field)
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{field}' is {_shape(record, field)}, not a non-empty string")
    return value


def _ids(record: dict[str, Any], field: str) -> tuple[str, ...]:
    value = record.get(field)
    if not isinstance(value, list) or not all(isinstance(i, str) and i for i in value):
        raise ValueError(f"'{field}' is {_shape(record, field)}, not a list of group ids (non-empty strings)")
    return tuple(sorted(value))


def _shape(record: dict[str, Any], field: str) -> str:
    """What ``record[field]`` is, by type alone (a value from the service is not echoed)."""
    if field not in record:
        return "missing"
    value = record[field]
    return "empty" if value in ("", []) else "null" if value is None else f"a JSON {_JSON_TYPES.get(type(value), 'value')}"


_JSON_TYPES = {str: "string", int: "number", float: "number", bool: "boolean", list: "array", dict: "object"}


__all__ = ["DATASETS", "MAX_ITEMS", "AddressRecord", "GroupRecord", "Records", "UserRecord", "from_api_record", "to_api_record"]
