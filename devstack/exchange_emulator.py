"""An Exchange Online admin endpoint emulator: ``Get-Recipient`` through ``InvokeCommand``, on loopback.

It speaks the protocol that the Exchange Online PowerShell module (v3) speaks to
``https://outlook.office365.com``, as far as listing recipients goes:

- ``POST /adminapi/beta/{tenant}/InvokeCommand`` with the JSON body
  ``{"CmdletInput": {"CmdletName": "Get-Recipient", "Parameters": {"ResultSize": "Unlimited",
  "RecipientTypeDetails": [types...]}}}``. ``Prefer: odata.maxpagesize=N`` sets the page size
  (at most 1000). ``X-AnchorMailbox`` must be
  ``APP:SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}@{tenant}`` (400 otherwise).
- The answer is ``200 {"value": [...], "@odata.nextLink": url}``; the next page is read by
  POSTing the *same* body to the nextLink. A GET on any InvokeCommand URL, a changed body on a
  nextLink, or an unknown skip token is answered 400, as the real endpoint refuses them.
  A listing is a snapshot taken at its first page: changes made while it is paged show up in
  the next listing.
- Optional bearer check (``bearer=``): a missing or different token is answered 401 with an
  ``x-ms-diagnostics`` header, as Exchange does.
- Faults, queued with ``fail(kind, ...)``: ``429`` (with ``Retry-After``), ``503``,
  ``throttle`` (the "maximum number of concurrent requests" message), ``malformed`` (a
  truncated JSON page), ``drop`` (the connection closes without an answer), ``401``/``403``
  (with ``x-ms-diagnostics``). ``on_page`` picks the page (0 = the first) that fails.

Each recipient has ``Guid``, ``RecipientTypeDetails``, ``PrimarySmtpAddress``,
``EmailAddresses``, ``DisplayName`` and ``ExternalDirectoryObjectId`` (empty for objects that
are not in Entra), plus a few more properties that the client must ignore.

Run standalone: ``python -m devstack.exchange_emulator --demo [--tenant T] [--bearer TOKEN]``
prints ``READY <base_url>`` once listening and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import secrets
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from devstack.http_server import LoopbackService, Response, loopback_parser, parse_loopback_args, serve_until_signalled

ANCHOR = "APP:SystemMailbox{{bb558c35-97f1-4cb9-8ff7-d53741dc928c}}@{tenant}"
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 1000
# The values Get-Recipient's -RecipientTypeDetails binds (Exchange Online PowerShell reference);
# any other is refused as the cmdlet refuses it.
KNOWN_TYPES = frozenset({
    "DiscoveryMailbox", "DynamicDistributionGroup", "EquipmentMailbox", "GroupMailbox", "GuestMailUser", "LegacyMailbox",
    "LinkedMailbox", "LinkedRoomMailbox", "MailContact", "MailForestContact", "MailNonUniversalGroup",
    "MailUniversalDistributionGroup", "MailUniversalSecurityGroup", "MailUser", "PublicFolder", "PublicFolderMailbox",
    "RemoteEquipmentMailbox", "RemoteRoomMailbox", "RemoteSharedMailbox", "RemoteTeamMailbox", "RemoteUserMailbox",
    "RoomList", "RoomMailbox", "SchedulingMailbox", "SharedMailbox", "TeamMailbox", "UserMailbox",
})
# Get-Recipient's RecipientType: the coarse class of each RecipientTypeDetails value (the rest are their own).
RECIPIENT_TYPE = {
    **dict.fromkeys(("SharedMailbox", "RoomMailbox", "EquipmentMailbox", "DiscoveryMailbox", "LinkedMailbox", "LinkedRoomMailbox",
                     "LegacyMailbox", "SchedulingMailbox", "TeamMailbox", "PublicFolderMailbox"), "UserMailbox"),
    **dict.fromkeys(("GuestMailUser", "RemoteUserMailbox", "RemoteRoomMailbox", "RemoteEquipmentMailbox", "RemoteSharedMailbox",
                     "RemoteTeamMailbox"), "MailUser"),
    **dict.fromkeys(("RoomList", "GroupMailbox"), "MailUniversalDistributionGroup"),
    "MailForestContact": "MailContact",
}
FAULTS = ("429", "503", "throttle", "malformed", "drop", "401", "403")
_PATH = re.compile(r"^/adminapi/beta/([^/]+)/InvokeCommand$")


@dataclass
class _Fault:
    kind: str
    times: int
    retry_after: str | None
    on_page: int | None
    status: int


@dataclass
class LoggedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = 0.0  # time.monotonic() of arrival


def _json(status: int, doc: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(doc).encode("utf-8"), {"Content-Type": "application/json; charset=utf-8", **(headers or {})})


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json(status, {"error": {"code": code, "message": message}}, headers)


class ExchangeEmulator(LoopbackService):
    """Serves ``recipients`` (dicts as ``Get-Recipient`` returns them) for ``tenant`` (any
    tenant when None). ``start(port=0, host="127.0.0.1")`` serves it from a thread and returns
    the base URL (EXO_BASE_URL) ``http://host:port``; ``stop()`` (or ``with``) ends it."""

    thread_name = "exchange-emulator"

    def __init__(self, recipients: Iterable[dict[str, Any]] = (), *, tenant: str | None = None, bearer: str | None = None,
                 max_page_size: int = MAX_PAGE_SIZE, latency: float = 0.0) -> None:
        self.tenant = tenant
        self.latency = latency  # seconds of sleep before each answer
        self.bearer = bearer
        self.max_page_size = max_page_size
        self.base_url = ""
        self.request_log: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._recipients: dict[str, dict[str, Any]] = {}
        self._listings: dict[str, tuple[str, list[dict[str, Any]], int]] = {}  # skip token -> body hash, snapshot, offset
        self._faults: list[_Fault] = []
        for r in recipients:
            self.upsert(r)

    # --- the directory ---------------------------------------------------------------------
    def upsert(self, recipient: dict[str, Any]) -> None:
        with self._lock:
            self._recipients[str(recipient["Guid"])] = copy.deepcopy(recipient)

    def delete(self, guid: str) -> None:
        with self._lock:
            self._recipients.pop(guid, None)

    def recipients(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(list(self._recipients.values()))

    # --- faults ----------------------------------------------------------------------------
    def fail(self, kind: str, *, times: int = 1, retry_after: str | None = None, on_page: int | None = None, status: int | None = None) -> None:
        """Queue a fault for the next ``times`` requests (of page ``on_page``, when given)."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; use one of {', '.join(FAULTS)}")
        default = {"429": 429, "503": 503, "throttle": 400, "401": 401, "403": 403}.get(kind, 200)
        with self._lock:
            self._faults.append(_Fault(kind, times, retry_after, on_page, status or default))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def posts(self) -> list[LoggedRequest]:
        return [r for r in self.request_log if r.method == "POST"]

    # --- the protocol ----------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> Response:
        with self._lock:
            self.request_log.append(LoggedRequest(method, raw_path, {k.lower(): v for k, v in headers.items()}, body, time.monotonic()))
        if self.latency > 0:
            time.sleep(self.latency)
        parts = urlsplit(raw_path)
        m = _PATH.match(parts.path)
        if m is None:
            return _error(404, "NotFound", f"no such resource: {parts.path}")
        tenant = unquote(m.group(1))
        if self.tenant is not None and tenant.lower() != self.tenant.lower():
            return _error(404, "TenantNotFound", f"tenant {tenant} is not served here")
        if self.bearer is not None:
            auth = headers.get("Authorization") or ""
            if not auth.startswith("Bearer ") or not secrets.compare_digest(auth[7:].encode(), self.bearer.encode()):
                return _error(401, "Unauthorized", "The access token is missing or invalid.",
                              {"x-ms-diagnostics": '2000001;reason="The access token is missing or invalid.";error_category="invalid_token"',
                               "WWW-Authenticate": 'Bearer realm=""'})
        if method != "POST":
            return _error(400, "BadRequest", f"InvokeCommand accepts POST only, not {method}")
        anchor = headers.get("X-AnchorMailbox") or ""
        if anchor.lower() != ANCHOR.format(tenant=tenant).lower():
            return _error(400, "BadRequest", "X-AnchorMailbox is missing or does not name the tenant's system mailbox")
        query = parse_qs(parts.query)
        token = (query.get("$skiptoken") or [None])[0]
        digest = hashlib.sha256(body).hexdigest()
        with self._lock:
            fault = self._take_fault(token)
        if fault is not None:
            return self._fault(fault)
        if token is None:
            problem, types = _parse_body(body)
            if problem:
                return _error(400, "BadRequest", problem)
            with self._lock:
                snapshot = [copy.deepcopy(r) for r in self._recipients.values() if r.get("RecipientTypeDetails") in types]
            snapshot.sort(key=lambda r: str(r["Guid"]))
            offset = 0
        else:
            with self._lock:
                listing = self._listings.get(token)
            if listing is None:
                return _error(400, "BadRequest", "the skip token is unknown or expired")
            if listing[0] != digest:
                return _error(400, "BadRequest", "the request body differs from the body of the listing's first page")
            _, snapshot, offset = listing
        size = min(self.max_page_size, MAX_PAGE_SIZE, _prefer_size(headers.get("Prefer")))
        page = snapshot[offset : offset + size]
        doc: dict[str, Any] = {
            "@odata.context": f"{self.base_url}/adminapi/beta/{tenant}/$metadata#Collection(Exchange.GenericHashTable)",
            "adminapi.warnings@odata.type": "#Collection(String)",
            "@adminapi.warnings": [],
            "value": page,
        }
        if offset + size < len(snapshot):
            nxt = secrets.token_urlsafe(12)
            with self._lock:
                self._listings[nxt] = (digest, snapshot, offset + size)
            doc["@odata.nextLink"] = f"{self.base_url}/adminapi/beta/{tenant}/InvokeCommand?$skiptoken={nxt}"
        return _json(200, doc)

    def _take_fault(self, token: str | None) -> _Fault | None:
        page = 0 if token is None else (self._listings[token][2] if token in self._listings else None)
        for f in self._faults:
            if f.on_page is not None:
                size = min(self.max_page_size, MAX_PAGE_SIZE)
                if page is None or page // size != f.on_page:
                    continue
            f.times -= 1
            if f.times <= 0:
                self._faults.remove(f)
            return f
        return None

    @staticmethod
    def _fault(f: _Fault) -> Response:
        if f.kind == "drop":
            return Response(0, drop=True)
        if f.kind == "malformed":
            return Response(200, b'{"value": [{"Guid": "trunc', {"Content-Type": "application/json"})
        if f.kind in ("401", "403"):
            return _error(f.status, "Forbidden" if f.kind == "403" else "Unauthorized", "Access denied.",
                          {"x-ms-diagnostics": '2000008;reason="The user or app does not have the Exchange role assignments required for this cmdlet.";error_category="insufficient_auth"'})
        headers = {"Retry-After": f.retry_after} if f.retry_after is not None else {}
        if f.kind == "throttle":
            return _error(f.status, "ServerBusy", "The request was throttled because the tenant has exceeded the maximum number of concurrent requests. Try again later.", headers)
        return _error(f.status, "TooManyRequests" if f.kind == "429" else "ServiceUnavailable", "Try again later.", headers)


def _prefer_size(prefer: str | None) -> int:
    m = re.search(r"odata\.maxpagesize\s*=\s*(\d+)", prefer or "")
    return max(1, int(m.group(1))) if m else DEFAULT_PAGE_SIZE


def _parse_body(body: bytes) -> tuple[str | None, frozenset[str]]:
    try:
        doc = json.loads(body)
        cmd = doc["CmdletInput"]
        name, params = cmd["CmdletName"], cmd.get("Parameters") or {}
    except (ValueError, KeyError, TypeError):
        return "the body is not a CmdletInput", frozenset()
    if name != "Get-Recipient":
        return f"the cmdlet {name!r} is not served here", frozenset()
    if params.get("ResultSize") != "Unlimited":
        return "ResultSize must be 'Unlimited' for a complete listing", frozenset()
    types = params.get("RecipientTypeDetails")
    if types is None:
        return None, KNOWN_TYPES
    if isinstance(types, str):
        types = [types]
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        return "RecipientTypeDetails must be a list of strings", frozenset()
    unknown = [t for t in types if t not in KNOWN_TYPES]
    if unknown:
        return f"Cannot bind parameter 'RecipientTypeDetails': unknown value {unknown[0]!r}", frozenset()
    return None, frozenset(types)


def recipient(guid: str, kind: str, primary: str, *, emails: Sequence[str] | None = None, name: str = "", entra_id: str | None = None) -> dict[str, Any]:
    """A recipient as ``Get-Recipient`` returns it; ``emails`` default to ``SMTP:<primary>``."""
    return {
        "Guid": guid,
        "Identity": name or primary,
        "Name": name or primary.split("@")[0],
        "DisplayName": name or primary,
        "Alias": primary.split("@")[0],
        "RecipientType": RECIPIENT_TYPE.get(kind, kind),
        "RecipientTypeDetails": kind,
        "PrimarySmtpAddress": primary,
        "EmailAddresses": list(emails) if emails is not None else [f"SMTP:{primary}"],
        "ExternalDirectoryObjectId": entra_id or "",
        "HiddenFromAddressListsEnabled": False,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the demo tenant's Exchange-only recipients; print ``READY <base_url>``."""
    from devstack.tenant import demo_exchange_recipients

    parser = loopback_parser("python -m devstack.exchange_emulator", __doc__.split("\n")[0])
    parser.add_argument("--tenant", default=None, help="serve only this tenant (default: any)")
    parser.add_argument("--bearer", default=None, help="require this bearer token")
    parser.add_argument("--demo", action="store_true", help="serve devstack.tenant.demo_exchange_recipients() (the default)")
    parser.add_argument("--max-page-size", type=int, default=MAX_PAGE_SIZE)
    args = parse_loopback_args(parser, argv)
    emulator = ExchangeEmulator(demo_exchange_recipients(), tenant=args.tenant, bearer=args.bearer, max_page_size=args.max_page_size)
    return serve_until_signalled(lambda: emulator.start(port=args.port, host=args.host), emulator.stop)


if __name__ == "__main__":
    sys.exit(main())
