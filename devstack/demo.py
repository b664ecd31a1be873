"""The local demo: the whole product against the embedded local stack.

Brings up Azurite (blob state), the Graph emulator with a seeded demo tenant of a few
thousand objects, the Exchange Online emulator with the recipients Graph cannot see (dynamic
distribution groups, mail-enabled public folders; ``EXO_MODE=augment``), and the strict sync
API receiver; then runs the real CLI
(``python -m shared``): ``test-update``, ``update``, an incremental ``update`` (a delta
round) after a change to the demo directory, and then a mass deletion that the deletion
guard holds until ``approve-deletions``, printing each summary and ``status``."""

from __future__ import annotations

import json
import os
import subprocess  # noqa: S404 - runs the product's own CLI
import sys
from pathlib import Path

from devstack.azurite import Azurite, AzuriteNotInstalled
from devstack.exchange_emulator import ExchangeEmulator
from devstack.graph_emulator import GraphEmulator
from devstack.sync_receiver import SyncReceiver
from devstack.tenant import DEMO_DOMAINS, DEMO_EXO_TENANT, demo_exchange_recipients, demo_tenant

ROOT = Path(__file__).resolve().parent.parent
DEMO_CREDENTIAL = "demo-admin:local-demo-only"  # noqa: S105 - the local receiver's demo account


def _run(action: str, env: dict[str, str], *args: str, expect: int = 0) -> dict:
    print(f"\n$ python -m shared {' '.join((action, *args))}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "shared", action, *args, "--json"], cwd=ROOT, env=env,  # noqa: S603
                          capture_output=True, text=True, timeout=600)
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1]) if lines else {}
    warnings = [ln for ln in proc.stderr.splitlines() if " WARNING " in ln]
    if warnings:
        print(f"  ({len(warnings)} warnings, e.g. {cut(warnings[0].split(': ', 1)[-1], 140)})")
    _print_summary(summary)
    if proc.returncode != expect:
        print(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed", file=sys.stderr)
        raise SystemExit(proc.returncode or 1)
    if expect:
        print(f"  exit status {proc.returncode}: {cut(proc.stderr.strip().splitlines()[-1], 400)}")
    return summary


def cut(text: str, limit: int) -> str:
    """``text`` when it fits in ``limit`` characters; else its longest prefix that ends at a
    space (or, with no space, ``limit`` characters) followed by `` …``, so that a shortened line
    reads as shortened rather than as a word or a JSON value the product got wrong."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    space = head.rfind(" ")
    return (head[:space] if space > 0 else head).rstrip() + " …"


def _status(env: dict[str, str]) -> str | None:
    """Print ``status`` as an operator reads it; return the held set's digest (what the
    operator reviewed, for ``approve-deletions --expect``)."""
    print("\n$ python -m shared status", flush=True)
    proc = subprocess.run([sys.executable, "-m", "shared", "status"], cwd=ROOT, env=env,  # noqa: S603
                          capture_output=True, text=True, timeout=120)
    for line in proc.stdout.splitlines()[:70]:
        print(f"  {line}")
    doc = subprocess.run([sys.executable, "-m", "shared", "status", "--json"], cwd=ROOT, env=env,  # noqa: S603
                         capture_output=True, text=True, timeout=120)
    lines = doc.stdout.strip().splitlines()
    return json.loads(lines[-1]).get("heldDigest") if doc.returncode == 0 and lines else None


def _print_summary(s: dict) -> None:
    print(f"  ok={s.get('ok')}  {s.get('durationSeconds', 0):.2f} s  graphRequests={s.get('graphRequests')}  exoRequests={s.get('exoRequests', 0)}  syncRequests={s.get('syncRequests')}")
    print(f"  {'dataset':<10} {'added':>7} {'removed':>8} {'rejected':>9} {'excluded':>9}")
    for name, c in s.get("datasets", {}).items():
        print(f"  {name:<10} {c['added']:>7} {c['removed']:>8} {c['rejected']:>9} {c['excluded']:>9}")
    for name, ch in (s.get("changes") or {}).items():
        for rec in ch["added"][:2]:
            print(f"    {name} + {json.dumps(rec)}")
        for key in ch["removed"][:2]:
            print(f"    {name} - {key}")
    from_exchange = [e for e in ((s.get("changes") or {}).get("addresses") or {}).get("addedFrom", []) if e["source"] == "Exchange Online"]
    for e in from_exchange[:4]:
        print(f"    addresses + {e['address']}  (Exchange Online {e['recipientType']} {e['objectId']})")
    reasons: dict[tuple[str, str], int] = {}  # (dataset, reason): each dataset's counts add up to its column above
    for e in s.get("exclusions") or []:
        reason = e["reason"].split(":")[0].split(" already")[0]
        reasons[(e["dataset"], reason)] = reasons.get((e["dataset"], reason), 0) + 1
    for (dataset, reason), n in sorted(reasons.items(), key=lambda kv: -kv[1])[:8]:
        print(f"    excluded {n:>5} {dataset:<9} × {reason}")
    for name, h in (s.get("heldDeletions") or {}).items():
        print(f"    HELD {h['count']} {name} deletions (deletion guard), e.g. {', '.join(h['keys'][:3])}")
    print("  summary:", cut(json.dumps({k: v for k, v in s.items() if k not in ("changes", "exclusions")}), 600))


def change_directory(graph: GraphEmulator) -> None:
    """A day in the life of the directory: a hire, a leaver, a rename, a new group membership."""
    snap = graph.snapshot()
    leaver = snap["users"][10]
    renamed = snap["groups"][3]
    joiner = {"id": "d3000d30-0000-4000-8000-000000000001", "displayName": "New Hire",
              "mail": "new.hire@contoso.com", "proxyAddresses": ["SMTP:new.hire@contoso.com", "smtp:nh@fabrikam.com"],
              "userPrincipalName": "new.hire@contoso.com", "userType": "Member", "accountEnabled": True}
    graph.upsert_user(joiner)
    graph.delete_user(leaver["id"])
    graph.upsert_group({**renamed, "displayName": f"{renamed.get('displayName') or 'Group'} (renamed)"})
    graph.add_member(renamed["id"], joiner["id"])
    print(f"\n# directory change: hired {joiner['mail']}, removed user {leaver['id']}, renamed and joined group {renamed['id']}")


def show_exchange(exo: ExchangeEmulator, receiver: SyncReceiver) -> None:
    """The addresses only Exchange Online knows, as the receiver now holds them."""
    held = {r["address"] for r in receiver.records("addresses").values()}
    print("\n# recipients that Graph cannot see (EXO_MODE=augment), registered at the receiver:")
    for rec in exo.recipients():
        primary = rec["PrimarySmtpAddress"].lower()
        print(f"  {'registered' if primary in held else 'MISSING   '}  {primary:<28} {rec['RecipientTypeDetails']:<26} {rec['DisplayName']}")


RULE_SETTINGS = ("SYNC_SCOPE_GROUPS", "EXCLUDE_USER_TYPES", "EXCLUDE_ADDRESS_PATTERNS")


def try_scope(graph: GraphEmulator, env: dict[str, str]) -> None:
    """A preview with scope and exclusions: the rule settings from the environment when any is
    set, else the demo's "Cycle A" group (nested, cyclic), guests and no-reply addresses."""
    groups = {g.get("displayName"): g["id"] for g in graph.snapshot()["groups"]}
    rules = {k: os.environ[k] for k in RULE_SETTINGS if os.environ.get(k, "").strip()}
    if not rules:
        rules = {"SYNC_SCOPE_GROUPS": groups["Cycle A"], "EXCLUDE_USER_TYPES": "Guest", "EXCLUDE_ADDRESS_PATTERNS": r"no-?reply@.*"}
    print("\n# a scope: a preview with " + ", ".join(f"{k}={v}" for k, v in rules.items()))
    print("#   (demo groups to try: " + ", ".join(f"{n!r} {groups[n]}" for n in ("Cycle A", "Ring X", "Self Loop") if n in groups) + ")")
    summary = _run("test-update", {**env, **rules})
    for line in rule_lines(summary, rules):
        print(line)


def rule_lines(summary: dict, rules: dict[str, str]) -> list[str]:
    """One line per rule setting that is set: what the run's ``ruleExclusions`` counts say it
    left out, per dataset, or that it left out nothing (an exclusion already outside the scope
    counts for the scope alone)."""
    counts = (summary.get("ruleExclusions") or {}).get("counts") or {}
    lines = []
    for setting in (s for s in RULE_SETTINGS if s in rules):
        per_dataset = {d: n for d, n in sorted((counts.get(setting) or {}).items()) if n}
        if per_dataset:
            lines.append(f"    rule {setting} leaves out: " + ", ".join(f"{d} {n}" for d, n in per_dataset.items()))
        else:
            lines.append(f"    rule {setting} leaves out nothing here")
    return lines


def main() -> int:
    try:
        azurite = Azurite().start()
    except AzuriteNotInstalled as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    graph = GraphEmulator(demo_tenant())
    exo = ExchangeEmulator(demo_exchange_recipients(), tenant=DEMO_EXO_TENANT)
    receiver = SyncReceiver(domains=list(DEMO_DOMAINS), credential=DEMO_CREDENTIAL)
    try:
        graph.start()
        exo.start()
        receiver.start()
        snap = graph.snapshot()
        print("# local stack: Graph emulator", graph.base_url, "| Exchange Online emulator", exo.base_url,
              "| sync API receiver", receiver.base_url, "| Azurite blob", azurite.port)
        print(f"# demo tenant: {len(snap['users'])} users, {len(snap['groups'])} groups, {len(snap['contacts'])} contacts; "
              f"provisioned domains: {', '.join(receiver.domains)}")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GRAPH_", "SYNC_", "KEY_VAULT", "AzureWebJobs", "EXO_", "EXCLUDE_"))}
        env.update({
            "GRAPH_AUTH": "none", "GRAPH_BASE_URL": graph.base_url, "SYNC_API_URL": receiver.base_url,
            "SYNC_API_CREDENTIAL": DEMO_CREDENTIAL, "SYNC_STATE": "blob:sync-state", "AzureWebJobsStorage": azurite.connection_string,
            "GRAPH_TENANT_ID": DEMO_EXO_TENANT, "EXO_MODE": "augment", "EXO_BASE_URL": exo.base_url,
        })
        _run("test-update", env)
        _run("update", env)
        show_exchange(exo, receiver)
        change_directory(graph)
        _run("update", env)
        users = graph.snapshot()["users"]
        gone = users[: len(users) * 3 // 10]
        for u in gone:
            graph.delete_user(u["id"])
        print(f"\n# a wrong filter: {len(gone)} users (30 %) disappear from the directory at once")
        _run("update", env, expect=4)
        digest = _status(env)
        _run("approve-deletions", env, "--expect", digest or "")
        _run("update", env)
        held = {d: len(receiver.records(d)) for d in ("addresses", "groups", "users")}
        print(f"\n# the receiver now holds: {held}")
        try_scope(graph, env)
    finally:
        receiver.stop()
        exo.stop()
        graph.stop()
        azurite.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
