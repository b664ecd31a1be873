"""The doors into the engine, read from their source (ast): ``python -m shared``
(``shared/cli.py``), the timer (``function_app.py``) and the operator endpoints
(``operator_endpoints.py``, a blueprint) each reach the engine through its one entry point,
no door imports another (``function_app.py`` only registers the blueprint), and the
test-only run options live in the tests alone (issue 10, "Thin doors")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOORS = {"shared.cli": ROOT / "shared" / "cli.py", "function_app": ROOT / "function_app.py",
         "operator_endpoints": ROOT / "operator_endpoints.py"}
ENTRY_POINTS = {"perform", "perform_blocking"}
ENGINE_VOCABULARY = {"Options", "ACTIONS"}  # plain data, not a way into a run


def imported(path: Path) -> dict[str, set[str]]:
    """module → names imported from it (``import m``: the empty name), relative imports of
    ``shared/`` resolved."""
    out: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.setdefault(alias.name, set()).add("")
        elif isinstance(node, ast.ImportFrom):
            module = ("shared." if node.level else "") + (node.module or "")
            out.setdefault(module.rstrip("."), set()).update(a.name for a in node.names)
    return out


def calls_of(path: Path, names: set[str]) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names:
            found.append(node.func.id)
    return found


def test_the_import_reader_resolves_relative_imports(tmp_path):
    source = tmp_path / "door.py"
    source.write_text("from .engine import perform\nimport function_app\n", encoding="utf-8")
    assert imported(source) == {"shared.engine": {"perform"}, "function_app": {""}}


def test_each_door_reaches_the_engine_through_its_one_entry_point_once():
    for name, path in DOORS.items():
        from_engine = imported(path).get("shared.engine", set())
        ways_in = from_engine - ENGINE_VOCABULARY
        assert len(ways_in) == 1 and ways_in <= ENTRY_POINTS, f"{name} imports {sorted(from_engine)} from the engine"
        runs = [n for n in imported(path) if n in ("shared.operations", "shared.previews") and imported(path)[n] - {"PreviewRunningError"}]
        assert runs == [], f"{name} goes around the engine through {runs}"


def test_the_cli_calls_the_engine_once_and_each_endpoint_once():
    assert calls_of(DOORS["shared.cli"], ENTRY_POINTS) == ["perform"]
    assert calls_of(DOORS["function_app"], ENTRY_POINTS) == ["perform_blocking"]
    tree = ast.parse(DOORS["operator_endpoints"].read_text(encoding="utf-8"))
    endpoints = [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name.startswith("operator_")]
    assert sorted(f.name for f in endpoints) == ["operator_approve_deletions", "operator_status", "operator_test_update"]
    for f in endpoints:
        ways = [n for n in ast.walk(f) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ENTRY_POINTS]
        assert len(ways) == 1, f.name


def test_no_door_imports_another():
    others = {"shared.cli", "shared.__main__", "function_app", "operator_endpoints", "tests.launcher"}
    for name, path in DOORS.items():
        reached = sorted(m for m in imported(path) if m in others and m != name)
        allowed = ["operator_endpoints"] if name == "function_app" else []  # the app registers the blueprint
        assert reached == allowed, f"{name} imports {reached}"
    assert "function_app" not in imported(DOORS["operator_endpoints"])


def test_the_test_only_run_options_are_not_in_production_code():
    production = [*sorted((ROOT / "shared").rglob("*.py")), ROOT / "function_app.py", ROOT / "operator_endpoints.py"]
    assert [p.relative_to(ROOT).as_posix() for p in production if "SYNC_TEST_" in p.read_text(encoding="utf-8")] == []
    assert "SYNC_TEST_MAX_ITEMS" in (ROOT / "tests" / "launcher.py").read_text(encoding="utf-8")
