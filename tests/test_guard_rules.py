"""The deletion guard's rules alone (shared/plan/guard.py), at their edges."""

from __future__ import annotations

import pytest

from shared.plan.guard import Thresholds, approve, judge

T = Thresholds(percent=10, count=500, floor=0)  # the percentage on every deletion (the floor has its own tests below)


def keys(n: int, prefix: str = "k") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


@pytest.mark.parametrize(
    "deletions, total, tripped",
    [
        (10, 100, False),  # exactly 10 %: allowed
        (11, 100, True),  # more than 10 %
        (500, 100_000, False),  # exactly the count: allowed
        (501, 100_000, True),  # more than the count, though only 0.5 %
        (1, 0, False),  # an empty dataset (nothing recorded) has no percentage
        (0, 100, False),
    ],
)
def test_more_than_either_threshold_trips(deletions, total, tripped):
    v = judge("users", keys(deletions), total, {}, T)
    assert v.tripped is tripped
    assert sorted(v.send + v.hold) == keys(deletions)
    assert (v.send == []) is (tripped or deletions == 0)


def test_the_reason_names_the_numbers_and_the_settings():
    v = judge("addresses", keys(30), 100, {}, T)
    assert v.hold == keys(30) and "30 of 100 addresses records (30.0%)" in v.reason
    assert "DELETE_THRESHOLD_COUNT=500" in v.reason and "DELETE_THRESHOLD_PERCENT=10" in v.reason


def test_held_deletions_stay_held_even_under_the_thresholds():
    held = dict.fromkeys(keys(30), False)
    v = judge("users", keys(3), 1000, held, T)  # 27 came back; 3 are still implied
    assert v.hold == keys(3) and v.send == [] and "await approval" in v.reason


def test_approval_sends_exactly_what_was_held_and_still_implied():
    held = approve(dict.fromkeys(keys(30), False))
    assert all(held.values()) and set(held) == set(keys(30))
    still = keys(25)  # 5 came back
    v = judge("users", still, 100, held, T)
    assert v.send == still and v.hold == [] and v.approved == still


def test_a_new_mass_deletion_after_approval_is_not_covered_by_it():
    held = approve(dict.fromkeys(keys(30), False))
    new = keys(40, "n")
    v = judge("users", keys(30) + new, 100, held, T)
    assert v.send == keys(30) and v.hold == new  # the approved go, the new ones wait


def test_a_small_new_deletion_after_approval_goes_by_the_thresholds():
    held = approve(dict.fromkeys(keys(30), False))
    v = judge("users", [*keys(30), "n00001"], 1000, held, T)
    assert v.hold == [] and "n00001" in v.send


def test_thresholds_can_switch_the_guard_off():
    off = Thresholds(percent=100, count=10**9)
    assert not judge("users", keys(1000), 1000, {}, off).tripped


def test_one_dataset_tripping_holds_the_others_deletions_of_the_run():
    from shared.plan.guard import judge_all

    # 30 of 100 users go, and their 30 addresses are only 3 % of 1,000 addresses.
    users, addrs = keys(30, "u"), keys(30, "a")
    v = judge_all({"users": users, "addresses": addrs}, {"users": 100, "addresses": 1000}, {}, T)
    assert v["users"].hold == users and v["addresses"].hold == addrs
    assert "held with the users deletions" in v["addresses"].reason
    # without a trip, the addresses would have gone
    assert judge_all({"addresses": addrs}, {"addresses": 1000}, {}, T)["addresses"].send == addrs
    # approved ones still go
    approved = approve(dict.fromkeys(addrs[:5], False))
    v = judge_all({"users": users, "addresses": addrs}, {"users": 100, "addresses": 1000}, {"addresses": approved}, T)
    assert v["addresses"].send == addrs[:5] and v["addresses"].hold == addrs[5:]


@pytest.mark.parametrize("floor", [0, 1, 5, 25, 100])
@pytest.mark.parametrize("total", [0, 1, 4, 5, 9, 10, 11, 50, 100, 251, 1000])
def test_the_percentage_holds_nothing_up_to_the_floor(floor, total):
    """Every number of deletions up to 120 of every dataset size above: held exactly when more
    than the count, or more than the floor and more than the percentage."""
    t = Thresholds(percent=10, count=100, floor=floor)
    for n in range(0, 121):
        v = judge("users", keys(n), total, {}, t)
        assert v.tripped is (n > 100 or (n > floor and total > 0 and n * 10 > total)), (floor, total, n)


def test_one_departure_of_five_users_is_sent_with_the_default_thresholds():
    v = judge("users", keys(1), 5, {}, Thresholds())
    assert not v.tripped and v.send == keys(1)


def test_a_wiped_small_tenant_is_still_held_with_the_default_thresholds():
    v = judge("addresses", keys(26), 26, {}, Thresholds())
    assert v.tripped and "DELETE_THRESHOLD_FLOOR=25" in v.reason and "26 of 26 addresses records (100.0%)" in v.reason
    assert not judge("addresses", keys(25), 25, {}, Thresholds()).tripped  # equal to the floor is allowed


def test_the_floor_setting_is_read_and_checked():
    from shared.common.errors import SettingsError
    from shared.config.settings import _read_guard

    assert _read_guard(lambda name: None)["delete_threshold_floor"] == 25
    assert _read_guard(lambda name: "0" if name == "DELETE_THRESHOLD_FLOOR" else None)["delete_threshold_floor"] == 0
    for bad in ("-1", "2.5", "many"):
        with pytest.raises(SettingsError) as caught:
            _read_guard(lambda name, bad=bad: bad if name == "DELETE_THRESHOLD_FLOOR" else None)
        assert "DELETE_THRESHOLD_FLOOR" in str(caught.value)
