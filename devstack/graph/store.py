"""The directory model: objects per collection, group memberships, and the change log that delta
rounds are served from. Every mutation runs under the emulator's lock and is logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from devstack.graph.model import _MISSING, COLLECTIONS, KNOWN_PROPERTIES, _copy_obj


class DirectoryStore:
    """Mixin of :class:`GraphEmulator`: loading, snapshots and mutations of the directory model.

    The state (``_objects``, ``_members``, ``_kind``, ``_logs``, the caches) is created in
    ``GraphEmulator.__init__``; public mutations take ``self._lock``."""

    # --- loading and snapshots ----------------------------------------------------------------
    def _load(self, directory: Mapping[str, Any]) -> None:
        """The initial directory is the state at watermark 0: it records no changes."""
        for coll in COLLECTIONS:  # other keys (a harness's own notes) are ignored
            store = self._objects[coll]
            for raw in directory.get(coll) or ():
                obj = _copy_obj(raw)
                oid = obj.get("id")
                if not isinstance(oid, str) or not oid:
                    raise ValueError(f"{coll}: every object needs a string id")
                if oid in self._kind:
                    raise ValueError(f"duplicate object id {oid!r}")
                members = obj.pop("members", None) if coll == "groups" else None
                store[oid] = obj
                self._kind[oid] = coll
                if coll == "groups":
                    self._members[oid] = dict.fromkeys(members or ())
            keys: set[str] = set().union(*(o.keys() for o in store.values())) if store else set()
            self._extra[coll] = keys - KNOWN_PROPERTIES[coll] - {"members"}

    def snapshot(self) -> dict:
        """A deep copy of the directory model (collections in insertion order)."""
        with self._lock:
            out: dict[str, list[dict[str, Any]]] = {}
            for coll in COLLECTIONS:
                items = []
                for oid, obj in self._objects[coll].items():
                    item = _copy_obj(obj)
                    if coll == "groups":
                        item["members"] = list(self._members[oid])
                    items.append(item)
                out[coll] = items
            return out

    # --- mutations (each one is logged for delta queries) -------------------------------------
    def upsert_user(self, obj: dict) -> None:
        self._upsert("users", obj)

    def delete_user(self, id: str, *, permanent: bool = False) -> None:
        self._delete("users", id, permanent)

    def upsert_group(self, obj: dict) -> None:
        self._upsert("groups", obj)

    def delete_group(self, id: str, *, permanent: bool = False) -> None:
        self._delete("groups", id, permanent)

    def upsert_contact(self, obj: dict) -> None:
        self._upsert("contacts", obj)

    def delete_contact(self, id: str, *, permanent: bool = False) -> None:
        self._delete("contacts", id, permanent)

    def upsert_device(self, obj: dict) -> None:
        self._upsert("devices", obj)

    def delete_device(self, id: str, *, permanent: bool = False) -> None:
        self._delete("devices", id, permanent)

    def upsert_service_principal(self, obj: dict) -> None:
        self._upsert("servicePrincipals", obj)

    def delete_service_principal(self, id: str, *, permanent: bool = False) -> None:
        self._delete("servicePrincipals", id, permanent)

    def add_member(self, group_id: str, member_id: str) -> None:
        with self._lock:
            self._require_group(group_id)
            if member_id not in self._kind:
                raise KeyError(f"no directory object {member_id!r}")
            self._add_member(group_id, member_id)

    def remove_member(self, group_id: str, member_id: str) -> None:
        with self._lock:
            self._require_group(group_id)
            self._remove_member(group_id, member_id)

    def _upsert(self, coll: str, raw: Mapping[str, Any]) -> None:
        """Create, or merge into the existing object: keys given replace, keys absent are kept."""
        obj = _copy_obj(raw)
        oid = obj.get("id")
        if not isinstance(oid, str) or not oid:
            raise ValueError(f"{coll}: an object needs a string id")
        members = obj.pop("members", None) if coll == "groups" else None
        with self._lock:
            owner = self._kind.get(oid)
            if owner is not None and owner != coll:
                raise ValueError(f"id {oid!r} already belongs to {owner}")
            self._extra[coll].update(k for k in obj if k not in KNOWN_PROPERTIES[coll])
            current = self._objects[coll].get(oid)
            if current is None:
                self._objects[coll][oid] = obj
                self._kind[oid] = coll
                self._sorted_ids[coll] = None
                if coll == "groups":
                    self._members[oid] = {}
                for gid in self._dangling_groups:  # a dangling member id may name this object now
                    self._member_refs.pop(gid, None)
                self._dangling_groups.clear()
                self._record(coll, oid, "create", None)
            else:
                changed = {k for k, v in obj.items() if k != "id" and current.get(k, _MISSING) != v}
                if changed:
                    current.update((k, obj[k]) for k in changed)
                    self._invalidate(coll, oid)
                    self._record(coll, oid, "props", frozenset(changed))
            if members is not None:
                self._set_members(oid, list(members))

    def _delete(self, coll: str, oid: str, permanent: bool) -> None:
        """Delete an object, and its memberships: every group that held it logs a removal."""
        with self._lock:
            if oid not in self._objects[coll]:
                raise KeyError(f"no {coll} object {oid!r}")
            for gid in sorted(self._parents_of(oid) - {oid}):
                self._remove_member(gid, oid)
            del self._objects[coll][oid]
            del self._kind[oid]
            self._refs.pop(oid, None)
            if coll == "groups":
                # Its own members leave with it: logged, so that a group recreated with the same
                # id before the next round comes with the removals of the members it no longer has.
                for mid in sorted(self._members[oid]):
                    self._record("groups", oid, "remove", (mid, self._kind.get(mid)))
                for mid in self._members.pop(oid):
                    self._parents_of(mid).discard(oid)
                self._sorted_members.pop(oid, None)
                self._member_refs.pop(oid, None)
            self._sorted_ids[coll] = None
            self._invalidate(coll, oid)
            self._record(coll, oid, "delete", "deleted" if permanent else "changed")

    def _set_members(self, gid: str, wanted: list[str]) -> None:
        current = self._members[gid]
        wanted_set = set(wanted)
        for mid in [m for m in current if m not in wanted_set]:
            self._remove_member(gid, mid)
        for mid in wanted:
            self._add_member(gid, mid)

    def _parents_of(self, mid: str) -> set[str]:
        """Groups that hold ``mid`` directly: a reverse index, built lazily (a delete needs it)."""
        if self._parents is None:
            self._parents = {}
            for gid, members in self._members.items():
                for m in members:
                    self._parents.setdefault(m, set()).add(gid)
        return self._parents.setdefault(mid, set())

    def _add_member(self, gid: str, mid: str) -> None:
        members = self._members[gid]
        if mid not in members:
            members[mid] = None
            if self._parents is not None:
                self._parents.setdefault(mid, set()).add(gid)
            self._sorted_members.pop(gid, None)
            self._member_refs.pop(gid, None)
            self._record("groups", gid, "add", (mid, self._kind.get(mid)))

    def _remove_member(self, gid: str, mid: str) -> None:
        members = self._members[gid]
        if mid in members:
            del members[mid]
            if self._parents is not None:
                self._parents.get(mid, set()).discard(gid)
            self._sorted_members.pop(gid, None)
            self._member_refs.pop(gid, None)
            self._record("groups", gid, "remove", (mid, self._kind.get(mid)))

    def _require_group(self, gid: str) -> None:
        if gid not in self._members:
            raise KeyError(f"no group {gid!r}")

    def _record(self, coll: str, oid: str, op: str, detail: Any) -> None:
        self._seq += 1
        self._logs[coll].append((self._seq, oid, op, detail))
        self._log_seqs[coll].append(self._seq)

    def _invalidate(self, coll: str, oid: str) -> None:
        for (fcoll, _), cache in self._frags.items():
            if fcoll == coll:
                cache.pop(oid, None)

    def _ids(self, coll: str) -> list[str]:
        ids = self._sorted_ids[coll]
        if ids is None:
            ids = self._sorted_ids[coll] = sorted(self._objects[coll])
        return ids

    def _member_ids(self, gid: str) -> list[str]:
        mids = self._sorted_members.get(gid)
        if mids is None:
            mids = self._sorted_members[gid] = sorted(self._members[gid])
        return mids
