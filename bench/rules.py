"""Scope and exclusion rules benchmark (issue 12): what the rules cost on top of a run at N users,
measured on the directory cache a run works on. Prints a table; not a timed test.

    .venv/bin/python bench/rules.py --users 10000

For no rules and for each rule setting, it measures: loading a full read into the cache and
projecting every dataset (what a full update does), and a delta round that moves 1 % of the
users between groups followed by what a delta update then does with the rules (judge the whole
cached directory again, find what moved, project the affected keys, count and list the
exclusions for the run report).
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack.tenant import generate_tenant  # noqa: E402
from shared.model.directory import SCHEMA, Affected, Cache, Round  # noqa: E402
from shared.model.rules import parse_rules, rule_exclusions_summary  # noqa: E402

DOMAINS = frozenset({"contoso.com", "fabrikam.com"})


def first_round(tenant: dict) -> Round:
    groups = {g["id"] for g in tenant["groups"]}
    rnd = Round()
    for u in tenant["users"]:
        rnd.take("users", u)
    for c in tenant["contacts"]:
        rnd.take("contacts", c)
    for g in tenant["groups"]:
        ops = [{"@odata.type": "#microsoft.graph.group" if m in groups else "#microsoft.graph.user", "id": m} for m in g["members"]]
        rnd.take("groups", {**{k: v for k, v in g.items() if k != "members"}, "members@delta": ops})
    return rnd


def churn(tenant: dict, share: float, seed: int) -> Round:
    """Move ``share`` of the users into another group (one member entry added, one removed)."""
    rng = random.Random(seed)
    groups = tenant["groups"]
    rnd = Round()
    for u in rng.sample(tenant["users"], max(1, int(len(tenant["users"]) * share))):
        src, dst = rng.choice(groups), rng.choice(groups)
        rnd.take("groups", {"id": src["id"], "members@delta": [{"id": u["id"], "@removed": {"reason": "deleted"}}]})
        rnd.take("groups", {"id": dst["id"], "members@delta": [{"@odata.type": "#microsoft.graph.user", "id": u["id"]}]})
    return rnd


def measure(tenant: dict, label: str, rules) -> tuple[str, float, float, int, dict]:
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    cache = Cache(conn, DOMAINS, rules, empty=True)
    t0 = time.perf_counter()
    cache.apply_round(first_round(tenant), None)
    records = {d: cache.records(d) for d in ("addresses", "groups", "users")}
    excluded = cache.excluded()
    full = time.perf_counter() - t0
    cache = Cache(conn, DOMAINS, rules)
    t0 = time.perf_counter()
    before = cache.verdict()
    affected = Affected()
    cache.apply_round(churn(tenant, 0.01, 7), affected)
    if rules.judges_objects:
        cache.rescope(before, affected)
    affected.users |= cache.claimants(affected.primaries)
    for d in ("addresses", "groups", "users"):
        cache.desired(d, sorted(affected.keys(d)))
    cache.excluded()
    if rules.active:
        rule_exclusions_summary(cache.rule_exclusions())
    delta = time.perf_counter() - t0
    conn.close()
    return label, full, delta, len(records["users"]), excluded


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=10000)
    args = ap.parse_args()
    tenant = generate_tenant(args.users, domains=tuple(sorted(DOMAINS)))
    # The scope: every fourth group and what is nested in it.
    scope = ",".join(g["id"] for g in tenant["groups"][::4])
    cases = [
        ("no rules", parse_rules(None, None, None)),
        ("SYNC_SCOPE_GROUPS (1/4 of groups)", parse_rules(scope, None, None)),
        ("EXCLUDE_USER_TYPES=Guest", parse_rules(None, "Guest", None)),
        ("EXCLUDE_ADDRESS_PATTERNS (2)", parse_rules(None, None, r"noreply@.*,.*\.test@contoso\.com")),
        ("all three", parse_rules(scope, "Guest", r"noreply@.*,.*\.test@contoso\.com")),
    ]
    print(f"users={args.users} groups={len(tenant['groups'])} contacts={len(tenant['contacts'])}")
    print(f"{'rules':<36} {'full read+project s':>20} {'1% delta update s':>18} {'user records':>13}  excluded")
    for label, rules in cases:
        name, full, delta, users, excluded = measure(tenant, label, rules)
        print(f"{name:<36} {full:>20.2f} {delta:>18.2f} {users:>13}  {excluded}")


if __name__ == "__main__":
    main()
