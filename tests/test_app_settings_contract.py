"""The app settings the deployment templates write are the settings the product reads, with the
values it accepts (docs/sync-rules.md, "Settings"; docs/deployment.md, "Parameters").

Two mechanical checks over every template that sets them (infra/app/function-app.bicep, which
infra/main.bicep and infra/portal/main.bicep deploy, the compiled infra/portal/azuredeploy.json,
and local.settings.json.example):

* **names**: each app setting a template writes is a name the product's code spells as a
  string (``shared/``, ``function_app.py``, ``operator_endpoints.py``, docstrings left out),
  or one the Functions host itself reads (listed below with the reason). A setting renamed on
  one side only would be silently ignored in Azure: the product would run on its default.
* **ranges**: each number setting a template writes from an ``int`` parameter (``string(p)``)
  accepts exactly the values ``load_settings`` accepts: the template's ``@minValue`` and
  ``@maxValue`` are the code's bounds. A template that accepts a value the code refuses
  deploys a Function whose every run stops with a settings error.
* **CI**: the deploy workflow (.github/workflows/deploy.yml) passes every environment variable
  main.bicepparam turns into an app setting. A deployment writes the app settings whole, so a
  variable the workflow leaves out is reset to its default by every push to main.

Each check also runs on a mutated copy, to show that it fails."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from infra_helpers import INFRA, REPO, descendants, load, mutated_infra, object_properties

from shared.common.errors import SettingsError
from shared.config.settings import load_settings

# Read by the Functions host, not by the product: the identity-based host storage connection
# (https://learn.microsoft.com/azure/azure-functions/functions-reference#common-properties-for-identity-based-connections).
# The product's own blob client takes the identity from AzureWebJobsStorage__clientId.
HOST_SETTINGS = {"AzureWebJobsStorage__credential", "FUNCTIONS_WORKER_RUNTIME"}
PRODUCT_CODE = [REPO / "function_app.py", REPO / "operator_endpoints.py", *sorted((REPO / "shared").rglob("*.py"))]
# The templates that declare the number parameters feeding string(param) app settings.
RANGE_TEMPLATES = ("main.bicep", "portal/main.bicep", "app/function-app.bicep")
BASE_ENV = {
    "GRAPH_AUTH": "none",
    "GRAPH_BASE_URL": "http://127.0.0.1:1/v1.0",
    "SYNC_API_URL": "http://127.0.0.1:1/v1",
    "SYNC_API_CREDENTIAL": "token",
    "SYNC_STATE": "file:/nonexistent/state",
}


# ----------------------------------------------------------------------------- what the code reads
def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                ids.add(id(first.value))
    return ids


def names_in_code(files: list[Path] = PRODUCT_CODE) -> set[str]:
    """Every string constant of the product's code that could be a setting name (docstrings
    left out), and every ``%NAME%`` binding expression the Functions host resolves."""
    names: set[str] = set()
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                if re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", node.value):
                    names.add(node.value)
                names.update(re.findall(r"%([A-Za-z][A-Za-z0-9_]*)%", node.value))
    return names


# ----------------------------------------------------------------------------- what the templates write
def bicep_app_settings(infra: Path) -> dict[str, str]:
    """Setting name -> value expression, over every variable app/function-app.bicep unions
    into its appsettings resource (the optional ones included)."""
    fa = load(infra, "app/function-app.bicep")
    union = re.search(r"properties:\s*union\(([^)]*)\)", fa.src.decode())
    assert union, "app/function-app.bicep: no appsettings union"
    settings: dict[str, str] = {}
    for variable in (v.strip() for v in union.group(1).split(",")):
        node = fa.variables[variable]
        objects = [node] if node.type == "object" else [c for c in descendants(node) if c.type == "object"]
        for obj in objects:
            settings.update({k: fa.text(v) for k, v in object_properties(fa, obj).items()})
    return settings


def _arguments(text: str) -> list[str]:
    """The top-level, comma-separated arguments of an ARM call's argument text."""
    parts, depth, quoted, current = [], 0, False, ""
    for ch in text:
        if ch == "'":
            quoted = not quoted  # '' (an escaped quote) toggles twice
        elif not quoted and ch in "([":
            depth += 1
        elif not quoted and ch in ")]":
            depth -= 1
        elif not quoted and ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += ch
    return [*parts, current.strip()] if current.strip() else parts


def arm_app_settings(template_path: Path) -> set[str]:
    """The setting names of the compiled template's appsettings resource: the keys of its
    ``union(createObject(...), variables(...)...)``, those variables' keys included."""
    template = json.loads(template_path.read_text())
    nested = next(r for r in template["resources"] if r["name"] == "functionApp")["properties"]["template"]
    config = next(r for r in nested["resources"] if r["type"] == "Microsoft.Web/sites/config")
    union = re.fullmatch(r"\[union\((.*)\)\]", config["properties"], re.S)
    assert union, "azuredeploy.json: the app settings are not a union(...)"
    names: set[str] = set()
    for argument in _arguments(union.group(1)):
        variable = re.fullmatch(r"variables\('(\w+)'\)", argument)
        if variable:
            names |= set(re.findall(r"createObject\('([A-Za-z0-9_]+)'", nested["variables"][variable.group(1)]))
            continue
        inner = re.fullmatch(r"createObject\((.*)\)", argument, re.S)
        assert inner, f"azuredeploy.json: unexpected app settings argument {argument[:60]}"
        keys = _arguments(inner.group(1))[0::2]
        names |= {k.strip("'") for k in keys}
    return names


def unread(names: set[str], code: set[str]) -> list[str]:
    return sorted(n for n in names if n not in code and n not in HOST_SETTINGS)


def test_every_app_setting_the_bicep_writes_is_read_by_the_product() -> None:
    settings = bicep_app_settings(INFRA)
    assert {"SYNC_API_URL", "AzureWebJobsStorage__clientId", "EXCLUDE_ADDRESS_PATTERNS"} <= set(settings)  # the walk finds them all
    assert unread(set(settings), names_in_code()) == []


def test_every_app_setting_the_portal_template_writes_is_read_by_the_product() -> None:
    names = arm_app_settings(INFRA / "portal/azuredeploy.json")
    assert {"SYNC_API_URL", "ADDRESS_DOMAINS", "EXCLUDE_USER_TYPES"} <= names
    assert unread(names, names_in_code()) == []


def test_every_setting_of_the_local_settings_example_is_read_by_the_product() -> None:
    values = json.loads((REPO / "local.settings.json.example").read_text())["Values"]
    assert unread(set(values), names_in_code()) == []


def test_the_name_check_catches_a_renamed_setting(tmp_path: Path) -> None:
    """Bicep writing ``SYNC_DATASET`` (the product reads ``SYNC_DATASETS``) is caught."""
    infra = mutated_infra(tmp_path, "app/function-app.bicep", "  SYNC_DATASETS: syncDatasets\n", "  SYNC_DATASET: syncDatasets\n")
    assert unread(set(bicep_app_settings(infra)), names_in_code()) == ["SYNC_DATASET"]


def test_the_name_check_ignores_docstrings(tmp_path: Path) -> None:
    """A name the code only mentions in a docstring is not a name it reads."""
    module = tmp_path / "m.py"
    module.write_text('"""Reads ONLY_IN_DOCS."""\nX = "READ_HERE"\nY = "%BOUND_HERE%"\n')
    found = names_in_code([module])
    assert {"READ_HERE", "BOUND_HERE"} <= found and "ONLY_IN_DOCS" not in found


# ----------------------------------------------------------------------------- ranges
def number_settings(infra: Path) -> dict[str, str]:
    """Setting name -> the function-app.bicep ``int`` parameter it is ``string()`` of."""
    out = {}
    for name, value in bicep_app_settings(infra).items():
        match = re.fullmatch(r"string\((\w+)\)", value)
        if match:
            out[name] = match.group(1)
    return out


def bicep_bounds(infra: Path, relative: str, param: str) -> tuple[int | None, int | None]:
    """(@minValue, @maxValue) of ``param`` in one Bicep file (None: not declared)."""
    text = (infra / relative).read_text()
    match = re.search(rf"((?:^@[^\n]*\n)*)param {param} int\b", text, re.M)
    assert match, f"{relative}: no int parameter {param}"
    decorators = match.group(1)

    def bound(kind: str) -> int | None:
        found = re.search(rf"^@{kind}\((-?\d+)\)", decorators, re.M)
        return int(found.group(1)) if found else None

    return bound("minValue"), bound("maxValue")


def accepted(setting: str, value: int) -> bool:
    try:
        load_settings({**BASE_ENV, setting: str(value)})
    except SettingsError as exc:
        assert setting in str(exc)
        return False
    return True


def range_problems(infra: Path) -> list[str]:
    problems = []
    for setting, param in number_settings(infra).items():
        for relative in RANGE_TEMPLATES:
            low, high = bicep_bounds(infra, relative, param)
            if low is None or high is None:
                probe = -1 if low is None else 10**10
                if not accepted(setting, probe):
                    problems.append(f"{relative}: {param} has no @{'minValue' if low is None else 'maxValue'}, so it accepts {probe}, "
                                    f"which {setting} refuses: every run would stop with a settings error")
                continue
            if not (accepted(setting, low) and accepted(setting, high)):
                problems.append(f"{relative}: {param} allows {low}..{high}, which {setting} refuses in part")
            if accepted(setting, low - 1) or accepted(setting, high + 1):
                problems.append(f"{relative}: {param} refuses values ({low - 1} or {high + 1}) that {setting} accepts")
        template = json.loads((infra / "portal/azuredeploy.json").read_text())
        nested = next(r for r in template["resources"] if r["name"] == "functionApp")["properties"]["template"]
        for where, declared in (("azuredeploy.json", template["parameters"]), ("azuredeploy.json functionApp", nested["parameters"])):
            spec = declared.get(param, {})
            if (spec.get("minValue"), spec.get("maxValue")) != bicep_bounds(infra, "app/function-app.bicep", param):
                problems.append(f"{where}: {param} bounds {spec.get('minValue')}..{spec.get('maxValue')} differ from the Bicep's")
    return problems


def test_number_settings_are_found() -> None:
    assert set(number_settings(INFRA)) == {"FULL_SYNC_INTERVAL_HOURS", "DELETE_THRESHOLD_PERCENT", "DELETE_THRESHOLD_COUNT", "DELETE_THRESHOLD_FLOOR"}


def test_every_number_the_templates_accept_is_a_value_the_product_accepts() -> None:
    assert range_problems(INFRA) == []


@pytest.mark.parametrize("relative", RANGE_TEMPLATES)
def test_the_range_check_catches_a_missing_bound(tmp_path: Path, relative: str) -> None:
    text = (INFRA / relative).read_text()
    anchor = re.search(r"@maxValue\(\d+\)\nparam fullSyncIntervalHours int", text)
    assert anchor, f"{relative}: fullSyncIntervalHours has no @maxValue to remove"
    infra = mutated_infra(tmp_path, relative, anchor.group(0), "param fullSyncIntervalHours int")
    assert any("fullSyncIntervalHours" in p and relative in p for p in range_problems(infra))


# ----------------------------------------------------------------------------- the CI deployment
DEPLOY_WORKFLOW = REPO / ".github/workflows/deploy.yml"
# Passed another way by the workflow: the secret in the deploying step's own env.
WORKFLOW_PASSED_OTHERWISE = {"SYNC_API_CREDENTIAL"}


def bicepparam_variables(infra: Path) -> dict[str, tuple[str, str | None]]:
    """main.bicepparam: parameter -> (the environment variable it reads, its default; None: required)."""
    out = {}
    for name, variable, fallback in re.findall(r"^param (\w+) = (?:\w+\()?readEnvironmentVariable\('([A-Z_]+)'(, '[^']*')?",
                                               (infra / "main.bicepparam").read_text(), re.M):
        out[name] = (variable, fallback[3:-1] if fallback else None)
    return out


def workflow_problems(infra: Path, workflow_text: str) -> list[str]:
    """Every environment variable main.bicepparam turns into an app setting of the Function is
    set in the deploy workflow's env, from the repository variable of the same name with the
    bicepparam's default as fallback (an unset repository variable is an empty string, which
    int() refuses). A variable the workflow leaves out is reset to its default by every push to
    main: the deployment writes the app settings whole."""
    import yaml
    from infra_helpers import module_params

    env = yaml.safe_load(workflow_text).get("env") or {}
    wired = module_params(load(infra, "main.bicep"), "functionApp")
    feeding = {source for source in wired.values() if re.fullmatch(r"\w+", source)}
    problems = []
    for param, (variable, default) in sorted(bicepparam_variables(infra).items()):
        if param not in feeding or variable in WORKFLOW_PASSED_OTHERWISE:
            continue
        want = f"${{{{ vars.{variable} }}}}" if not default else f"${{{{ vars.{variable} || '{default}' }}}}"
        if env.get(variable) != want:
            problems.append(f"deploy.yml env {variable} is {env.get(variable)!r}, not {want!r}: every CI deployment would reset it")
    return problems


def test_the_ci_deployment_passes_every_setting_the_templates_write() -> None:
    assert workflow_problems(INFRA, DEPLOY_WORKFLOW.read_text()) == []


def test_the_workflow_check_catches_a_dropped_variable() -> None:
    text = DEPLOY_WORKFLOW.read_text()
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("SYNC_DATASETS:"))
    problems = workflow_problems(INFRA, text.replace(line + "\n", ""))
    assert len(problems) == 1 and "SYNC_DATASETS" in problems[0]
