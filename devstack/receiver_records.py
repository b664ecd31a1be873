"""Per-record validation of the sync API: shape, types and address rules.

Everything here is independent of the stored data, so it can run before the
store's lock is taken. Rules that depend on other records (duplicate_address,
unknown_group) live in receiver_store.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from devstack.receiver_addresses import address_problem

DATASETS: tuple[str, ...] = ("addresses", "groups", "users")
FIELDS: dict[str, tuple[str, ...]] = {
    "addresses": ("address",),
    "groups": ("id", "name", "parentIds"),
    "users": ("id", "address", "groupIds"),
}
_FIELD_SETS = {dataset: frozenset(fields) for dataset, fields in FIELDS.items()}
KEY_FIELD: dict[str, str] = {"addresses": "address", "groups": "id", "users": "id"}
LIST_FIELD: dict[str, str] = {"groups": "parentIds", "users": "groupIds"}
MAX_GROUP_NAME = 256

INVALID_RECORD = "invalid_record"
INVALID_ADDRESS = "invalid_address"
DOMAIN_NOT_PROVISIONED = "domain_not_provisioned"
DUPLICATE_ADDRESS = "duplicate_address"
UNKNOWN_GROUP = "unknown_group"
ADDRESS_IN_OTHER_ACCOUNT = "address_in_other_account"

Record = dict[str, Any]


def rejection(key: Any, code: str, message: str) -> dict[str, Any]:
    """One entry of a `rejected` list, exactly as docs/sync-api.md shows it."""
    return {"key": key, "code": code, "message": message}


def key_of(dataset: str, item: Any) -> str | None:
    """The key a rejection names: the key field as sent, or None when there is none."""
    if isinstance(item, dict):
        value = item.get(KEY_FIELD[dataset])
        if isinstance(value, str):
            return value
    return None


def normalize_key(dataset: str, key: str) -> str:
    """Addresses are compared case-insensitively, so their keys are lowercased."""
    return key.lower() if dataset == "addresses" else key


@dataclass(frozen=True)
class Checked:
    """A record that passed the standalone rules, or the rejection that stopped it."""

    record: Record | None
    rejected: dict[str, Any] | None


class RecordValidator:
    """Standalone rules: exact fields and types, address syntax, domains, other accounts."""

    def __init__(self, domains: Iterable[str], other_account_addresses: Iterable[str]) -> None:
        self.domains = frozenset(domains)
        self.other_account = frozenset(a.lower() for a in other_account_addresses)

    def check(self, dataset: str, item: Any) -> Checked:
        """Validate one item and return it normalized (a new dict) or rejected."""
        key = key_of(dataset, item)
        problem = shape_problem(dataset, item)
        if problem:
            return Checked(None, rejection(key, INVALID_RECORD, problem))
        if "address" in item:
            refused = self.address_rejection(key, item["address"])
            if refused:
                return Checked(None, refused)
        return Checked(normalized(dataset, item), None)

    def address_rejection(self, key: str | None, address: str) -> dict[str, Any] | None:
        """invalid_address, domain_not_provisioned or address_in_other_account, in that order."""
        problem = address_problem(address)
        if problem:
            return rejection(key, INVALID_ADDRESS, f"{address!r}: {problem}")
        lowered = address.lower()
        domain = lowered.split("@")[1]
        if domain not in self.domains:
            return rejection(key, DOMAIN_NOT_PROVISIONED, f"the domain {domain!r} is not provisioned on this account")
        if lowered in self.other_account:
            return rejection(key, ADDRESS_IN_OTHER_ACCOUNT, f"{lowered!r} is registered by another account")
        return None


def shape_problem(dataset: str, item: Any) -> str | None:
    """Why `item` is not exactly a record of `dataset` with the right JSON types."""
    if not isinstance(item, dict):
        return "a record is a JSON object"
    expected = FIELDS[dataset]
    if item.keys() != _FIELD_SETS[dataset]:
        extra = sorted(set(item) - set(expected))
        missing = [f for f in expected if f not in item]
        return f"a {dataset} record has exactly the fields {list(expected)}; extra {extra}, missing {missing}"
    for field in expected:
        problem = field_problem(field, item[field])
        if problem:
            return problem
    return None


def field_problem(field: str, value: Any) -> str | None:
    """Type and length rules of one field."""
    if field in ("parentIds", "groupIds"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"{field} is a list of group id strings"
        return None
    if not isinstance(value, str):
        return f"{field} is a string"
    if not value.isascii() and not is_utf8_text(value):
        return f"{field} is not valid Unicode text"
    if field == "id" and not value:
        return "id is a non-empty string"
    if field == "name" and not 1 <= len(value) <= MAX_GROUP_NAME:
        return f"name is 1 to {MAX_GROUP_NAME} characters, not {len(value)}"
    return None


def is_utf8_text(value: str) -> bool:
    """False for strings with lone surrogates, which JSON escapes can smuggle in."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def normalized(dataset: str, item: Record) -> Record:
    """A fresh stored copy: addresses lowercased, id lists deduplicated and sorted."""
    record = dict(item)
    if "address" in record:
        record["address"] = record["address"].lower()
    list_field = LIST_FIELD.get(dataset)
    if list_field:
        record[list_field] = sorted(set(record[list_field]))
    return record
