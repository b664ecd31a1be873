"""The shape of ``shared/`` read from its source (ast), not from a run: the modules import each
other without a cycle (every import counts, also one inside a function), and the first stage
(settings) does not reach into a later stage for names."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT / "shared"


def module_name(path: Path) -> str:
    """``shared/storage/lock.py`` → ``shared.storage.lock``; a package's ``__init__.py`` → the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SHARED.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of ``shared`` that ``name`` imports, wherever the import statement stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # `from .pkg import module`
    # Importing ``a.b.c`` runs the packages ``a`` and ``a.b`` first (their ``__init__.py``), so a
    # cycle through a package's ``__init__`` is a cycle too. The packages that hold ``name`` itself
    # are left out: Python has run them before ``name``, whatever ``name`` imports.
    found.update(".".join(m.split(".")[:i]) for m in list(found) for i in range(1, m.count(".") + 1))
    return {m for m in found if m in known and m != name and not name.startswith(m + ".")}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None when the graph has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_none_where_there_is_none():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_relative_and_function_local_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from ..model import records\n    from .lock import x\n", encoding="utf-8")
    known = {"shared.model.records", "shared.storage.lock"}
    assert imports_of("shared.storage.mod", source, known) == known
    graph = import_graph()
    assert "shared.model.records" in graph["shared.model.projection"]  # from .records import ...
    assert "shared.engine" in graph["shared.cli"]  # from .engine import ...
    assert "shared.cli" in graph["shared.__main__"]


def test_an_import_runs_the_packages_above_the_module(tmp_path):
    """``from ..common.errors import X`` runs ``shared/common/__init__.py`` (and ``shared/__init__.py``)
    first: those are edges, so a package whose ``__init__`` imports back is a cycle."""
    source = tmp_path / "engine.py"
    source.write_text("from .common.errors import SyncError\n", encoding="utf-8")
    known = {"shared", "shared.common", "shared.common.errors", "shared.engine"}
    assert imports_of("shared.engine", source, known) == {"shared.common", "shared.common.errors"}  # not `shared`: it holds engine
    init = tmp_path / "__init__.py"
    init.write_text("from ..engine import perform\n", encoding="utf-8")
    graph = {"shared.engine": imports_of("shared.engine", source, known),
             "shared.common": imports_of("shared.common", init, known)}
    assert find_cycle(graph) == ["shared.common", "shared.engine", "shared.common"]
    inside = tmp_path / "errors.py"
    inside.write_text("from .textsafe import safe\n", encoding="utf-8")
    assert imports_of("shared.common.errors", inside, known | {"shared.common.textsafe"}) == {"shared.common.textsafe"}


def test_no_import_cycle_in_shared():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_the_records_module_is_at_the_bottom():
    assert import_graph()["shared.model.records"] == set()


def test_settings_do_not_reach_into_a_later_stage():
    later = ("shared.sources", "shared.plan", "shared.target", "shared.storage", "shared.engine", "shared.reading",
             "shared.model.projection", "shared.model.directory")
    reached = sorted(m for m in import_graph()["shared.config.settings"] if m.startswith(later))
    assert reached == []


def test_only_the_state_writes_its_meta_keys_and_position():
    """The state owns its protocol: outside ``shared/storage/state.py`` nobody calls its meta
    primitives or moves its position by hand (``seq``)."""
    offenders = []
    for name, path in modules().items():
        if name == "shared.storage.state":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("get_meta", "set_meta", "_get_meta", "_set_meta"):
                offenders.append(f"{name}:{node.lineno} .{node.attr}")
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                offenders += [f"{name}:{node.lineno} .seq =" for t in targets if isinstance(t, ast.Attribute) and t.attr == "seq"]
    assert offenders == []
