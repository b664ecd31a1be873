"""Offline reading of the Bicep files in infra/, and the helpers the infra suites share
(tests/test_infra.py, tests/test_infra_ops.py, tests/test_portal_template.py): values at a
dotted path, a mutated copy of infra/, the checkov runs and the Bicep CLI lookup.

The Bicep grammar is tree-sitter-bicep (PyPI), a real Bicep grammar. It predates the
`extension` keyword (Bicep's extensibility, which the Microsoft Graph extension needs),
so a file's `extension ...` lines are handled honestly: each one must match
EXTENSION_LINE exactly (the alias declared in infra/bicepconfig.json, or the same
registry reference spelled out), and only then is it blanked (replaced by spaces, so
that every other position in the file is unchanged) before parsing. Any other line
that starts with `extension` is an error, not something to blank.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
import tree_sitter
import tree_sitter_bicep
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"

# The only `extension` statement infra/ may use: the Microsoft Graph v1.0 extension,
# by the alias in bicepconfig.json or by its full registry reference.
EXTENSION_LINE = re.compile(
    r"extension (?:microsoftGraphV1"
    r"|'br:mcr\.microsoft\.com/bicep/extensions/microsoftgraph/v1\.0:\d+\.\d+\.\d+')"
    r"[ \t]*(?://[^\n]*)?"
)

_LANGUAGE = tree_sitter.Language(tree_sitter_bicep.language())


class BicepSourceError(ValueError):
    """The file cannot be read as Bicep (a bad extension line, or a syntax error)."""


def blank_extension_lines(text: str) -> tuple[str, list[str]]:
    """Blank the `extension` lines that match EXTENSION_LINE; refuse any other.

    Returns the text to parse and the extension lines that were blanked.
    """
    out: list[str] = []
    blanked: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if re.match(r"\s*extension\b", line):
            if not EXTENSION_LINE.fullmatch(line.rstrip("\r")):
                raise BicepSourceError(f"line {number}: unexpected extension statement: {line.strip()!r}")
            blanked.append(line.strip())
            out.append(" " * len(line))
        else:
            out.append(line)
    return "\n".join(out), blanked


def syntax_errors(tree: tree_sitter.Tree, src: bytes) -> list[str]:
    """Every ERROR or MISSING node, as 'line:col: text'."""
    found: list[str] = []

    def walk(node: tree_sitter.Node) -> None:
        if node.type == "ERROR" or node.is_missing:
            row, col = node.start_point
            snippet = src[node.start_byte : node.end_byte][:60].decode(errors="replace")
            found.append(f"{row + 1}:{col + 1}: {node.type} {snippet!r}")
        for child in node.children:
            walk(child)

    walk(tree.root_node)
    return found


@dataclass
class Param:
    name: str
    type_text: str
    decorators: list[str]
    default: tree_sitter.Node | None

    @property
    def secure(self) -> bool:
        return "secure" in self.decorators


@dataclass
class Resource:
    symbol: str
    type: str  # 'Microsoft.X/y@version', or a child type relative to its parent
    full_type: str  # the child type resolved against its parents
    existing: bool
    condition: tree_sitter.Node | None
    loop: tree_sitter.Node | None
    body: tree_sitter.Node  # the object
    parent: Resource | None = None


@dataclass
class Module:
    symbol: str
    path: str
    condition: tree_sitter.Node | None
    body: tree_sitter.Node


@dataclass
class BicepFile:
    path: Path
    src: bytes
    tree: tree_sitter.Tree
    extension_lines: list[str]
    params: dict[str, Param] = field(default_factory=dict)
    variables: dict[str, tree_sitter.Node] = field(default_factory=dict)
    resources: list[Resource] = field(default_factory=list)
    modules: dict[str, Module] = field(default_factory=dict)
    outputs: dict[str, tree_sitter.Node] = field(default_factory=dict)

    # ------------------------------------------------------------------ text

    def text(self, node: tree_sitter.Node) -> str:
        return self.src[node.start_byte : node.end_byte].decode()

    # ------------------------------------------------------------------ lookups

    def resources_of_type(self, type_prefix: str) -> list[Resource]:
        """Resources whose resolved type (without the API version) is type_prefix."""
        return [r for r in self.resources if r.full_type.split("@")[0] == type_prefix]

    def resource(self, symbol: str) -> Resource:
        for resource in self.resources:
            if resource.symbol == symbol:
                return resource
        raise KeyError(f"{self.path.name}: no resource {symbol!r}")

    def identifiers(self, node: tree_sitter.Node, resolve_variables: bool = True) -> set[str]:
        """Names that an expression refers to, following this file's variables."""
        names: set[str] = set()
        seen: set[str] = set()

        def walk(n: tree_sitter.Node) -> None:
            if n.type == "identifier":
                name = self.text(n)
                names.add(name)
                if resolve_variables and name in self.variables and name not in seen:
                    seen.add(name)
                    walk(self.variables[name])
            for child in n.children:
                # An object key is not a reference.
                if n.type == "object_property" and child == n.children[0]:
                    continue
                walk(child)

        walk(node)
        return names


def descendants(node: tree_sitter.Node):
    """Every named node below ``node``, depth first."""
    for child in node.named_children:
        yield child
        yield from descendants(child)


def object_properties(bicep: BicepFile, node: tree_sitter.Node) -> dict[str, tree_sitter.Node]:
    """The key -> value nodes of an object literal (nested resources are left out)."""
    if node.type != "object":
        raise TypeError(f"{bicep.path.name}: expected an object, got {node.type}")
    props: dict[str, tree_sitter.Node] = {}
    for child in node.named_children:
        if child.type != "object_property":
            continue
        named = child.named_children
        if not named or named[0].type == "resource_declaration":
            continue
        key_node, value = named[0], named[-1]
        key = literal(bicep, key_node) if key_node.type == "string" else bicep.text(key_node)
        props[key] = value
    return props


def lookup(bicep: BicepFile, node: tree_sitter.Node, dotted: str) -> tree_sitter.Node:
    """Follow a dotted path of object keys from an object literal."""
    current = node
    for key in dotted.split("."):
        props = object_properties(bicep, current)
        if key not in props:
            raise KeyError(f"{bicep.path.name}: no {key!r} on the way to {dotted!r}")
        current = props[key]
    return current


_ESCAPES = {"\\\\": "\\", "\\'": "'", "\\n": "\n", "\\r": "\r", "\\t": "\t", "\\$": "$"}


def literal(bicep: BicepFile, node: tree_sitter.Node):
    """The Python value of a literal (string without interpolation, number, bool,
    null, or arrays/objects of those). Raises ValueError for any other expression."""
    kind = node.type
    if kind == "string":
        parts: list[str] = []
        for child in node.named_children:
            if child.type == "string_content":
                parts.append(bicep.text(child))
            elif child.type == "escape_sequence":
                parts.append(_ESCAPES.get(bicep.text(child), bicep.text(child)))
            else:
                raise ValueError(f"not a literal string: {bicep.text(node)}")
        return "".join(parts)
    if kind == "multiline_string":
        return bicep.text(node)[3:-3]
    if kind == "number":
        return int(bicep.text(node))
    if kind == "boolean":
        return bicep.text(node) == "true"
    if kind == "null":
        return None
    if kind == "array":
        return [literal(bicep, c) for c in node.named_children if c.type != "comment"]
    if kind == "object":
        return {k: literal(bicep, v) for k, v in object_properties(bicep, node).items()}
    raise ValueError(f"not a literal: {bicep.text(node)}")


def _split_value(node: tree_sitter.Node):
    """(condition, loop, object) of a resource or module value."""
    condition = loop = None
    if node.type == "if_statement":
        condition = node.named_children[0]
        node = node.named_children[-1]
    elif node.type == "for_statement":
        loop = node
        node = node.child_by_field_name("body")
        if node.type == "if_statement":
            condition = node.named_children[0]
            node = node.named_children[-1]
    return condition, loop, node


def _collect_resources(bicep: BicepFile, decl: tree_sitter.Node, parent: Resource | None) -> None:
    named = decl.named_children
    symbol = bicep.text(named[0])
    type_string = literal(bicep, named[1])
    existing = any(c.type == "existing" for c in decl.children)
    condition, loop, body = _split_value(named[-1])
    if parent is None or "/" in type_string.split("@")[0] and type_string.startswith(("Microsoft.", "microsoft.")):
        full_type = type_string
    else:
        parent_base = parent.full_type.split("@")[0]
        child, _, version = type_string.partition("@")
        full_type = f"{parent_base}/{child}@{version or parent.full_type.split('@')[1]}"
    resource = Resource(symbol, type_string, full_type, existing, condition, loop, body, parent)
    bicep.resources.append(resource)
    if body.type == "object":
        for prop in body.named_children:
            if prop.type == "object_property" and prop.named_children[0].type == "resource_declaration":
                _collect_resources(bicep, prop.named_children[0], resource)


@cache
def parse_bicep(path: Path) -> BicepFile:
    """Parse one .bicep file; raises BicepSourceError on a syntax error."""
    text = path.read_text(encoding="utf-8")
    prepared, blanked = blank_extension_lines(text)
    src = prepared.encode("utf-8")
    tree = tree_sitter.Parser(_LANGUAGE).parse(src)
    errors = syntax_errors(tree, src)
    if errors:
        raise BicepSourceError(f"{path}: " + "; ".join(errors[:5]))
    bicep = BicepFile(path, src, tree, blanked)

    pending_decorators: list[str] = []
    for node in tree.root_node.named_children:
        if node.type == "comment":
            continue
        if node.type == "decorators":
            pending_decorators = []
            for decorator in node.named_children:
                call = decorator.named_children[0]
                function = call.child_by_field_name("function") if call.type == "call_expression" else call
                pending_decorators.append(bicep.text(function))
            continue
        named = node.named_children
        if node.type == "parameter_declaration":
            name = bicep.text(named[0])
            type_node = named[1]
            default = named[2] if len(named) > 2 else None
            bicep.params[name] = Param(name, bicep.text(type_node), pending_decorators, default)
        elif node.type == "variable_declaration":
            bicep.variables[bicep.text(named[0])] = named[-1]
        elif node.type == "resource_declaration":
            _collect_resources(bicep, node, None)
        elif node.type == "module_declaration":
            condition, _loop, body = _split_value(named[-1])
            bicep.modules[bicep.text(named[0])] = Module(bicep.text(named[0]), literal(bicep, named[1]), condition, body)
        elif node.type == "output_declaration":
            bicep.outputs[bicep.text(named[0])] = named[-1]
        pending_decorators = []
    return bicep


def bicep_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*.bicep") if ".build" not in p.parts)


# ----------------------------------------------------------------------------- values at a path
def load(root: Path, relative: str) -> BicepFile:
    """The parsed Bicep file ``relative`` of the infra/ directory ``root`` (infra/ or a mutated copy)."""
    return parse_bicep((root / relative).resolve())


def lit(bicep: BicepFile, node: tree_sitter.Node, dotted: str | None = None):
    """Literal value at a dotted path (None when absent or not a literal)."""
    try:
        target = lookup(bicep, node, dotted) if dotted else node
        return literal(bicep, target)
    except (KeyError, ValueError, TypeError):
        return None


def expr(bicep: BicepFile, node: tree_sitter.Node, dotted: str) -> str:
    """Expression text at a dotted path ('' when absent)."""
    try:
        return bicep.text(lookup(bicep, node, dotted))
    except (KeyError, TypeError):
        return ""


def int_bounds(bicep: BicepFile, name: str) -> tuple[int | None, int | None]:
    """The @minValue and @maxValue of parameter ``name`` (None for each one absent)."""
    found = re.search(r"((?:@\w+\([^\n]*\)[ \t]*\n)+)param " + re.escape(name) + r"\b", bicep.src.decode())
    decorators = found[1] if found else ""
    lo = re.search(r"@minValue\((-?\d+)\)", decorators)
    hi = re.search(r"@maxValue\((-?\d+)\)", decorators)
    return (int(lo[1]) if lo else None, int(hi[1]) if hi else None)


def module_params(main: BicepFile, module: str) -> dict[str, str]:
    """A module's ``params``: name -> the expression text main.bicep passes."""
    body = main.modules[module].body
    return {k: main.text(v) for k, v in object_properties(main, lookup(main, body, "params")).items()}


# ----------------------------------------------------------------------------- mutated copies
def copy_infra(tmp_path: Path, *ignore: str) -> Path:
    """A copy of infra/ at ``tmp_path/infra``, without its ``.build`` output (nor ``ignore``)."""
    copy = tmp_path / "infra"
    shutil.copytree(INFRA, copy, ignore=shutil.ignore_patterns(".build", *ignore))
    return copy


def mutated_infra(tmp_path: Path, relative: str, old: str, new: str) -> Path:
    """A copy of infra/ in which the one ``old`` of ``relative`` is replaced by ``new``; fails
    when ``old`` is not found exactly once (a mutation that no longer applies proves nothing)."""
    copy = copy_infra(tmp_path)
    target = copy / relative
    text = target.read_text()
    assert text.count(old) == 1, f"mutation anchor not found exactly once in {relative}: {old!r}"
    target.write_text(text.replace(old, new))
    return copy


# ----------------------------------------------------------------------------- checkov
CHECKOV_CONFIG = INFRA / ".checkov.yaml"


def find_checkov() -> str | None:
    candidates = [os.environ.get("CHECKOV_BIN"), shutil.which("checkov"), str(REPO / ".local/checkov/bin/checkov")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_checkov() -> str:
    """The checkov executable; skips the test when it is not installed (fails under REQUIRE_CHECKOV)."""
    found = find_checkov()
    if found is None:
        message = "checkov is not installed (pip install -r infra/requirements-checkov.txt into .local/checkov)"
        if os.environ.get("REQUIRE_CHECKOV"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def checkov_skips(config: Path) -> dict[str, str]:
    """skip-check entries of a .checkov.yaml with the reason on their line."""
    reasons = {}
    for line in config.read_text().splitlines():
        match = re.match(r"\s*-\s*(CKV2?_\w+)\s*(?:#\s*(.*))?$", line)
        if match:
            reasons[match.group(1)] = (match.group(2) or "").strip()
    configured = yaml.safe_load(config.read_text())["skip-check"]
    assert sorted(configured) == sorted(reasons), "every skip-check entry must be on its own '- ID  # reason' line"
    return reasons


def skipped_checks() -> dict[str, str]:
    """skip-check entries of infra/.checkov.yaml with the reason on their line."""
    return checkov_skips(CHECKOV_CONFIG)


def checkov_report(command: list[str], check_type: str, cwd: Path) -> dict:
    """Run checkov (``command``, with ``-o json``) in ``cwd``; its one report of ``check_type``."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    (found,) = [r for r in reports if r.get("check_type") == check_type]
    return found


# ----------------------------------------------------------------------------- bicep CLI
def bicep_cli() -> tuple[str, tuple[int, int, int]] | None:
    path = shutil.which("bicep")
    if path is None:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    return (path, tuple(map(int, match.groups()))) if match else None
