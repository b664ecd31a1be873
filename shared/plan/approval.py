"""Approvals bound to what was reviewed, and who gave them.

The deletion guard holds deletions until an operator approves them (``shared/plan/guard.py``).
An approval must cover exactly the held set the operator reviewed: ``status`` and
``test-update`` show a **digest** and a **count** of the held set, and ``approve-deletions``
requires that digest (``--expect DIGEST`` on the command line, ``?expect=DIGEST`` on the HTTP
endpoint). When the held set changed in between (more deletions were held, or some dropped
out), the digest differs and the approval is refused (exit status 5, HTTP 409); nothing is
approved.

The digest is the first 16 hex digits of SHA-256 over the canonical JSON of
``{dataset: sorted keys}`` (datasets with nothing held left out). It covers the keys only,
not whether they are already approved, so it is stable across a repeated approval.

The approver is recorded in the run report and the log line:

* the command line: ``cli:<user>@<host>`` (the OS account and host name);
* the HTTP endpoint with App Service authentication on (``WEBSITE_AUTH_ENABLED=True``, set
  by the platform, which then strips any client-sent ``X-MS-CLIENT-PRINCIPAL*`` headers):
  ``entra:<name> (oid <object id>)`` from the ``X-MS-CLIENT-PRINCIPAL`` header, and the
  principal must hold the app role ``APPROVER_ROLE``;
* the HTTP endpoint with a function key: ``function-key:sha256:<8 hex digits>``, a
  fingerprint of the key presented (the Functions host does not pass the key's name to a
  Python worker); ``docs/deployment.md`` shows how to match it to the key's name.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import json
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..common.errors import SyncError
from ..common.textsafe import safe_text

DIGEST_HEX = 16
APPROVER_ROLE = "Deletions.Approve"  # the app role an Entra principal needs to approve
_OID_CLAIMS = ("http://schemas.microsoft.com/identity/claims/objectidentifier", "oid")
_NAME_CLAIMS = ("name", "preferred_username", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn")


class ApprovalMismatchError(SyncError):
    """The held set is not the one the operator reviewed (its digest differs from ``expect``)."""

    exit_code = 5
    http_status = 409


class ApprovalForbiddenError(SyncError):
    """The caller may not approve (no Entra principal, or no approver role): HTTP 403."""

    http_status = 403


def held_digest(held: Mapping[str, Iterable[str]]) -> str:
    """The digest of a held set ``{dataset: keys}``; empty datasets do not count."""
    canonical = {d: sorted(str(k) for k in keys) for d, keys in sorted(held.items())}
    canonical = {d: keys for d, keys in canonical.items() if keys}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:DIGEST_HEX]


def held_count(held: Mapping[str, Iterable[str]]) -> int:
    return sum(len(list(keys)) for keys in held.values())


def normalize_digest(raw: str | None) -> str | None:
    """``raw`` trimmed and lower-cased; None when absent or blank."""
    if raw is None:
        return None
    value = raw.strip().lower()
    return value or None


def check_expected(held: Mapping[str, Iterable[str]], expect: str, scope: str) -> str:
    """The digest of ``held`` when it equals ``expect``; otherwise ``ApprovalMismatchError``
    with the count now held (never the digest: it is read from ``status`` after a review)."""
    digest = held_digest(held)
    if normalize_digest(expect) != digest:
        raise ApprovalMismatchError(
            f"the held deletions{scope} are not the set that was reviewed: --expect/expect={safe_text(expect, 40)!r} does not "
            f"match the {held_count(held)} deletions held now; nothing was approved. Review them again with "
            "'python -m shared status' (or GET status) and approve with the digest it shows"
        )
    return digest


@dataclass(frozen=True)
class Approver:
    """Who approved: ``kind`` is cli, entra or function-key; ``name`` identifies them."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name}


def cli_approver() -> Approver:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER
        user = "unknown-user"
    return Approver("cli", f"{safe_text(user, 100)}@{safe_text(socket.gethostname(), 200)}")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return None


def _principal(raw: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(base64.b64decode(raw, validate=False))
    except (binascii.Error, ValueError, RecursionError):  # not base64, not UTF-8 JSON, or nested past the parser's depth
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("claims"), list) else None


def http_approver(headers: Mapping[str, str], params: Mapping[str, str], env: Mapping[str, str]) -> Approver:
    """The approver of an HTTP approval, or ``ApprovalForbiddenError``.

    With App Service authentication on, the principal must carry ``APPROVER_ROLE``; the
    platform-set headers are trusted only then (otherwise a client could send them)."""
    if (env.get("WEBSITE_AUTH_ENABLED") or "").strip().lower() == "true":
        raw = _header(headers, "X-MS-CLIENT-PRINCIPAL")
        doc = _principal(raw) if raw else None
        if doc is None:
            raise ApprovalForbiddenError("approving needs a signed-in Entra principal (App Service authentication is on, and no principal came with the request)")
        role_typ = doc.get("role_typ") or "roles"
        claims = [c for c in doc["claims"] if isinstance(c, dict)]
        roles = {str(c.get("val")) for c in claims if c.get("typ") in (role_typ, "roles")}
        oid = next((str(c.get("val")) for c in claims if c.get("typ") in _OID_CLAIMS), "")
        name = _header(headers, "X-MS-CLIENT-PRINCIPAL-NAME") or next((str(c.get("val")) for c in claims if c.get("typ") in _NAME_CLAIMS), "")
        who = f"{safe_text(name, 200) or 'unnamed'} (oid {safe_text(oid, 64) or 'unknown'})"
        if APPROVER_ROLE not in roles:
            raise ApprovalForbiddenError(f"{who} does not hold the app role {APPROVER_ROLE}, which approving held deletions needs")
        return Approver("entra", who)
    key = _header(headers, "x-functions-key") or params.get("code") or ""
    if not key:
        return Approver("function-key", "none presented (local call)")
    return Approver("function-key", "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:8])
