"""A protocol-faithful Microsoft Graph v1.0 emulator on loopback, for tests, the demo and benchmarks.

It serves what the product reads from Entra ID, the way Graph serves it:

* ``GET /users``, ``/groups``, ``/contacts`` (also ``/devices``, ``/servicePrincipals``) with
  ``$select``, ``$top`` (1..999, default 100) and an opaque ``$skiptoken`` in an absolute
  ``@odata.nextLink``; ``GET /{collection}/{id}``; ``GET /groups/{id}/members`` with
  ``@odata.type`` on each member.
* Delta queries: ``GET /{collection}/delta`` (also ``delta()`` and ``microsoft.graph.delta``, as
  the SDK spells it) with ``members@delta``, ``@removed``, partial objects, big groups split
  across pages, ``$deltatoken=latest``, and token expiry (HTTP 410 ``syncStateNotFound``).
* Graph's error shape ``{"error": {"code", "message", "innerError"}}``, ``request-id`` headers,
  ``Retry-After`` on 429/503, optional bearer auth, per-request latency, injectable faults.

Choices where Graph leaves room (documented so tests can rely on them):

* Objects are served in ascending id order; ``$skiptoken`` carries the last id served, so a
  page boundary never skips or repeats an object while the directory changes.
* ``proxyAddresses`` is returned only when ``$select`` names it, for every collection. (Real
  Graph does this for users; for groups and contacts its default set includes it. The sync
  rules say to always select it, and this makes a client that forgets fail loudly.)
* A selected property that an object lacks is served as ``null`` (``[]`` for collections).
* Delta rounds: a token encodes a watermark, the sequence number of the last change it covers,
  plus the ``$select``; tokens are HMAC-signed per emulator instance. The deltaLink of a round
  carries the watermark of the round's *start*, so a change made during a round is delivered
  again in the next one (Graph's "replays"). An incremental round serves, for a changed object,
  ``id`` plus every selected property it ever had set, changed or not (one never set is left
  out, one set to null is ``null``): Graph's default ("user: delta", "group: delta"). Under
  ``Prefer: return=minimal``, or with ``delta_properties="changed"`` (``--delta-properties
  changed``), only ``id`` plus the changed selected properties (so clients must merge partial
  objects). A new object is served whole; a deleted one as ``{"id", "@removed": {"reason":
  "changed"}}`` (Graph's soft delete; ``permanent=True`` on a delete gives ``"deleted"``);
  membership changes as ``members@delta`` entries, a removed member carrying ``"@removed":
  {"reason": "deleted"}``. A change to a property that is not selected does not make the object
  appear.
* Page size for delta: the ``Prefer: odata.maxpagesize=N`` header (echoed in
  ``Preference-Applied``), or ``$top``; default 100, capped at ``max_page_size``. A page also
  holds at most ``max_members_per_page`` member entries (default 500, about what Graph was seen
  to put in one page for a big group); a group whose members do not fit continues on the next
  page, with the same properties and the next slice of ``members@delta``.
* Expired tokens (``expire_delta_tokens()``, or older than ``delta_token_ttl`` seconds, or signed
  by another emulator instance) answer 410 Gone with code ``syncStateNotFound`` and a
  ``Location`` header holding the initial delta request (Graph's "synchronization reset").
  ``/users`` paging skiptokens do not expire.

* A member id that names no object (possible only in a loaded directory) is not served.
* Unsupported query options (``$filter``, ``$orderby``, ``$search``, ``$skip``, ``$expand`` other
  than ``members`` on groups/delta) answer 400 rather than being silently ignored.
* Responses are never compressed (loopback; the ``truncated_gzip`` fault excepted), and only GET
  is served under ``/v1.0``.

Run standalone: ``python -m devstack.graph_emulator --port 0 --users 1000`` (or ``--demo``) prints
``READY <base_url>`` once listening and serves until SIGTERM/SIGINT. Admin endpoints for an
emulator in another process (not counted as Graph requests, never faulted or delayed):

* ``POST /_emulator/mutations`` ``[{"op": "upsert_user", "args": {"obj": {...}}}, ...]``; ops are the
  mutation methods (``upsert_*``/``delete_*`` for users, groups, contacts, devices and service
  principals, ``add_member``, ``remove_member``, ``expire_delta_tokens``), args their keywords;
* ``POST /_emulator/faults`` ``{"kind", "path_contains", "times", "retry_after"}`` or a list of them;
  ``POST /_emulator/faults/clear``;
* ``POST /_emulator/script-round`` ``{"collection": "users", "pages": [[entry, ...], ...]}`` (see
  ``script_round``: repeated objects, ``@removed`` in a first round, slices with changed properties
  and removed members);
* ``POST /_emulator/expire-delta-tokens``; ``POST /_emulator/latency`` ``{"latency": 0.1}``;
* ``GET /_emulator/stats`` (``requestCount``, ``watermark``, object counts), ``POST
  /_emulator/stats/reset``, ``GET /_emulator/requests`` (the request log), ``GET
  /_emulator/snapshot`` (the directory model).

The code lives in ``devstack/graph/``, one module per concern: ``model`` (vocabulary, errors, the
JSON encoder), ``wire`` (object JSON, pages, query options), ``store`` (the directory model and its
change log), ``paging`` (plain collections and routing), ``delta`` (delta rounds and tokens),
``scripted`` (scripted delta rounds), ``faults``, ``admin`` (the ``/_emulator/`` endpoints) and
``emulator`` (``GraphEmulator``, which joins them); the socket layer, lifecycle and command-line
helpers it shares with the other loopback servers are in ``devstack/http_server.py``. This module is
the public entry: it re-exports ``GraphEmulator`` and runs the command line.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence

from devstack.graph.emulator import GraphEmulator
from devstack.graph.faults import FAULT_KINDS, PROXY_PAGE
from devstack.graph.model import (
    COLLECTIONS,
    CONTENT_TYPE,
    DEFAULT_PAGE_SIZE,
    DEFAULT_PROPERTIES,
    KNOWN_PROPERTIES,
    ODATA_TYPES,
    GraphError,
    Response,
)
from devstack.http_server import loopback_parser, parse_loopback_args, serve_until_signalled

__all__ = [
    "COLLECTIONS",
    "CONTENT_TYPE",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_PROPERTIES",
    "FAULT_KINDS",
    "KNOWN_PROPERTIES",
    "ODATA_TYPES",
    "PROXY_PAGE",
    "GraphEmulator",
    "GraphError",
    "Response",
    "main",
]


# --- command line ---------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Serve a generated tenant until SIGTERM/SIGINT; print ``READY <base_url>`` once listening."""
    from devstack.tenant import demo_tenant, generate_tenant

    parser = loopback_parser("python -m devstack.graph_emulator", __doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--groups", type=int, default=None)
    parser.add_argument("--memberships-per-user", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--demo", action="store_true", help="serve devstack.tenant.demo_tenant(seed) instead")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds of sleep per Graph request")
    parser.add_argument("--require-auth", action="store_true")
    parser.add_argument("--max-page-size", type=int, default=999)
    parser.add_argument("--max-members-per-page", type=int, default=500)
    parser.add_argument("--delta-token-ttl", type=float, default=None)
    parser.add_argument("--delta-properties", choices=("selected", "changed"), default="selected",
                        help="an updated object in a delta round: every selected property (Graph's default) or the changed ones")
    args = parse_loopback_args(parser, argv)
    if args.demo:
        directory = demo_tenant(seed=args.seed)
    else:
        directory = generate_tenant(args.users, args.groups, args.memberships_per_user, seed=args.seed)
    emulator = GraphEmulator(
        directory,
        require_auth=args.require_auth,
        latency=args.latency,
        max_page_size=args.max_page_size,
        delta_token_ttl=args.delta_token_ttl,
        max_members_per_page=args.max_members_per_page,
        delta_properties=args.delta_properties,
    )
    del directory
    emulator.warm()
    gc.collect()
    gc.freeze()  # the directory lives until exit: keep it out of every later collection
    return serve_until_signalled(lambda: emulator.start(port=args.port, host=args.host), emulator.stop)


if __name__ == "__main__":
    sys.exit(main())
