"""A strict local receiver of the directory sync API contract (docs/sync-api.md, v1), on loopback.

It is written from the contract alone and imports nothing from the product
(`shared/`), so that the tests, the demo and the benchmarks exercise the
product against an independent reading of the contract.

    receiver = SyncReceiver(domains=["contoso.com"])
    base_url = receiver.start()          # http://127.0.0.1:PORT/v1
    ...
    receiver.stop()

    python -m devstack.sync_receiver --port 0 --domains contoso.com,fabrikam.com
    # prints "READY http://127.0.0.1:PORT/v1", serves until SIGTERM/SIGINT

Readings of points that docs/sync-api.md leaves open (strict but reasonable):

Requests
- Auth is checked first (before routing), so any /v1 request without the
  right credential is 401, even one to an unknown path. A 401 carries
  WWW-Authenticate. Faults are injected before auth, as from a front door.
- Bodies must be `Content-Type: application/json` (optionally
  `charset=utf-8`), valid UTF-8 without a BOM, strict JSON (no NaN/Infinity,
  no duplicate member names); otherwise 400. `Content-Encoding` may be absent,
  `identity` or `gzip` (several gzip members are fine); any other coding, and a
  corrupt, truncated or trailing-garbage gzip body, is 400. The table has no
  415, so 400 it is.
- The 10 MB limit is on the uncompressed body (decompression stops there, so
  a gzip bomb is a 413). An oversized plain body is drained, then 413.
- Unknown query parameters, a repeated parameter, or query parameters on an
  endpoint that takes none are 400. A wrong method on a known path is 405, with `Allow`.
  Unknown paths are 404 (problem+json), as is an unknown dataset name
  (case-sensitive: `Users` is not a dataset).
- `POST /changes`: the body must be an object whose only members are
  `upsert` and `delete`; either may be left out (an empty list). `upsert` items
  must be JSON objects and `delete` items strings, else 400 (wrong shape): a
  non-object cannot have a key to reject it by. Objects with missing, extra or
  mistyped fields are per-record `invalid_record` rejections.
- `POST .../records` takes exactly `{"records": [...]}`. Create, commit and
  abandon take no body, or `{}`.

Idempotency
- The Idempotency-Key is required on `/changes` and replacement `/records`;
  it is optional on create, commit and abandon (when sent, it is honoured the
  same way). It is 1..128 printable ASCII characters, sent once; else 400.
- Keys are per account: one key space over every endpoint. A request is the
  same when its method, path, query and UNCOMPRESSED body bytes are the same
  (so gzip's changing header timestamp does not matter, but re-serialising the
  JSON differently does). A different request under a used key is 409.
- Only 2xx answers are remembered and guard the key with 409. A 4xx
  (400/404/413), a fault (429/503/500/drop_before...) or a 409 is not, so a
  retry after a transient failure goes through. A replay is answered with the
  first status and body, plus `Idempotent-Replayed: true`, and applies nothing.
- Separately, every request whose key and body could be read is observed:
  `keys_reused_with_different_body()` lists each key seen with two different
  requests whatever the outcome (e.g. the same key reused for one half of a
  batch split after a 413), because a strict service may remember failures
  too. Product tests should assert that list is empty.

Records
- Addresses may be sent in any case (A-Z is atext and DNS is
  case-insensitive); they are validated as sent, then stored lowercased. This
  holds for `users.address` too, whose uniqueness is case-insensitive.
- `parentIds`/`groupIds`: order does not matter, so they are stored
  deduplicated and sorted; GET returns them so. Empty ids in them are
  `unknown_group` (no group has an empty id). `id` must be a non-empty
  string; `name` 1..256 Unicode code points; all strings must be valid UTF-8
  (no lone surrogates); wrong types are `invalid_record`.
- A domain must be provisioned exactly (a subdomain of a provisioned domain is
  `domain_not_provisioned`). `xn--` labels (any case) must decode under IDNA
  2008 and re-encode to themselves. Other labels with `--` in positions 3-4 are
  accepted: the contract states no such rule.
- `address_in_other_account` applies to `addresses` and to `users.address`.
- One code per rejected record, checked in this order: invalid_record,
  invalid_address, domain_not_provisioned, address_in_other_account,
  duplicate_address, unknown_group. A rejection's `key` is the key as sent,
  or null when the record has none of the right type.
- `duplicate_address` is decided in request order after the deletes: a user
  that takes an address still held by another user (even one re-upserted later
  in the same request) is rejected. Deletes never fail, and a delete of a
  missing key counts as applied; `applied` counts deletes plus accepted
  upserts, each item once.
- `unknown_group` in /changes: a reference is good when the group is stored
  and not deleted by this request, or upserted and not rejected in this
  request (in any order, so a cycle inside one request is fine). Rejections
  are iterated to a fixpoint. Deleting a group strips its id from every
  stored `parentIds` and `groupIds`, before the request's upserts are applied.

Staged replace
- `replacementId` is an opaque hex string; one of another dataset is 404.
- `/records` on a committed, abandoned or expired replacement is 404 (409 is
  kept for its one meaning in the contract: a reused Idempotency-Key); the
  detail says why. Commit of an abandoned or expired replacement is 404; a
  repeated commit returns the first answer. DELETE of an abandoned
  replacement is 204 again (idempotent); DELETE of a committed one is 404.
- `users` replacements: `groupIds` are checked against the live `groups` at
  receive time (unknown_group rejects the record) and `users.address` must
  be unique within the replacement. At commit, ids of groups that have since
  left the live dataset are dropped like unknown `parentIds` (one
  `unknown_group` entry per dropped id), so a reference never dangles.
- `groups` commit: each `parentIds` entry naming no group of the replacement
  is dropped, one `unknown_group` rejection per dropped entry; the groups not
  in the replacement are gone, so their ids leave every user's `groupIds`.
- Expiry counts replacement_ttl seconds from creation; committed
  replacements do not expire (their answer is kept for repeated commits).

Paging
- Records come in key order (addresses lowercased). `nextPageToken` is an
  opaque token naming the last key served, so pages are stable under
  concurrent writes; it is null on the last page (also when that page is
  full but nothing follows). An empty, foreign or garbled pageToken is 400;
  pageSize must be plain digits 1..5000.

Faults (inject_fault): served before auth, in injection order, to requests
whose target (path and query) contains `path_contains`. `drop_after` runs the
request fully (and remembers its idempotent answer) and then closes the
connection without answering. In the request log, `status` is None for both
drops; drop_after's unsent answer is in `response`. The other kinds answer
without applying anything: `429`/`503` (with `retry_after` as the Retry-After
header, sent as given, so a malformed one can be tested), `500`, `408`, `401`,
`drop_before`, and hostile 200s as from a broken proxy: `html` (a text/html
sign-in page), `wrong_shape` (JSON of the wrong shape), `not_json`
(application/json over a body that is not JSON), `truncated_gzip`
(`Content-Encoding: gzip` with the stream cut in half, Content-Length
matching the cut body) and `deep_json` (valid JSON nested 100,000 deep).
`applied_html`, `applied_wrong_shape`, `applied_not_json` and
`applied_truncated_gzip` apply the request in full first (like `drop_after`,
its idempotent answer is remembered) and then answer 200 with that hostile
body instead of the real answer (kept in the log's `response`). `no_page_token`
answers the real records page without its `nextPageToken` member.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from devstack.http_server import LoopbackService, loopback_parser, parse_loopback_args, serve_until_signalled
from devstack.receiver_addresses import normalize_domain
from devstack.receiver_api import Credentials, LoggedRequest, SyncApi
from devstack.receiver_http import HttpRequest, HttpResponse, ReceiverHandler, json_response, parse_json, problem_response
from devstack.receiver_records import DATASETS, RecordValidator
from devstack.receiver_store import ApiError, Store

__all__ = ["LoggedRequest", "SyncReceiver", "main"]


class SyncReceiver(LoopbackService):
    """A real HTTP server on 127.0.0.1 that implements every rule of docs/sync-api.md.

    ``start(port=0)`` binds 127.0.0.1:port (0 picks a free one), serves from a thread and
    returns the /v1 base URL; ``stop()`` (or ``with``) stops serving and closes keep-alive
    connections, so clients see the server go (``devstack.http_server``)."""

    http_handler = ReceiverHandler
    thread_name = "sync-receiver"
    url_path = "/v1"

    def __init__(
        self,
        *,
        domains: list[str],
        credential: str = "sync:secret",
        forbidden_credential: str | None = None,
        other_account_addresses: Iterable[str] = frozenset(),
        max_items: int = 1000,
        max_body_bytes: int = 10_000_000,
        replacement_ttl: float = 86400.0,
        log_bodies: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.domains = [normalize_domain(d) for d in domains]
        validator = RecordValidator(self.domains, other_account_addresses)
        self._store = Store(validator, replacement_ttl, clock)
        credentials = Credentials(credential, forbidden_credential)
        self._api = SyncApi(self._store, credentials, self.domains, max_items, max_body_bytes, log_bodies)
        self.max_body_bytes = max_body_bytes

    @property
    def raw_body_cap(self) -> int:
        """Raw (possibly gzip) body bytes read before a request counts as too large."""
        return self.max_body_bytes + self.max_body_bytes // 64 + 4096

    # ---- inspection and control ---------------------------------------------------

    @property
    def request_log(self) -> list[LoggedRequest]:
        """Every /v1 request in arrival order (the live list; appends are locked)."""
        return self._api.log

    def clear_log(self) -> None:
        with self._api._log_lock:
            self._api.log.clear()

    def records(self, dataset: str) -> dict[str, dict]:
        """The live copy, key -> record, deep-copied so callers cannot corrupt it."""
        _check_dataset(dataset)
        with self._store.lock:
            return self._store.snapshot(dataset)

    def load(self, dataset: str, records: list[dict]) -> None:
        """Replace the live dataset with `records`, unvalidated, to seed a test."""
        _check_dataset(dataset)
        with self._store.lock:
            self._store.load(dataset, records)

    def inject_fault(self, kind: str, *, path_contains: str = "", times: int = 1, retry_after: int | str = 1) -> None:
        """Make the next `times` matching requests fail as `kind` (see FAULT_KINDS)."""
        self._api.faults.add(kind, path_contains, times, retry_after)

    def clear_faults(self) -> None:
        """Drop every injected fault that has not been served yet."""
        self._api.faults.clear()

    def idempotency_conflicts(self) -> int:
        """How many 409s (Idempotency-Key reused for a different request) were served."""
        return self._api.idempotency.conflicts

    def keys_reused_with_different_body(self) -> list[str]:
        """Keys sent with two different requests, whatever was answered (409, or a reuse after a 4xx/fault)."""
        with self._store.lock:
            return list(self._api.idempotency.reused_keys)

    # ---- HTTP -------------------------------------------------------------------------

    def handle(self, request: HttpRequest) -> HttpResponse:
        """Answer one request (the socket layer is ``devstack.receiver_http.ReceiverHandler``)."""
        return self._dispatch(request)

    def _dispatch(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith("/_receiver/"):
            try:
                return self._admin(request)
            except ApiError as error:
                return problem_response(error)
        return self._api.handle(request)

    def _admin(self, request: HttpRequest) -> HttpResponse:
        """Unauthenticated, unlogged endpoints for a receiver run as a subprocess."""
        parts = request.path.strip("/").split("/")[1:]
        method = request.method
        if parts[:1] == ["datasets"] and len(parts) == 2:
            _check_dataset(parts[1], ApiError(404, "Unknown dataset", parts[1]))
            if method == "GET":
                records = self.records(parts[1])
                return json_response(200, {"records": [records[k] for k in sorted(records)]})
            if method == "PUT":
                self.load(parts[1], _admin_json(request).get("records", []))
                return json_response(204, None)
        if parts == ["log"] and method == "GET":
            bodies = "bodies=1" in request.query
            return json_response(200, {
                "requests": [entry.summary(bodies) for entry in list(self.request_log)],
                "idempotencyConflicts": self.idempotency_conflicts(),
                "keysReusedWithDifferentBody": self.keys_reused_with_different_body(),
            })
        if parts == ["log"] and method == "DELETE":
            self.clear_log()
            return json_response(204, None)
        if parts == ["faults"] and method == "POST":
            spec = _admin_json(request)
            try:
                self.inject_fault(str(spec["kind"]), path_contains=str(spec.get("path_contains", "")),
                                  times=int(spec.get("times", 1)), retry_after=spec.get("retry_after", 1))
            except (KeyError, ValueError, TypeError) as exc:
                raise ApiError(400, "Bad fault", str(exc)) from None
            return json_response(204, None)
        raise ApiError(404, "Not found", f"no admin endpoint {method} {request.path}")


def _admin_json(request: HttpRequest) -> dict[str, Any]:
    value = parse_json(request.body or b"{}")
    if not isinstance(value, dict):
        raise ApiError(400, "Wrong shape", "an admin body is a JSON object")
    return value


def _check_dataset(dataset: str, error: Exception | None = None) -> None:
    if dataset not in DATASETS:
        raise error or ValueError(f"unknown dataset {dataset!r}; one of {DATASETS}")


# ---- command line -----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = loopback_parser("python -m devstack.sync_receiver", __doc__.splitlines()[0], host=False,
                             port_help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--domains", required=True, help="comma-separated provisioned domains")
    parser.add_argument("--credential", default="sync:secret", help="user:pass for Basic, or a Bearer token")
    parser.add_argument("--forbidden-credential", default=None, help="a credential that authenticates but gets 403")
    parser.add_argument("--other-account-addresses", default="", help="comma-separated addresses of another account")
    parser.add_argument("--max-items", type=int, default=1000)
    parser.add_argument("--max-body-bytes", type=int, default=10_000_000)
    parser.add_argument("--replacement-ttl", type=float, default=86400.0)
    parser.add_argument("--no-log-bodies", action="store_true", help="keep request bodies out of the log (saves memory)")
    return parse_loopback_args(parser, argv)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; print one READY line once the port is bound."""
    args = parse_args(argv)
    receiver = SyncReceiver(
        domains=_split(args.domains), credential=args.credential, forbidden_credential=args.forbidden_credential,
        other_account_addresses=set(_split(args.other_account_addresses)), max_items=args.max_items,
        max_body_bytes=args.max_body_bytes, replacement_ttl=args.replacement_ttl, log_bodies=not args.no_log_bodies,
    )
    return serve_until_signalled(lambda: receiver.start(args.port), receiver.stop)


if __name__ == "__main__":
    sys.exit(main())
