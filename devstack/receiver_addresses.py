"""Address syntax of the sync API, written from docs/sync-api.md alone.

The receiver must not share code with the product, so that a bug in the
product's validation cannot hide behind the same bug here.
"""

from __future__ import annotations

import re
from functools import lru_cache

import idna

_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_LDH_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

MAX_ADDRESS_OCTETS = 254
MAX_LOCAL_OCTETS = 64
MAX_DOMAIN_CHARS = 253


def address_problem(address: str) -> str | None:
    """Why `address` breaks docs/sync-api.md's syntax, or None when it is valid."""
    if not address.isascii():
        return "the address is not ASCII"
    if address.count("@") != 1:
        return "an address has exactly one '@'"
    if len(address) > MAX_ADDRESS_OCTETS:
        return f"the address is longer than {MAX_ADDRESS_OCTETS} octets"
    local, domain = address.split("@")
    return local_part_problem(local) or domain_problem(domain)


def local_part_problem(local: str) -> str | None:
    """Why `local` is not an unquoted RFC 5322 dot-atom of at most 64 octets."""
    if not local:
        return "the local part is empty"
    if len(local) > MAX_LOCAL_OCTETS:
        return f"the local part is longer than {MAX_LOCAL_OCTETS} octets"
    if not _DOT_ATOM.fullmatch(local):
        return "the local part is not a dot-atom"
    return None


@lru_cache(maxsize=4096)
def domain_problem(domain: str) -> str | None:
    """Why `domain` is not a host name in ASCII form, or None when it is one (cached: domains repeat)."""
    if not domain:
        return "the domain is empty"
    if len(domain) > MAX_DOMAIN_CHARS:
        return f"the domain is longer than {MAX_DOMAIN_CHARS} characters"
    if domain.endswith("."):
        return "the domain has a trailing dot"
    labels = domain.split(".")
    if len(labels) < 2:
        return "the domain has fewer than two labels"
    for label in labels:
        problem = label_problem(label)
        if problem:
            return problem
    if labels[-1].isdigit():
        return "the top-level label is all digits"
    return None


def label_problem(label: str) -> str | None:
    """Why one domain label is not LDH of 1..63 characters or not a valid A-label."""
    if not _LDH_LABEL.fullmatch(label):
        return f"the domain label {label!r} is not 1 to 63 letters, digits and inner hyphens"
    if label.lower().startswith("xn--") and not is_valid_a_label(label):
        return f"the domain label {label!r} is not a valid A-label"
    return None


def is_valid_a_label(label: str) -> bool:
    """True when an `xn--` label decodes under IDNA 2008 and encodes back to itself."""
    try:
        unicode_label = idna.decode(label)
        return idna.encode(unicode_label).decode("ascii") == label.lower()
    except (idna.IDNAError, UnicodeError, ValueError):
        return False


def normalize_domain(domain: str) -> str:
    """A provisioned domain in the form GET /domains shows: lowercased, A-labels."""
    domain = domain.strip().rstrip(".")
    if not domain.isascii():
        domain = idna.encode(domain, uts46=True).decode("ascii")
    domain = domain.lower()
    problem = domain_problem(domain)
    if problem:
        raise ValueError(f"provisioned domain {domain!r} is invalid: {problem}")
    return domain
