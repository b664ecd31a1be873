"""Adversarial checks, round 7: rules of the contract that earlier rounds left unchecked, through
the real CLI against the Graph emulator and the strict receiver, as the harness runs them
(docs/sync-rules.md; docs/sync-api.md)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.model.directory import Affected, scratch_cache
from tests.stack import ROOT, U, base_env, run_cli, service_view


@pytest.fixture
def graph(nasty_graph):
    return nasty_graph


def contract_env(graph, receiver, tmp_path) -> dict[str, str]:
    return base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " WARNING " in line]


def test_a_user_left_out_for_a_shared_primary_in_a_delta_round_is_warned(graph, receiver, tmp_path):
    """"If two users share a primary address, the user with the smaller id (by string order) keeps
    the record. The other is left out with a warning" (docs/sync-rules.md): in an incremental
    update as much as in a full read."""
    env = contract_env(graph, receiver, tmp_path)
    assert run_cli("update", env).code == 0
    # U(4) holds shared@contoso.com; U(9) arrives with the same primary address, in another case
    graph.upsert_user({"id": U(9), "displayName": "Shared C", "mail": "Shared@Contoso.com", "proxyAddresses": []})
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    assert r.summary["read"]["kind"] == "delta"
    assert service_view(receiver)["users"][U(4)]["address"] == "shared@contoso.com"
    assert U(9) not in service_view(receiver)["users"]
    named = [w for w in _warnings(r.stderr) if U(9) in w and "shared@contoso.com" in w]
    assert named, r.stderr
    assert U(4) in named[0]  # the user that keeps the record


PRIMARIES = ("one@contoso.com", "ONE@contoso.com", "two@contoso.com", "three@fabrikam.com", None)


@st.composite
def shared_primary_rounds(draw):
    """Users whose mail comes from a small pool (so primaries collide, in any case), then a
    delta round that changes some of them and adds others."""
    ids = [f"10000000-0000-0000-0000-{n:012d}" for n in range(1, 9)]
    first = [{"id": uid, "mail": draw(st.sampled_from(PRIMARIES)), "proxyAddresses": []} for uid in draw(st.lists(st.sampled_from(ids), unique=True))]
    changes = [{"id": uid, "mail": draw(st.sampled_from(PRIMARIES))} for uid in draw(st.lists(st.sampled_from(ids), unique=True, min_size=1))]
    return first, changes


@settings(derandomize=True, database=None, deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(shared_primary_rounds())
def test_every_user_a_delta_round_leaves_out_for_a_shared_primary_is_warned(rounds):
    """Over generated collisions: each user the round names that another user's smaller id
    keeps out of the users dataset gets the warning that names both (docs/sync-rules.md, the
    users dataset), in a delta round as in a full read."""
    first, changes = rounds
    cache = scratch_cache(["contoso.com", "fabrikam.com"])
    cache.apply("users", first, Affected())
    affected = Affected()
    cache.apply("users", changes, affected)
    affected.users |= cache.claimants(affected.primaries)
    handler = _Collect()
    logger = logging.getLogger("shared.directory")
    logger.addHandler(handler)
    try:
        records = cache.desired("users", sorted(affected.users))
    finally:
        logger.removeHandler(handler)
    mail = {u["id"]: u["mail"] for u in first}
    mail.update({u["id"]: u["mail"] for u in changes})
    owner: dict[str, str] = {}
    for uid in sorted(mail):
        if mail[uid]:
            owner.setdefault(mail[uid].lower(), uid)
    for uid in (u["id"] for u in changes):
        primary = mail[uid].lower() if mail[uid] else None
        if primary is None or owner[primary] == uid:
            assert records[uid] is not None if primary else records[uid] is None
            continue
        assert records[uid] is None
        assert any(uid in m and primary in m and owner[primary] in m for m in handler.messages), (uid, handler.messages)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("argv", [["bogus"], [], ["update", "extra"], ["test-update", "--bogus"], ["--json"]],
                         ids=["unknown-action", "no-action", "extra-argument", "unknown-option", "no-action-json"])
def test_a_command_line_mistake_is_one_line_on_stderr(argv):
    """"A failure prints one clear line on standard error" (docs/sync-rules.md, "Commands and exit statuses"): a
    mistyped command line too, with a non-zero exit status and a pointer to --help."""
    r = subprocess.run([sys.executable, "-m", "shared", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env=base_env("http://127.0.0.1:9/v1.0", "http://127.0.0.1:9/v1", "file:/nonexistent"))
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "--help" in lines[0], lines


def test_json_may_come_before_the_action(graph, receiver, tmp_path):
    """`--json` prints the run summary as the last line of stdout wherever it is written."""
    env = contract_env(graph, receiver, tmp_path)
    r = run_cli("--json", env, "test-update")
    assert r.code == 0, r.stderr
    assert r.summary["action"] == "test-update" and r.summary["ok"] is True


def test_test_update_without_json_reports_the_exclusions_with_their_reasons(graph, receiver, tmp_path):
    """test-update "reports what Update would send: counts and records per dataset, added and
    removed, plus the exclusions with their reasons" (docs/sync-rules.md, "Actions"): its plain
    report too, not only --json."""
    env = contract_env(graph, receiver, tmp_path)
    r = run_cli("test-update", env)
    assert r.code == 0, r.stderr
    # the nasty directory leaves out 5 candidates and 3 users (tests/stack.py EXPECTED_EXCLUDED)
    assert "exclusions: 8" in r.stdout, r.stdout
    for value, why in (("bad..dot@contoso.com", "invalid address"), ("guest@gmail.com", "not provisioned"),
                       ("shared@contoso.com", "smaller id"), (U(7), "no primary address")):
        assert any(value in line and why in line for line in r.stdout.splitlines()), (value, r.stdout)


NO_LINKS_CASES = [  # (read, collection, which page loses its links)
    ("full", "users", "first"), ("full", "users", "later"), ("full", "groups", "later"), ("full", "contacts", "first"),
    ("delta", "users", "first"), ("delta", "users", "later"),
]


@pytest.mark.parametrize("read,collection,page", NO_LINKS_CASES, ids=["-".join(c) for c in NO_LINKS_CASES])
def test_a_delta_page_that_says_neither_next_nor_delta_link_is_an_incomplete_read(receiver, tmp_path, read, collection, page):
    """"A sync never computes deletions from an incomplete read" (docs/sync-rules.md): a delta
    round ends with @odata.deltaLink, every page before with @odata.nextLink; a page with neither
    (say, a proxy that dropped them) does not say the round is complete. The run fails and sends
    nothing (a full read took such a page for the end of the collection and deleted the objects
    of the pages it never read), and the next run reads the round again."""
    from devstack.graph_emulator import GraphEmulator
    from tests.stack import EXPECTED, nasty_directory

    graph = GraphEmulator(nasty_directory(), max_page_size=1)  # one object a page: 8 users, 3 groups, 1 contact
    graph.start()
    try:
        env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
        assert run_cli("update", env).code == 0
        assert service_view(receiver) == EXPECTED
        new = {f"new{n}@contoso.com" for n in range(4)}
        if read == "full":
            env["FULL_SYNC_INTERVAL_HOURS"] = "0"  # every update reads in full
        else:
            for n in range(4):
                graph.upsert_user({"id": U(20 + n), "displayName": f"New {n}", "mail": f"new{n}@contoso.com", "proxyAddresses": []})
        graph.inject_fault("no_links", path_contains=f"{collection}/delta" + ("?$skiptoken" if page == "later" else ""), times=20)
        r = run_cli("update", env, "--json")
        assert r.code != 0, r.stdout
        assert service_view(receiver) == EXPECTED, "a round cut short changed the service"
        assert "deltaLink" in r.stderr.strip().splitlines()[-1]
        graph.clear_faults()
        r = run_cli("update", env, "--json")
        assert r.code == 0, r.stderr
        assert r.summary["read"]["kind"] == read
        assert service_view(receiver)["addresses"] == EXPECTED["addresses"] | (new if read == "delta" else set())
    finally:
        graph.stop()


LOOP_CASES = [("full", "users"), ("full", "groups"), ("delta", "users"), ("delta", "contacts")]


@pytest.mark.parametrize("read,collection", LOOP_CASES, ids=["-".join(c) for c in LOOP_CASES])
def test_a_next_link_that_comes_back_ends_the_read_instead_of_looping(receiver, tmp_path, read, collection):
    """A round whose @odata.nextLink points back at a page already read (a cache serving a
    stale page) would never end: the read fails at the first repeat, nothing is sent, and the
    next run reads the round again. Every page of the collection loops back at itself."""
    from devstack.graph_emulator import GraphEmulator
    from tests.stack import EXPECTED, nasty_directory

    graph = GraphEmulator(nasty_directory(), max_page_size=1)
    graph.start()
    try:
        env = base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}")
        assert run_cli("update", env).code == 0
        if read == "full":
            env["FULL_SYNC_INTERVAL_HOURS"] = "0"
        graph.inject_fault("loop_link", path_contains=f"{collection}/delta", times=1000)
        sent, asked = len(receiver.request_log), len(graph.request_log)
        r = run_cli("update", env, "--json")
        assert r.code == 1, r.stdout
        assert "repeats an earlier page's link" in r.stderr.strip().splitlines()[-1]
        assert [e for e in receiver.request_log[sent:] if e.method != "GET"] == []
        assert service_view(receiver) == EXPECTED
        assert sum(1 for _, target in graph.request_log[asked:] if f"{collection}/delta" in target) == 2  # it stopped at the first repeat
        graph.clear_faults()
        r = run_cli("update", env, "--json")
        assert r.code == 0, r.stderr
        assert service_view(receiver) == EXPECTED
    finally:
        graph.stop()
