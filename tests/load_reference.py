"""A test-only reference for the streamed load (``shared.model.loading``): the two-pass load
the product used before it derived each object's candidate rows with its batch.

Pass one merges each folded batch into ``objects`` (with ``excluded`` 0) and ``members``; pass
two, once the round is complete, reads every ``objects`` row back in key order and derives
``kept``, ``users`` and ``objects.excluded``. The candidate rules are a copy of the product's
as they were (docs/sync-rules.md, "Candidate addresses"), through the slow normalization
(``normalize_address_fully``), so the reference shares neither the product's fast paths nor
its count-only path: only the fold (``Round``) and the full normalization."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any

from shared.model.addresses import InvalidAddress, domain_of, normalize_address_fully
from shared.model.fold import KIND_OF, OTYPE, Net, Round
from shared.model.rules import NO_RULES, Rules

STEP = 4096  # objects rows per step of the second pass


def reference_candidates(obj: dict[str, Any], provisioned: frozenset[str], rules: Rules) -> tuple[list[str], str | None, int, list[str]]:
    """(kept addresses, primary address, count of excluded candidates, invalid values)."""
    raw: list[tuple[str, bool | None]] = []
    mail = obj.get("mail")
    if isinstance(mail, str) and mail.strip():
        raw.append((mail, None))
    proxies = obj.get("proxyAddresses")
    if isinstance(proxies, list):
        for p in proxies:
            if isinstance(p, str) and p[:5].lower() == "smtp:":
                raw.append((p[5:], p.startswith("SMTP:")))
    kept: list[str] = []
    invalid: list[str] = []
    excluded = 0
    primary_proxy = kept_mail = None
    seen: set[str] = set()
    for value, is_primary in raw:
        try:
            address = normalize_address_fully(value)
        except InvalidAddress:
            shown = value.strip().lower()
            if shown not in seen:
                seen.add(shown)
                excluded += 1
                invalid.append(value)
            continue
        if domain_of(address) not in provisioned or (rules.exclude_address_patterns and rules.address_reason(address) is not None):
            if address not in seen:
                seen.add(address)
                excluded += 1
            continue
        if address not in seen:
            seen.add(address)
            kept.append(address)
        if is_primary is None:
            kept_mail = address
        elif is_primary and primary_proxy is None:
            primary_proxy = address
    return kept, kept_mail or primary_proxy, excluded, invalid


def merge_batch(conn: sqlite3.Connection, kind: str, nets: dict[str, Net]) -> None:
    """Pass one: a folded batch into ``objects`` (``excluded`` 0) and ``members``."""
    q, em = conn.execute, conn.executemany
    old = {oid: (k, data) for oid in nets for (k, data) in q("SELECT kind, data FROM objects WHERE id=?", (oid,))}
    for oid, net in nets.items():
        prev = old.get(oid)
        if prev is not None and (net.reset or not net.present):
            q("DELETE FROM objects WHERE id=?", (oid,))
            if prev[0] == "g":
                q("DELETE FROM members WHERE group_id=?", (oid,))
            prev = None
        if net.present:
            data = {**json.loads(prev[1]), **net.props} if prev is not None and prev[0] == kind else net.props
            q("INSERT OR REPLACE INTO objects (id, kind, data, excluded) VALUES (?, ?, ?, 0)", (oid, kind, json.dumps(data, separators=(",", ":"))))
        em("DELETE FROM members WHERE group_id=? AND member_id=?", [(oid, m) for m, (add, _) in net.members.items() if not add])
        em("INSERT OR REPLACE INTO members (group_id, member_id, kind) VALUES (?, ?, ?)",
           [(oid, m, mk) for m, (add, mk) in net.members.items() if add])


def merge_entries(conn: sqlite3.Connection, entries: Iterable[tuple[str, dict[str, Any]]], flush_entries: int) -> None:
    """Pass one over a round's entries, folded ``flush_entries`` at a time (no tables emptied)."""
    rnd, pending = Round(), 0
    for collection, obj in entries:
        rnd.take(collection, obj)
        pending += 1
        if pending >= flush_entries:
            for c, nets in rnd.nets.items():
                merge_batch(conn, KIND_OF[c], nets)
            rnd, pending = Round(), 0
    for c, nets in rnd.nets.items():
        merge_batch(conn, KIND_OF[c], nets)


def derive(conn: sqlite3.Connection, provisioned: frozenset[str], rules: Rules = NO_RULES) -> list[tuple[str, str]]:
    """Pass two: every Graph object's candidate rows, from its final row. Returns the
    (object id, invalid value) pairs a load logs."""
    q = conn.execute
    logged: list[tuple[str, str]] = []
    last = ""
    while True:
        step = q("SELECT id, kind, data FROM objects WHERE id > ? ORDER BY id LIMIT ?", (last, STEP)).fetchall()
        if not step:
            return logged
        last = step[-1][0]
        for oid, kind, data in step:
            if kind not in OTYPE:
                continue
            kept, primary, excluded, invalid = reference_candidates(json.loads(data), provisioned, rules)
            logged.extend((oid, v) for v in invalid)
            q("UPDATE objects SET excluded=? WHERE id=?", (excluded, oid))
            conn.executemany("INSERT OR IGNORE INTO kept (address, object_id) VALUES (?, ?)", [(a, oid) for a in kept])
            if kind == "u":
                q("INSERT OR REPLACE INTO users (id, primary_address) VALUES (?, ?)", (oid, primary))
