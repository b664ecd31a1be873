"""Exchange Online as a second source, end to end through the CLI: the Graph emulator, the
Exchange emulator and the strict receiver on loopback, as an operator (or the harness) runs it.

Covers augment (Exchange-only recipients join the addresses dataset), only (no Graph request
at all), a partial read on either source sending nothing, an Exchange address equal to a Graph
object's, nasty EmailAddresses values, the removal of a dynamic group in a delta run (its
addresses deleted, under the deletion guard), and test-update naming each addition's and
exclusion's source and recipient type."""

from __future__ import annotations

import json
import time

import pytest

from devstack.exchange_emulator import ExchangeEmulator, recipient
from devstack.graph_emulator import GraphEmulator
from tests.stack import EXPECTED, U, base_env, nasty_directory, posts, run_cli, service_view

TENANT = "11111111-2222-3333-4444-555555555555"


def X(n: int) -> str:
    return f"e0c5e0c5-0000-4000-8000-{n:012d}"


def exchange_recipients() -> list[dict]:
    return [
        recipient(X(1), "DynamicDistributionGroup", "All-Sales@Contoso.com",
                  emails=["SMTP:All-Sales@Contoso.com", "smtp:sales-team@fabrikam.com", "X500:/o=ExchangeLabs/cn=allsales",
                          "SIP:all-sales@contoso.com", "EUM:123;phone-context=contoso.com"]),
        recipient(X(2), "PublicFolder", "support@contoso.com",
                  emails=["SMTP:support@contoso.com", "smtp: Help@Contoso.com ", " smtp:leading@contoso.com", "smtp:support@elsewhere.org",
                          "smtp:bad..dot@contoso.com", "smtp:pf@bücher.example", 'smtp:"q"@contoso.com']),
        # an Exchange address equal to a Graph user's address (Alice's): one record, no rejection
        recipient(X(3), "DynamicDistributionGroup", "dyn-alice@contoso.com", emails=["SMTP:dyn-alice@contoso.com", "smtp:ALICE@contoso.com"]),
        # a type that is not asked for in augment mode (Graph already sees mailboxes)
        recipient(X(4), "UserMailbox", "alice@contoso.com", entra_id=U(1)),
    ]


EXO_ADDRESSES = {"all-sales@contoso.com", "sales-team@fabrikam.com", "support@contoso.com", "help@contoso.com",
                 "pf@xn--bcher-kva.example", "dyn-alice@contoso.com"}
EXO_EXCLUDED = {(X(2), "support@elsewhere.org"), (X(2), "bad..dot@contoso.com"), (X(2), '"q"@contoso.com')}


@pytest.fixture
def graph(nasty_graph):
    return nasty_graph


@pytest.fixture
def exo():
    em = ExchangeEmulator(exchange_recipients(), tenant=TENANT, max_page_size=2)
    em.start()
    yield em
    em.stop()


@pytest.fixture
def env(graph, exo, receiver, tmp_path):
    return {**base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}"),
            "GRAPH_TENANT_ID": TENANT, "EXO_MODE": "augment", "EXO_BASE_URL": exo.base_url}


def test_augment_registers_exchange_only_recipients(env, receiver, exo, graph):
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    view = service_view(receiver)
    assert view["addresses"] == EXPECTED["addresses"] | EXO_ADDRESSES
    assert view["groups"] == EXPECTED["groups"] and view["users"] == EXPECTED["users"]  # no groups or users records
    s = r.summary
    assert s["exoRequests"] == 2 == len(exo.posts())  # 3 recipients of the two types, 2 a page
    assert s["graphRequests"] >= 3
    assert s["datasets"]["addresses"]["rejected"] == 0
    assert s["datasets"]["addresses"]["added"] == len(EXPECTED["addresses"] | EXO_ADDRESSES)
    assert [p.path for p in posts(receiver)].count("/v1/datasets/addresses/changes") == 1
    again = run_cli("update", env, "--json")
    assert again.code == 0 and again.summary["read"]["kind"] == "delta"
    assert again.summary["exoRequests"] == 2  # no delta in Exchange: read in full every run
    assert all(again.summary["datasets"][d]["added"] == again.summary["datasets"][d]["removed"] == 0 for d in EXPECTED)


def test_test_update_names_source_and_recipient_type(env, exo):
    r = run_cli("test-update", env, "--json")
    assert r.code == 0, r.stderr
    s = r.summary
    sources = {(e["address"], e["source"], e["recipientType"], e["objectId"]) for e in s["changes"]["addresses"]["addedFrom"]}
    assert ("all-sales@contoso.com", "Exchange Online", "DynamicDistributionGroup", X(1)) in sources
    assert ("help@contoso.com", "Exchange Online", "PublicFolder", X(2)) in sources
    assert ("sales@contoso.com", "Graph", "group", "20000000-0000-0000-0000-000000000001") in sources
    # alice@contoso.com comes from both: listed once per source, registered once
    assert {(a, src) for a, src, _, _ in sources if a == "alice@contoso.com"} == {("alice@contoso.com", "Graph"), ("alice@contoso.com", "Exchange Online")}
    assert [rec["address"] for rec in s["changes"]["addresses"]["added"]].count("alice@contoso.com") == 1
    assert {a for a, *_ in sources} == {rec["address"] for rec in s["changes"]["addresses"]["added"]}
    exo_excl = {(e["objectId"], e["value"]) for e in s["exclusions"] if e["source"] == "Exchange Online"}
    assert exo_excl == EXO_EXCLUDED
    assert all(e["objectType"] == "PublicFolder" for e in s["exclusions"] if e["source"] == "Exchange Online")
    assert all(e["source"] == "Graph" for e in s["exclusions"] if e["objectId"] != X(2))


def test_removed_dynamic_group_is_deleted_in_a_delta_run(env, receiver, exo):
    assert run_cli("update", env).code == 0
    exo.delete(X(1))
    exo.delete(X(3))  # its alice@contoso.com stays: Graph's Alice holds it
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    assert r.summary["read"]["kind"] == "delta"
    assert r.summary["datasets"]["addresses"]["removed"] == 3
    view = service_view(receiver)
    assert view["addresses"] == EXPECTED["addresses"] | EXO_ADDRESSES - {"all-sales@contoso.com", "sales-team@fabrikam.com", "dyn-alice@contoso.com"}
    assert "alice@contoso.com" in view["addresses"]


def test_removed_dynamic_group_is_held_by_the_deletion_guard(env, receiver, exo):
    assert run_cli("update", env).code == 0
    exo.delete(X(1))
    guarded = {**env, "DELETE_THRESHOLD_PERCENT": "100", "DELETE_THRESHOLD_COUNT": "1"}
    r = run_cli("update", guarded, "--json")
    assert r.code == 4, r.stderr
    held = r.summary["heldDeletions"]["addresses"]
    assert sorted(held["keys"]) == ["all-sales@contoso.com", "sales-team@fabrikam.com"]
    assert {"all-sales@contoso.com", "sales-team@fabrikam.com"} <= service_view(receiver)["addresses"]
    digest = run_cli("status", guarded, "--json").summary["heldDigest"]  # the set the operator reviewed
    assert run_cli("approve-deletions", guarded, "--expect", digest).code == 0
    assert run_cli("update", guarded).code == 0
    assert not {"all-sales@contoso.com", "sales-team@fabrikam.com"} & service_view(receiver)["addresses"]


def test_a_graph_user_leaving_keeps_an_address_exchange_still_holds(env, receiver, exo, graph):
    assert run_cli("update", env).code == 0
    graph.delete_user(U(1))
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    view = service_view(receiver)
    assert "alice@contoso.com" in view["addresses"]  # dyn-alice's alias
    assert U(1) not in view["users"]


@pytest.mark.parametrize("kind", ["malformed", "503", "drop", "429"])
def test_a_failed_exchange_page_fails_the_run_and_sends_nothing(env, receiver, exo, kind):
    exo.fail(kind, on_page=1, times=99, retry_after="0")
    r = run_cli("update", env, "--json")
    assert r.code != 0
    assert "Exchange Online" in r.stderr and "nothing was sent" in r.stderr
    assert posts(receiver) == []


def test_a_failed_exchange_page_in_a_delta_run_sends_nothing(env, receiver, exo, graph):
    assert run_cli("update", env).code == 0
    graph.delete_user(U(8))
    exo.delete(X(1))
    receiver.clear_log()
    exo.fail("malformed", on_page=0, times=99)
    r = run_cli("update", env, "--json")
    assert r.code != 0 and posts(receiver) == []
    # the next run, with Exchange healthy again, sends both sources' changes
    exo.clear_faults()
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    view = service_view(receiver)
    assert "dave@fabrikam.com" not in view["addresses"] and "all-sales@contoso.com" not in view["addresses"]


def test_a_failed_graph_page_sends_nothing_even_with_exchange_read(env, receiver, graph, exo):
    graph.inject_fault("malformed", path_contains="users", times=99)
    r = run_cli("update", env, "--json")
    assert r.code != 0
    assert posts(receiver) == []


def test_exchange_auth_refusal_is_explained(env, receiver, exo):
    exo.fail("403", times=99)
    r = run_cli("update", env, "--json")
    assert r.code != 0 and posts(receiver) == []
    line = r.stderr.strip().splitlines()[-1]
    assert "Exchange.ManageAsApp" in line and "Global Reader" in line and "x-ms-diagnostics" in line


def test_only_mode_makes_no_graph_request(exo, receiver, tmp_path):
    env = {**base_env("http://127.0.0.1:9/v1.0", receiver.base_url, f"file:{tmp_path / 'state'}"),  # Graph: a closed port
           "GRAPH_TENANT_ID": TENANT, "EXO_MODE": "only", "EXO_BASE_URL": exo.base_url, "SYNC_DATASETS": "addresses"}
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    assert r.summary["graphRequests"] == 0
    # every type that receives mail, the UserMailbox included
    assert service_view(receiver)["addresses"] == EXO_ADDRESSES | {"alice@contoso.com"}
    body = exo.posts()[0].body.decode()
    assert '"UserMailbox"' in body and '"PublicFolder"' in body
    assert [p.path for p in posts(receiver)] == ["/v1/datasets/addresses/changes"]
    exo.delete(X(2))
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    assert r.summary["read"]["reason"].startswith("EXO_MODE=only")
    assert service_view(receiver)["addresses"] == EXO_ADDRESSES - {"support@contoso.com", "help@contoso.com", "pf@xn--bcher-kva.example"} | {"alice@contoso.com"}


def test_only_mode_with_graph_auth_none_runs_without_any_graph_setting(exo, receiver, tmp_path):
    """A harness of the Exchange source alone sets no GRAPH_BASE_URL: the run reads Exchange
    Online, registers its addresses and never contacts Graph's default root."""
    env = {**base_env("http://127.0.0.1:9/v1.0", receiver.base_url, f"file:{tmp_path / 'state'}"),
           "GRAPH_TENANT_ID": TENANT, "EXO_MODE": "only", "EXO_BASE_URL": exo.base_url, "SYNC_DATASETS": "addresses"}
    env.pop("GRAPH_BASE_URL")
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    assert r.summary["graphRequests"] == 0 and r.summary["exoRequests"] >= 1
    assert service_view(receiver)["addresses"] == EXO_ADDRESSES | {"alice@contoso.com"}


def test_turning_exchange_off_removes_its_addresses(env, receiver, exo):
    assert run_cli("update", env).code == 0
    r = run_cli("update", {**env, "EXO_MODE": "off"}, "--json")
    assert r.code == 0, r.stderr
    assert "EXO_MODE" in r.summary["read"]["reason"]
    assert service_view(receiver)["addresses"] == EXPECTED["addresses"]
    assert r.summary["exoRequests"] == 0


class TimedGraph(GraphEmulator):
    """The Graph emulator, noting when each request arrives."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.arrivals: list[float] = []

    def handle(self, method, raw_target, headers, body=b""):
        if not raw_target.startswith("/_emulator/"):
            self.arrivals.append(time.monotonic())
        return super().handle(method, raw_target, headers, body)


def test_exchange_is_read_concurrently_with_graph(receiver, tmp_path):
    """Each source answers after 2 s: read one after the other, one source's first request
    would come at least 2 s after the other's last one."""
    latency = 2.0
    graph = TimedGraph(nasty_directory(), latency=latency)
    exo = ExchangeEmulator(exchange_recipients(), tenant=TENANT, latency=latency)
    graph.start()
    exo.start()
    try:
        env = {**base_env(graph.base_url, receiver.base_url, f"file:{tmp_path / 'state'}"),
               "GRAPH_TENANT_ID": TENANT, "EXO_MODE": "augment", "EXO_BASE_URL": exo.base_url}
        r = run_cli("test-update", env, "--json")
        assert r.code == 0, r.stderr
        exo_first = exo.posts()[0].at
        assert exo_first < max(graph.arrivals) + latency  # Exchange did not wait for Graph to finish
        assert min(graph.arrivals) < exo.posts()[-1].at + latency  # Graph did not wait for Exchange
    finally:
        exo.stop()
        graph.stop()


def test_replace_rebuilds_with_both_sources(env, receiver, exo):
    r = run_cli("replace", env, "--json")
    assert r.code == 0, r.stderr
    assert service_view(receiver)["addresses"] == EXPECTED["addresses"] | EXO_ADDRESSES
    assert r.summary["exoRequests"] == 2
    again = run_cli("update", env, "--json")  # the replace left a cache that holds the recipients too
    assert again.code == 0, again.stderr
    assert again.summary["datasets"]["addresses"]["added"] == again.summary["datasets"]["addresses"]["removed"] == 0


def test_a_scope_keeps_only_recipients_that_are_entra_objects_in_scope(env, receiver, exo):
    """SYNC_SCOPE_GROUPS leaves out everything that is no member of the scope: a dynamic
    distribution group or public folder is in no group, so it is left out (reported, with the
    setting); a mailbox recipient follows the Entra user it is (ExternalDirectoryObjectId)."""
    from tests.stack import G

    scoped = {**env, "SYNC_SCOPE_GROUPS": G(3), "EXO_RECIPIENT_TYPES": "DynamicDistributionGroup,PublicFolder,UserMailbox"}
    t = run_cli("test-update", scoped, "--json")
    assert t.code == 0, t.stderr
    left = {(e["objectId"], e["value"]) for e in t.summary["exclusions"]
            if e["source"] == "Exchange Online" and "SYNC_SCOPE_GROUPS" in e["reason"]}
    assert {(X(1), "all-sales@contoso.com"), (X(2), "support@contoso.com"), (X(3), "dyn-alice@contoso.com")} <= left
    assert not any(oid == X(4) for oid, _ in left)  # Alice's mailbox: Alice (U1) is in G3, so in scope
    r = run_cli("update", scoped, "--json")
    assert r.code == 0, r.stderr
    # G3 → G2 (a cycle); in scope: U1 (alice), U2 (bob), G2 (team@); no Exchange-only address.
    assert service_view(receiver)["addresses"] == {"alice@contoso.com", "al.ice@fabrikam.com", "bob@xn--bcher-kva.example",
                                                   "bob@contoso.com", "team@contoso.com"}


def test_address_patterns_apply_to_exchange_candidates(env, receiver):
    patterned = {**env, "EXCLUDE_ADDRESS_PATTERNS": r"support@.*"}
    r = run_cli("update", patterned, "--json")
    assert r.code == 0, r.stderr
    assert service_view(receiver)["addresses"] == EXPECTED["addresses"] | EXO_ADDRESSES - {"support@contoso.com"}
    t = run_cli("test-update", patterned, "--json")
    assert any(e["objectId"] == X(2) and e["value"] == "support@contoso.com" and e["source"] == "Exchange Online"
               and "EXCLUDE_ADDRESS_PATTERNS" in e["reason"] for e in t.summary["exclusions"])


def test_a_recipient_listed_twice_counts_as_its_last_entry(env, receiver, exo):
    """One recipient on two pages of a listing (its Guid in capitals on the first): the later
    entry is its newer state, as within a Graph round; the earlier entry's alias is not
    registered, and an unchanged listing sends nothing on the next run."""
    exo.upsert(recipient(X(7).upper(), "PublicFolder", "Twice@contoso.com", emails=["SMTP:Twice@contoso.com", "smtp:old-alias@contoso.com"]))
    exo.upsert(recipient(X(7), "PublicFolder", "twice@contoso.com", emails=["SMTP:twice@contoso.com", "smtp:new-alias@contoso.com"]))
    r = run_cli("update", env, "--json")
    assert r.code == 0, r.stderr
    view = service_view(receiver)["addresses"]
    assert {"twice@contoso.com", "new-alias@contoso.com"} <= view and "old-alias@contoso.com" not in view
    again = run_cli("update", env, "--json")
    assert again.code == 0 and again.summary["read"]["kind"] == "delta"
    assert again.summary["datasets"]["addresses"]["added"] == again.summary["datasets"]["addresses"]["removed"] == 0


class _BadLinkExchange:
    """Get-Recipient's first page, whose @odata.nextLink is ``link`` (JSON can carry any code point)."""

    def __init__(self, link: str) -> None:
        from http.server import BaseHTTPRequestHandler

        from tests.loopback import Loopback

        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                body = json.dumps({"value": [recipient(X(1), "PublicFolder", "pf@contoso.com")], "@odata.nextLink": owner.link}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.link = link
        self._server = Loopback(Handler, self)
        self.base_url = self._server.origin

    def stop(self) -> None:
        self._server.stop()


@pytest.mark.parametrize("link", ["/adminapi/beta/t/InvokeCommand?$skiptoken=a\x00b", "http://[::1/adminapi", "InvokeCommand?$skiptoken=\x7f"])
def test_a_next_link_that_is_no_url_fails_the_run_naming_it(env, receiver, link):
    """A page whose @odata.nextLink cannot be a URL (a control character, a broken IPv6 host):
    the run fails before anything is sent, with an error that names the nextLink, not a sign-in
    failure pointing at GRAPH_TENANT_ID and GRAPH_CLIENT_ID."""
    bad = _BadLinkExchange(link)
    try:
        r = run_cli("update", {**env, "EXO_BASE_URL": bad.base_url}, "--json")
    finally:
        bad.stop()
    assert r.code != 0 and posts(receiver) == []
    line = r.stderr.strip().splitlines()[-1]
    assert "@odata.nextLink" in line and "nothing was sent" in line and "signing in" not in line, line
