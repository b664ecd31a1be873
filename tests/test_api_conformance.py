"""The product against a sync API that behaves in every hostile way docs/sync-api.md allows, with
every request it sends checked against the contract's rules for requests.

The service is devstack's strict receiver behind a front (``Front``) that, per test:
- checks each request as the independent harness's receiver would (endpoint, Idempotency-Key,
  exact body shape and field names, 1 to 1,000 items, no key twice in one request, the body
  size limit, references to groups the service holds, one request at a time);
- answers the way the contract lets a service answer: unknown extra members in every JSON
  object (records included), ``Content-Type`` with parameters, gzip-compressed answers, records
  pages of odd sizes, empty pages that are not the last, an empty last page;
- rejects chosen records with a chosen rejection code, injects 429/503 (with and without
  ``Retry-After``), 408, 500 and dropped connections (before and after the request is applied)
  at one chosen endpoint, and expires a replacement while it is staged or at its commit.

After every run the service must hold what the directory implies, the change-tracking state
exactly what the service confirmed, and no Idempotency-Key may have stood for two bodies."""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.graph_emulator import GraphEmulator
from devstack.receiver_http import HttpRequest, HttpResponse, decode_entity, parse_json
from devstack.receiver_records import FIELDS, Checked, RecordValidator, key_of, rejection
from devstack.sync_receiver import SyncReceiver
from shared.model.directory import project
from shared.storage.state import StateDB
from tests.stack import CREDENTIAL, DOMAINS, EXPECTED, G, U, base_env, nasty_directory, service_view

MAX_ITEMS = 1000
MAX_KEY = 128
CODES = ("invalid_address", "domain_not_provisioned", "duplicate_address", "unknown_group", "invalid_record", "address_in_other_account")
_DS = r"/v1/datasets/(?P<dataset>addresses|groups|users)"
ENDPOINTS: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    ("domains", "GET", re.compile(r"/v1/domains")),
    ("list", "GET", re.compile(_DS + r"/records")),
    ("changes", "POST", re.compile(_DS + r"/changes")),
    ("create", "POST", re.compile(_DS + r"/replacements")),
    ("receive", "POST", re.compile(_DS + r"/replacements/[^/]+/records")),
    ("commit", "POST", re.compile(_DS + r"/replacements/[^/]+/commit")),
    ("abandon", "DELETE", re.compile(_DS + r"/replacements/[^/]+")),
)
REFUSALS = {  # docs/sync-api.md's refusals, as problem+json: none may be retried
    "400": ("Bad request", "the request is malformed: parentIds must be a list"),
    "401": ("Unauthorized", "the credentials were refused"),
    "403": ("Forbidden", "the account lacks the LDAP User Groups role"),
    "404": ("Not found", "no such dataset or replacement"),
    "409": ("Conflict", "the Idempotency-Key was used with a different body"),
}
END = "end"  # a page token of ours: the records are done, an empty last page follows


def endpoint_of(request: HttpRequest) -> tuple[str | None, str | None]:
    for name, method, pattern in ENDPOINTS:
        match = pattern.fullmatch(request.path)
        if match and request.method == method:
            return name, match.groupdict().get("dataset")
    return None, None


def with_unknown_members(value: Any) -> Any:
    """Every JSON object of an answer with a member the contract does not name."""
    if isinstance(value, dict):
        return {**{k: with_unknown_members(v) for k, v in value.items()}, "vendorExtension": {"since": "v1.7", "note": None}}
    if isinstance(value, list):
        return [with_unknown_members(v) for v in value]
    return value


class Refusing(RecordValidator):
    """The receiver's own validation, plus rejections the service may give at any time (another
    account took the address, the domain was deprovisioned since ``GET /domains``...)."""

    def __init__(self, base: RecordValidator, refuse: dict[str, str]) -> None:
        super().__init__(base.domains, base.other_account)
        self.refuse = refuse

    def check(self, dataset: str, item: Any) -> Checked:
        key = key_of(dataset, item)
        code = self.refuse.get((key or "").lower() if dataset == "addresses" else key or "")
        if code is not None:
            return Checked(None, rejection(key, code, "refused by the service"))
        return super().check(dataset, item)


class Front:
    """The receiver's request handler wrapped: contract checks, hostile answers, faults."""

    def __init__(self, receiver: SyncReceiver, *, hostile: bool = False, page_cap: int | None = None, seed: int = 0,
                 body_limit: int = 10_000_000) -> None:
        self.receiver = receiver
        self.inner = receiver._api.handle
        receiver._api.handle = self.handle
        self.hostile = hostile
        self.body_limit = body_limit
        self.rng = random.Random(seed)
        self.violations: list[str] = []
        self.seen: list[tuple[str, str | None, int | None]] = []  # (endpoint, dataset, status) of each request
        self.faults: list[list[Any]] = []  # [endpoint, kind, retry_after, times, before]
        self.refuse: dict[str, str] = {}
        store = receiver._store
        store.validator = Refusing(store.validator, self.refuse)
        self._inflight = 0
        self._mutex = threading.Lock()
        self._pages = 0
        if page_cap is not None:
            self._odd_pages(page_cap)

    # ---- configuration ------------------------------------------------------------

    def fault(self, endpoint: str, kind: str | None, *, retry_after: int | str | None = 0, times: int = 1,
              before: Callable[[], None] | None = None) -> None:
        """``kind`` (a receiver fault; None: none) at the next ``times`` requests to ``endpoint``;
        ``retry_after`` None: a 429/503 without the header. ``before`` runs first (e.g. to let the
        service's clock run past a replacement's expiry)."""
        self.faults.append([endpoint, kind, retry_after, times, before])

    def _odd_pages(self, cap: int) -> None:
        """Records pages of 1..cap records whatever pageSize asks, empty pages on the way and at the end."""
        store = self.receiver._store
        real = store.page

        def page(dataset: str, size: int, token: str | None) -> dict[str, Any]:
            self._pages += 1
            position = None if token is None else token.split("~", 1)[0] or None
            if position == END:
                return {"records": [], "nextPageToken": None}
            if self.rng.random() < 0.3:  # an empty page that is not the last
                return {"records": [], "nextPageToken": f"{position or ''}~{self._pages}"}
            result = real(dataset, min(size, self.rng.randint(1, cap)), position)
            following = result["nextPageToken"]
            if following is None:
                if result["records"] and self.rng.random() < 0.5:
                    return {"records": result["records"], "nextPageToken": f"{END}~{self._pages}"}
                return result
            return {"records": result["records"], "nextPageToken": f"{following}~{self._pages}"}

        store.page = page

    # ---- serving ------------------------------------------------------------------

    def handle(self, request: HttpRequest) -> HttpResponse:
        endpoint, dataset = endpoint_of(request)
        with self._mutex:
            self._inflight += 1
            if self._inflight > 1:
                self.violations.append(f"{request.method} {request.path} sent before the previous request was answered")
        try:
            if endpoint is None:
                self.violations.append(f"{request.method} {request.path} is no endpoint of the contract")
            else:
                self._check(request, endpoint, dataset)
            strip_retry_after = False
            for fault in self.faults:
                if fault[0] == endpoint and fault[3] > 0:
                    fault[3] -= 1
                    if fault[4] is not None:
                        fault[4]()
                    if fault[1] in REFUSALS:  # a refusal the service sends instead of applying anything
                        self.seen.append((endpoint, dataset, int(fault[1])))
                        return self._refused(int(fault[1]))
                    if fault[1] is not None:
                        self.receiver.inject_fault(fault[1], path_contains=request.target, retry_after=fault[2] if fault[2] is not None else 0)
                        strip_retry_after = fault[2] is None
                    break
            response = self.inner(request)
            if strip_retry_after:
                response.headers = [(k, v) for k, v in response.headers if k.lower() != "retry-after"]
            self.seen.append((endpoint or "?", dataset, None if response.drop else response.status))
            return self._hostile(request, response) if self.hostile else response
        finally:
            with self._mutex:
                self._inflight -= 1

    @staticmethod
    def _refused(status: int) -> HttpResponse:
        title, detail = REFUSALS[str(status)]
        body = json.dumps({"type": f"https://dirsync.example.net/problems/{status}", "title": title, "status": status, "detail": detail})
        return HttpResponse(status, body.encode(), "application/problem+json; charset=utf-8")

    def _hostile(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if response.drop or not response.body:
            return response
        body, ctype = response.body, response.content_type or ""
        if ctype.endswith("json"):
            body = json.dumps(with_unknown_members(json.loads(body))).encode()
            ctype += "; charset=utf-8"
        headers = list(response.headers)
        if "gzip" in (request.headers.get("Accept-Encoding") or "").lower():
            body = gzip.compress(body)
            headers.append(("Content-Encoding", "gzip"))
        return HttpResponse(response.status, body, ctype, headers)

    # ---- the contract's rules for requests ------------------------------------------------

    def _check(self, request: HttpRequest, endpoint: str, dataset: str | None) -> None:
        what = f"{request.method} {request.path}"
        bad = self.violations.append
        if not (request.headers.get("Authorization") or "").startswith(("Basic ", "Bearer ")):
            bad(f"{what} without Basic or Bearer Authorization")
        if endpoint == "list":
            size = dict(p.split("=", 1) for p in request.query.split("&") if "=" in p).get("pageSize")
            if size is not None and not (size.isdigit() and 1 <= int(size) <= 5000):
                bad(f"{what} with pageSize {size!r}")
        if endpoint not in ("changes", "receive"):
            return
        key = request.headers.get("Idempotency-Key")
        if not key or len(key) > MAX_KEY:
            bad(f"{what} with Idempotency-Key {key!r}")
        if not (request.headers.get("Content-Type") or "").startswith("application/json"):
            bad(f"{what} with Content-Type {request.headers.get('Content-Type')!r}")
        raw = decode_entity(request, 1 << 30)
        if len(raw) > self.body_limit:
            bad(f"{what} with a body of {len(raw)} bytes, over {self.body_limit}")
        if len(raw) > 64 * 1024 and request.headers.get("Content-Encoding") != "gzip":
            bad(f"{what} with a large body ({len(raw)} bytes) not compressed")
        body = parse_json(raw)
        if endpoint == "changes":
            if not isinstance(body, dict) or set(body) != {"upsert", "delete"}:
                bad(f"{what} with body members {sorted(body) if isinstance(body, dict) else body!r}")
                return
            upserts, deletes = body["upsert"], body["delete"]
        else:
            if not isinstance(body, dict) or set(body) != {"records"}:
                bad(f"{what} with body members {sorted(body) if isinstance(body, dict) else body!r}")
                return
            upserts, deletes = body["records"], []
        count = len(upserts) + len(deletes)
        if not 1 <= count <= MAX_ITEMS:
            bad(f"{what} with {count} items")
        fields = set(FIELDS[dataset])
        for record in upserts:
            if set(record) != fields:
                bad(f"{what}: a record with the fields {sorted(record)}")
        keyfield = "address" if dataset == "addresses" else "id"
        keys = [str(r.get(keyfield, "")).lower() if dataset == "addresses" else r.get(keyfield) for r in upserts]
        folded = [str(k).lower() for k in deletes] if dataset == "addresses" else list(deletes)
        if len(set(keys)) != len(keys) or len(set(folded)) != len(folded) or set(keys) & set(folded):
            bad(f"{what}: a key twice in one request")
        live = set(self.receiver._store.data["groups"])  # the handler holds no lock here: the client sends one request at a time
        if dataset == "groups" and endpoint == "changes":
            known = (live - set(deletes)) | set(keys)
            for record in upserts:
                missing = set(record.get("parentIds", ())) - known
                if missing:
                    bad(f"{what}: group {record.get('id')} names parents the service does not hold: {sorted(missing)}")
        if dataset == "users":
            for record in upserts:
                missing = set(record.get("groupIds", ())) - live
                if missing:
                    bad(f"{what}: user {record.get('id')} names groups the service does not hold: {sorted(missing)}")


# ---- the stack ---------------------------------------------------------------------------


class Stack:
    def __init__(self, tmp_path: Path, directory: dict[str, Any] | None = None, **front: Any) -> None:
        receiver_args = {k: front.pop(k) for k in ("max_items", "max_body_bytes", "clock", "replacement_ttl") if k in front}
        self.graph = GraphEmulator(directory or nasty_directory())
        self.receiver = SyncReceiver(domains=DOMAINS, credential=CREDENTIAL, **receiver_args)
        self.graph.start()
        self.receiver.start()
        self.front = Front(self.receiver, **front)
        self.state = tmp_path / "state"
        self.env = base_env(self.graph.base_url, self.receiver.base_url, f"file:{self.state}")

    def close(self) -> None:
        self.receiver.stop()
        self.graph.stop()

    def run(self, action: str = "update") -> dict[str, Any]:
        """One action as the CLI runs it, in this process (the servers answer on their threads)."""
        from shared.config.settings import load_settings
        from shared.engine import run
        from tests.launcher import test_options

        summary = asyncio.run(run(action, load_settings(self.env), env=self.env, options=test_options(self.env)))
        return summary.as_dict()

    def implied(self) -> dict[str, Any]:
        p = project(self.graph.snapshot(), DOMAINS)
        return {
            "addresses": set(p.datasets["addresses"]),
            "groups": {k: {"id": k, "name": v[0], "parentIds": sorted(v[1])} for k, v in p.datasets["groups"].items()},
            "users": {k: {"id": k, "address": v[0], "groupIds": sorted(v[1])} for k, v in p.datasets["users"].items()},
        }

    def state_view(self) -> dict[str, Any]:
        """What the change-tracking state says the service holds, in service_view's form."""
        db = StateDB(self.state / "state.db", "test", readonly=True)
        try:
            return {
                "addresses": set(db.records("addresses")),
                "groups": {k: {"id": k, "name": v[0], "parentIds": sorted(v[1])} for k, v in db.records("groups").items()},
                "users": {k: {"id": k, "address": v[0], "groupIds": sorted(v[1])} for k, v in db.records("users").items()},
            }
        finally:
            db.close()

    def check(self, implied: dict[str, Any] | None = None) -> None:
        """The service holds what the directory implies, the state what the service holds, and
        no request broke the contract."""
        assert self.front.violations == []
        assert self.receiver.keys_reused_with_different_body() == []
        assert service_view(self.receiver) == (self.implied() if implied is None else implied)
        assert self.state_view() == service_view(self.receiver)


@pytest.fixture
def make(tmp_path):
    stacks: list[Stack] = []

    def factory(**front: Any) -> Stack:
        stack = Stack(tmp_path / str(len(stacks)), **front)
        stacks.append(stack)
        return stack

    yield factory
    for stack in stacks:
        stack.close()


def ok(summary: dict[str, Any]) -> dict[str, Any]:
    assert summary["ok"], summary.get("error")
    return summary


def rejected(summary: dict[str, Any]) -> dict[str, int]:
    return {d: c["rejected"] for d, c in summary["datasets"].items()}


# ---- hostile but legal answers --------------------------------------------------------------------


def test_unknown_members_gzip_answers_parameters_and_odd_pages_change_nothing(make):
    """Every action, against answers with unknown members, ``Content-Type`` parameters, gzip
    bodies and records pages of 1 to 2 records with empty pages on the way: the same outcome as
    against a plain service (the property test below varies the directory and the pages)."""
    stack = make(hostile=True, page_cap=2, seed=1)
    s = ok(stack.run())
    assert rejected(s) == {"addresses": 0, "groups": 0, "users": 0}
    stack.check(EXPECTED)
    assert stack.front._pages > 3  # the baseline read went through the odd pages
    ok(stack.run("refresh"))
    stack.check(EXPECTED)
    stack.graph.delete_user(U(8))
    stack.graph.delete_group(G(3))
    stack.graph.upsert_group({"id": G(9), "displayName": "New", "mail": None, "proxyAddresses": [], "members": [U(1), G(1)]})
    ok(stack.run())
    stack.check()
    ok(stack.run("replace"))
    stack.check()
    again = ok(stack.run())
    assert all(c["added"] == 0 and c["removed"] == 0 for c in again["datasets"].values())


# ---- per-record rejections ------------------------------------------------------------------------


@pytest.mark.parametrize("code", CODES)
def test_a_rejected_record_stays_out_of_the_state_and_is_sent_again(make, code):
    """The service rejects an address and a user (each code the contract lists): the run
    succeeds, the state holds neither, the next run sends exactly those again, and once the
    service takes them the state and the service agree with the directory."""
    stack = make()
    stack.front.refuse.update({"ext@fabrikam.com": code, U(8): code})
    s = ok(stack.run())
    assert rejected(s) == {"addresses": 1, "groups": 0, "users": 1}
    codes = {(r["key"], r["code"]) for c in s["datasets"].values() for r in c.get("rejections", [])}
    assert codes == {("ext@fabrikam.com", code), (U(8), code)}
    held = {**EXPECTED, "addresses": EXPECTED["addresses"] - {"ext@fabrikam.com"},
            "users": {k: v for k, v in EXPECTED["users"].items() if k != U(8)}}
    stack.check(held)
    stack.receiver.clear_log()
    ok(stack.run())  # still refused: sent again, and only those
    sent = [r.body for r in stack.receiver.request_log if r.method == "POST"]
    assert sorted(json.dumps(b, sort_keys=True) for b in sent) == sorted([
        json.dumps({"upsert": [{"address": "ext@fabrikam.com"}], "delete": []}, sort_keys=True),
        json.dumps({"upsert": [{"id": U(8), "address": "dave@fabrikam.com", "groupIds": []}], "delete": []}, sort_keys=True),
    ])
    stack.check(held)
    stack.front.refuse.clear()
    ok(stack.run())
    stack.check(EXPECTED)


def test_a_group_deleted_in_the_run_that_a_rejected_user_names_leaves_that_user_in_the_state_as_the_service_holds_it(make):
    """docs/sync-api.md: a deleted group's id leaves every ``groupIds`` and ``parentIds`` at the
    service. A user whose upsert the service rejects keeps its earlier record there, without the
    deleted group; the state must say so too, or a later run that finds the user back in a group
    of that id (restored from the recycle bin) sees nothing to send while the service lacks it."""
    stack = make()
    ok(stack.run())
    stack.graph.delete_group(G(3))  # Alice (U1) is in G1 and G3; Bob (U2) in G2, whose parent G3 was
    stack.front.refuse.update({U(1): "address_in_other_account", G(2): "invalid_record"})
    s = ok(stack.run())
    assert rejected(s) == {"addresses": 0, "groups": 1, "users": 1}
    view = service_view(stack.receiver)
    assert view["users"][U(1)]["groupIds"] == [G(1)] and view["groups"][G(2)]["parentIds"] == [G(1)]
    assert stack.state_view() == view
    stack.front.refuse.clear()
    restored = next(g for g in nasty_directory()["groups"] if g["id"] == G(3))
    stack.graph.upsert_group(restored)  # restored with its members (Alice among them), as from the recycle bin
    ok(stack.run())
    stack.check()
    assert service_view(stack.receiver)["users"][U(1)]["groupIds"] == sorted([G(1), G(3)])


@pytest.mark.parametrize("code", ["address_in_other_account", "duplicate_address"])
def test_records_rejected_while_staged_leave_the_replaced_dataset_as_confirmed(make, code):
    """A replace whose service rejects an address and a user while they are staged: the commit
    swaps in the rest, the state is what the service holds, and the next update (a delta round
    that names neither record) sends the two again, so the service ends as the directory implies."""
    stack = make()
    ok(stack.run())
    stack.front.refuse.update({"ext@fabrikam.com": code, U(8): code})
    s = ok(stack.run("replace"))
    assert rejected(s) == {"addresses": 1, "groups": 0, "users": 1}
    held = {**EXPECTED, "addresses": EXPECTED["addresses"] - {"ext@fabrikam.com"},
            "users": {k: v for k, v in EXPECTED["users"].items() if k != U(8)}}
    stack.check(held)
    stack.front.refuse.clear()
    ok(stack.run())  # the next update sends what the replace could not
    stack.check(EXPECTED)


# ---- transient failures at every endpoint ---------------------------------------------------------

ALL_FAULTS = [("429", 0), ("429", None), ("503", 0), ("503", None), ("500", 0), ("408", 0), ("drop_before", 0), ("drop_after", 0)]
CASES = (
    # every fault where records go under an Idempotency-Key; the likeliest ones at the other endpoints
    [("changes", k, r) for k, r in ALL_FAULTS]
    + [("receive", k, r) for k, r in [("429", None), ("503", 0), ("drop_before", 0), ("drop_after", 0)]]
    + [(e, k, r) for e in ("create", "commit") for k, r in [("429", None), ("503", 0), ("500", 0), ("drop_after", 0)]]
    + [(e, k, r) for e in ("list", "domains") for k, r in [("429", None), ("503", 0), ("drop_before", 0)]]
)
ACTION = {"changes": "update", "create": "replace", "receive": "replace", "commit": "replace", "list": "refresh", "domains": "update"}


@pytest.mark.parametrize("endpoint,kind,retry_after", CASES,
                         ids=[f"{e}-{k}-{'no-retry-after' if r is None else r}" for e, k, r in CASES])
def test_a_transient_failure_is_retried_with_the_same_request(make, endpoint, kind, retry_after):
    """Twice in a row at one endpoint: the client retries the same request (same key, same bytes),
    and a request the service applied before its answer was lost is applied once."""
    stack = make()
    ok(stack.run())
    stack.graph.delete_user(U(8))
    if endpoint == "list":  # refresh sends nothing: the service keeps U(8), and the state is rebuilt from it
        stack.receiver.load("addresses", [*stack.receiver.records("addresses").values(), {"address": "extra@contoso.com"}])
    implied = service_view(stack.receiver) if endpoint == "list" else None
    stack.front.seen.clear()
    stack.receiver.clear_log()
    stack.front.fault(endpoint, kind, retry_after=retry_after, times=2)
    ok(stack.run(ACTION[endpoint]))
    stack.check(implied)
    statuses = [status for e, _, status in stack.front.seen if e == endpoint]
    assert statuses[:2] == [None if kind.startswith("drop") else int(kind)] * 2 and statuses[2] in (200, 201)
    if endpoint == "create":  # a retried create opens one replacement, not two (its Idempotency-Key)
        assert len(stack.receiver._store.replacements) == 3
    if kind == "drop_after" and endpoint in ("changes", "receive", "create"):
        replays = [r for r in stack.receiver.request_log if r.replayed]
        assert len(replays) == 2  # the two retries of the applied request got its first answer


REFUSAL_CASES = (
    [("changes", c) for c in REFUSALS] + [("receive", "409"), ("commit", "400"), ("commit", "404")]
    + [("create", "401"), ("list", "400"), ("domains", "403")]
)
WHAT = {  # what the run's error must say, per status
    "400": "parentIds must be a list", "401": "SYNC_API_CREDENTIAL", "403": "SYNC_API_CREDENTIAL",
    "404": "no such dataset or replacement", "409": "Idempotency-Key",
}


@pytest.mark.parametrize("endpoint,status", REFUSAL_CASES, ids=[f"{e}-{c}" for e, c in REFUSAL_CASES])
def test_a_refusal_fails_the_run_once_with_its_reason_and_changes_nothing(make, endpoint, status):
    """Each refusal docs/sync-api.md lists (400, 401/403, 404, 409), at each endpoint where a
    service may send it: not retried, the run fails naming the reason (the service's detail, or
    the credential setting), the replacement is let go, the service and the state are as they
    were, and the next run without the refusal leaves everything as the directory implies."""
    stack = make()
    ok(stack.run())
    before, state_before = service_view(stack.receiver), stack.state_view()
    stack.graph.delete_user(U(8))
    stack.graph.delete_group(G(3))
    stack.front.seen.clear()
    stack.front.fault(endpoint, status, times=6)
    s = stack.run(ACTION[endpoint])
    assert not s["ok"] and WHAT[status] in s["error"], s.get("error")
    assert CREDENTIAL.split(":")[1] not in s["error"]
    hits = [status_ for e, _, status_ in stack.front.seen if e == endpoint]
    assert hits == [int(status)]  # sent once: not retried
    if endpoint in ("receive", "commit"):
        assert [e[0] for e in stack.front.seen][-1] == "abandon"
    assert service_view(stack.receiver) == before and stack.state_view() == state_before
    stack.front.faults.clear()
    ok(stack.run(ACTION[endpoint]))
    stack.check(before if endpoint == "list" else None)


# ---- replacements the service lets go -------------------------------------------------------------


@pytest.mark.parametrize("at", ["receive", "commit"])
def test_a_replacement_that_expires_fails_the_run_clearly_and_changes_nothing(make, at):
    now = [0.0]
    stack = make(clock=lambda: now[0], replacement_ttl=3600.0)
    ok(stack.run())
    before = service_view(stack.receiver)
    state_before = stack.state_view()
    stack.graph.delete_group(G(3))  # a change the replace would make
    stack.front.fault(at, None, before=lambda: now.__setitem__(0, now[0] + 86_400.0))  # a day passes at the service
    s = stack.run("replace")
    assert not s["ok"]
    assert "no longer knows this replacement" in s["error"] and "run 'replace' again" in s["error"]
    assert "SYNC_API_URL" not in s["error"]
    assert service_view(stack.receiver) == before and stack.state_view() == state_before
    assert [e for e in stack.front.seen if e[0] == "abandon"] != []  # it tried to let the replacement go
    ok(stack.run("replace"))
    stack.check()


# ---- sizes -------------------------------------------------------------------------------------------


def test_no_body_over_the_size_limit_is_sent(make, monkeypatch):
    """The service takes bodies up to a size (docs/sync-api.md, 413): the client splits a request
    that is over it before sending, for Update and Replace alike, so the service never has to
    refuse one. Here the limit is made small so that the small directory crosses it."""
    limit = 300
    monkeypatch.setattr("shared.target.syncapi.MAX_BODY_BYTES", limit)
    stack = make(max_body_bytes=limit, body_limit=limit)
    ok(stack.run())
    stack.check(EXPECTED)
    ok(stack.run("replace"))
    stack.check(EXPECTED)
    assert [e for e in stack.front.seen if e[2] == 413] == []
    assert len([e for e in stack.front.seen if e[0] == "changes"]) > 4  # the batches were split


def test_a_body_over_ten_megabytes_is_not_sent():
    """At the contract's own limit: one request whose JSON is over 10,000,000 bytes."""
    from shared.common.errors import PayloadTooLargeError
    from shared.common.redact import Secret
    from shared.target.syncapi import SyncApiClient

    with SyncReceiver(domains=DOMAINS, credential=CREDENTIAL) as receiver:
        async def post() -> None:
            async with SyncApiClient(receiver.base_url, Secret(CREDENTIAL, "SYNC_API_CREDENTIAL"), backoff_seconds=0.01) as api:
                users = [{"id": U(i), "address": f"u{i}@contoso.com", "groupIds": [G(g) for g in range(260)]} for i in range(1000)]
                await api.post_changes("users", users, [], "k-big")

        with pytest.raises(PayloadTooLargeError) as info:
            asyncio.run(post())
        assert info.value.maybe_applied is False and "10,000,000" in str(info.value)
        assert receiver.request_log == []


# ---- any directory, any split, hostile answers ----------------------------------------------------


def _directory(users: list[str | None], nesting: set[tuple[int, int]], members: set[tuple[int, int]], groups: int) -> dict[str, Any]:
    """Users 1..len(users) with these mails (None: no address), groups 1..groups; ``(p, c)`` in
    ``nesting``: group p holds group c; ``(g, u)`` in ``members``: group g holds user u."""
    return {
        "users": [{"id": U(i), "displayName": f"u{i}", "mail": mail, "proxyAddresses": []} for i, mail in enumerate(users, 1)],
        "groups": [{"id": G(g), "displayName": f"g{g}", "mail": None, "proxyAddresses": [],
                    "members": [G(c) for p, c in sorted(nesting) if p == g] + [U(u) for h, u in sorted(members) if h == g]}
                   for g in range(1, groups + 1)],
        "contacts": [],
    }


@st.composite
def _rounds(draw):
    pool = [f"a{i}@contoso.com" for i in range(6)] + ["x@elsewhere.org", None]

    def one(n_users: int, n_groups: int) -> tuple:
        users = draw(st.lists(st.sampled_from(pool), min_size=n_users, max_size=n_users))
        pairs = st.tuples(st.integers(1, n_groups), st.integers(1, n_groups)).filter(lambda e: e[0] != e[1])
        nesting = draw(st.sets(pairs, max_size=2 * n_groups)) if n_groups > 1 else set()
        members = draw(st.sets(st.tuples(st.integers(1, n_groups), st.integers(1, n_users)), max_size=2 * n_users)) if n_groups else set()
        return users, nesting, members, n_groups

    first = one(draw(st.integers(1, 6)), draw(st.integers(0, 4)))
    second = one(draw(st.integers(1, 6)), draw(st.integers(0, 4)))
    batch = draw(st.integers(1, 4))
    return first, second, batch, draw(st.integers(1, batch)), draw(st.booleans()), draw(st.integers(0, 2**16))


def _become(graph: GraphEmulator, before: dict[str, Any], after: dict[str, Any]) -> None:
    """Change the emulator's directory from ``before`` to ``after`` (a delta round shows it)."""
    for coll, delete in (("users", graph.delete_user), ("groups", graph.delete_group)):
        wanted = {o["id"] for o in after[coll]}
        for obj in before[coll]:
            if obj["id"] not in wanted:
                delete(obj["id"])
    for u in after["users"]:
        graph.upsert_user(u)
    for g in after["groups"]:
        graph.upsert_group({k: v for k, v in g.items() if k != "members"})
    for g in after["groups"]:
        old = next((o["members"] for o in before["groups"] if o["id"] == g["id"]), [])
        for m in old:
            if m not in g["members"] and (m in {o["id"] for o in after["users"]} or m in {o["id"] for o in after["groups"]}):
                graph.remove_member(g["id"], m)
        for m in g["members"]:
            if m not in old:
                graph.add_member(g["id"], m)


@settings(derandomize=True, database=None, deadline=None, max_examples=6, suppress_health_check=[HealthCheck.too_slow])
@given(case=_rounds())
def test_any_directory_reaches_a_hostile_splitting_service_within_the_contract(tmp_path_factory, case):
    """Any users (shared and foreign addresses among them), any nesting (cycles included), any
    memberships, then any other directory over the same ids; batches of 1 to 4 items against a
    service that takes fewer and may answer in every hostile legal way: every request stays
    within the contract (no group id the service does not hold, no key twice, 1 to 1,000 items,
    one request at a time), update, replace and refresh leave the service equal to the directory
    and the state equal to the service, and nothing is rejected."""
    first, second, batch, service_max, hostile, seed = case
    stack = Stack(tmp_path_factory.mktemp("conformance"), _directory(*first), hostile=hostile, page_cap=3 if hostile else None,
                  seed=seed, max_items=service_max)
    stack.env["SYNC_TEST_MAX_ITEMS"] = str(batch)
    try:
        for action in ("update", "replace"):
            stack.graph.stop()  # a fresh directory for each action, the same stack otherwise
            stack.graph = GraphEmulator(_directory(*first))
            stack.graph.start()
            stack.env["GRAPH_BASE_URL"] = stack.graph.base_url
            s = ok(stack.run("update"))
            assert rejected(s) == {"addresses": 0, "groups": 0, "users": 0}
            stack.check()
            _become(stack.graph, _directory(*first), _directory(*second))
            s = ok(stack.run(action))
            assert rejected(s) == {"addresses": 0, "groups": 0, "users": 0}
            stack.check()
            ok(stack.run("refresh"))
            stack.check()
    finally:
        stack.close()


def test_a_swap_of_addresses_names_no_key_twice_in_one_request(make):
    """Two users swap their addresses (``users.address`` is unique, so one of them is deleted
    first and upserted again last): a request names a key once, whichever list it is in, so no
    reading of "a key twice in one request" can refuse it."""
    stack = make()
    ok(stack.run())
    stack.graph.upsert_user({"id": U(1), "mail": "dave@fabrikam.com", "proxyAddresses": []})
    stack.graph.upsert_user({"id": U(8), "mail": "alice@contoso.com", "proxyAddresses": []})
    stack.front.seen.clear()
    s = ok(stack.run())
    assert rejected(s) == {"addresses": 0, "groups": 0, "users": 0}
    stack.check()
    assert service_view(stack.receiver)["users"][U(8)]["address"] == "alice@contoso.com"


@st.composite
def _address_hands(draw):
    """Users with distinct addresses before and after; the same pool, so addresses move (swaps, rings, chains)."""
    pool = [f"a{i}@contoso.com" for i in range(8)]
    ids = [U(i) for i in range(1, 8)]

    def side() -> dict[str, tuple]:
        chosen = draw(st.lists(st.sampled_from(ids), unique=True, max_size=7))
        addresses = draw(st.permutations(pool))
        return {uid: (addresses[i], ()) for i, uid in enumerate(chosen)}

    return side(), side(), draw(st.integers(1, 5))


@settings(derandomize=True, database=None, deadline=None, max_examples=100)
@given(case=_address_hands())
def test_update_requests_name_each_key_once_and_apply_in_order_without_a_duplicate_address(case):
    """The users' plan for any moves of addresses (``shared/plan/diff.py``), applied request by
    request as docs/sync-api.md says (deletes first, then upserts in order; an address held by
    another user refuses the upsert): no request names a key twice, none is refused, and the
    service ends with exactly the wanted users."""
    from shared.plan.diff import diff_records, plan_update

    held, wanted, max_items = case
    batches = plan_update({"users": diff_records("users", wanted, held)}, {"users": held}, max_items)
    service = dict(held)
    for batch in batches:
        keys = [k for k, _ in batch.upserts] + list(batch.deletes)
        assert len(keys) == len(set(keys)) and 1 <= len(keys) <= max_items
        for key in batch.deletes:
            service.pop(key, None)
        for key, value in batch.upserts:
            owner = next((k for k, v in service.items() if v[0] == value[0]), None)
            assert owner in (None, key), f"{key} takes {value[0]} while {owner} holds it"
            service[key] = value
    assert service == wanted
