"""Whether a secret can travel where it must go: the sync API credential in the Authorization
header, the Graph client secret in the token request's form body.

The rules (docs/sync-rules.md, "Settings": a malformed setting stops the run before any network
call, and no secret value ever appears in an error):

* ``username:password`` is sent as Basic (RFC 7617): ``base64(UTF-8 bytes)``. Any character
  that UTF-8 can encode is carried, except the control characters (Unicode category ``Cc``:
  U+0000-U+001F, U+007F-U+009F), which RFC 7617 forbids in the user-id and the password.
* A bare token is sent as Bearer, verbatim: ``Authorization: Bearer <token>``. A header value
  carries printable ASCII only (U+0020-U+007E): httpx encodes header values as ASCII, and h11
  refuses CR, LF, NUL and the other control characters (RFC 9110, "field-value").
* The Graph client secret travels URL-encoded as UTF-8 in the form body (azure-identity hands it
  to MSAL): any character UTF-8 can encode, except the control characters, which no client
  secret Entra issues holds (a pasted line break, say).
* A lone surrogate (``os.environ`` turns bytes that are not UTF-8 into them) is never carried.

Each function returns why the value cannot be used, in words that quote no part of it (not a
character, not a position), or None."""

from __future__ import annotations

import unicodedata

CREDENTIAL_EXAMPLE = "username:password (sent as Basic), or a bearer token of printable ASCII characters"
_UNENCODABLE = "holds a character that is not valid Unicode text (an undecodable byte), so it cannot be encoded as UTF-8"
_CONTROL = "holds a control character (such as a line break, tab or NUL), which no credential carries"
_BEARER = ("is sent as a bearer token, which an HTTP header carries only as printable ASCII characters; it holds a non-ASCII or "
           "control character (a username:password pair may hold non-ASCII characters: it is sent base64-encoded as Basic)")


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _has_control(value: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in value)


def header_credential_problem(value: str) -> str | None:
    """Why the sync API credential ``value`` cannot be sent in the Authorization header, or None."""
    if not _encodable(value):
        return _UNENCODABLE
    if ":" in value:
        return _CONTROL if _has_control(value) else None
    if not all(" " <= ch <= "~" for ch in value):
        return _BEARER
    return None


def form_secret_problem(value: str) -> str | None:
    """Why the client secret ``value`` cannot be sent in the token request's form body, or None."""
    if not _encodable(value):
        return _UNENCODABLE
    return _CONTROL if _has_control(value) else None
