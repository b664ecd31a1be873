"""The "Deploy to Azure" path (issue 15, part 5): infra/portal/.

infra/portal/main.bicep is the Azure side of the product without the Microsoft Graph module;
infra/portal/azuredeploy.json is that template compiled to ARM JSON (nested deployments, one per
module) and infra/portal/createUiDefinition.json is the portal's form for it. The Bicep CLI was
not available where the JSON was written, so it was translated by hand, and these tests are what
keeps the two from drifting apart:

  * wherever the Bicep CLI is on PATH, `bicep build infra/portal/main.bicep` must produce the
    committed JSON (generator metadata aside);
  * everywhere, the Bicep (parsed with tree-sitter-bicep, tests/infra_helpers.py) and the JSON
    must declare the same parameters (name, type, default, allowed values, bounds, description),
    the same resources per template (type, apiVersion, condition, loop, scope, and which
    parameters their name is built from) with the same bodies (every literal leaf equal, every
    expression an expression under the same key that reads the same parameters, variables and
    module outputs, no key on one side only), the same app settings reading the same
    parameters, the same modules as nested deployments (name, the parameters passed and what
    each is computed from, dependencies), the same literal variables (the KQL of the alerts and
    the workbook) and the same outputs (name, type and what each is computed from);
  * each of those comparisons is run on mutated copies, of the Bicep and of the JSON, to show
    that it fails;
  * checkov's ARM framework scans the JSON with the skips of infra/.checkov.yaml and of
    infra/portal/.checkov.yaml (the few that only the ARM scan raises), each with its reason;
  * every template parameter without a default comes out of createUiDefinition.json, every UI
    output names a template parameter, and every UI control it reads exists.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import pytest
import tree_sitter
from infra_helpers import (
    INFRA,
    REPO,
    BicepFile,
    bicep_cli,
    checkov_report,
    checkov_skips,
    literal,
    mutated_infra,
    object_properties,
    parse_bicep,
    require_checkov,
    skipped_checks,
)

PORTAL = INFRA / "portal"
TEMPLATE = PORTAL / "azuredeploy.json"
UI_DEFINITION = PORTAL / "createUiDefinition.json"
ARM_SCHEMA = "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#"
UI_SCHEMA = "https://schema.management.azure.com/schemas/0.1.2-preview/CreateUIDefinition.MultiVm.json#"


def load_template(path: Path = TEMPLATE) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- the Bicep side
def parse_fresh(path: Path) -> BicepFile:
    """parse_bicep without its cache: mutation tests rewrite files under the same path names."""
    return parse_bicep.__wrapped__(path)


def decorator_values(bicep: BicepFile) -> dict[str, dict[str, object]]:
    """param name -> {decorator name: its literal argument} (True for `@secure()`)."""
    found: dict[str, dict[str, object]] = {}
    pending: dict[str, object] = {}
    for node in bicep.tree.root_node.named_children:
        if node.type == "comment":
            continue
        if node.type == "decorators":
            pending = {}
            for decorator in node.named_children:
                call = decorator.named_children[0]
                if call.type != "call_expression":
                    pending[bicep.text(call)] = True
                    continue
                name = bicep.text(call.named_children[0])
                args = [a for a in call.named_children[1].named_children if a.type != "comment"]
                pending[name] = literal(bicep, args[0]) if args else True
            continue
        if node.type == "parameter_declaration":
            found[bicep.text(node.named_children[0])] = pending
        pending = {}
    return found


def bicep_parameters(bicep: BicepFile) -> dict[str, dict]:
    decorators = decorator_values(bicep)
    params = {}
    for name, param in bicep.params.items():
        deco = decorators.get(name, {})
        kind = param.type_text
        if "secure" in deco:
            kind = {"string": "securestring", "object": "secureObject"}[kind]
        spec: dict[str, object] = {"type": kind.lower()}
        if param.default is not None:
            try:
                spec["defaultValue"] = literal(bicep, param.default)
            except ValueError:
                spec["defaultValue"] = "[" + bicep.text(param.default) + "]"
        if "allowed" in deco:
            spec["allowedValues"] = deco["allowed"]
        for bound in ("minValue", "maxValue", "minLength", "maxLength"):
            if bound in deco:
                spec[bound] = deco[bound]
        if "description" in deco:
            spec["description"] = deco["description"]
        params[name] = spec
    return params


def arm_parameters(template: dict) -> dict[str, dict]:
    params = {}
    for name, declared in template.get("parameters", {}).items():
        spec = {"type": declared["type"].lower()}
        for key in ("defaultValue", "allowedValues", "minValue", "maxValue", "minLength", "maxLength"):
            if key in declared:
                spec[key] = declared[key]
        if "description" in declared.get("metadata", {}):
            spec["description"] = declared["metadata"]["description"]
        params[name] = spec
    return params


def loop_parts(bicep: BicepFile, loop: tree_sitter.Node) -> tuple[set[str], tree_sitter.Node]:
    """(loop variable names, iterable expression) of a for_statement."""
    names: set[str] = set()
    iterable = None
    seen_in = False
    for child in loop.children:
        if child.type == "in":
            seen_in = True
        elif not seen_in and child.type == "identifier":
            names.add(bicep.text(child))
        elif not seen_in and child.type == "for_loop_parameters":
            names |= {bicep.text(c) for c in child.named_children}
        elif seen_in and iterable is None and child.is_named:
            iterable = child
    return names, iterable


def bicep_name_parameters(bicep: BicepFile, resource) -> frozenset[str]:
    """The file's parameters that a resource's name is built from: through variables, the
    existing resources it refers to, its loop's iterable and its parents' names."""
    symbols = {r.symbol: r for r in bicep.resources}

    def from_node(node: tree_sitter.Node, owner, seen: set[str]) -> set[str]:
        names = bicep.identifiers(node)
        loop_vars: set[str] = set()
        if owner is not None and owner.loop is not None:
            loop_vars, iterable = loop_parts(bicep, owner.loop)
            if names & loop_vars:
                names |= bicep.identifiers(iterable)
        found = names & set(bicep.params)
        for name in names - loop_vars:
            if name in symbols and name not in seen:
                seen.add(name)
                found |= of_resource(symbols[name], seen)
        return found

    def of_resource(res, seen: set[str]) -> set[str]:
        props = object_properties(bicep, res.body)
        found = from_node(props["name"], res, seen)
        if "parent" in props:  # `parent: vault`: the ARM name is '<parent name>/<name>'
            found |= from_node(props["parent"], res, seen)
        if res.parent is not None:
            found |= of_resource(res.parent, seen)
        return found

    return frozenset(of_resource(resource, {resource.symbol}))


def bicep_resources(bicep: BicepFile) -> list[tuple]:
    rows = []
    for res in bicep.resources:
        if res.existing:
            continue
        kind, _, version = res.full_type.partition("@")
        props = object_properties(bicep, res.body)
        rows.append((kind, version, res.condition is not None, res.loop is not None, "scope" in props,
                     tuple(sorted(bicep_name_parameters(bicep, res)))))
    return sorted(rows)


def bicep_outputs(bicep: BicepFile) -> dict[str, str]:
    outputs = {}
    for node in bicep.tree.root_node.named_children:
        if node.type == "output_declaration":
            named = node.named_children
            outputs[bicep.text(named[0])] = bicep.text(named[1]).lower()
    return outputs


def bicep_literal_variables(bicep: BicepFile) -> dict[str, object]:
    found = {}
    for name, node in bicep.variables.items():
        try:
            value = literal(bicep, node)
        except ValueError:
            continue
        if node.type == "multiline_string" and isinstance(value, str) and value.startswith("\n"):
            value = value[1:]  # Bicep drops the newline right after the opening '''
        found[name] = value
    return found


# ----------------------------------------------------------------------------- the ARM side
ARM_PARAMETER = re.compile(r"parameters\('(\w+)'\)")
ARM_VARIABLE = re.compile(r"variables\('(\w+)'\)")


def arm_name_parameters(template: dict, expression: str) -> frozenset[str]:
    found: set[str] = set()
    seen: set[str] = set()

    def walk(text: str) -> None:
        found.update(ARM_PARAMETER.findall(text))
        for var in ARM_VARIABLE.findall(text):
            if var not in seen:
                seen.add(var)
                walk(json.dumps(template.get("variables", {}).get(var, "")))

    walk(expression)
    return frozenset(found & set(template.get("parameters", {})))


def arm_resources(template: dict) -> list[tuple]:
    rows = []
    for res in template["resources"]:
        if res["type"] == "Microsoft.Resources/deployments":
            continue
        rows.append((res["type"], res["apiVersion"], "condition" in res, "copy" in res, "scope" in res,
                     tuple(sorted(arm_name_parameters(template, res["name"])))))
    return sorted(rows)


def arm_outputs(template: dict) -> dict[str, str]:
    return {name: spec["type"].lower() for name, spec in template.get("outputs", {}).items()}


# ----------------------------------------------------------------------------- resource bodies
class Expression:
    """A leaf that is an expression (its Bicep node, or the JSON string)."""

    def __init__(self, source) -> None:
        self.source = source


NOT_LITERAL = Expression(None)  # an expression key: the JSON must have one too
SKIPPED_KEYS = {"name", "parent", "scope", "dependsOn"}  # compared through the name shape, or ARM-only


def bicep_leaves(bicep: BicepFile, node: tree_sitter.Node, prefix: tuple = ()) -> dict[tuple, object]:
    """dotted path -> literal value (or NOT_LITERAL) of every leaf of a resource body."""
    if node.type == "object":
        out: dict[tuple, object] = {}
        props = {}
        for child in node.named_children:
            if child.type != "object_property" or child.named_children[0].type == "resource_declaration":
                continue
            key_node = child.named_children[0]
            try:
                key = literal(bicep, key_node) if key_node.type == "string" else bicep.text(key_node)
            except ValueError:
                out[prefix + ("<expression key>",)] = NOT_LITERAL
                continue
            props[key] = child.named_children[-1]
        if not props and not out:
            return {prefix: {}}
        for key, value in props.items():
            if not prefix and key in SKIPPED_KEYS:
                continue
            out.update(bicep_leaves(bicep, value, prefix + (key,)))
        return out
    if node.type == "array":
        items = [c for c in node.named_children if c.type != "comment"]
        if not items:
            return {prefix: []}
        out = {}
        for i, item in enumerate(items):
            out.update(bicep_leaves(bicep, item, prefix + (i,)))
        return out
    try:
        return {prefix: literal(bicep, node)}
    except ValueError:
        return {prefix: Expression(node)}


def arm_leaves(value, prefix: tuple = ()) -> dict[tuple, object]:
    if isinstance(value, dict):
        if not value:
            return {prefix: {}}
        out: dict[tuple, object] = {}
        for key, child in value.items():
            if not prefix and key in SKIPPED_KEYS | {"type", "apiVersion", "condition", "copy"}:
                continue
            if isinstance(key, str) and key.startswith("["):
                out[prefix + ("<expression key>",)] = NOT_LITERAL
                continue
            out.update(arm_leaves(child, prefix + (key,)))
        return out
    if isinstance(value, list):
        if not value:
            return {prefix: []}
        out = {}
        for i, child in enumerate(value):
            out.update(arm_leaves(child, prefix + (i,)))
        return out
    if isinstance(value, str) and value.startswith("[") and not value.startswith("[["):
        return {prefix: Expression(value)}
    return {prefix: value}


UNMATCHED: list[str] = []  # resources whose body could not be paired (asserted empty below)


def from_scope(bicep: BicepFile, res, scope: tree_sitter.Node) -> frozenset[str]:
    """The parameters a `scope:` resource reference is named from."""
    symbols = {r.symbol: r for r in bicep.resources}
    found: set[str] = set()
    for name in bicep.identifiers(scope):
        if name in symbols:
            found |= bicep_name_parameters(bicep, symbols[name])
    return frozenset(found)


def compare_bodies(where: str, bicep: BicepFile, template: dict) -> list[str]:
    """Each Bicep resource against its JSON resource, leaf by leaf: literal values must be equal,
    an expression must be an expression under the same key, and neither side has a key the other
    lacks (below an expression the JSON's shape is not compared)."""
    problems: list[str] = []
    arm = [r for r in template["resources"] if r["type"] != "Microsoft.Resources/deployments"]
    for res in bicep.resources:
        if res.existing:
            continue
        kind, _, version = res.full_type.partition("@")
        name_node = object_properties(bicep, res.body)["name"]
        # The literal pieces of the name ('-sync-missed' of '${namePrefix}-sync-missed') tell
        # apart resources of one type named from the same parameters.
        pieces = [bicep.text(c) for c in name_node.named_children if c.type == "string_content"] if name_node.type == "string" else []
        shape = tuple(sorted(bicep_name_parameters(bicep, res)))
        matches = [r for r in arm if r["type"] == kind and r["apiVersion"] == version
                   and tuple(sorted(arm_name_parameters(template, r["name"]))) == shape
                   and all(piece in r["name"] for piece in pieces)]
        props = object_properties(bicep, res.body)
        if len(matches) > 1 and "scope" in props:  # e.g. two diagnostic settings of one name
            scope_params = from_scope(bicep, res, props["scope"])
            matches = [r for r in matches if arm_name_parameters(template, r.get("scope", "")) == scope_params]
        if len(matches) != 1:
            UNMATCHED.append(f"{where}: {res.symbol}")
            continue  # compare() reports resources that are missing
        want, got = bicep_leaves(bicep, res.body), arm_leaves(matches[0])
        label = f"{where}: {kind} {res.symbol}"
        loop_vars = {}
        if res.loop is not None:
            names, iterable = loop_parts(bicep, res.loop)
            loop_vars = dict.fromkeys(names, iterable)
        for path, value in want.items():
            where_in = ".".join(map(str, path))
            if path not in got:
                problems.append(f"{label}: {where_in} is in the Bicep, not in the JSON")
            elif isinstance(value, Expression) != isinstance(got[path], Expression) or (not isinstance(value, Expression) and value != got[path]):
                shown = lambda v: "an expression" if isinstance(v, Expression) else repr(v)  # noqa: E731
                problems.append(f"{label}: {where_in} is {shown(value)} in the Bicep, {shown(got[path])} in the JSON")
            elif isinstance(value, Expression) and value.source is not None:
                want_refs = bicep_references(bicep, value.source, {}, template, loop_vars)
                got_refs = arm_references(got[path].source)
                if want_refs != got_refs:
                    problems.append(f"{label}: {where_in} reads {sorted(want_refs)} in the Bicep, {sorted(got_refs)} in the JSON")
        expressions = [p for p, v in want.items() if isinstance(v, Expression)]
        for path in got:
            if path not in want and not any(path[: len(e)] == e for e in expressions):
                problems.append(f"{label}: {'.'.join(map(str, path))} is in the JSON, not in the Bicep")
    return problems


# ----------------------------------------------------------------------------- the comparison
def compare(where: str, bicep: BicepFile, template: dict) -> list[str]:
    """Every difference between one Bicep file and its (nested) ARM template."""
    problems: list[str] = []
    if template.get("$schema") != ARM_SCHEMA or template.get("contentVersion") != "1.0.0.0":
        problems.append(f"{where}: $schema/contentVersion are not what the Bicep CLI emits")
    if "languageVersion" in template:
        problems.append(f"{where}: languageVersion is only emitted for symbolic-name templates, which this one is not")
    want, got = bicep_parameters(bicep), arm_parameters(template)
    for name in sorted(set(want) | set(got)):
        if name not in got:
            problems.append(f"{where}: parameter {name} is in the Bicep, not in the JSON")
        elif name not in want:
            problems.append(f"{where}: parameter {name} is in the JSON, not in the Bicep")
        elif want[name] != got[name]:
            problems.append(f"{where}: parameter {name} differs: Bicep {want[name]} / JSON {got[name]}")
    want_res, got_res = bicep_resources(bicep), arm_resources(template)
    for row in want_res:
        if want_res.count(row) != got_res.count(row):
            problems.append(f"{where}: resource {row} is declared {want_res.count(row)} time(s) in the Bicep, {got_res.count(row)} in the JSON")
    for row in got_res:
        if row not in want_res:
            problems.append(f"{where}: resource {row} is in the JSON, not in the Bicep")
    if bicep_outputs(bicep) != arm_outputs(template):
        problems.append(f"{where}: outputs differ: Bicep {bicep_outputs(bicep)} / JSON {arm_outputs(template)}")
    variables = template.get("variables", {})
    for name, value in bicep_literal_variables(bicep).items():
        if variables.get(name) != value:
            problems.append(f"{where}: variable {name} differs from the Bicep literal")
    for name in variables:
        if name not in bicep.variables:
            problems.append(f"{where}: variable {name} is in the JSON, not in the Bicep")
        elif name not in bicep_literal_variables(bicep):
            want_refs = bicep_references(bicep, bicep.variables[name], {}, template)
            if want_refs != arm_references(variables[name]):
                problems.append(f"{where}: variable {name} reads {sorted(want_refs)} in the Bicep, {sorted(arm_references(variables[name]))} in the JSON")
    problems += compare_bodies(where, bicep, template)
    problems += compare_wiring(where, bicep, template)
    problems += compare_modules(where, bicep, template)
    return problems


def compare_modules(where: str, bicep: BicepFile, template: dict) -> list[str]:
    problems: list[str] = []
    deployments = {r["name"]: r for r in template["resources"] if r["type"] == "Microsoft.Resources/deployments"}
    declared = {}
    for symbol, module in bicep.modules.items():
        props = object_properties(bicep, module.body)
        declared[literal(bicep, props["name"])] = (symbol, module, props)
    if sorted(declared) != sorted(deployments):
        problems.append(f"{where}: modules {sorted(declared)} in the Bicep, nested deployments {sorted(deployments)} in the JSON")
    symbol_to_name = {symbol: name for name, (symbol, _m, _p) in declared.items()}
    for name in sorted(set(declared) & set(deployments)):
        symbol, module, props = declared[name]
        deployment = deployments[name]
        module_where = f"{where} > {name}"
        if deployment.get("apiVersion") != "2022-09-01":
            problems.append(f"{module_where}: nested deployment apiVersion {deployment.get('apiVersion')}")
        properties = deployment["properties"]
        if properties.get("expressionEvaluationOptions") != {"scope": "inner"} or properties.get("mode") != "Incremental":
            problems.append(f"{module_where}: not an inner-scoped incremental deployment")
        if (module.condition is not None) != ("condition" in deployment):
            problems.append(f"{module_where}: condition differs")
        passed = set(object_properties(bicep, props["params"])) if "params" in props else set()
        if passed != set(properties.get("parameters", {})):
            problems.append(f"{module_where}: parameters passed differ: Bicep {sorted(passed)} / JSON {sorted(properties.get('parameters', {}))}")
        needs = bicep.identifiers(module.body) & set(bicep.modules)
        needs.discard(symbol)
        wanted = {symbol_to_name[s] for s in needs}
        got = {re.search(r"'Microsoft\.Resources/deployments', '(\w+)'", d).group(1) for d in deployment.get("dependsOn", [])}
        if wanted != got:
            problems.append(f"{module_where}: dependsOn differs: Bicep {sorted(wanted)} / JSON {sorted(got)}")
        child = (bicep.path.parent / module.path).resolve()
        problems += compare(module_where, parse_fresh(child), properties["template"])
    return problems


ARM_MODULE_OUTPUT = re.compile(r"reference\(resourceId\('Microsoft\.Resources/deployments', '(\w+)'\), '2022-09-01'\)\.outputs\.(\w+)\.value")


def bicep_references(bicep: BicepFile, node: tree_sitter.Node, module_names: dict[str, str], template: dict | None = None,
                     loop_vars: dict | None = None) -> set[tuple]:
    """What an expression reads: ('parameter', x), ('variable', x), ('module output', deployment, output).
    A variable the JSON does not declare (Bicep inlines those that read a resource) counts as what
    it reads; a loop variable as what its loop's iterable reads."""
    loop_vars = loop_vars or {}
    text = bicep.text(node)
    symbols = {r.symbol: r for r in bicep.resources}
    refs: set[tuple] = {("module output", module_names[m], o) for m, o in re.findall(r"\b(\w+)!?\.outputs\.(\w+)", text) if m in module_names}
    for name in bicep.identifiers(node, resolve_variables=False):
        if not re.search(rf"(?<![.\w']){name}\b", text):
            continue  # only a property name (x.name), not a reference
        if name in loop_vars:
            refs |= bicep_references(bicep, loop_vars[name], module_names, template)
        elif name in bicep.params:
            refs.add(("parameter", name))
        elif name in bicep.variables and template is not None and name not in template.get("variables", {}):
            refs |= bicep_references(bicep, bicep.variables[name], module_names, template)
        elif name in bicep.variables:
            refs.add(("variable", name))
        elif name in symbols:  # a resource (identity.id): the JSON names it from its parameters
            refs |= {("parameter", p) for p in bicep_name_parameters(bicep, symbols[name])}
    return refs


def arm_references(value) -> set[tuple]:
    text = json.dumps(value)
    refs: set[tuple] = {("module output", m, o) for m, o in ARM_MODULE_OUTPUT.findall(text)}
    refs |= {("parameter", p) for p in ARM_PARAMETER.findall(text)}
    refs |= {("variable", v) for v in ARM_VARIABLE.findall(text)}
    return refs


def compare_wiring(where: str, bicep: BicepFile, template: dict) -> list[str]:
    """What each module parameter and each output is computed from, on both sides; and every
    parameters(), variables() and module output the JSON reads exists."""
    problems: list[str] = []
    module_names = {}
    for symbol, module in bicep.modules.items():
        module_names[symbol] = literal(bicep, object_properties(bicep, module.body)["name"])
    deployments = {r["name"]: r for r in template["resources"] if r["type"] == "Microsoft.Resources/deployments"}
    for symbol, module in bicep.modules.items():
        deployment = deployments.get(module_names[symbol])
        props = object_properties(bicep, module.body)
        if deployment is None or "params" not in props:
            continue
        passed = deployment["properties"].get("parameters", {})
        for key, value in object_properties(bicep, props["params"]).items():
            if key in passed and bicep_references(bicep, value, module_names, template) != arm_references(passed[key]):
                problems.append(f"{where} > {module_names[symbol]}: parameter {key} reads {sorted(bicep_references(bicep, value, module_names, template))} "
                                f"in the Bicep, {sorted(arm_references(passed[key]))} in the JSON")
    outputs = {}
    for node in bicep.tree.root_node.named_children:
        if node.type == "output_declaration":
            outputs[bicep.text(node.named_children[0])] = node.named_children[-1]
    for name, value in outputs.items():
        declared = template.get("outputs", {}).get(name)
        if declared is not None and bicep_references(bicep, value, module_names, template) != arm_references(declared["value"]):
            problems.append(f"{where}: output {name} reads different things in the Bicep and the JSON")
    # Dangling references in the JSON.
    body = {k: template.get(k) for k in ("variables", "resources", "outputs")}
    for kind, *rest in arm_references({k: v for k, v in body.items() if k != "resources"} | {"resources": [
            {k: v for k, v in r.items() if k != "properties"} | ({"properties": {k: v for k, v in r["properties"].items() if k != "template"}}
                                                                  if r["type"] == "Microsoft.Resources/deployments" else {"properties": r.get("properties")})
            for r in template["resources"]]}):
        if kind == "parameter" and rest[0] not in template.get("parameters", {}):
            problems.append(f"{where}: the JSON reads an undeclared parameter {rest[0]}")
        elif kind == "variable" and rest[0] not in template.get("variables", {}):
            problems.append(f"{where}: the JSON reads an undeclared variable {rest[0]}")
        elif kind == "module output":
            target = deployments.get(rest[0])
            if target is None or rest[1] not in target["properties"]["template"].get("outputs", {}):
                problems.append(f"{where}: the JSON reads a module output that does not exist: {rest[0]}.{rest[1]}")
    return problems


def split_arguments(text: str) -> list[str]:
    """Top-level comma-separated arguments of an ARM expression's argument list."""
    parts, depth, quoted, current = [], 0, False, ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quoted:
            current += ch
            if ch == "'" and text[i + 1 : i + 2] == "'":
                current += "'"
                i += 1
            elif ch == "'":
                quoted = False
        elif ch == "'":
            quoted, current = True, current + ch
        elif ch in "([":
            depth, current = depth + 1, current + ch
        elif ch in ")]":
            depth, current = depth - 1, current + ch
        elif ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
        i += 1
    if current.strip():
        parts.append(current.strip())
    return parts


def arm_app_settings_union(template: dict) -> tuple[dict[str, str], list[str]]:
    """The appsettings resource's union(createObject(...), variables('a'), ...): setting name ->
    ARM expression of the createObject, and the names of the variables unioned after it, in order."""
    config = next(r for r in template["resources"] if r["type"] == "Microsoft.Web/sites/config")
    text = config["properties"]
    match = re.match(r"\[union\((.*)\)\]$", text, re.S)
    assert match, f"unexpected app settings expression: {text[:80]}"
    first, *rest = split_arguments(match.group(1))
    inner = re.match(r"createObject\((.*)\)$", first, re.S)
    assert inner, f"unexpected app settings expression: {text[:80]}"
    unioned = [re.fullmatch(r"variables\('(\w+)'\)", arg) for arg in rest]
    assert all(unioned), f"unexpected app settings union arguments: {rest}"
    args = split_arguments(inner.group(1))
    return {args[i].strip("'"): args[i + 1] for i in range(0, len(args), 2)}, [m.group(1) for m in unioned]


def arm_app_settings(template: dict) -> dict[str, str]:
    """Setting name -> ARM expression, from the appsettings resource's union(createObject(...), ...)."""
    return arm_app_settings_union(template)[0]


def bicep_app_settings_union(infra: Path) -> list[str]:
    """The variables app/function-app.bicep unions into the appsettings resource, in order."""
    text = (infra / "app/function-app.bicep").read_text()
    unions = re.findall(r"properties:\s*union\(([^)]*)\)", text)
    assert len(unions) == 1, f"app/function-app.bicep: expected one appsettings union, found {len(unions)}"
    return [arg.strip() for arg in unions[0].split(",")]


def compare_app_settings(infra: Path, template: dict) -> list[str]:
    """Every product setting of app/function-app.bicep's appSettingsAlways reads the same
    parameters, on both sides, and no setting is on one side only."""
    bicep = parse_fresh(infra / "app/function-app.bicep")
    nested_template = next(r for r in template["resources"] if r["name"] == "functionApp")["properties"]["template"]
    want = {key: bicep_references(bicep, value, {}, nested_template)
            for key, value in object_properties(bicep, bicep.variables["appSettingsAlways"]).items()}
    got = {key: arm_references(value) for key, value in arm_app_settings(nested_template).items()}
    problems = [f"app setting {key} is in the Bicep, not in the JSON" for key in sorted(set(want) - set(got))]
    problems += [f"app setting {key} is in the JSON, not in the Bicep" for key in sorted(set(got) - set(want))]
    problems += [f"app setting {key} reads {sorted(want[key])} in the Bicep, {sorted(got[key])} in the JSON"
                 for key in sorted(set(want) & set(got)) if want[key] != got[key]]
    # Bicep inlines appSettingsAlways (it reads resources) as the createObject; the other
    # variables (each an optional setting, left unset when empty) are unioned after it, in order.
    want_union = [name for name in bicep_app_settings_union(infra) if name != "appSettingsAlways"]
    got_union = arm_app_settings_union(nested_template)[1]
    if want_union != got_union:
        problems.append(f"app settings union: Bicep unions {want_union} after appSettingsAlways, the JSON {got_union}")
    arm_values = arm_app_settings(nested_template)
    for key, value in object_properties(bicep, bicep.variables["appSettingsAlways"]).items():
        try:
            fixed = literal(bicep, value)
        except ValueError:
            continue
        quoted = "'" + str(fixed).replace("'", "''") + "'"
        if key in arm_values and arm_values[key] != quoted:
            problems.append(f"app setting {key} is {quoted} in the Bicep, {arm_values[key]} in the JSON")
    return problems


def drift(infra: Path, template: dict) -> list[str]:
    return compare("portal/main.bicep", parse_fresh(infra / "portal/main.bicep"), template) + compare_app_settings(infra, template)


# ----------------------------------------------------------------------------- tests: drift
def strip_generator(node):
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "metadata" and isinstance(value, dict):
                value = {k: v for k, v in value.items() if k != "_generator"}
                if not value:
                    continue
            out[key] = strip_generator(value)
        return out
    if isinstance(node, list):
        return [strip_generator(v) for v in node]
    return node


def test_the_bicep_cli_build_equals_the_committed_json(tmp_path: Path) -> None:
    found = bicep_cli()
    if found is None:
        reason = "bicep is not on PATH: the committed JSON is checked against the parsed Bicep instead (the other tests here)"
        print(reason)
        pytest.skip(reason)
    build = subprocess.run([found[0], "build", str(PORTAL / "main.bicep"), "--outfile", str(tmp_path / "main.json")],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    built = strip_generator(json.loads((tmp_path / "main.json").read_text()))
    committed = strip_generator(load_template())
    assert built == committed, (
        "infra/portal/azuredeploy.json is not what the Bicep CLI builds from infra/portal/main.bicep: "
        f"rebuild it (bicep build infra/portal/main.bicep --outfile {TEMPLATE.relative_to(REPO)}) and commit the result"
    )


def test_the_committed_json_matches_the_bicep() -> None:
    UNMATCHED.clear()
    assert drift(INFRA, load_template()) == []
    assert UNMATCHED == [], "every resource's body is compared"


def test_the_portal_template_is_the_azure_side_without_the_graph_module() -> None:
    portal = parse_bicep(PORTAL / "main.bicep")
    main = parse_bicep(INFRA / "main.bicep")
    assert {m.path for m in portal.modules.values()} == {"../" + m.path for m in main.modules.values()} - {"../app/graph-app.bicep"}
    assert portal.extension_lines == []
    template = load_template()
    text = json.dumps(template)
    assert "Microsoft.Graph" not in text and "microsoftGraph" not in text and "extensions" not in template
    # The operator passes the existing app registration's client id; it reaches GRAPH_CLIENT_ID.
    assert "defaultValue" not in template["parameters"]["graphClientId"]
    function_app = next(r for r in template["resources"] if r["name"] == "functionApp")
    assert function_app["properties"]["parameters"]["graphClientId"] == {"value": "[parameters('graphClientId')]"}
    settings = next(r for r in function_app["properties"]["template"]["resources"] if r["type"] == "Microsoft.Web/sites/config")
    assert "'GRAPH_CLIENT_ID', parameters('graphClientId')" in settings["properties"]
    # What main.bicep shares with the portal template is declared the same way.
    main_params = bicep_parameters(main)
    for name, spec in bicep_parameters(portal).items():
        if name in main_params and name not in ("exoMode", "secretsOfficerPrincipalId"):
            assert spec == main_params[name], name


def test_the_secret_stays_secure_in_the_json() -> None:
    template = load_template()
    assert template["parameters"]["syncApiCredential"]["type"] == "securestring"
    assert "defaultValue" not in template["parameters"]["syncApiCredential"]
    for output in template["outputs"].values():
        assert "syncApiCredential" not in json.dumps(output)


# Mutations of the Bicep: each must make the comparison fail.
BICEP_MUTATIONS = [
    ("portal/main.bicep", "param tags object = {}", "param tags object = {}\n\nparam extraSetting string = 'x'"),
    ("portal/main.bicep", "param deleteThresholdCount int = 500", "param deleteThresholdCount int = 499"),
    ("portal/main.bicep", "param deleteThresholdFloor int = 25", "param deleteThresholdFloor int = 0"),
    ("portal/main.bicep", "    deleteThresholdFloor: deleteThresholdFloor\n", ""),
    ("app/function-app.bicep", "  DELETE_THRESHOLD_FLOOR: string(deleteThresholdFloor)\n", ""),
    ("app/function-app.bicep", "  DELETE_THRESHOLD_FLOOR: string(deleteThresholdFloor)\n", "  DELETE_THRESHOLD_FLOOR: string(deleteThresholdCount)\n"),
    ("portal/main.bicep", "@minLength(3)\nparam alertEmail", "@minLength(4)\nparam alertEmail"),
    ("portal/main.bicep", "output STORAGE_ACCOUNT_NAME string = storage.outputs.name\n", ""),
    ("portal/main.bicep", "    auditRetentionDays: auditRetentionDays\n", ""),
    ("portal/main.bicep", "  dependsOn: [\n    roles\n  ]\n", ""),
    ("portal/main.bicep", "module workbook '../app/workbook.bicep' = {\n  name: 'workbook'", "module workbook '../app/workbook.bicep' = {\n  name: 'workbooks'"),
    ("app/identity.bicep", "'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31'", "'Microsoft.ManagedIdentity/userAssignedIdentities@2024-11-30'"),
    ("app/storage.bicep", "resource storage 'Microsoft.Storage/storageAccounts@2023-05-01'", "resource storage 'Microsoft.Storage/storageAccounts@2023-01-01'"),
    ("app/monitoring.bicep", "'Microsoft.Insights/components@2020-02-02'", "'Microsoft.Insights/webtests@2020-02-02'"),
    ("app/function-app.bicep", "  512\n  2048\n  4096\n])\nparam instanceMemoryMB int = 2048", "  512\n  1024\n  2048\n  4096\n])\nparam instanceMemoryMB int = 2048"),
    ("app/keyvault.bicep", "= if (!empty(syncApiCredential)) {", "= {"),
    ("app/alert.bicep", "name: '${namePrefix}-ag'", "name: '${functionName}-ag'"),
    ("app/role-assignments.bicep", "  scope: vault\n  properties: {\n    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultSecretsUser)",
     "  properties: {\n    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultSecretsUser)"),
    ("app/ops-alerts.bicep", "| where heldDeletions > 0", "| where heldDeletions > 1"),
    ("app/workbook.bicep", "var weekMs = 604800000", "var weekMs = 86400000"),
    ("app/audit.bicep", "output auditTables array", "output auditTables object"),
    # wiring: what a module parameter or an output is computed from
    ("portal/main.bicep", "module workbook '../app/workbook.bicep' = {\n  name: 'workbook'\n  params: {\n    location: location\n    applicationInsightsId: monitoring.outputs.applicationInsightsId",
     "module workbook '../app/workbook.bicep' = {\n  name: 'workbook'\n  params: {\n    location: location\n    applicationInsightsId: monitoring.outputs.logAnalyticsId"),
    ("portal/main.bicep", "    graphClientId: graphClientId\n", "    graphClientId: exoDirectoryRoleId\n"),
    ("portal/main.bicep", "output KEY_VAULT_URL string = keyVault.outputs.uri", "output KEY_VAULT_URL string = keyVault.outputs.id"),
    ("app/identity.bicep", "output principalId string = identity.properties.principalId", "output principalId string = location"),
    # resource bodies
    ("app/function-app.bicep", "  GRAPH_BASE_URL: graphBaseUrl\n", "  GRAPH_BASE_URL: graphBaseUrl\n  GRAPH_PAGE_SIZE: '999'\n"),
    ("app/function-app.bicep", "AzureWebJobsStorage__credential: 'managedidentity'", "AzureWebJobsStorage__credential: 'connectionstring'"),
    ("app/storage.bicep", "allowSharedKeyAccess: false", "allowSharedKeyAccess: true"),
    ("app/function-app.bicep", "ftpsState: 'Disabled'", "ftpsState: 'FtpsOnly'"),
    ("app/keyvault.bicep", "    enablePurgeProtection: true\n", "    enablePurgeProtection: true\n    enabledForDeployment: true\n"),
    ("app/alert.bicep", "    evaluationFrequency: 'PT15M'\n    windowSize: 'PT30M'", "    evaluationFrequency: 'PT5M'\n    windowSize: 'PT30M'"),
    ("app/ops-alerts.bicep", "    windowSize: 'P1D'\n", "    windowSize: 'PT${missedRunWindowMinutes}M'\n"),
    ("app/role-assignments.bicep", "    description: 'Directory sync deployer: write the Graph client secret (scripts/rotate-graph-secret.sh).'\n", ""),
]


@pytest.mark.parametrize(("relative", "old", "new"), BICEP_MUTATIONS, ids=[f"{m[0]}:{i}" for i, m in enumerate(BICEP_MUTATIONS)])
def test_the_comparison_catches_a_bicep_change(tmp_path: Path, relative: str, old: str, new: str) -> None:
    assert drift(mutated_infra(tmp_path, relative, old, new), load_template()) != []


def nested(template: dict, name: str) -> dict:
    return next(r for r in template["resources"] if r["name"] == name)["properties"]["template"]


def _drop_parameter(t):
    del t["parameters"]["syncSchedule"]


def _api_version(t):
    next(r for r in nested(t, "storage")["resources"] if r["type"] == "Microsoft.Storage/storageAccounts")["apiVersion"] = "2023-01-01"


def _resource_type(t):
    nested(t, "identity")["resources"][0]["type"] = "Microsoft.ManagedIdentity/identities"


def _default(t):
    nested(t, "opsAlerts")["parameters"]["secretExpiryDays"]["defaultValue"] = 14


def _allowed(t):
    t["parameters"]["exoMode"]["allowedValues"].append("full")


def _drop_resource(t):
    nested(t, "functionApp")["resources"].pop(1)


def _drop_condition(t):
    del next(r for r in nested(t, "roles")["resources"] if "condition" in r)["condition"]


def _kql(t):
    nested(t, "opsAlerts")["variables"]["successfulTimerRunsQuery"] += "| take 1\n"


def _name(t):
    nested(t, "monitoring")["resources"][0]["name"] = "[parameters('applicationInsightsName')]"


def _drop_output(t):
    del t["outputs"]["WORKBOOK_ID"]


def _dependency(t):
    next(r for r in t["resources"] if r["name"] == "functionApp")["dependsOn"].pop()


def _schema(t):
    t["languageVersion"] = "2.0"


def _tls(t):
    next(r for r in nested(t, "storage")["resources"] if r["type"] == "Microsoft.Storage/storageAccounts")["properties"]["minimumTlsVersion"] = "TLS1_0"


def _drop_property(t):
    del next(r for r in nested(t, "keyVault")["resources"] if r["type"] == "Microsoft.KeyVault/vaults")["properties"]["enableRbacAuthorization"]


def _extra_property(t):
    next(r for r in nested(t, "functionApp")["resources"] if r["type"] == "Microsoft.Web/sites")["properties"]["clientCertEnabled"] = False


def _literal_for_expression(t):
    site = next(r for r in nested(t, "functionApp")["resources"] if r["type"] == "Microsoft.Web/sites")
    site["properties"]["functionAppConfig"]["scaleAndConcurrency"]["instanceMemoryMB"] = 2048


def _dangling_output(t):
    fa = next(r for r in t["resources"] if r["name"] == "functionApp")
    fa["properties"]["parameters"]["keyVaultUrl"]["value"] = fa["properties"]["parameters"]["keyVaultUrl"]["value"].replace(".outputs.uri.", ".outputs.url.")


def _dangling_parameter(t):
    nested(t, "alert")["resources"][0]["properties"]["emailReceivers"][0]["emailAddress"] = "[parameters('alertMail')]"


def _wrong_wiring(t):
    wb = next(r for r in t["resources"] if r["name"] == "workbook")
    wb["properties"]["parameters"]["applicationInsightsId"]["value"] = wb["properties"]["parameters"]["applicationInsightsId"]["value"].replace(
        "applicationInsightsId", "logAnalyticsId")


def _wrong_principal(t):
    rule = next(r for r in nested(t, "roles")["resources"] if "copy" in r)
    rule["properties"]["principalId"] = "[parameters('secretsOfficerPrincipalId')]"


def _wrong_setting(t):
    settings = next(r for r in nested(t, "functionApp")["resources"] if r["type"] == "Microsoft.Web/sites/config")
    settings["properties"] = settings["properties"].replace("'SYNC_DATASETS', parameters('syncDatasets')", "'SYNC_DATASETS', parameters('syncSchedule')")


def _wrong_variable(t):
    t["variables"]["resourceToken"] = "[toLower(uniqueString(subscription().id, resourceGroup().id, parameters('location')))]"


def _wrong_loop(t):
    rule = next(r for r in nested(t, "roles")["resources"] if "copy" in r)
    rule["properties"]["description"] = "Directory sync Function: blobs of one container only."


def _swapped_settings(t):
    settings = next(r for r in nested(t, "functionApp")["resources"] if r["type"] == "Microsoft.Web/sites/config")
    settings["properties"] = (settings["properties"]
                              .replace("'GRAPH_CLIENT_SECRET_NAME', parameters('graphClientSecretName')", "'GRAPH_CLIENT_SECRET_NAME', parameters('SWAP')")
                              .replace("'SYNC_API_CREDENTIAL_NAME', parameters('syncApiCredentialName')", "'SYNC_API_CREDENTIAL_NAME', parameters('graphClientSecretName')")
                              .replace("parameters('SWAP')", "parameters('syncApiCredentialName')"))


def _dropped_optional_settings(t):
    settings = next(r for r in nested(t, "functionApp")["resources"] if r["type"] == "Microsoft.Web/sites/config")
    settings["properties"] = settings["properties"].replace(", variables('appSettingsPatterns')", "")


def _dropped_setting(t):
    settings = next(r for r in nested(t, "functionApp")["resources"] if r["type"] == "Microsoft.Web/sites/config")
    settings["properties"] = settings["properties"].replace(", 'EXO_MODE', parameters('exoMode')", "")


def _dropped_floor_setting(t):
    settings = next(r for r in nested(t, "functionApp")["resources"] if r["type"] == "Microsoft.Web/sites/config")
    settings["properties"] = settings["properties"].replace(", 'DELETE_THRESHOLD_FLOOR', string(parameters('deleteThresholdFloor'))", "")


def _floor_default(t):
    t["parameters"]["deleteThresholdFloor"]["defaultValue"] = 0


def _floor_bound(t):
    del nested(t, "functionApp")["parameters"]["deleteThresholdFloor"]["minValue"]


def _floor_not_passed(t):
    del next(r for r in t["resources"] if r["name"] == "functionApp")["properties"]["parameters"]["deleteThresholdFloor"]


JSON_MUTATIONS = [_dropped_floor_setting, _floor_default, _floor_bound, _floor_not_passed, _swapped_settings, _dropped_setting, _dropped_optional_settings, _wrong_principal, _wrong_setting, _wrong_variable, _wrong_loop, _dangling_output, _dangling_parameter, _wrong_wiring, _tls, _drop_property, _extra_property, _literal_for_expression, _drop_parameter, _api_version, _resource_type, _default, _allowed, _drop_resource, _drop_condition, _kql,
                  _name, _drop_output, _dependency, _schema]


@pytest.mark.parametrize("mutate", JSON_MUTATIONS, ids=lambda f: f.__name__.strip("_"))
def test_the_comparison_catches_a_json_change(mutate) -> None:
    template = copy.deepcopy(load_template())
    mutate(template)
    assert drift(INFRA, template) != []


# ----------------------------------------------------------------------------- tests: checkov (ARM)
ARM_CHECKOV_CONFIG = PORTAL / ".checkov.yaml"


def arm_only_skips() -> dict[str, str]:
    """skip-check entries of infra/portal/.checkov.yaml with the reason on their line."""
    return checkov_skips(ARM_CHECKOV_CONFIG)


def run_checkov_arm(checkov: str, template: Path, skips: set[str]) -> dict:
    command = [checkov, "-f", str(template), "--framework", "arm", "--skip-download", "-o", "json"]
    if skips:
        command += ["--skip-check", ",".join(sorted(skips))]
    # Run from tests/, which has no .checkov.yaml: the skips are exactly the ones passed.
    return checkov_report(command, "arm", REPO / "tests")


@pytest.fixture(scope="module")
def checkov() -> str:
    return require_checkov()


def test_every_arm_only_checkov_skip_has_a_reason() -> None:
    reasons = arm_only_skips()
    assert reasons
    for check_id, reason in reasons.items():
        assert len(reason) >= 30, f"{check_id} needs its reason on its line"
    assert not set(reasons) & set(skipped_checks()), "a skip of infra/.checkov.yaml is not repeated here"


def test_checkov_arm_scan_of_the_portal_template(checkov: str) -> None:
    """With the skips of infra/.checkov.yaml and infra/portal/.checkov.yaml (each with its reason):
    no failure, no parse error, and the nested templates' resources really scanned. Without them:
    every ARM-only skip still matches a real failure, and nothing fails that is not skipped."""
    skips = set(skipped_checks()) | set(arm_only_skips())
    report = run_checkov_arm(checkov, TEMPLATE, skips)
    assert report["results"]["parsing_errors"] == []
    failed = sorted({(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]})
    assert failed == []
    passed = {c["check_id"] for c in report["results"]["passed_checks"]}
    assert {"CKV_AZURE_44", "CKV_AZURE_3"} <= passed, "the storage account inside the nested deployment was not scanned"
    assert report["summary"]["resource_count"] >= 30
    raw_failed = {c["check_id"] for c in run_checkov_arm(checkov, TEMPLATE, set())["results"]["failed_checks"]}
    assert raw_failed <= skips
    assert set(arm_only_skips()) <= raw_failed, "a stale skip in infra/portal/.checkov.yaml"


def test_checkov_arm_scan_catches_a_weakened_storage_account(checkov: str, tmp_path: Path) -> None:
    template = load_template()
    account = next(r for r in nested(template, "storage")["resources"] if r["type"] == "Microsoft.Storage/storageAccounts")
    account["properties"]["minimumTlsVersion"] = "TLS1_0"
    account["properties"]["supportsHttpsTrafficOnly"] = False
    weakened = tmp_path / "azuredeploy.json"
    weakened.write_text(json.dumps(template))
    report = run_checkov_arm(checkov, weakened, set(skipped_checks()) | set(arm_only_skips()))
    assert {"CKV_AZURE_44", "CKV_AZURE_3"} <= {c["check_id"] for c in report["results"]["failed_checks"]}


# ----------------------------------------------------------------------------- tests: createUiDefinition.json
UI_REFERENCE = re.compile(r"(?:basics\('(\w+)'\)|steps\('(\w+)'\)\.(\w+))")


def range_regex_problems(regex: str, lo: int, hi: int) -> list[str]:
    """The inputs a bounded int text box's regex gets wrong: every whole number from 0 to
    min(hi, 20000) + 1 (exhaustive), each side of hi and of every power of ten, and a few
    non-numbers. Out of range, the form would let the value through to an ARM validation failure
    after "Create"; the regex is what the portal checks as it is typed (CreateUiDefinition
    Microsoft.Common.TextBox constraints.regex)."""
    try:
        pattern = re.compile(regex)
    except re.error as exc:
        return [f"invalid regex: {exc}"]
    numbers = set(range(0, min(hi, 20000) + 2)) | {hi - 1, hi, hi + 1}
    numbers |= {n for k in range(11) for n in (10**k - 1, 10**k, 10**k + 1)}
    wrong = [str(n) for n in sorted(numbers) if n >= 0 and bool(pattern.fullmatch(str(n))) != (lo <= n <= hi)]
    wrong += [text for text in ("", "-1", "1.5", "1e3", " 50", "5O") if pattern.fullmatch(text)]
    return wrong


def ui_problems(ui: dict, template: dict) -> list[str]:
    problems: list[str] = []
    if ui.get("$schema") != UI_SCHEMA or ui.get("handler") != "Microsoft.Azure.CreateUIDef" or ui.get("version") != "0.1.2-preview":
        problems.append("not a CreateUIDefinition 0.1.2-preview document")
    parameters = template["parameters"]
    ui_params = ui["parameters"]
    outputs = ui_params["outputs"]
    basics = {e["name"]: e for e in ui_params.get("basics", [])}
    steps = {s["name"]: {e["name"]: e for e in s["elements"]} for s in ui_params.get("steps", [])}
    for name in outputs:
        if name not in parameters:
            problems.append(f"output {name} names no template parameter")
    for name, spec in parameters.items():
        if "defaultValue" not in spec and name not in outputs:
            problems.append(f"template parameter {name} has no default and no UI output")
    for name, expression in outputs.items():
        refs = UI_REFERENCE.findall(expression)
        if not refs and expression != "[location()]":
            problems.append(f"output {name} reads no control: {expression}")
        controls = []
        for basic, step, element in refs:
            control = basics.get(basic) if basic else steps.get(step, {}).get(element)
            if control is None:
                problems.append(f"output {name} reads a control that does not exist: {expression}")
            else:
                controls.append(control)
        spec = parameters.get(name)
        if spec is None or not controls:
            continue
        control = controls[0]
        if spec["type"] == "int" and control["type"] == "Microsoft.Common.TextBox" and not expression.startswith("[int("):
            problems.append(f"output {name}: an int parameter from a text box needs int()")
        if spec["type"] == "int" and control["type"] == "Microsoft.Common.TextBox" and ("minValue" in spec or "maxValue" in spec):
            wrong = range_regex_problems(control.get("constraints", {}).get("regex", ""), spec.get("minValue", 0), spec.get("maxValue", 10**10))
            if wrong:
                problems.append(f"output {name}: the text box's regex does not accept exactly {spec.get('minValue')}..{spec.get('maxValue')} "
                                f"(the template's bounds): {wrong[:3]}")
        if "allowedValues" in spec and control["type"] == "Microsoft.Common.DropDown":
            offered = [v["value"] for v in control["constraints"]["allowedValues"]]
            if offered != spec["allowedValues"]:
                problems.append(f"output {name}: the drop-down offers {offered}, the template allows {spec['allowedValues']}")
        if "allowedValues" in spec and control["type"] != "Microsoft.Common.DropDown":
            problems.append(f"output {name}: allowed values need a drop-down")
        if spec["type"] == "object" and not expression.startswith("[parse("):
            problems.append(f"output {name}: an object parameter from a text box needs parse()")
        default = spec.get("defaultValue")
        shown = control.get("defaultValue")
        if control["type"] == "Microsoft.Common.DropDown" and shown is not None:
            # A drop-down's defaultValue is the label of one of its items.
            labels = {v["label"]: v["value"] for v in control["constraints"]["allowedValues"]}
            if shown not in labels:
                problems.append(f"output {name}: the drop-down's default {shown!r} is not one of its labels")
            shown = labels.get(shown)
        if default is not None and not (isinstance(default, str) and default.startswith("[")) and shown is not None:
            if json.dumps(default) != json.dumps(shown) and str(default) != str(shown):
                problems.append(f"output {name}: the form's default {shown!r} is not the template's {default!r}")
        if spec["type"] == "securestring" and control["type"] != "Microsoft.Common.PasswordBox":
            problems.append(f"output {name}: a secure parameter needs a password box")
    return problems


def test_the_ui_definition_produces_every_required_parameter() -> None:
    assert ui_problems(json.loads(UI_DEFINITION.read_text()), load_template()) == []


def test_the_ui_definition_maps_every_parameter() -> None:
    outputs = json.loads(UI_DEFINITION.read_text())["parameters"]["outputs"]
    assert set(outputs) == set(load_template()["parameters"])


def _ui_drop_required(ui, t):
    del ui["parameters"]["outputs"]["graphClientId"]


def _ui_unknown_output(ui, t):
    ui["parameters"]["outputs"]["syncApiKey"] = "[steps('sync').syncApiCredential]"


def _ui_missing_control(ui, t):
    ui["parameters"]["outputs"]["alertEmail"] = "[basics('alertMail')]"


def _ui_dropdown(ui, t):
    next(e for e in ui["parameters"]["steps"][1]["elements"] if e["name"] == "exoMode")["constraints"]["allowedValues"].pop()


def _ui_int(ui, t):
    ui["parameters"]["outputs"]["syncIntervalMinutes"] = "[steps('sync').syncIntervalMinutes]"


def _ui_default(ui, t):
    next(e for e in ui["parameters"]["steps"][1]["elements"] if e["name"] == "deleteThresholdPercent")["defaultValue"] = "50"


def _ui_floor_default(ui, t):
    next(e for e in ui["parameters"]["steps"][1]["elements"] if e["name"] == "deleteThresholdFloor")["defaultValue"] = "0"


def _ui_floor_int(ui, t):
    ui["parameters"]["outputs"]["deleteThresholdFloor"] = "[steps('sync').deleteThresholdFloor]"


def _ui_dropdown_default(ui, t):
    next(e for e in ui["parameters"]["steps"][2]["elements"] if e["name"] == "instanceMemoryMB")["defaultValue"] = "4096 MB"


def _ui_tags(ui, t):
    ui["parameters"]["outputs"]["tags"] = "[steps('hosting').tags]"


def _ui_unbounded(ui, t):
    next(e for e in ui["parameters"]["steps"][1]["elements"] if e["name"] == "syncIntervalMinutes")["constraints"]["regex"] = "^[0-9]+$"


def _ui_off_by_one(ui, t):
    next(e for e in ui["parameters"]["steps"][2]["elements"] if e["name"] == "maximumInstanceCount")["constraints"]["regex"] = "^([4-9][0-9]|[1-9][0-9]{2})$"


def _template_bound(ui, t):
    t["parameters"]["deleteThresholdPercent"]["maxValue"] = 50


def _template_new_required(ui, t):
    t["parameters"]["tenantName"] = {"type": "string"}


@pytest.mark.parametrize("mutate", [_ui_drop_required, _ui_unknown_output, _ui_missing_control, _ui_dropdown, _ui_int, _ui_default,
                                    _ui_floor_default, _ui_floor_int, _ui_dropdown_default, _ui_tags, _ui_unbounded, _ui_off_by_one,
                                    _template_bound, _template_new_required], ids=lambda f: f.__name__.strip("_"))
def test_the_ui_definition_check_catches_a_mutation(mutate) -> None:
    ui = json.loads(UI_DEFINITION.read_text())
    template = copy.deepcopy(load_template())
    mutate(ui, template)
    assert ui_problems(ui, template) != []


# ----------------------------------------------------------------------------- tests: the button
def test_the_readme_has_the_deploy_to_azure_button() -> None:
    from urllib.parse import unquote

    readme = (REPO / "README.md").read_text()
    match = re.search(r"\[!\[Deploy to Azure\]\(https://aka\.ms/deploytoazurebutton\)\]\((https://portal\.azure\.com/#create/Microsoft\.Template/uri/([^/)]+)/createUIDefinitionUri/([^)]+))\)", readme)
    assert match, "no Deploy to Azure button in README.md"
    template_url, ui_url = unquote(match.group(2)), unquote(match.group(3))
    assert "%" not in unquote(template_url) and ":" not in match.group(2), "the raw URLs must be URL-encoded"
    assert template_url.startswith("https://raw.githubusercontent.com/") and template_url.endswith("/infra/portal/azuredeploy.json")
    assert ui_url.startswith("https://raw.githubusercontent.com/") and ui_url.endswith("/infra/portal/createUiDefinition.json")
    assert template_url.rsplit("/infra/", 1)[0] == ui_url.rsplit("/infra/", 1)[0]
