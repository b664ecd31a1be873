"""The users records of a full read (``WholeDirectory._user_records``: one merged pass of users
and memberships through ``members_by_member``) are exactly those the delta path projects one
key at a time (``desired``, ``_user_chunk``: a join per chunk of users), over generated
directories: ids holding a separator (``,``) or nothing but it, members that are
users, groups, contacts or of no stated type, members that are no cached object or another
kind of object, groups removed after their members were added, users sharing a primary
address or without one, and the scope and user-type settings leaving users and groups out."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from shared.model.directory import Round, scratch_cache
from shared.model.rules import NO_RULES, parse_rules
from tests.test_properties import props
from tests.test_streamed_load import member_ops

PROVISIONED = ["contoso.com"]
ID = st.text(st.sampled_from("ab,1é"), min_size=1, max_size=4)


@st.composite
def directories(draw: st.DrawFn) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
    ids = draw(st.lists(ID, min_size=2, max_size=14, unique=True))
    users = ids[: len(ids) // 2]
    groups = ids[len(ids) // 2 :]
    entries: list[tuple[str, dict[str, Any]]] = []
    for uid in users:
        mail = draw(st.sampled_from([None, "a@contoso.com", "b@contoso.com", f"{len(entries)}@contoso.com"]))
        entries.append(("users", {"id": uid, "mail": mail, "userType": draw(st.sampled_from(["Member", "Guest"]))}))
    for gid in groups:  # members that are no cached object, or ids holding only the separator, beside the drawn ids
        members = member_ops(draw, [*ids, "nobody", ",", ",,"], most=6)
        entries.append(("groups", {"id": gid, "displayName": f"G{gid}", "members@delta": members}))
    removed = draw(st.lists(st.sampled_from(groups), max_size=2, unique=True))
    for gid in removed:  # a group removed after its members
        entries.append(("groups", {"id": gid, "@removed": {"reason": "deleted"}}))
    order = draw(st.permutations(range(len(entries))))
    scoped = [g for g in groups if "," not in g and g not in removed]  # a scope naming no cached group fails the run
    rules = NO_RULES
    setting = draw(st.sampled_from(["none", "types", "scope"]))
    if setting == "types":
        rules = parse_rules(None, "Guest", None)
    elif setting == "scope" and scoped:
        rules = parse_rules(draw(st.sampled_from(scoped)), None, None)
    return [entries[i] for i in order], rules


@props(300)
@given(directories(), st.integers(1, 5))
def test_the_users_records_of_a_full_read_are_those_projected_key_by_key(drawn: tuple[list[tuple[str, dict[str, Any]]], Any], batch: int) -> None:
    entries, rules = drawn
    rnd = Round()
    for collection, obj in entries:
        rnd.take(collection, obj)
    cache = scratch_cache(PROVISIONED, rules)
    try:
        cache.load(flush_entries=batch).feed(rnd)
        cache.finish_load()
        whole = cache.records("users")
        uids = sorted({u for (u,) in cache.conn.execute("SELECT id FROM users")})
        one_by_one = {k: v for k, v in cache.desired("users", uids).items() if v is not None}
        assert whole == one_by_one
        assert list(whole) == sorted(whole)
        for record in whole.values():
            assert list(record[1]) == sorted(record[1])
    finally:
        cache.conn.close()
