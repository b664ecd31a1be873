"""Users that wait for a held deletion (``UpdateStage._wait_for_held``, docs/sync-rules.md,
"The deletion guard"): a user whose new primary address a user with a held deletion still
holds is not sent, and neither is a user that takes a waiting user's old address, the chain
to its end.

Checked here on generated plans against the rule itself (a fixpoint over the held users'
addresses), and for cost: the chain is found in one pass over the upserts, whatever its
length (a rescan per link is quadratic: a chain of 100,000 address moves is 10^10 steps).
Hypothesis runs derandomized, without an example database, with bounded example counts."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.actions.base import Plan
from shared.actions.update import UpdateStage
from shared.plan.diff import DatasetDiff
from shared.storage.codec import UNKNOWN


def wait(upserts: dict[str, tuple], have: dict[str, tuple], held: list[str]) -> tuple[tuple[str, ...], dict[str, tuple]]:
    """(the users that wait, the upserts left to send)."""
    stage = UpdateStage.__new__(UpdateStage)
    plan = Plan("full", "test", {"users": DatasetDiff("users", upserts, [])}, {"users": have}, {})
    stage._wait_for_held(plan, {"users": held})
    return stage.waiting, plan.diffs["users"].upserts


def oracle(upserts: dict[str, tuple], have: dict[str, tuple], held: list[str]) -> set[str]:
    """The rule: an address is taken while a held user or a waiting user holds it at the service."""
    taken = {have[k][0] for k in held if k in have and have[k] is not UNKNOWN}
    waits: set[str] = set()
    while more := {k for k, v in upserts.items() if k not in waits and v[0] in taken}:
        waits |= more
        taken |= {have[k][0] for k in more if k in have and have[k] is not UNKNOWN}
    return waits


def a(n: int) -> str:
    return f"u{n}@contoso.com"


@st.composite
def plans(draw):
    """Users 0..n-1 at the service, each with its own address (users.address is unique there);
    some held (deleted, not sent), some unknown (a lost answer), some upserted with an address
    of 0..n+2 (another user's, or a new one)."""
    n = draw(st.integers(1, 8))
    have: dict[str, tuple] = {f"k{i}": (a(i), ()) for i in range(n)}
    for i in draw(st.sets(st.integers(0, n - 1), max_size=2)):
        have[f"k{i}"] = UNKNOWN
    held = sorted(draw(st.sets(st.sampled_from(sorted(have)), min_size=1, max_size=3)))
    movers = draw(st.sets(st.sampled_from([*sorted(set(have) - set(held)), "new1", "new2"]), max_size=n + 2))
    addresses = draw(st.permutations([a(i) for i in range(n + 3)]))  # an address goes to one user at most
    upserts = {k: (addresses[i], ("g1",) if i % 2 else ()) for i, k in enumerate(sorted(movers))}
    return upserts, have, held


@settings(max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(plans())
def test_exactly_the_users_the_rule_names_wait_and_the_rest_is_sent_in_order(p):
    upserts, have, held = p
    want = oracle(upserts, have, held)
    waiting, left = wait(dict(upserts), have, held)
    assert sorted(waiting) == sorted(want) and len(waiting) == len(set(waiting))
    assert list(left.items()) == [(k, v) for k, v in upserts.items() if k not in want]  # the upserts' own order


class Visits(dict):
    """Upserts that count how many entries any iteration over them visits."""

    visits = 0

    def _count(self, it):
        for x in it:
            Visits.visits += 1
            yield x

    def __iter__(self):
        return self._count(super().__iter__())

    def items(self):
        return self._count(super().items())

    def keys(self):
        return self._count(super().keys())

    def values(self):
        return self._count(super().values())


def test_a_long_chain_is_found_in_passes_over_the_upserts_not_a_pass_per_link():
    """User i moves to user i+1's address, and the last one to the held user's: every user
    waits. Cost: a bounded number of passes over the upserts, not one per link."""
    n = 2_000
    have = {f"k{i}": (a(i), ()) for i in range(n + 1)}  # k{n} is held
    upserts = Visits({f"k{i}": (a(i + 1), ()) for i in range(n)})
    Visits.visits = 0
    waiting, left = wait(upserts, have, [f"k{n}"])
    assert sorted(waiting) == sorted(f"k{i}" for i in range(n)) and not left
    assert Visits.visits <= 4 * n, f"{Visits.visits} upsert visits for a chain of {n} users"


def test_an_update_that_leaves_users_waiting_says_so_and_not_that_every_update_was_sent(tmp_path):
    """U1 leaves with a@ (its deletion held: a third of the users), U2 moves from b@ to a@
    and waits, U3 takes b@ and waits too. The run's error and summary name the waiting users
    (what a user checks against the service: neither was sent) instead of saying that every
    addition and update was sent; test-update counts what update sends."""
    from devstack.graph_emulator import GraphEmulator
    from devstack.sync_receiver import SyncReceiver
    from tests.spec_oracle import view
    from tests.stack import CREDENTIAL, base_env
    from tests.test_conformance_oracle import run_cli

    def user(n: int, mail: str) -> dict:
        return {"id": f"1a000000-0000-4000-8000-{n:012d}", "displayName": "u", "mail": mail, "proxyAddresses": []}

    directory = {"users": [user(1, "a@contoso.com"), user(2, "b@contoso.com"), user(3, "c@contoso.com")], "groups": [], "contacts": []}
    graph = GraphEmulator(directory)
    receiver = SyncReceiver(domains=["contoso.com"], credential=CREDENTIAL)
    try:
        env = {**base_env(graph.start(), receiver.start(), f"file:{tmp_path / 'state'}"),
               "DELETE_THRESHOLD_PERCENT": "10", "DELETE_THRESHOLD_FLOOR": "0", "DELETE_THRESHOLD_COUNT": "1000000"}
        assert run_cli("update", env).code == 0
        graph.delete_user(user(1, "")["id"], permanent=True)
        graph.upsert_user({"id": user(2, "")["id"], "mail": "a@contoso.com"})
        graph.upsert_user({"id": user(3, "")["id"], "mail": "b@contoso.com"})
        before = view(receiver)
        preview = run_cli("test-update", env, "--json")
        r = run_cli("update", env, "--json")
        assert r.code == 4, r.stderr
        assert view(receiver) == before  # nothing could be sent: each user waits for the one before it
        waiting = [user(2, "")["id"], user(3, "")["id"]]
        assert r.summary["waitingUsers"] == {"count": 2, "keys": waiting}
        assert preview.summary["waitingUsers"] == r.summary["waitingUsers"]
        assert preview.summary["datasets"]["users"]["added"] == r.summary["datasets"]["users"]["added"] == 0
        assert "additions and updates were sent, except that 2 users wait" in r.stderr, r.stderr
    finally:
        graph.stop()
        receiver.stop()
