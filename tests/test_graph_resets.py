"""Graph's ways of saying "this link is no longer honoured", as real Graph answers them, end to end.

What Microsoft documents and what tenants see (sources in the branch report):

* "Use delta query to track changes", "Synchronization reset": 410 Gone with a Location header
  (the initial request): restart with a full synchronization. "Token duration": for an expired
  token "a 40X-series error with error codes such as syncStateNotFound".
* "Error responses": ``resyncRequired`` and ``syncStateNotFound`` are error codes; the detailed
  codes sit in nested ``innerError`` objects, and apps should look through every level.
* Entra answers a page token it no longer keeps with 400 ``Directory_ExpiredPageToken`` ("The
  specified page token value has expired and can no longer be included in your request."); a
  client cannot mend it by asking again, only by starting the listing over.

The product's answer to each, on any link Graph gave (a saved deltaLink, a nextLink of a delta
round, a nextLink of a first round): never a partial read, never a run that fails for good. A
saved link refused → the run reads in full (docs/sync-rules.md, "Full read or delta read"); a
first round whose nextLink is refused → the round starts over once in the same run.

Each case runs the real product against the Graph emulator (the fault answers with Graph's
status, code, message and headers) and the strict receiver, and checks what a user would: the
run is ``ok``, it says why it read in full, and the service equals the directory's projection."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devstack.graph_emulator import GraphEmulator
from shared.sources.graph_transport import GraphHttpError
from tests.stack import C, EngineStack, U, nasty_directory, service_view

# kind -> (what the summary's reason names, Graph's code as the product reads it)
RESETS = {
    "410": "410",
    "410-resync": "resyncRequired",
    "400-syncstate": "syncStateNotFound",
    "400-expired-page-token": "Directory_ExpiredPageToken",
    "400-resync-inner": "resyncRequired",
}
COLLECTIONS = ("users", "groups", "contacts")


Stack = EngineStack


@pytest.fixture
def stack(receiver, tmp_path):
    # Two objects a page: every round of every collection has nextLinks to refuse.
    directory = nasty_directory()
    directory["contacts"] += [{"id": C(n), "mail": f"contact{n}@fabrikam.com", "proxyAddresses": []} for n in range(2, 6)]
    graph = GraphEmulator(directory, max_page_size=2, max_members_per_page=3)
    graph.start()
    yield Stack(graph, receiver, tmp_path / "state")
    graph.stop()


def _churn(graph: GraphEmulator) -> None:
    """Changes in every collection, enough for an incremental round of several pages each."""
    snap = graph.snapshot()
    for n, user in enumerate(snap["users"][:5]):
        graph.upsert_user({"id": user["id"], "mail": f"moved{n}@contoso.com"})
    for n, group in enumerate(snap["groups"][:3]):
        graph.upsert_group({"id": group["id"], "displayName": f"Renamed {n}"})
    for n, contact in enumerate(snap["contacts"][:3]):
        graph.upsert_contact({"id": contact["id"], "mail": f"c{n}@fabrikam.com"})


@pytest.mark.parametrize("kind", sorted(RESETS))
@pytest.mark.parametrize(("collection", "where"), [(c, w) for c in COLLECTIONS for w in ("$deltatoken", "$skiptoken")])
def test_a_delta_round_whose_link_graph_refuses_reads_in_full(stack: Stack, kind: str, collection: str, where: str) -> None:
    """A saved deltaLink, or a nextLink within the incremental round, answered with any of
    Graph's reset shapes: the run reads in full at once and leaves the service right."""
    assert stack.run()["ok"]
    _churn(stack.graph)
    stack.graph.inject_fault(kind, path_contains=f"{collection}/delta?{where}", times=1)
    summary = stack.run()
    assert summary["ok"], summary.get("error")
    assert summary["read"]["kind"] == "full" and RESETS[kind] in summary["read"]["reason"], summary["read"]
    assert service_view(stack.receiver) == stack.expected()
    again = stack.run()  # the full read saved fresh links
    assert again["ok"] and again["read"]["kind"] == "delta"
    assert all(c["added"] == c["removed"] == 0 for c in again["datasets"].values())


@pytest.mark.parametrize("kind", sorted(RESETS))
def test_a_first_round_whose_next_link_graph_refuses_starts_over(stack: Stack, kind: str) -> None:
    """The first run's round, cut by a reset on a nextLink: the round starts over in the same run
    (Graph: "the application must restart with a full synchronization"), completes, and the
    service holds the whole directory; the summary says the round was restarted."""
    stack.graph.inject_fault(kind, path_contains="users/delta?$skiptoken", times=1)
    summary = stack.run()
    assert summary["ok"], summary.get("error")
    assert summary["read"]["kind"] == "full" and "started over" in summary["read"]["reason"], summary["read"]
    assert service_view(stack.receiver) == stack.expected()
    firsts = [t for m, t in stack.graph.request_log if t.startswith("/v1.0/users/delta?$select=")]
    assert len(firsts) == 2  # the users round was asked for from its start again
    assert stack.run()["read"]["kind"] == "delta"


def test_a_first_round_refused_again_after_starting_over_fails_and_sends_nothing(stack: Stack) -> None:
    """One restart per read: a Graph that keeps refusing fails the run before anything is sent."""
    stack.graph.inject_fault("410", path_contains="users/delta?$skiptoken", times=2)
    summary = stack.run()
    assert not summary["ok"] and "410" in summary["error"]
    assert service_view(stack.receiver) == {"addresses": set(), "groups": {}, "users": {}}
    assert stack.run()["ok"] and service_view(stack.receiver) == stack.expected()


def test_an_access_token_refused_mid_round_fails_the_run_naming_graphs_reason(stack: Stack) -> None:
    """401 InvalidAuthenticationToken on a nextLink (the token expired by Graph's clock): nothing
    is sent, the message carries Graph's code and message besides the settings to check, and the
    next run completes."""
    assert stack.run()["ok"]
    _churn(stack.graph)
    stack.graph.inject_fault("401-expired-token", path_contains="groups/delta?$skiptoken", times=1)
    before = service_view(stack.receiver)
    summary = stack.run()
    assert not summary["ok"]
    message = summary["error"]
    assert "HTTP 401" in message and "InvalidAuthenticationToken: Access token has expired or is not yet valid." in message
    assert service_view(stack.receiver) == before
    after = stack.run()
    assert after["ok"] and after["read"]["kind"] == "delta"
    assert service_view(stack.receiver) == stack.expected()


def test_a_deleted_user_comes_back_and_goes_again_across_resets(stack: Stack) -> None:
    """A reset between a deletion and the next run: the full read that follows deletes it."""
    assert stack.run()["ok"]
    stack.graph.delete_user(U(2))
    stack.graph.inject_fault("400-expired-page-token", path_contains="users/delta?$deltatoken", times=1)
    summary = stack.run()
    assert summary["ok"] and summary["read"]["kind"] == "full"
    assert U(2) not in service_view(stack.receiver)["users"]
    assert service_view(stack.receiver) == stack.expected()


# --- reading an error body: every level of innerError ----------------------------------------------
_CODE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(codes=st.lists(_CODE, min_size=1, max_size=6), spellings=st.lists(st.sampled_from(["innerError", "innererror"]), min_size=6, max_size=6),
       junk=st.sampled_from([None, 7, "x", [], {}]))
def test_an_error_body_yields_its_code_and_every_nested_code(codes: list[str], spellings: list[str], junk: Any) -> None:
    """``{"error": {"code": c0, "innerError": {"code": c1, "innerError": ...}}}``: the codes of
    every level, outermost first, with either spelling of ``innerError``; a level that is not an
    object ends the chain."""
    inner: Any = junk
    for depth in range(len(codes) - 1, 0, -1):
        inner = {"code": codes[depth], spellings[depth]: inner, "date": "2026-11-30T12:00:00"}
    body = json.dumps({"error": {"code": codes[0], "message": "m", spellings[0]: inner}}).encode()
    exc = GraphHttpError(400, body, None)
    assert exc.code == codes[0]
    assert exc.codes == tuple(codes)


def test_links_saved_under_another_select_are_not_followed(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Graph encodes a round's $select into its links ("user: delta"), so links saved by a release
    that selected other properties keep tracking those: the first update under a new $select reads
    in full and saves links that track the new one."""
    from shared.sources.graph import SELECTS

    assert stack.run()["ok"]
    assert stack.run()["read"]["kind"] == "delta"
    monkeypatch.setitem(SELECTS, "users", [*SELECTS["users"], "displayName"])
    stack.graph.reset_stats()
    summary = stack.run()
    assert summary["ok"] and summary["read"]["kind"] == "full" and "$select" in summary["read"]["reason"]
    assert any(t.startswith("/v1.0/users/delta?$select=") and "displayName" in t for _, t in stack.graph.request_log)
    assert service_view(stack.receiver) == stack.expected()
    assert stack.run()["read"]["kind"] == "delta"


# --- throttling and outages: retried, in every shape Graph answers them --------------------------
@pytest.mark.parametrize("kind", ["429", "429-unknown", "429-activity", "503", "504", "500"])
@pytest.mark.parametrize("retry_after", [None, "0"])
def test_throttled_and_failing_pages_are_retried_and_the_round_completes(stack: Stack, kind: str, retry_after: str | None) -> None:
    """429 (TooManyRequests; UnknownError with an empty message; activityLimitReached with
    throttledRequest inside), 503, 504 and 500, with or without Retry-After, on a first page, a
    nextLink and a saved deltaLink: retried (docs/sync-rules.md, "Failures while reading"), never
    taken for a sync reset, and the service ends equal to the directory."""
    for where in ("users/delta?$select", "groups/delta?$skiptoken"):
        stack.graph.inject_fault(kind, path_contains=where, times=2, retry_after=retry_after)
    first = stack.run()
    assert first["ok"] and first["read"]["kind"] == "full" and first["read"]["graphRetries"] == 4
    _churn(stack.graph)
    stack.graph.inject_fault(kind, path_contains="contacts/delta?$deltatoken", times=2, retry_after=retry_after)
    second = stack.run()
    assert second["ok"] and second["read"]["kind"] == "delta" and second["read"]["graphRetries"] == 2
    assert service_view(stack.receiver) == stack.expected()
