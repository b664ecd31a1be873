"""Address normalization and validation, exactly as the sync API validates them.

An address that passes here is one the service will not reject as ``invalid_address``:
the projection must never send a value the API would call invalid."""

from __future__ import annotations

import re
from functools import lru_cache

import idna

_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")
_LDH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


# A plain ASCII address that needs no IDNA step: dot-atoms of _ATEXT, one "@", a domain of
# letters, digits, hyphens and dots (judged by check_domain, through its cache). Whatever this pattern
# accepts, the full path below would accept the same way; everything else takes the full path.
# Possessive quantifiers: an atom's characters exclude "." and "@", and the domain runs to the
# end, so giving characters back can never make a match; the matcher then keeps no state to
# backtrack to (3,000 instructions a match instead of 3,400).
_PLAIN = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{|}~-]++(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]++)*+@([a-z0-9.-]++)")


# "smtp:" in every mix of cases: ``p[:5] in SMTP_PREFIXES`` is ``p[:5].lower() == "smtp:"``
# without building a lowered copy (no other code point lowercases to one of these ASCII
# characters: tests/test_candidate_paths.py checks every code point).
SMTP_PREFIXES = frozenset(a + b + c + d + ":" for a in "sS" for b in "mM" for c in "tT" for d in "pP")


class InvalidAddress(ValueError):
    """Why a value is not a valid address; the message is safe to log (it holds no secret)."""


@lru_cache(maxsize=4096)
def normalize_domain(domain: str) -> str:
    """Lowercase, and convert an internationalized domain to its A-label form.

    Cached: a tenant has few domains and hundreds of thousands of addresses."""
    domain = domain.strip().lower()
    if domain.isascii():
        return domain
    try:
        mapped = idna.uts46_remap(domain, std3_rules=False, transitional=False)
        # Only non-ASCII labels are converted: ASCII labels keep the plain host-name rules.
        return ".".join(
            label if label.isascii() else idna.alabel(label).decode("ascii") for label in mapped.split(".")
        )
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        raise InvalidAddress(f"domain {domain!r} is not a valid internationalized domain ({exc})") from None


def check_local_part(local: str) -> None:
    if not local:
        raise InvalidAddress("empty local part")
    if len(local) > 64:
        raise InvalidAddress("local part longer than 64 octets")
    for atom in local.split("."):
        if not atom:
            raise InvalidAddress("local part has an empty dot-atom (leading, trailing or double dot)")
        if not _ATEXT.issuperset(atom):
            raise InvalidAddress("local part has a character outside the RFC 5322 dot-atom set")


# Domains check_domain passed: its cache, which split_address's fast path also reads without a
# call. Bounded: a tenant has few domains; when a new one would pass _GOOD_DOMAINS_MAX the set
# starts again empty (a long-lived worker never keeps a stale full set that caches nothing new).
_GOOD_DOMAINS: set[str] = set()
_GOOD_DOMAINS_MAX = 4096


def check_domain(domain: str) -> None:
    """Host-name rules of docs/sync-api.md; ``domain`` must already be ASCII.

    Raises ``InvalidAddress`` naming the rule broken. Cached in ``_GOOD_DOMAINS`` (a domain that
    passed is not checked again; one that fails is checked again each time)."""
    if domain in _GOOD_DOMAINS:
        return
    _check_host_name(domain)
    if len(_GOOD_DOMAINS) >= _GOOD_DOMAINS_MAX:
        _GOOD_DOMAINS.clear()
    _GOOD_DOMAINS.add(domain)


def _check_host_name(domain: str) -> None:
    if not domain:
        raise InvalidAddress("empty domain")
    if len(domain) > 253:
        raise InvalidAddress("domain longer than 253 characters")
    if domain.endswith("."):
        raise InvalidAddress("domain has a trailing dot")
    labels = domain.split(".")
    if len(labels) < 2:
        raise InvalidAddress("domain needs at least two labels")
    for label in labels:
        if not 1 <= len(label) <= 63:
            raise InvalidAddress("domain label empty or longer than 63 characters")
        if not _LDH.issuperset(label):
            raise InvalidAddress("domain label has a character other than a letter, digit or hyphen")
        if label[0] == "-" or label[-1] == "-":
            raise InvalidAddress("domain label starts or ends with a hyphen")
        if label[:4].lower() == "xn--":
            _check_a_label(label)
    if labels[-1].isdigit():
        raise InvalidAddress("top-level domain is all digits")


def _check_a_label(label: str) -> None:
    try:
        ulabel = idna.decode(label)
        again = idna.encode(ulabel).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        raise InvalidAddress(f"label {label!r} is not a valid A-label") from None
    if again != label.lower():
        raise InvalidAddress(f"label {label!r} is not a valid A-label")


def normalize_address(value: str) -> str:
    """Strip, lowercase, convert an IDN domain to A-labels, then validate.

    Returns the normalized address or raises ``InvalidAddress`` naming the rule it breaks."""
    return split_address(value)[0]


def split_address(value: str) -> tuple[str, str]:
    """``normalize_address`` and the normalized address's domain (``domain_of``), in one step:
    plain ASCII takes a compiled fast path, anything else ``normalize_address_fully``.

    The fast path does not strip: a value the pattern matches once lowercased has no whitespace
    at either end (no whitespace code point lowercases to another, and none is in the pattern),
    so stripping would not change it; a value with surrounding whitespace takes the full path,
    which strips it."""
    lowered = value.lower()
    plain = _PLAIN.fullmatch(lowered)
    if plain is not None:
        domain = plain[1]
        n = len(lowered)
        if n <= 254 and n - len(domain) <= 65:  # the local part's 64 octets, the "@"
            if domain not in _GOOD_DOMAINS:  # check_domain's own cache, read without the call
                check_domain(domain)
            return lowered, domain
    address = normalize_address_fully(value)
    return address, domain_of(address)


def normalize_address_fully(value: str) -> str:
    """``normalize_address`` without its fast path for plain ASCII (the reference it must equal)."""
    value = value.strip().lower()
    if value.count("@") != 1:
        raise InvalidAddress("an address needs exactly one '@'")
    local, domain = value.split("@")
    if not local.isascii():
        raise InvalidAddress("local part is not ASCII")
    if domain != domain.strip():
        # Only the whole value's surrounding whitespace is stripped: "a@ contoso.com" is not an
        # address (normalize_domain strips, because it also reads ADDRESS_DOMAINS entries).
        raise InvalidAddress("whitespace between '@' and the domain, or inside the address")
    domain = normalize_domain(domain)
    check_local_part(local)
    check_domain(domain)
    address = f"{local}@{domain}"
    if len(address.encode("ascii")) > 254:
        raise InvalidAddress("address longer than 254 octets")
    return address


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]
