"""Projection vs. state → the changes Update sends, in the order docs/sync-api.md requires.

Order: group upserts, then user upserts and deletes, then address changes, then group
deletes. Within that, two references need care:
- a group's ``parentIds`` must name groups that exist once its request is applied, so parents
  go first; a cycle that spans two requests is sent once without the missing reference and
  once more, complete, after every group exists;
- ``users.address`` is unique, so a user taking an address another user gives up goes after
  that user; a swap (a cycle) is broken by deleting one user first and upserting it last,
  in a later request than its delete.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model.records import MAX_ITEMS, Records


@dataclass
class DatasetDiff:
    dataset: str
    upserts: dict[str, tuple]  # key -> new value
    deletes: list[str]

    @property
    def empty(self) -> bool:
        return not self.upserts and not self.deletes


def diff_records(dataset: str, wanted: Records, held: Records) -> DatasetDiff:
    """``wanted`` (the projection) against ``held`` (the state): the records to upsert, in
    ``wanted``'s order, and the sorted keys to delete. Against an empty state (a first run)
    every record is an upsert: a copy of ``wanted``, without a comparison per record."""
    if not held:
        return DatasetDiff(dataset, dict(wanted), [])
    get = held.get
    upserts = {k: v for k, v in wanted.items() if get(k, _MISSING) != v}
    return DatasetDiff(dataset, upserts, sorted(held.keys() - wanted.keys()))


_MISSING = object()


@dataclass
class Batch:
    """One request: upserts (key, value as sent) and deletes, at most MAX_ITEMS together."""

    dataset: str
    upserts: list[tuple[str, tuple]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    phase: str = ""

    def __len__(self) -> int:
        return len(self.upserts) + len(self.deletes)


def plan_update(diffs: dict[str, DatasetDiff], held: dict[str, Records], max_items: int = MAX_ITEMS) -> list[Batch]:
    """Every request of an Update, in the order they must be sent."""
    batches: list[Batch] = []
    groups = diffs.get("groups")
    users = diffs.get("users")
    addresses = diffs.get("addresses")
    if groups and groups.upserts:
        batches += _group_upserts(groups.upserts, set(held.get("groups", {})), max_items)
    if users and not users.empty:
        deletes, upserts = _order_users(users, held.get("users", {}))
        batches += _chunk("users", deletes, upserts, max_items, "users")
    if addresses and not addresses.empty:
        batches += _chunk("addresses", addresses.deletes, list(addresses.upserts.items()), max_items, "addresses")
    if groups and groups.deletes:
        batches += _chunk("groups", groups.deletes, [], max_items, "group deletes")
    return batches


def _chunk(dataset: str, deletes: list[str], upserts: list[tuple[str, tuple]], max_items: int, phase: str) -> list[Batch]:
    """Deletes first (they free addresses), then upserts in order, ``max_items`` per batch. No
    batch names a key twice: a user deleted to break an address swap is upserted again in a
    later request than its delete (docs/sync-api.md defines the order inside a request, but a
    key named twice in one request is what a strict service may refuse as malformed)."""
    out: list[Batch] = []
    for start in range(0, len(deletes), max_items):
        out.append(Batch(dataset, deletes=deletes[start : start + max_items], phase=phase))
    first = 0
    if out and len(out[-1]) < max_items and upserts:  # the last deletes' batch is topped up with upserts
        room, deleted = min(max_items - len(out[-1]), len(upserts)), set(out[-1].deletes)
        while first < room and upserts[first][0] not in deleted:
            first += 1
        out[-1].upserts = upserts[:first]
    for start in range(first, len(upserts), max_items):
        out.append(Batch(dataset, upserts=upserts[start : start + max_items], phase=phase))
    return out


def _parents_first(upserts: dict[str, tuple]) -> list[str]:
    """Upserted groups ordered so a parent (within the upserts) precedes its children: a
    depth-first walk from each group in key order, each group's parents in their order."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = done
    for root in sorted(upserts):
        if root in state:
            continue
        stack: list[tuple[str, list[str], int]] = [(root, [p for p in upserts[root][1] if p in upserts], 0)]
        state[root] = 1
        while stack:
            node, parents, i = stack[-1]
            if i < len(parents):
                stack[-1] = (node, parents, i + 1)
                p = parents[i]
                if p not in state:  # a parent being visited is a cycle: that edge waits
                    state[p] = 1
                    stack.append((p, [q for q in upserts[p][1] if q in upserts], 0))
            else:
                stack.pop()
                state[node] = 2
                order.append(node)
    return order


def _group_upserts(upserts: dict[str, tuple], stored: set[str], max_items: int) -> list[Batch]:
    order = _parents_first(upserts)
    out: list[Batch] = []
    existing = set(stored)
    fixups: list[tuple[str, tuple]] = []
    for start in range(0, len(order), max_items):
        keys = order[start : start + max_items]
        existing.update(keys)  # a parent in this request or an earlier one (or stored) exists once it is applied
        batch = Batch("groups", phase="group upserts")
        for k in keys:
            name, parents = value = upserts[k]
            present = tuple(p for p in parents if p in existing or p not in upserts)
            if present != parents:
                batch.upserts.append((k, (name, present)))
                fixups.append((k, value))
            else:
                batch.upserts.append((k, value))
        out.append(batch)
    out += _chunk("groups", [], fixups, max_items, "group references")
    return out


def _order_users(diff: DatasetDiff, held: Records) -> tuple[list[str], list[tuple[str, tuple]]]:
    """Deletes, then upserts ordered so that an address is given up before it is taken."""
    deletes = list(diff.deletes)
    deleted = set(deletes)
    holder = {v[0]: k for k, v in held.items() if k not in deleted} if diff.upserts else {}
    # after[u] = the user that must be upserted before u (it gives up u's new address); against
    # an empty state (a first run) no address is given up, and no upsert needs looking at
    after: dict[str, str] = {}
    for uid, value in diff.upserts.items() if holder else ():
        other = holder.get(value[0])
        if other is not None and other != uid and other in diff.upserts:
            after[uid] = other
    if not after:  # no user takes an address another upserted user gives up: the upserts' own order
        return deletes, list(diff.upserts.items())
    order: list[str] = []
    done: set[str] = set()
    for uid in diff.upserts:
        chain: list[str] = []
        on_chain: set[str] = set()
        cur: str | None = uid
        while cur is not None and cur not in done and cur not in on_chain:
            chain.append(cur)
            on_chain.add(cur)
            cur = after.get(cur)
        if cur is not None and cur in on_chain:
            # A swap: free the address by deleting ``cur`` first; it is upserted last.
            deletes.append(cur)
            after.pop(cur, None)
        for u in reversed(chain):
            if u not in done:
                done.add(u)
                order.append(u)
    return deletes, [(u, diff.upserts[u]) for u in order]
