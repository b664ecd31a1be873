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
    """A record as the service returns it → (key, canonical value)."""
    if dataset == "addresses":
        return str(record["address"]).lower(), AddressRecord()
    if dataset == "groups":
        return str(record["id"]), GroupRecord(str(record["name"]), tuple(sorted(map(str, record.get("parentIds") or ()))))
    if dataset == "users":
        return str(record["id"]), UserRecord(
            str(record["address"]).lower(),
            tuple(sorted(map(str, record.get("groupIds") or ()))),
        )
    raise ValueError(f"unknown dataset {dataset!r}")


__all__ = ["DATASETS", "MAX_ITEMS", "AddressRecord", "GroupRecord", "Records", "UserRecord", "from_api_record", "to_api_record"]
