"""Every read applies Graph's entries in the order they arrive (issue 9, part 1; docs/sync-rules.md,
"Reading Microsoft Graph"): the first (full) round as much as a later one. Within a round the
same object can come back with a newer state, ``@removed`` removes an object, and a big group
comes in slices that repeat its properties, whose ``members@delta`` add up and whose member
entries marked ``@removed`` remove that member.

The Graph emulator serves such rounds (``GraphEmulator.script_round``), the strict receiver
stands in for the service, and the product runs as an operator runs it. The property test
generates a small directory history, builds a legal round from it, and checks what a user
would: the service holds exactly the projection of the final directory, and ``test-update``
reports the same."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.graph_emulator import GraphEmulator
from devstack.sync_receiver import SyncReceiver
from shared.config.settings import load_settings
from shared.engine import Options, run
from shared.model.directory import project
from shared.model.records import to_api_record
from tests.stack import CREDENTIAL, DOMAINS, base_env, service_view

USER = "#microsoft.graph.user"
GROUP = "#microsoft.graph.group"
CONTACT = "#microsoft.graph.orgContact"
TYPES = {"users": USER, "groups": GROUP, "contacts": CONTACT}
PROPS = {"users": ("mail", "proxyAddresses"), "groups": ("displayName", "mail", "proxyAddresses"), "contacts": ("mail", "proxyAddresses")}


# --- running the product against a scripted emulator ----------------------------------------------
class Stack:
    """The emulator, the receiver and a file state in a fresh directory, for one example."""

    def __init__(self, directory: dict[str, Any]) -> None:
        self.graph = GraphEmulator(directory)
        self.graph.start()
        self.receiver = SyncReceiver(domains=DOMAINS, credential=CREDENTIAL)
        self.receiver.start()
        self.tmp = tempfile.TemporaryDirectory(prefix="read-path-")
        self.env = base_env(self.graph.base_url, self.receiver.base_url, f"file:{Path(self.tmp.name) / 'state'}")

    def run(self, action: str) -> dict[str, Any]:
        settings_ = load_settings(self.env)
        options = Options(graph_backoff_seconds=0.01, sync_backoff_seconds=0.01,
                          now=lambda: dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC))
        summary = asyncio.run(run(action, settings_, env=self.env, options=options))
        out = json.loads(summary.to_json())
        assert out["ok"], out.get("error")
        return out

    def expected(self) -> dict[str, Any]:
        p = project(self.graph.snapshot(), DOMAINS)
        return {
            "addresses": set(p.datasets["addresses"]),
            "groups": {k: to_api_record("groups", k, v) for k, v in p.datasets["groups"].items()},
            "users": {k: to_api_record("users", k, v) for k, v in p.datasets["users"].items()},
        }

    def close(self) -> None:
        self.graph.stop()
        self.receiver.stop()
        self.tmp.cleanup()


def preview_view(summary: dict[str, Any]) -> dict[str, Any]:
    """What ``test-update`` says ``update`` would add (to an empty service), as service_view."""
    added = summary["changes"]
    return {
        "addresses": {r["address"] for r in added["addresses"]["added"]},
        "groups": {r["id"]: {**r, "parentIds": sorted(r["parentIds"])} for r in added["groups"]["added"]},
        "users": {r["id"]: {**r, "groupIds": sorted(r["groupIds"])} for r in added["users"]["added"]},
    }


def script(stack: Stack, rounds: dict[str, list[list[dict[str, Any]]]]) -> None:
    for collection in ("users", "groups", "contacts"):
        stack.graph.script_round(collection, rounds.get(collection) or [[]])


# --- the two examples of the issue ----------------------------------------------------------------
U1, L, N, P, G1 = "u-1", "u-l", "u-n", "u-p", "g-1"


def test_a_user_repeated_later_in_the_first_round_ends_with_its_newer_mail():
    final = {"users": [{"id": U1, "mail": "a.new@contoso.com", "proxyAddresses": []}]}
    pages = [[{"id": U1, "mail": "a.old@contoso.com", "proxyAddresses": []}], [{"id": U1, "mail": "a.new@contoso.com"}]]
    stack = Stack(final)
    try:
        script(stack, {"users": pages})
        preview = stack.run("test-update")
        script(stack, {"users": pages})
        summary = stack.run("update")
        held = service_view(stack.receiver)
        assert held["addresses"] == {"a.new@contoso.com"}
        assert held["users"] == {U1: {"id": U1, "address": "a.new@contoso.com", "groupIds": []}}
        assert held == stack.expected() == preview_view(preview)
        assert summary["read"]["kind"] == "full" and summary["read"]["objects"]["users"] == 1  # one object, sent twice
        assert preview["read"]["objects"]["users"] == 1
    finally:
        stack.close()


def test_a_member_removed_in_a_later_slice_of_its_group_loses_the_group():
    def user(uid: str) -> dict[str, Any]:
        return {"id": uid, "mail": f"{uid}@contoso.com", "proxyAddresses": []}

    final = {"users": [user(L), user(N), user(P)], "groups": [{"id": G1, "displayName": "G", "members": [L, P]}]}
    groups = [
        [{"id": G1, "displayName": "G", "mail": None, "proxyAddresses": [],
          "members@delta": [{"@odata.type": USER, "id": L}, {"@odata.type": USER, "id": N}]}],
        [{"id": G1, "displayName": "G", "mail": None, "proxyAddresses": [],
          "members@delta": [{"@odata.type": USER, "id": N, "@removed": {"reason": "deleted"}}, {"@odata.type": USER, "id": P}]}],
    ]
    users = [[user(L), user(N), user(P)]]
    stack = Stack(final)
    try:
        script(stack, {"users": users, "groups": groups})
        preview = stack.run("test-update")
        script(stack, {"users": users, "groups": groups})
        stack.run("update")
        held = service_view(stack.receiver)
        assert held["users"][N]["groupIds"] == []
        assert held["users"][L]["groupIds"] == [G1] and held["users"][P]["groupIds"] == [G1]
        assert held == stack.expected() == preview_view(preview)
    finally:
        stack.close()


def test_removed_in_the_first_round_and_a_group_renamed_between_its_slices():
    final = {"users": [{"id": L, "mail": "l@contoso.com", "proxyAddresses": []}],
             "groups": [{"id": G1, "displayName": "New name", "members": [L]}]}
    users = [[{"id": N, "mail": "n@contoso.com", "proxyAddresses": []}, {"id": L, "mail": "l@contoso.com", "proxyAddresses": []}],
             [{"id": N, "@removed": {"reason": "changed"}}]]
    groups = [[{"id": G1, "displayName": "Old name", "mail": None, "proxyAddresses": [], "members@delta": [{"@odata.type": USER, "id": N}]}],
              [{"id": G1, "displayName": "New name", "mail": None, "proxyAddresses": [],
                "members@delta": [{"@odata.type": USER, "id": L}, {"@odata.type": USER, "id": N, "@removed": {"reason": "deleted"}}]}]]
    stack = Stack(final)
    try:
        script(stack, {"users": users, "groups": groups})
        summary = stack.run("update")
        held = service_view(stack.receiver)
        assert held["groups"] == {G1: {"id": G1, "name": "New name", "parentIds": []}}
        assert set(held["users"]) == {L} and "n@contoso.com" not in held["addresses"]
        assert held == stack.expected()
        assert summary["read"]["objects"] == {"users": 1, "groups": 1, "contacts": 0}
        again = stack.run("update")  # the next round (from the scripted round's link) sees no change
        assert again["read"]["kind"] == "delta" and all(c["added"] == c["removed"] == 0 for c in again["datasets"].values())
    finally:
        stack.close()


# --- the class: generated histories and legal rounds -----------------------------------------------
IDS = {"users": ["u0", "u1", "u2", "u3"], "groups": ["g0", "g1", "g2"], "contacts": ["c0", "c1"]}
COLLECTION_OF = {oid: c for c, ids in IDS.items() for oid in ids}
MAILS = [None, "a@contoso.com", "A@Contoso.com", "b@fabrikam.com", "e@contoso.com", "f@fabrikam.com", "x@elsewhere.org", "bad..x@contoso.com"]
PROXIES = ["SMTP:a@contoso.com", "smtp:c@contoso.com", "SMTP:b@fabrikam.com", "X500:/o=x/cn=y", "smtp:d@xn--bcher-kva.example"]
NAMES = [None, "", "Sales", "Ops"]


def _props(collection: str) -> st.SearchStrategy[dict[str, Any]]:
    base = {"mail": st.sampled_from(MAILS), "proxyAddresses": st.lists(st.sampled_from(PROXIES), max_size=3, unique=True)}
    if collection == "groups":
        base["displayName"] = st.sampled_from(NAMES)
    return st.fixed_dictionaries(base)


# A directory state: objects (id -> props, or absent) and memberships (group id, member id).
State = tuple[dict[str, dict[str, Any]], frozenset[tuple[str, str]]]


@st.composite
def operations(draw: st.DrawFn) -> tuple:
    kind = draw(st.sampled_from(["set", "set", "set", "delete", "add", "add", "add", "remove"]))
    if kind == "set":
        oid = draw(st.sampled_from(sorted(COLLECTION_OF)))
        return ("set", oid, draw(_props(COLLECTION_OF[oid])))
    if kind == "delete":
        return ("delete", draw(st.sampled_from(sorted(COLLECTION_OF))))
    return (kind, draw(st.sampled_from(IDS["groups"])), draw(st.sampled_from(sorted(COLLECTION_OF))))


def apply_op(state: State, op: tuple) -> State:
    objects, members = dict(state[0]), set(state[1])
    if op[0] == "set":  # create, change, or restore
        objects[op[1]] = op[2]
    elif op[0] == "delete" and op[1] in objects:  # its memberships go with it, as in Entra
        del objects[op[1]]
        members = {(g, m) for g, m in members if op[1] not in (g, m)}
    elif op[0] == "add" and op[1] in objects and op[2] in objects:
        members.add((op[1], op[2]))
    elif op[0] == "remove":
        members.discard((op[1], op[2]))
    return objects, frozenset(members)


def directory_of(state: State) -> dict[str, Any]:
    objects, members = state
    out: dict[str, list[dict[str, Any]]] = {"users": [], "groups": [], "contacts": []}
    for oid, props in sorted(objects.items()):
        entry = {"id": oid, **props}
        if COLLECTION_OF[oid] == "groups":
            entry.setdefault("displayName", None)
            entry["members"] = sorted(m for g, m in members if g == oid)
        out[COLLECTION_OF[oid]].append(entry)
    return out


def view_of(state: State, oid: str) -> tuple[dict[str, Any], frozenset[str]] | None:
    """One object as a round can show it: its properties and (a group) its members."""
    objects, members = state
    if oid not in objects:
        return None
    return objects[oid], frozenset(m for g, m in members if g == oid)


def entries_for(oid: str, shown: list[tuple[dict[str, Any], frozenset[str]] | None], start: tuple | None, *, partial: bool,
                rng: random.Random) -> list[dict[str, Any]]:
    """A legal sequence of one object's entries in a round: each shown state in turn (the last one
    is the object's final state), a removal as ``@removed``, a group's member changes as
    ``members@delta`` adds and removals spread over 1-3 slices that each repeat its properties."""
    collection = COLLECTION_OF[oid]
    out: list[dict[str, Any]] = []
    before = start
    for view in shown:
        if view is None:
            if before is not None or rng.random() < 0.5:  # an object born and gone within the round may show only its removal
                out.append({"id": oid, "@removed": {"reason": rng.choice(["changed", "deleted"])}})
            before = None
            continue
        props, members = view
        old_props, old_members = before if before is not None else ({}, frozenset())
        if partial and before is not None:
            carried = {k: v for k, v in props.items() if old_props.get(k, "\0") != v}
        else:
            carried = {k: props.get(k) for k in PROPS[collection]}
        if collection != "groups":
            if carried or not partial or before is None:
                out.append({"id": oid, **carried})
            before = view
            continue
        ops = [{"@odata.type": TYPES[COLLECTION_OF[m]], "id": m} for m in sorted(members - old_members)]
        ops += [{"@odata.type": TYPES[COLLECTION_OF[m]], "id": m, "@removed": {"reason": "deleted"}} for m in sorted(old_members - members)]
        rng.shuffle(ops)
        slices = max(1, min(len(ops), rng.randint(1, 3)))
        full = {k: props.get(k) for k in PROPS[collection]}
        for i in range(slices):
            part = ops[i::slices]
            head = carried if i == 0 else full  # later slices repeat the group's selected properties
            if part or i == 0:
                out.append({"id": oid, **head, **({"members@delta": part} if part else {})})
        before = view
    return out


def build_round(start: State | None, history: list[State], rng: random.Random, *, partial: bool) -> dict[str, list[list[dict[str, Any]]]]:
    """A legal delta round that ends at ``history[-1]``: for a first round (``start`` None) every
    object of the final directory, for a later one every object the history touched; each with
    some of its intermediate states in order, all interleaved at random, cut into pages."""
    final = history[-1]
    rounds: dict[str, list[list[dict[str, Any]]]] = {}
    for collection, ids in IDS.items():
        per_object: list[list[dict[str, Any]]] = []
        for oid in ids:
            states = [view_of(s, oid) for s in history]
            start_view = view_of(start, oid) if start is not None else None
            touched = any(v != start_view for v in states) if start is not None else (states[-1] is not None or rng.random() < 0.5)
            if not touched:
                continue
            middle = [v for v in states[:-1] if rng.random() < 0.4]
            seq = entries_for(oid, [*middle, view_of(final, oid)], start_view, partial=partial, rng=rng)
            if seq:
                per_object.append(seq)
        merged: list[dict[str, Any]] = []
        queues = [list(seq) for seq in per_object]
        while any(queues):  # any interleaving that keeps each object's own order
            q = rng.choice([q for q in queues if q])
            merged.append(q.pop(0))
        pages: list[list[dict[str, Any]]] = []
        while merged:
            n = rng.randint(1, 4)
            pages.append(merged[:n])
            merged = merged[n:]
        rounds[collection] = pages or [[]]
    return rounds


def set_model(graph: GraphEmulator, state: State) -> None:
    """Bring the emulator's directory to ``state`` (its change log then leads there too)."""
    have = graph.snapshot()
    present = {o["id"]: c for c, objs in have.items() for o in objs}
    objects, members = state
    upsert = {"users": graph.upsert_user, "groups": graph.upsert_group, "contacts": graph.upsert_contact}
    delete = {"users": graph.delete_user, "groups": graph.delete_group, "contacts": graph.delete_contact}
    for oid, props in objects.items():
        upsert[COLLECTION_OF[oid]]({"id": oid, **{k: props.get(k) for k in PROPS[COLLECTION_OF[oid]]}})
    for oid, coll in present.items():
        if coll in delete and oid not in objects:
            delete[coll](oid)
    now = {(g["id"], m) for g in graph.snapshot()["groups"] for m in g["members"]}
    for g, m in sorted(now - members):
        graph.remove_member(g, m)
    for g, m in sorted(members - now):
        graph.add_member(g, m)


def histories(draw: st.DrawFn, start: State, min_size: int = 1, max_size: int = 12) -> list[State]:
    states = [start]
    for op in draw(st.lists(operations(), min_size=min_size, max_size=max_size)):
        states.append(apply_op(states[-1], op))
    return states[1:]


EMPTY: State = ({}, frozenset())
PROFILE = settings(derandomize=True, database=None, max_examples=15, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@PROFILE
@given(st.data())
def test_a_legal_first_round_leaves_the_service_equal_to_the_final_directory(data: st.DataObject) -> None:
    history = histories(data.draw, EMPTY)
    rng = random.Random(data.draw(st.integers(0, 2**32 - 1)))
    rnd = build_round(None, history, rng, partial=False)
    stack = Stack(directory_of(history[-1]))
    try:
        script(stack, rnd)
        preview = stack.run("test-update")
        script(stack, rnd)
        summary = stack.run("update")
        want = stack.expected()
        assert service_view(stack.receiver) == want
        assert preview_view(preview) == want
        finals = history[-1][0]
        assert summary["read"]["objects"] == {c: sum(1 for o in finals if COLLECTION_OF[o] == c) for c in IDS}
    finally:
        stack.close()


@PROFILE
@given(st.data())
def test_a_legal_later_round_leaves_the_service_equal_to_the_final_directory(data: st.DataObject) -> None:
    first = histories(data.draw, EMPTY, 8, 20)[-1]
    history = histories(data.draw, first, 1, 10)
    rng = random.Random(data.draw(st.integers(0, 2**32 - 1)))
    stack = Stack(directory_of(first))
    try:
        stack.run("update")  # a plain first round from the emulator's model
        assert service_view(stack.receiver) == stack.expected()
        set_model(stack.graph, history[-1])
        script(stack, build_round(first, history, rng, partial=True))
        summary = stack.run("update")
        assert summary["read"]["kind"] == "delta"
        assert service_view(stack.receiver) == stack.expected()
        preview = stack.run("test-update")  # a full read of the model now: nothing left to send
        assert all(c["added"] == c["removed"] == 0 for c in preview["datasets"].values())
    finally:
        stack.close()
