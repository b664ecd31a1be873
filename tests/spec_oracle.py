"""An independent oracle of what the service should hold, written from the contract alone
(docs/sync-rules.md, "Candidate addresses", "The three datasets" and "Scope and exclusions";
docs/sync-api.md, "4.2 Address syntax (`address` in `addresses` and `users`)"), without reading
the engine.

``expected(directory, domains, **settings)`` takes the emulator's directory model (the plain data
of devstack/tenant.py) and the receiver's provisioned domains, and returns
``{"addresses": {address}, "groups": {id: record}, "users": {id: record}}`` with the lists of
``parentIds`` and ``groupIds`` sorted, as ``view(receiver)`` shows the service's copy.

It is deliberately plain and slow: one pass per rule, no caching, no sharing with ``shared/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

ATEXT = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-/=?^_`{|}~"
LDH = set("abcdefghijklmnopqrstuvwxyz0123456789-")


def split_setting(value: str | None) -> list[str]:
    """A comma-separated setting: its non-empty items, stripped."""
    return [x.strip() for x in (value or "").split(",") if x.strip()]


def to_a_labels(domain: str) -> str:
    """Each non-ASCII label in its A-label (``xn--``) form; ASCII labels as they are."""
    out = []
    for label in domain.split("."):
        if label.isascii():
            out.append(label)
            continue
        try:
            out.append(label.encode("idna").decode("ascii"))
        except UnicodeError:
            out.append(label)  # stays non-ASCII, so it is not valid
    return ".".join(out)


def normalize(value: str) -> str:
    """Strip surrounding whitespace, lowercase, internationalized domain to A-labels."""
    v = value.strip().lower()
    if v.count("@") != 1:
        return v
    local, domain = v.split("@")
    return local + "@" + to_a_labels(domain)


def _dot_atom(local: str) -> bool:
    if not local or len(local) > 64:
        return False
    atoms = local.split(".")
    return all(a and all(ch in ATEXT for ch in a) for a in atoms)


def _a_label_ok(label: str) -> bool:
    try:
        u = label.encode("ascii").decode("idna")
    except UnicodeError:
        return False
    try:
        return u.encode("idna").decode("ascii") == label
    except UnicodeError:
        return False


def _host(domain: str) -> bool:
    if not domain or len(domain) > 253 or domain.endswith("."):
        return False
    labels = domain.lower().split(".")
    if len(labels) < 2:
        return False
    for label in labels:
        if not 1 <= len(label) <= 63 or not set(label) <= LDH or label[0] == "-" or label[-1] == "-":
            return False
        if label.startswith("xn--") and not _a_label_ok(label):
            return False
    return not labels[-1].isdigit()


def valid(address: str) -> bool:
    """The address rules of the sync API: one ``@``, ASCII, <= 254 octets, dot-atom local part
    of at most 64, a host-name domain."""
    if not address.isascii() or address.count("@") != 1 or len(address) > 254:
        return False
    local, domain = address.split("@")
    return _dot_atom(local) and _host(domain)


def candidates(obj: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(source, raw value) of an object's candidate addresses: ``mail``, and each ``smtp:`` proxy
    (prefix compared case-insensitively) without its prefix. source is "mail", "SMTP" (the
    uppercase primary prefix) or "smtp"."""
    out: list[tuple[str, str]] = []
    mail = obj.get("mail")
    if isinstance(mail, str):
        out.append(("mail", mail))
    for p in obj.get("proxyAddresses") or ():
        if isinstance(p, str) and p[:5].lower() == "smtp:":
            out.append(("SMTP" if p[:5] == "SMTP:" else "smtp", p[5:]))
    return out


def expected(
    directory: Mapping[str, Any],
    domains: Iterable[str],
    *,
    ADDRESS_DOMAINS: str | None = None,
    SYNC_SCOPE_GROUPS: str | None = None,
    EXCLUDE_USER_TYPES: str | None = None,
    EXCLUDE_ADDRESS_PATTERNS: str | None = None,
    exo: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    provisioned = {d.lower() for d in domains}
    if ADDRESS_DOMAINS is not None and split_setting(ADDRESS_DOMAINS):
        provisioned &= {to_a_labels(d.lower()) for d in split_setting(ADDRESS_DOMAINS)}
    patterns = [re.compile(p, re.IGNORECASE) for p in split_setting(EXCLUDE_ADDRESS_PATTERNS)]
    excluded_types = {t.lower() for t in split_setting(EXCLUDE_USER_TYPES)}

    users = {u["id"]: u for u in directory.get("users") or ()}
    groups = {g["id"]: g for g in directory.get("groups") or ()}
    contacts = {c["id"]: c for c in directory.get("contacts") or ()}
    members = {gid: [m for m in (g.get("members") or ())] for gid, g in groups.items()}
    holds = {gid: set(ms) for gid, ms in members.items()}

    # scope: the named groups, every group nested in them, and their user and contact members
    if SYNC_SCOPE_GROUPS is not None and split_setting(SYNC_SCOPE_GROUPS):
        by_lower = {gid.lower(): gid for gid in groups}
        todo = [by_lower[s.lower()] for s in split_setting(SYNC_SCOPE_GROUPS)]
        scoped_groups: set[str] = set()
        while todo:
            gid = todo.pop()
            if gid in scoped_groups:
                continue
            scoped_groups.add(gid)
            todo.extend(m for m in members[gid] if m in groups)
        scoped_members = {m for gid in scoped_groups for m in members[gid]}
        in_scope = lambda oid: oid in scoped_groups or oid in scoped_members  # noqa: E731
    else:
        scoped_groups = set(groups)
        in_scope = lambda oid: True  # noqa: E731

    def kept(raw: str) -> str | None:
        n = normalize(raw)
        if not valid(n) or n.split("@")[1] not in provisioned:
            return None
        if any(p.fullmatch(n) for p in patterns):
            return None
        return n

    def user_counts(u: Mapping[str, Any]) -> bool:
        return in_scope(u["id"]) and str(u.get("userType") or "").lower() not in excluded_types

    addresses: set[str] = set()
    for coll, objs in (("users", users), ("groups", groups), ("contacts", contacts)):
        for oid, obj in objs.items():
            if not in_scope(oid) or (coll == "users" and not user_counts(obj)):
                continue
            for _, raw in candidates(obj):
                k = kept(raw)
                if k:
                    addresses.add(k)
    for r in exo:
        # A recipient that is an Entra object follows that object's scope and user type; one that
        # is no Entra object is a member of no group, so a scope leaves it out.
        entra = r.get("ExternalDirectoryObjectId") or None
        if entra in users and not user_counts(users[entra]):
            continue
        if SYNC_SCOPE_GROUPS and split_setting(SYNC_SCOPE_GROUPS) and (entra is None or not in_scope(entra)):
            continue
        for raw in [r.get("PrimarySmtpAddress")] + [
            p[5:] for p in r.get("EmailAddresses") or () if isinstance(p, str) and p[:5].lower() == "smtp:"
        ]:
            if isinstance(raw, str):
                k = kept(raw)
                if k:
                    addresses.add(k)

    def parents(oid: str) -> list[str]:
        return sorted(gid for gid in scoped_groups if oid in holds[gid])

    group_records = {}
    for gid in scoped_groups:
        g = groups[gid]
        name = g.get("displayName") or g.get("mail") or gid
        group_records[gid] = {"id": gid, "name": name, "parentIds": parents(gid)}

    primaries: dict[str, str] = {}
    for uid, u in users.items():
        if not user_counts(u):
            continue
        primary = None
        cands = candidates(u)
        if isinstance(u.get("mail"), str):
            primary = kept(u["mail"])
        if primary is None:
            primary = next((kept(raw) for src, raw in cands if src == "SMTP" and kept(raw)), None)
        if primary is not None:
            primaries[uid] = primary
    user_records = {}
    for uid in sorted(primaries):
        a = primaries[uid]
        if any(r["address"] == a for r in user_records.values()):
            continue  # a smaller id keeps it
        user_records[uid] = {"id": uid, "address": a, "groupIds": parents(uid)}
    return {"addresses": addresses, "groups": group_records, "users": user_records}


def view(receiver) -> dict[str, Any]:
    """The service's copy, with its lists sorted, as ``expected`` gives it."""
    users = {k: {**v, "groupIds": sorted(v["groupIds"])} for k, v in receiver.records("users").items()}
    groups = {k: {**v, "parentIds": sorted(v["parentIds"])} for k, v in receiver.records("groups").items()}
    return {"addresses": {r["address"] for r in receiver.records("addresses").values()}, "groups": groups, "users": users}
