"""The Update plan: what is sent, in which order, in requests of at most 1,000 items."""

from __future__ import annotations

from shared.plan.diff import diff_records, plan_update


def test_diff_finds_new_changed_and_gone_records():
    held = {"u1": ("a@x.com", ()), "u2": ("b@x.com", ("g1",)), "u3": ("c@x.com", ())}
    wanted = {"u1": ("a@x.com", ()), "u2": ("b@x.com", ("g1", "g2")), "u4": ("d@x.com", ())}
    d = diff_records("users", wanted, held)
    assert d.upserts == {"u2": ("b@x.com", ("g1", "g2")), "u4": ("d@x.com", ())}
    assert d.deletes == ["u3"]


def test_order_is_group_upserts_users_addresses_group_deletes():
    held = {"groups": {"gold": ("Old", ())}, "users": {"u9": ("z@x.com", ())}, "addresses": {"z@x.com": ()}}
    diffs = {
        "groups": diff_records("groups", {"gnew": ("New", ())}, held["groups"]),
        "users": diff_records("users", {"u1": ("a@x.com", ("gnew",))}, held["users"]),
        "addresses": diff_records("addresses", {"a@x.com": ()}, held["addresses"]),
    }
    plan = plan_update(diffs, held)
    assert [(b.dataset, b.phase, [k for k, _ in b.upserts], b.deletes) for b in plan] == [
        ("groups", "group upserts", ["gnew"], []),
        ("users", "users", ["u1"], ["u9"]),
        ("addresses", "addresses", ["a@x.com"], ["z@x.com"]),
        ("groups", "group deletes", [], ["gold"]),
    ]


def test_requests_hold_at_most_max_items_and_deletes_come_first():
    wanted = {f"a{i:04d}@x.com": () for i in range(2500)}
    held = {f"old{i}@x.com": () for i in range(300)}
    plan = plan_update({"addresses": diff_records("addresses", wanted, held)}, {"addresses": held})
    assert [len(b) for b in plan] == [1000, 1000, 800]
    assert len(plan[0].deletes) == 300
    sent = [k for b in plan for k, _ in b.upserts]
    assert sent == sorted(wanted) or set(sent) == set(wanted)


def test_parents_are_sent_before_children_across_requests():
    # a chain g0 <- g1 <- ... where each group is a member of the next; with max 3 per request
    groups = {f"g{i}": (f"G{i}", (f"g{i+1}",) if i < 6 else ()) for i in range(7)}
    plan = plan_update({"groups": diff_records("groups", groups, {})}, {}, max_items=3)
    seen: set[str] = set()
    for b in plan:
        in_batch = {k for k, _ in b.upserts}
        for _k, (_name, parents) in b.upserts:
            assert all(p in seen or p in in_batch for p in parents)
        seen |= in_batch
    assert all(b.phase == "group upserts" for b in plan)  # no fix-up pass needed without a cycle


def test_a_cycle_spanning_two_requests_is_sent_without_then_with_the_reference():
    groups = {"a": ("A", ("b",)), "b": ("B", ("a",)), "c": ("C", ()), "d": ("D", ())}
    plan = plan_update({"groups": diff_records("groups", groups, {})}, {}, max_items=1)
    existing: set[str] = set()
    final: dict[str, tuple] = {}
    for b in plan:
        in_batch = {k for k, _ in b.upserts}
        for k, (name, parents) in b.upserts:
            assert all(p in existing or p in in_batch for p in parents), (k, parents)
            final[k] = (name, parents)
        existing |= in_batch
    assert final == groups
    assert plan[-1].phase == "group references"


def test_a_cycle_inside_one_request_needs_no_second_pass():
    groups = {"a": ("A", ("b",)), "b": ("B", ("a",))}
    plan = plan_update({"groups": diff_records("groups", groups, {})}, {})
    assert len(plan) == 1 and dict(plan[0].upserts) == groups


def test_address_handover_between_users_is_ordered_and_a_swap_is_broken_by_a_delete():
    held = {"u1": ("one@x.com", ()), "u2": ("two@x.com", ()), "u3": ("three@x.com", ()), "u4": ("four@x.com", ())}
    wanted = {
        "u1": ("two@x.com", ()),  # swap with u2
        "u2": ("one@x.com", ()),
        "u3": ("five@x.com", ()),  # frees three@ ...
        "u4": ("three@x.com", ()),  # ... which u4 takes
    }
    plan = plan_update({"users": diff_records("users", wanted, held)}, {"users": held})

    # simulate the service's uniqueness rule on the plan
    live = dict(held)
    for b in plan:
        for k in b.deletes:
            live.pop(k, None)
        for k, v in b.upserts:
            owner = {val[0]: key for key, val in live.items()}
            assert owner.get(v[0], k) == k, f"{k} would take {v[0]} from {owner.get(v[0])}"
            live[k] = v
    assert live == wanted


def test_chunk_fills_each_batch_with_deletes_then_upserts_in_order() -> None:
    """Every split (exhaustive over small sizes): the batches, in order, are the deletes and then
    the upserts, each batch holds at most max_items, and only the last one holds fewer."""
    from shared.plan.diff import _chunk

    for n_del in range(8):
        for n_up in range(8):
            for max_items in range(1, 5):
                deletes = [f"d{i}" for i in range(n_del)]
                upserts = [(f"u{i}", ("x", ())) for i in range(n_up)]
                batches = _chunk("users", deletes, upserts, max_items, "users")
                assert [k for b in batches for k in b.deletes] == deletes
                assert [u for b in batches for u in b.upserts] == upserts
                assert all(0 < len(b) <= max_items for b in batches)
                assert all(len(b) == max_items for b in batches[:-1])
                assert all(b.phase == "users" and b.dataset == "users" for b in batches)
