"""The receiver's live datasets, staged replacements and idempotency registry.

Every public method here expects the caller to hold `Store.lock`; the HTTP
layer takes it once per request, so each request is applied atomically.
Validation runs to completion before the first mutation, so a request is never
half-applied.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import copy
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from devstack.receiver_records import (
    DATASETS,
    DUPLICATE_ADDRESS,
    KEY_FIELD,
    UNKNOWN_GROUP,
    Record,
    RecordValidator,
    normalize_key,
    normalized,
    rejection,
)


class ApiError(Exception):
    """A request-level failure that becomes a problem+json response; ``headers`` are sent with
    it (a 405's ``Allow``)."""

    def __init__(self, status: int, title: str, detail: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = list(headers)


_ABSENT = object()


@dataclass
class Replacement:
    """One staged replace: records received so far and, once committed, its answer."""

    id: str
    dataset: str
    created: float
    records: dict[str, Record] = field(default_factory=dict)
    owner_of_address: dict[str, str] = field(default_factory=dict)
    state: str = "open"  # open | committed | abandoned
    answer: dict[str, Any] | None = None


class Store:
    """Live datasets plus the rules that relate records to each other."""

    def __init__(self, validator: RecordValidator, replacement_ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lock = threading.RLock()
        self.validator = validator
        self.replacement_ttl = replacement_ttl
        self.clock = clock
        self.data: dict[str, dict[str, Record]] = {d: {} for d in DATASETS}
        self.user_by_address: dict[str, str] = {}
        self.replacements: dict[str, Replacement] = {}
        self._versions: dict[str, int] = {d: 0 for d in DATASETS}
        self._sorted: dict[str, tuple[int, list[str]]] = {}

    # ---- reading -------------------------------------------------------

    def page(self, dataset: str, page_size: int, token: str | None) -> dict[str, Any]:
        """One page in key order; the token names the last key, so pages stay stable under writes."""
        keys = self._sorted_keys(dataset)
        start = 0 if token is None else bisect.bisect_right(keys, decode_page_token(dataset, token))
        chunk = keys[start:start + page_size]
        records = [self.data[dataset][k] for k in chunk]
        more = start + page_size < len(keys)
        next_token = encode_page_token(dataset, chunk[-1]) if more and chunk else None
        return {"records": records, "nextPageToken": next_token}

    def _sorted_keys(self, dataset: str) -> list[str]:
        """Sorted keys, cached until the dataset changes, so a full refresh sorts once."""
        cached = self._sorted.get(dataset)
        if cached and cached[0] == self._versions[dataset]:
            return cached[1]
        keys = sorted(self.data[dataset])
        self._sorted[dataset] = (self._versions[dataset], keys)
        return keys

    def snapshot(self, dataset: str) -> dict[str, Record]:
        """A deep copy that callers may keep and mutate."""
        return copy.deepcopy(self.data[dataset])

    # ---- seeding ---------------------------------------------------------

    def load(self, dataset: str, records: Iterable[Record]) -> None:
        """Replace a dataset without validation, so tests can seed any state."""
        fresh: dict[str, Record] = {}
        for item in records:
            record = normalized(dataset, copy.deepcopy(item))
            fresh[normalize_key(dataset, record[KEY_FIELD[dataset]])] = record
        self._swap(dataset, fresh)

    # ---- incremental changes --------------------------------------------

    def apply_changes(self, dataset: str, upserts: list[Any], deletes: list[str]) -> dict[str, Any]:
        """POST /changes: deletes first, then upserts in order; answers applied and rejected."""
        if dataset == "groups":
            return self._change_groups(upserts, deletes)
        if dataset == "users":
            return self._change_users(upserts, deletes)
        return self._change_addresses(upserts, deletes)

    def _change_addresses(self, upserts: list[Any], deletes: list[str]) -> dict[str, Any]:
        live = self.data["addresses"]
        accepted, rejected = [], []
        for item in upserts:
            checked = self.validator.check("addresses", item)
            if checked.rejected:
                rejected.append(checked.rejected)
            else:
                accepted.append(checked.record)
        for key in deletes:
            live.pop(key.lower(), None)
        for record in accepted:
            live[record["address"]] = record
        self._touch("addresses")
        return {"applied": len(deletes) + len(accepted), "rejected": rejected}

    def _change_users(self, upserts: list[Any], deletes: list[str]) -> dict[str, Any]:
        live, groups = self.data["users"], self.data["groups"]
        users: dict[str, Record | None] = {}
        owners: dict[str, str | None] = {}

        def current(user_id: str) -> Record | None:
            return users[user_id] if user_id in users else live.get(user_id)

        def owner(address: str) -> str | None:
            return owners[address] if address in owners else self.user_by_address.get(address)

        for key in deletes:
            old = current(key)
            if old is not None:
                owners[old["address"]] = None
            users[key] = None
        applied, rejected = len(deletes), []
        for item in upserts:
            checked = self.validator.check("users", item)
            record = checked.record
            problem = checked.rejected or (record and self._user_relation_problem(record, owner(record["address"]), groups))
            if problem:
                rejected.append(problem)
                continue
            old = current(record["id"])
            if old is not None:
                owners[old["address"]] = None
            owners[record["address"]] = record["id"]
            users[record["id"]] = record
            applied += 1
        self._commit_users(users, owners)
        return {"applied": applied, "rejected": rejected}

    @staticmethod
    def _user_relation_problem(record: Record, address_owner: str | None, groups: dict[str, Record]) -> dict[str, Any] | None:
        """duplicate_address, then unknown_group against the live groups."""
        if address_owner is not None and address_owner != record["id"]:
            return rejection(record["id"], DUPLICATE_ADDRESS, f"{record['address']!r} already belongs to user {address_owner!r}")
        missing = [g for g in record["groupIds"] if g not in groups]
        if missing:
            return rejection(record["id"], UNKNOWN_GROUP, f"groupIds name no existing group: {missing}")
        return None

    def _commit_users(self, users: dict[str, Record | None], owners: dict[str, str | None]) -> None:
        live = self.data["users"]
        for user_id, record in users.items():
            if record is None:
                live.pop(user_id, None)
            else:
                live[user_id] = record
        for address, user_id in owners.items():
            if user_id is None:
                self.user_by_address.pop(address, None)
            else:
                self.user_by_address[address] = user_id
        self._touch("users")

    def _change_groups(self, upserts: list[Any], deletes: list[str]) -> dict[str, Any]:
        live = self.data["groups"]
        deleted = {key for key in deletes if key in live}
        rejected: dict[int, dict[str, Any]] = {}
        candidates: dict[int, Record] = {}
        for index, item in enumerate(upserts):
            checked = self.validator.check("groups", item)
            if checked.rejected:
                rejected[index] = checked.rejected
            else:
                candidates[index] = checked.record
        self._reject_dangling_parents(candidates, rejected, lambda gid: gid in live and gid not in deleted)
        for key in deleted:
            del live[key]
        self.strip_group_ids(deleted)
        for index in sorted(candidates):
            live[candidates[index]["id"]] = candidates[index]
        self._touch("groups")
        return {"applied": len(deletes) + len(candidates), "rejected": [rejected[i] for i in sorted(rejected)]}

    @staticmethod
    def _reject_dangling_parents(candidates: dict[int, Record], rejected: dict[int, dict[str, Any]], stored: Callable[[str], bool]) -> None:
        """Reject upserts whose parents will not exist, until no rejection makes another reference dangle."""
        changed = True
        while changed:
            changed = False
            upserted = {record["id"] for record in candidates.values()}
            for index, record in list(candidates.items()):
                missing = [p for p in record["parentIds"] if p not in upserted and not stored(p)]
                if missing:
                    rejected[index] = rejection(record["id"], UNKNOWN_GROUP, f"parentIds name no existing group: {missing}")
                    del candidates[index]
                    changed = True

    def strip_group_ids(self, removed: set[str]) -> None:
        """A deleted group disappears from every parentIds and groupIds that held it."""
        if not removed:
            return
        for dataset, list_field in (("groups", "parentIds"), ("users", "groupIds")):
            for record in self.data[dataset].values():
                ids = record[list_field]
                if ids and not removed.isdisjoint(ids):
                    record[list_field] = [i for i in ids if i not in removed]
            self._touch(dataset)

    # ---- staged replace ---------------------------------------------------

    def create_replacement(self, dataset: str) -> Replacement:
        """POST /replacements: a new, empty, open replacement."""
        self._expire()
        replacement = Replacement(id=uuid.uuid4().hex, dataset=dataset, created=self.clock())
        self.replacements[replacement.id] = replacement
        return replacement

    def replacement(self, dataset: str, replacement_id: str) -> Replacement:
        """The replacement of that dataset, or 404 when it is unknown, expired or of another dataset."""
        self._expire()
        found = self.replacements.get(replacement_id)
        if found is None or found.dataset != dataset:
            raise ApiError(404, "Unknown replacement", f"no replacement {replacement_id!r} of dataset {dataset!r}")
        return found

    def _expire(self) -> None:
        """An uncommitted replacement expires replacement_ttl seconds after its creation."""
        now = self.clock()
        for rid, rep in list(self.replacements.items()):
            if rep.state == "open" and now - rep.created > self.replacement_ttl:
                del self.replacements[rid]

    def receive(self, rep: Replacement, items: list[Any]) -> dict[str, Any]:
        """POST /replacements/{id}/records: stage records; a key received again replaces the earlier one."""
        if rep.state != "open":
            raise ApiError(404, "Replacement closed", f"replacement {rep.id!r} is {rep.state} and takes no more records")
        received, rejected = 0, []
        for item in items:
            checked = self.validator.check(rep.dataset, item)
            record = checked.record
            problem = checked.rejected
            if record is not None and rep.dataset == "users":
                problem = self._user_relation_problem(record, rep.owner_of_address.get(record["address"]), self.data["groups"])
            if problem:
                rejected.append(problem)
                continue
            self._stage(rep, record)
            received += 1
        return {"received": received, "rejected": rejected}

    @staticmethod
    def _stage(rep: Replacement, record: Record) -> None:
        key = normalize_key(rep.dataset, record[KEY_FIELD[rep.dataset]])
        old = rep.records.get(key)
        if rep.dataset == "users":
            if old is not None:
                rep.owner_of_address.pop(old["address"], None)
            rep.owner_of_address[record["address"]] = key
        rep.records[key] = record

    def commit(self, rep: Replacement) -> dict[str, Any]:
        """Swap the dataset for exactly the staged records, dropping references that name no group."""
        if rep.state == "committed":
            return rep.answer
        if rep.state != "open":
            raise ApiError(404, "Replacement closed", f"replacement {rep.id!r} is {rep.state}")
        if rep.dataset == "groups":
            known = set(rep.records)
            rejected = drop_unknown_ids(rep.records, "parentIds", known)
        elif rep.dataset == "users":
            rejected = drop_unknown_ids(rep.records, "groupIds", set(self.data["groups"]))
        else:
            rejected = []
        removed_groups = set(self.data["groups"]) - set(rep.records) if rep.dataset == "groups" else set()
        self._swap(rep.dataset, rep.records)
        self.strip_group_ids(removed_groups)
        rep.answer = {"count": len(rep.records), "rejected": rejected}
        rep.state, rep.records, rep.owner_of_address = "committed", {}, {}
        return rep.answer

    def abandon(self, rep: Replacement) -> None:
        """DELETE: an open replacement is dropped; abandoning twice is harmless; a committed one cannot be."""
        if rep.state == "committed":
            raise ApiError(404, "Replacement closed", f"replacement {rep.id!r} is already committed")
        rep.state, rep.records, rep.owner_of_address = "abandoned", {}, {}

    def _swap(self, dataset: str, records: dict[str, Record]) -> None:
        self.data[dataset] = records
        if dataset == "users":
            self.user_by_address = {r["address"]: key for key, r in records.items()}
        self._touch(dataset)

    def _touch(self, dataset: str) -> None:
        self._versions[dataset] += 1


def drop_unknown_ids(records: dict[str, Record], list_field: str, known: set[str]) -> list[dict[str, Any]]:
    """Remove ids that name no known group; one unknown_group rejection per dropped entry."""
    rejected = []
    for key, record in records.items():
        ids = record[list_field]
        missing = [i for i in ids if i not in known]
        if missing:
            record[list_field] = [i for i in ids if i in known]
            rejected.extend(rejection(key, UNKNOWN_GROUP, f"{list_field} entry {m!r} names no group; dropped") for m in missing)
    return rejected


def encode_page_token(dataset: str, last_key: str) -> str:
    """An opaque token: the dataset and the last key served."""
    raw = json.dumps({"d": dataset, "after": last_key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_page_token(dataset: str, token: str) -> str:
    """The key after which the next page starts; 400 for a token this dataset never issued."""
    try:
        padded = token + "=" * (-len(token) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if value["d"] == dataset and isinstance(value["after"], str):
            return value["after"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeError):
        pass
    raise ApiError(400, "Bad page token", f"pageToken {token!r} was not issued for dataset {dataset!r}")


@dataclass
class Remembered:
    """What an Idempotency-Key was first used for, and the answer it got."""

    fingerprint: str
    status: int
    body: Any


class IdempotencyRegistry:
    """Keys are scoped to the account, so one key space spans every endpoint.

    Two records per key: the first 2xx answer, which replays and guards 409;
    and every request fingerprint ever seen with the key, whatever its outcome,
    so that a client that reuses a key for another body is caught even when the
    receiver did not have to refuse it (e.g. after a 413 or a 429).
    """

    def __init__(self) -> None:
        self.entries: dict[str, Remembered] = {}
        self.fingerprints: dict[str, set[str]] = {}
        self.conflicts = 0
        self.reused_keys: list[str] = []

    def observe(self, key: str, fingerprint: str) -> None:
        """Note a request under `key`; a second distinct fingerprint flags the key."""
        seen = self.fingerprints.setdefault(key, set())
        if fingerprint not in seen:
            seen.add(fingerprint)
            if len(seen) == 2:
                self.reused_keys.append(key)

    def lookup(self, key: str, fingerprint: str) -> Remembered | None:
        """The first answer for a replay, None for a new key, ApiError 409 for a reuse."""
        seen = self.entries.get(key)
        if seen is None:
            return None
        if seen.fingerprint != fingerprint:
            self.conflicts += 1
            raise ApiError(409, "Idempotency-Key reused", f"Idempotency-Key {key!r} was already used with a different request")
        return seen

    def remember(self, key: str, fingerprint: str, status: int, body: Any) -> None:
        self.entries[key] = Remembered(fingerprint, status, body)
