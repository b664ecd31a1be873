"""The local stack for end-to-end tests: a nasty directory, the Graph emulator, the strict
receiver, and a way to run the product's CLI exactly as an operator (or the harness) does."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CREDENTIAL = "sync-admin:Canary-Pa55word-7f3e"
DOMAINS = ["contoso.com", "fabrikam.com", "xn--bcher-kva.example"]


def U(n: int) -> str:
    return f"10000000-0000-0000-0000-{n:012d}"


def G(n: int) -> str:
    return f"20000000-0000-0000-0000-{n:012d}"


def C(n: int) -> str:
    return f"30000000-0000-0000-0000-{n:012d}"


DEVICE = "40000000-0000-0000-0000-000000000001"
SP = "50000000-0000-0000-0000-000000000001"


def nasty_directory() -> dict[str, Any]:
    return {
        "users": [
            {"id": U(1), "displayName": "Alice", "mail": "Alice@Contoso.com",
             "proxyAddresses": ["SMTP:alice@contoso.com", "smtp:alice@contoso.onmicrosoft.com", "X500:/o=ExchangeLabs/cn=alice",
                                "SIP:alice@contoso.com", "smtp:Al.Ice@FABRIKAM.COM"]},
            {"id": U(2), "displayName": "Bob", "mail": None, "proxyAddresses": ["SMTP:bob@bücher.example", "smtp:bob@contoso.com"]},
            {"id": U(3), "displayName": "Guest", "mail": "guest@gmail.com", "proxyAddresses": ["SMTP:guest@gmail.com"],
             "userType": "Guest", "userPrincipalName": "guest_gmail.com#EXT#@contoso.onmicrosoft.com"},
            {"id": U(4), "displayName": "Shared A", "mail": "shared@contoso.com", "proxyAddresses": []},
            {"id": U(5), "displayName": "Shared B", "mail": "SHARED@contoso.com", "proxyAddresses": []},
            {"id": U(6), "displayName": "Carol", "mail": "bad..dot@contoso.com",
             "proxyAddresses": ["SMTP:carol@contoso.com", 'smtp:"quoted"@contoso.com']},
            {"id": U(7), "displayName": "No Mail", "mail": None, "proxyAddresses": []},
            {"id": U(8), "displayName": "Dave", "mail": " Dave@Fabrikam.com ", "proxyAddresses": []},
        ],
        "groups": [
            {"id": G(1), "displayName": "Sales", "mail": "sales@contoso.com", "proxyAddresses": ["SMTP:sales@contoso.com"],
             "members": [U(1), G(2), C(1), DEVICE, SP]},
            {"id": G(2), "displayName": "", "mail": "Team@Contoso.com", "proxyAddresses": [], "members": [U(2), G(3)]},
            {"id": G(3), "displayName": None, "mail": None, "proxyAddresses": [], "members": [G(2), U(1)]},
        ],
        "contacts": [
            {"id": C(1), "displayName": "External", "mail": "ext@fabrikam.com", "proxyAddresses": ["SMTP:ext@fabrikam.com", "smtp:ext@elsewhere.org"]},
        ],
        "devices": [{"id": DEVICE, "displayName": "laptop"}],
        "servicePrincipals": [{"id": SP, "displayName": "app"}],
    }


EXPECTED = {
    "addresses": {
        "alice@contoso.com", "al.ice@fabrikam.com", "bob@xn--bcher-kva.example", "bob@contoso.com", "shared@contoso.com",
        "carol@contoso.com", "dave@fabrikam.com", "sales@contoso.com", "team@contoso.com", "ext@fabrikam.com",
    },
    "groups": {
        G(1): {"id": G(1), "name": "Sales", "parentIds": []},
        G(2): {"id": G(2), "name": "Team@Contoso.com", "parentIds": sorted([G(1), G(3)])},
        G(3): {"id": G(3), "name": G(3), "parentIds": [G(2)]},
    },
    "users": {
        U(1): {"id": U(1), "address": "alice@contoso.com", "groupIds": sorted([G(1), G(3)])},
        U(2): {"id": U(2), "address": "bob@xn--bcher-kva.example", "groupIds": [G(2)]},
        U(4): {"id": U(4), "address": "shared@contoso.com", "groupIds": []},
        U(6): {"id": U(6), "address": "carol@contoso.com", "groupIds": []},
        U(8): {"id": U(8), "address": "dave@fabrikam.com", "groupIds": []},
    },
}
EXPECTED_EXCLUDED = {"addresses": 5, "groups": 0, "users": 3}


def service_view(receiver) -> dict[str, Any]:
    """What the service holds, in a form a person would compare."""
    users = {k: {**v, "groupIds": sorted(v["groupIds"])} for k, v in receiver.records("users").items()}
    groups = {k: {**v, "parentIds": sorted(v["parentIds"])} for k, v in receiver.records("groups").items()}
    return {"addresses": {r["address"] for r in receiver.records("addresses").values()}, "groups": groups, "users": users}


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads(self.stdout.strip().splitlines()[-1])


def base_env(graph_url: str, sync_url: str, state: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT", "TMPDIR")}
    return {**keep, "GRAPH_AUTH": "none", "GRAPH_BASE_URL": graph_url, "SYNC_API_URL": sync_url,
            "SYNC_API_CREDENTIAL": CREDENTIAL, "SYNC_STATE": state, "SYNC_TEST_BACKOFF_SECONDS": "0.01",
            # The deletion guard has its own tests (test_guard.py); these directories are tiny,
            # where any deletion is more than 10 %.
            "DELETE_THRESHOLD_PERCENT": "100", "DELETE_THRESHOLD_COUNT": "1000000"}


def run_cli(action: str, env: dict[str, str], *extra: str, timeout: float = 120) -> CliResult:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.launcher", action, *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@functools.cache
def app_functions() -> dict[str, Any]:
    """function_app's functions by name, indexed once as the host does (a second
    ``get_functions()`` raises), so that every test module can look them up."""
    import function_app

    return {f.get_function_name(): f for f in function_app.app.get_functions()}


def posts(receiver) -> list:
    return [r for r in receiver.request_log if r.method != "GET"]


class EngineStack:
    """The product's engine run in this process against a Graph emulator and a receiver
    (``file:`` state under ``state``): ``run`` returns the run summary as ``--json`` prints it,
    ``update`` the same and asserts that the run succeeded, ``expected`` is what the service
    must hold for the emulator's directory now (``project``, the rules' reference path)."""

    def __init__(self, graph: Any, receiver: Any, state: Path) -> None:
        self.graph, self.receiver = graph, receiver
        self.env = base_env(graph.base_url, receiver.base_url, f"file:{state}")

    def run(self, action: str = "update") -> dict[str, Any]:
        import asyncio
        import datetime as dt

        from shared.config.settings import load_settings
        from shared.engine import Options, run

        options = Options(graph_backoff_seconds=0.01, sync_backoff_seconds=0.01,
                          now=lambda: dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC))
        summary = asyncio.run(run(action, load_settings(self.env), env=self.env, options=options))
        return json.loads(summary.to_json())

    def update(self, action: str = "update") -> dict[str, Any]:
        out = self.run(action)
        assert out["ok"], out.get("error")
        return out

    def expected(self) -> dict[str, Any]:
        from shared.model.directory import project

        p = project(self.graph.snapshot(), DOMAINS)
        return {
            "addresses": set(p.datasets["addresses"]),
            "groups": {k: {"id": k, "name": v[0], "parentIds": list(v[1])} for k, v in p.datasets["groups"].items()},
            "users": {k: {"id": k, "address": v[0], "groupIds": list(v[1])} for k, v in p.datasets["users"].items()},
        }
