"""The faster record, diff and plan code equals the code it replaced (issue 13, CPU of a full
update): over generated directory caches, rules' verdicts and states, ``WholeDirectory.records``
(shared/model/views.py), ``diff_records`` and ``plan_update`` (shared/plan/diff.py) give exactly
what the straightforward reference versions below give: the same records in the same key order,
the same batches in the same order (docs/sync-api.md, "8. Ordering an update"). The references are the
previous release's code (a user's memberships read with one query per user, the plainest
form), kept here as the specification of the result.

Hypothesis runs derandomized, without an example database, with bounded example counts."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.model.directory import SCHEMA, Cache
from shared.model.projection import group_name
from shared.model.records import GroupRecord, UserRecord
from shared.model.rules import EVERYTHING, Verdict
from shared.plan.diff import Batch, DatasetDiff, _chunk, diff_records, plan_update
from shared.storage.codec import UNKNOWN


def props(max_examples: int) -> settings:
    return settings(derandomize=True, database=None, deadline=None, max_examples=max_examples,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- the reference: the previous release's code -------------------------------------------------
def ref_records(conn: sqlite3.Connection, verdict: Verdict, dataset: str) -> dict[str, tuple]:
    q = conn.execute
    keeps = verdict.keeps
    if dataset == "addresses":
        if verdict is EVERYTHING:
            return dict.fromkeys((a for (a,) in q("SELECT DISTINCT address FROM kept ORDER BY address")), ())
        return dict.fromkeys(sorted({a for a, o in q("SELECT address, object_id FROM kept") if keeps(o)}), ())
    if dataset == "groups":
        names = {gid: group_name(gid, json.loads(data)) for gid, data in q("SELECT id, data FROM objects WHERE kind='g' ORDER BY id") if keeps(gid)}
        parents: dict[str, list[str]] = {}
        for gid, mid in q("SELECT group_id, member_id FROM members WHERE kind IN ('g', '?') ORDER BY group_id, member_id"):
            if mid in names and gid in names:
                parents.setdefault(mid, []).append(gid)
        return {gid: GroupRecord(name, tuple(sorted(set(parents[gid]))) if gid in parents else ()) for gid, name in names.items()}
    groups = {gid for (gid,) in q("SELECT id FROM objects WHERE kind='g'") if keeps(gid)}
    owner: dict[str, str] = {}
    out: dict[str, tuple] = {}
    for uid, primary in q("SELECT id, primary_address FROM users WHERE primary_address IS NOT NULL ORDER BY id"):
        if keeps(uid) and owner.setdefault(primary, uid) == uid:
            gids = [g for (g,) in q("SELECT group_id FROM members WHERE member_id=? AND kind IN ('u', '?') ORDER BY group_id", (uid,)) if g in groups]
            out[uid] = UserRecord(primary, tuple(gids))
    return out


def ref_diff(dataset: str, wanted: dict[str, tuple], held: dict[str, tuple]) -> DatasetDiff:
    missing = object()
    return DatasetDiff(dataset, {k: v for k, v in wanted.items() if held.get(k, missing) != v}, sorted(k for k in held if k not in wanted))


def ref_parents_first(upserts: dict[str, tuple]) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}
    for root in sorted(upserts):
        if root in state:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        state[root] = 1
        while stack:
            node, i = stack[-1]
            parents = [p for p in upserts[node][1] if p in upserts]
            if i < len(parents):
                stack[-1] = (node, i + 1)
                if parents[i] not in state:
                    state[parents[i]] = 1
                    stack.append((parents[i], 0))
            else:
                stack.pop()
                state[node] = 2
                order.append(node)
    return order


def ref_group_upserts(upserts: dict[str, tuple], stored: set[str], max_items: int) -> list[Batch]:
    order = ref_parents_first(upserts)
    out: list[Batch] = []
    existing = set(stored)
    fixups: list[tuple[str, tuple]] = []
    for start in range(0, len(order), max_items):
        keys = order[start : start + max_items]
        available = existing | set(keys)
        batch = Batch("groups", phase="group upserts")
        for k in keys:
            name, parents = upserts[k]
            present = tuple(p for p in parents if p in available or p not in upserts)
            batch.upserts.append((k, (name, present)))
            if present != parents:
                fixups.append((k, upserts[k]))
        existing |= set(keys)
        out.append(batch)
    return out + _chunk("groups", [], fixups, max_items, "group references")


def ref_order_users(diff: DatasetDiff, held: dict[str, tuple]) -> tuple[list[str], list[tuple[str, tuple]]]:
    deletes = list(diff.deletes)
    holder = {v[0]: k for k, v in held.items() if k not in set(deletes)}
    after = {u: holder[v[0]] for u, v in diff.upserts.items() if holder.get(v[0]) not in (None, u) and holder[v[0]] in diff.upserts}
    order: list[str] = []
    done: set[str] = set()
    for uid in diff.upserts:
        chain: list[str] = []
        cur: str | None = uid
        while cur is not None and cur not in done and cur not in chain:
            chain.append(cur)
            cur = after.get(cur)
        if cur is not None and cur in chain:
            deletes.append(cur)
            after.pop(cur, None)
        for u in reversed(chain):
            if u not in done:
                done.add(u)
                order.append(u)
    return deletes, [(u, diff.upserts[u]) for u in order]


def ref_plan(diffs: dict[str, DatasetDiff], held: dict[str, dict[str, tuple]], max_items: int) -> list[Batch]:
    batches: list[Batch] = []
    groups, users, addresses = diffs["groups"], diffs["users"], diffs["addresses"]
    if groups.upserts:
        batches += ref_group_upserts(groups.upserts, set(held["groups"]), max_items)
    if not users.empty:
        deletes, upserts = ref_order_users(users, held["users"])
        batches += _chunk("users", deletes, upserts, max_items, "users")
    if not addresses.empty:
        batches += _chunk("addresses", addresses.deletes, list(addresses.upserts.items()), max_items, "addresses")
    if groups.deletes:
        batches += _chunk("groups", groups.deletes, [], max_items, "group deletes")
    return batches


# --- generated caches ---------------------------------------------------------------------------
IDS = st.text(st.sampled_from("abcAB09-é"), min_size=1, max_size=3)
POOL = ["a@contoso.com", "b@contoso.com", "c@fabrikam.com", "d@contoso.com"]


@st.composite
def caches(draw: st.DrawFn) -> tuple[dict[str, Any], Verdict]:
    ids = draw(st.lists(IDS, min_size=3, max_size=14, unique=True))
    kinds = {i: draw(st.sampled_from("uuggcx")) for i in ids}
    users = {i: draw(st.sampled_from([None, *POOL])) for i in ids if kinds[i] == "u"}
    names = {i: draw(st.sampled_from([{}, {"displayName": "G"}, {"displayName": "", "mail": "g@contoso.com"}])) for i in ids if kinds[i] == "g"}
    # Member rows mostly under cached groups (as the cache holds them), some under other ids.
    owners = [i for i in ids if kinds[i] == "g"] + draw(st.lists(st.sampled_from(ids), max_size=2))
    rows = [((g, m), draw(st.sampled_from([None, None, "u", "g", "?", "c"]))) for g in dict.fromkeys(owners) for m in ids]
    members = {pair: kind for pair, kind in rows if kind is not None}
    kept = set(draw(st.lists(st.tuples(st.sampled_from(POOL), st.sampled_from(ids)), max_size=12)))
    left = draw(st.sets(st.sampled_from(ids), max_size=4))
    verdict = Verdict({i: "left out by a rule" for i in left}) if left else EVERYTHING
    return {"kinds": kinds, "users": users, "names": names, "members": members, "kept": kept}, verdict


def build(shape: dict[str, Any]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(SCHEMA)
    data = {i: shape["names"].get(i, {}) for i in shape["kinds"]}
    conn.executemany("INSERT INTO objects VALUES (?, ?, ?, 0)", ((i, k, json.dumps(data[i])) for i, k in shape["kinds"].items()))
    conn.executemany("INSERT INTO users VALUES (?, ?)", shape["users"].items())
    conn.executemany("INSERT INTO members VALUES (?, ?, ?)", ((g, m, k) for (g, m), k in shape["members"].items()))
    conn.executemany("INSERT INTO kept VALUES (?, ?)", shape["kept"])
    return conn


@props(300)
@given(caches())
def test_whole_directory_records_equal_the_reference(drawn: tuple[dict[str, Any], Verdict]) -> None:
    shape, verdict = drawn
    conn = build(shape)
    cache = Cache(conn, frozenset(["contoso.com"]))
    cache.verdict = lambda: verdict  # type: ignore[method-assign]  # the rules' verdict, drawn
    for dataset in ("addresses", "groups", "users"):
        got, want = cache.records(dataset), ref_records(conn, verdict, dataset)
        assert list(got.items()) == list(want.items())  # the same records, in the same key order
        assert all(type(v) is type(want[k]) for k, v in got.items())  # a UserRecord stays a UserRecord (.address)


# --- generated states and projections -----------------------------------------------------------
def records_of(dataset: str) -> st.SearchStrategy[dict[str, tuple]]:
    keys = st.sampled_from([f"k{i}" for i in range(12)])
    if dataset == "addresses":
        return st.dictionaries(keys, st.just(()), max_size=8)
    ids = st.lists(keys, max_size=3, unique=True).map(lambda x: tuple(sorted(x)))
    value = st.tuples(st.sampled_from(POOL) if dataset == "users" else st.sampled_from(["G", "H"]), ids)
    return st.dictionaries(keys, st.one_of(value, st.just(UNKNOWN)) if dataset == "users" else value, max_size=10)


@props(500)
@given(st.fixed_dictionaries({d: st.tuples(records_of(d), records_of(d)) for d in ("addresses", "groups", "users")}), st.sampled_from([1, 2, 3, 1000]))
def test_diff_and_plan_equal_the_reference(pairs: dict[str, tuple[dict[str, tuple], dict[str, tuple]]], max_items: int) -> None:
    held = {d: h for d, (_, h) in pairs.items()}
    diffs = {d: diff_records(d, w, held[d]) for d, (w, _) in pairs.items()}
    for d, (w, h) in pairs.items():
        ref = ref_diff(d, w, h)
        assert list(diffs[d].upserts.items()) == list(ref.upserts.items()) and diffs[d].deletes == ref.deletes
    refs = {d: ref_diff(d, w, h) for d, (w, h) in pairs.items()}
    got = [(b.dataset, b.phase, b.upserts, b.deletes) for b in plan_update(diffs, held, max_items)]
    assert got == [(b.dataset, b.phase, b.upserts, b.deletes) for b in ref_plan(refs, held, max_items)]
