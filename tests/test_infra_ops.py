"""Infra suite, operations part: the alerts on the existing action group (missed runs, secret
expiry, guard holds), the workbook, and their KQL against the dimensions the product really
writes (shared/common/telemetry.py). Bicep is parsed with the real grammar (infra_helpers); each
check also runs on a mutated copy of infra/ and must catch the mutation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from infra_helpers import INFRA, expr, int_bounds, lit, load, lookup, module_params, mutated_infra

from shared.common.summary import RunSummary
from shared.common.telemetry import summary_dimensions


def var_text(bicep, name: str) -> str:
    node = bicep.variables.get(name)
    if node is None:
        return ""
    text = bicep.text(node)
    return text[3:-3] if text.startswith("'''") else text


def all_dimensions() -> set[str]:
    """Every dimension name the run summary record can carry."""
    s = RunSummary("update")
    s.extra.update({"read": {"kind": "full", "reason": "r", "objects": {"users": 1}}, "heldDeletions": {"users": {"count": 1}},
                    "phaseSeconds": {"read": 1, "plan": 1, "send": 1, "commit": 1},
                    "credentialWarnings": ["x expires 2027-01-01 (3 days); y"]})
    return set(summary_dimensions(s.finish(False, "boom")))


DIMENSION_REF = re.compile(r"customDimensions(?:\.([A-Za-z]+)|\[\\?'([A-Za-z.]+)\\?'\])")


def dimensions_used(path: Path) -> set[str]:
    return {a or b for a, b in DIMENSION_REF.findall(path.read_text())}


# ----------------------------------------------------------------------------- checks
def check_ops_alerts(root: Path) -> list[str]:
    problems: list[str] = []
    ops = load(root, "app/ops-alerts.bicep")
    main = load(root, "main.bicep")
    rules = {r.symbol: r.body for r in ops.resources_of_type("Microsoft.Insights/scheduledQueryRules")}
    if set(rules) != {"missedRuns", "secretExpiry", "guardHolds"}:
        return [f"ops-alerts.bicep must declare missedRuns, secretExpiry and guardHolds, not {sorted(rules)}"]
    for name, rule in rules.items():
        if expr(ops, rule, "properties.scopes") != "[\n      applicationInsightsId\n    ]":
            problems.append(f"{name} must query Application Insights")
        if expr(ops, rule, "properties.actions.actionGroups") != "[\n        actionGroupId\n      ]":
            problems.append(f"{name} must notify the existing action group")
        if lit(ops, rule, "properties.enabled") is not True:
            problems.append(f"{name} must be enabled")
    conditions = {name: [c for c in lookup(ops, rule, "properties.criteria.allOf").named_children if c.type == "object"]
                  for name, rule in rules.items()}
    if any(len(c) != 1 for c in conditions.values()):
        return problems + ["each alert has exactly one condition"]

    # missed runs: fewer than one successful timer run in three schedule intervals
    missed = conditions["missedRuns"][0]
    query = var_text(ops, "successfulTimerRunsQuery")
    if expr(ops, missed, "query") != "successfulTimerRunsQuery":
        problems.append("missedRuns must use successfulTimerRunsQuery")
    for needed in ("customDimensions.event == 'SyncRunSummary'", "customDimensions.host == 'functions'",
                   "customDimensions.action == 'update'", "| where tobool(customDimensions.ok)"):
        if needed not in query:
            problems.append(f"successfulTimerRunsQuery must filter {needed}")
    if (lit(ops, missed, "timeAggregation"), lit(ops, missed, "operator"), lit(ops, missed, "threshold")) != ("Count", "LessThan", 1):
        problems.append("missedRuns must fire when fewer than one successful run was counted")
    if expr(ops, rules["missedRuns"], "properties.windowSize") != "'PT${missedRunWindowMinutes}M'" or \
            "3 * syncIntervalMinutes" not in ops.text(ops.variables["missedRunWindowMinutes"]):
        problems.append("missedRuns must look back three schedule intervals")

    # secret expiry: the run's warning, 30 days ahead
    expiry = conditions["secretExpiry"][0]
    if "toint(customDimensions.secretExpiresInDays)" not in var_text(ops, "expiringSecretQuery"):
        problems.append("expiringSecretQuery must read secretExpiresInDays")
    if (lit(ops, expiry, "timeAggregation"), lit(ops, expiry, "metricMeasureColumn"), lit(ops, expiry, "operator"),
            expr(ops, expiry, "threshold")) != ("Minimum", "secretExpiresInDays", "LessThanOrEqual", "secretExpiryDays"):
        problems.append("secretExpiry must fire when the soonest expiry is within secretExpiryDays")
    default = ops.params["secretExpiryDays"].default
    if default is None or ops.text(default) != "30":
        problems.append("secretExpiryDays must default to 30")

    # guard holds
    held = conditions["guardHolds"][0]
    if "where heldDeletions > 0" not in var_text(ops, "heldDeletionsQuery"):
        problems.append("heldDeletionsQuery must keep runs that held deletions")
    if (lit(ops, held, "metricMeasureColumn"), lit(ops, held, "operator"), lit(ops, held, "threshold")) != ("heldDeletions", "GreaterThan", 0):
        problems.append("guardHolds must fire on any held deletion")

    wired = module_params(main, "opsAlerts") if "opsAlerts" in main.modules else {}
    if wired.get("actionGroupId") != "alert.outputs.actionGroupId":
        problems.append("main.bicep must give the ops alerts the existing action group")
    if wired.get("applicationInsightsId") != "monitoring.outputs.applicationInsightsId":
        problems.append("main.bicep must scope the ops alerts to the monitoring module's Application Insights")
    if wired.get("syncIntervalMinutes") != "syncIntervalMinutes":
        problems.append("main.bicep must pass syncIntervalMinutes")
    return problems


# The window sizes (minutes) of a log search alert that Azure Monitor accepts; any other is refused
# at deployment with "Supported granularities are: 5, 10, 15, 30, 45, 60, 120, 180, 240, 300, 360,
# 1440, 2880" (Azure/azure-rest-api-specs#21258; hashicorp/terraform-provider-azurerm#18886).
LOG_ALERT_WINDOW_MINUTES = (5, 10, 15, 30, 45, 60, 120, 180, 240, 300, 360, 1440, 2880)
ISO_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?)?$")
# missedRunWindowMinutes: the first of a list of windows that is at least N intervals.
BICEP_WINDOW_CHOICE = re.compile(r"^first\(filter\((\w+), (\w+) => \2 >= (\d+) \* syncIntervalMinutes\)\)$")
ARM_WINDOW_CHOICE = re.compile(r"^\[first\(filter\(variables\('(\w+)'\), lambda\('(\w+)', greaterOrEquals\("
                               r"lambdaVariables\('\2'\), mul\((\d+), parameters\('syncIntervalMinutes'\)\)\)\)\)\)\]$")
BICEP_FREQUENCY_CHOICE = re.compile(r"^syncIntervalMinutes >= (\d+) \? '(\w+)' : '(\w+)'$")


def iso_minutes(text: object) -> int | None:
    """Minutes of an ISO 8601 duration such as PT15M, PT1H or P2D (None for anything else)."""
    m = ISO_DURATION.match(text) if isinstance(text, str) else None
    if not m or not any(m.groups()):
        return None
    days, hours, minutes = (int(g or 0) for g in m.groups())
    return days * 1440 + hours * 60 + minutes


def bounds(bicep, name: str) -> tuple[int, int]:
    lo, hi = int_bounds(bicep, name)
    assert lo is not None and hi is not None, f"{bicep.path.name}: {name} needs @minValue and @maxValue"
    return lo, hi


def first_at_least(choices: list, factor: int, interval: int) -> int | None:
    """Bicep's first(filter(choices, w => w >= factor * interval)) (null when none is)."""
    return next((c for c in choices if c >= factor * interval), None)


def missed_run_window_problems(intervals: range, window_of, frequency_of) -> list[str]:
    """Every accepted interval's missed-run window: a size the service accepts, at least three
    intervals, the smallest such, and no shorter than the evaluation frequency."""
    problems: list[str] = []
    for interval in intervals:
        window = window_of(interval)
        wanted = min(w for w in LOG_ALERT_WINDOW_MINUTES if w >= 3 * interval)
        if window not in LOG_ALERT_WINDOW_MINUTES:
            problems.append(f"syncIntervalMinutes={interval}: window {window} min is not a size log alerts accept")
        elif window != wanted:
            problems.append(f"syncIntervalMinutes={interval}: window {window} min, want {wanted} (three intervals, rounded up)")
        frequency = frequency_of(interval)
        if frequency is None or window is None or frequency > window:
            problems.append(f"syncIntervalMinutes={interval}: evaluation every {frequency} min over a {window} min window")
    return problems


def check_alert_windows(root: Path) -> list[str]:
    """Exhaustive over syncIntervalMinutes: the missed-run alert's window is a size Azure Monitor
    accepts for every value main.bicep and the portal accept; every other log alert's literal
    window is one too, and each rule evaluates no less often than its window."""
    problems: list[str] = []
    ops = load(root, "app/ops-alerts.bicep")
    lo, hi = bounds(ops, "syncIntervalMinutes")
    for relative in ("main.bicep", "portal/main.bicep"):
        if bounds(load(root, relative), "syncIntervalMinutes") != (lo, hi):
            problems.append(f"{relative}: syncIntervalMinutes bounds differ from app/ops-alerts.bicep's {lo}..{hi}")
    window_text = ops.text(ops.variables["missedRunWindowMinutes"])
    m = BICEP_WINDOW_CHOICE.match(window_text)
    plain = re.match(r"^(\d+) \* syncIntervalMinutes$", window_text)  # a bare multiple (the shape before the fix)
    f = BICEP_FREQUENCY_CHOICE.match(ops.text(ops.variables["missedRunFrequency"]))
    if not (m or plain) or not f:
        return problems + ["missedRunWindowMinutes must be first(filter(<choices>, w => w >= 3 * syncIntervalMinutes)) "
                           "and missedRunFrequency syncIntervalMinutes >= N ? '<ISO>' : '<ISO>'"]
    if m:
        choices, factor = lit(ops, ops.variables[m[1]]) or [], int(m[3])
        window_of = lambda i: first_at_least(choices, factor, i)  # noqa: E731
    else:
        window_of = lambda i: int(plain[1]) * i  # noqa: E731
    problems += missed_run_window_problems(range(lo, hi + 1), window_of,
                                           lambda i: iso_minutes(f[2] if i >= int(f[1]) else f[3]))
    for relative in ("app/alert.bicep", "app/ops-alerts.bicep"):
        bicep = load(root, relative)
        for rule in bicep.resources_of_type("Microsoft.Insights/scheduledQueryRules"):
            window = lit(bicep, rule.body, "properties.windowSize")
            frequency = iso_minutes(lit(bicep, rule.body, "properties.evaluationFrequency"))
            if window is None:
                continue  # an expression: the missed-run window, checked above
            if iso_minutes(window) not in LOG_ALERT_WINDOW_MINUTES:
                problems.append(f"{relative}: {rule.symbol} windowSize {window} is not a size log alerts accept")
            elif frequency is not None and frequency > iso_minutes(window):
                problems.append(f"{relative}: {rule.symbol} evaluates less often than its window")
    return problems


def check_portal_alert_windows(root: Path) -> list[str]:
    """The same matrix, evaluated from the hand-translated ARM JSON of the portal template."""
    template = json.loads((root / "portal/azuredeploy.json").read_text())
    nested = {r["name"]: r for r in template["resources"] if r["type"] == "Microsoft.Resources/deployments"}
    ops = nested["opsAlerts"]["properties"]["template"]
    variables = ops["variables"]
    spec = ops["parameters"]["syncIntervalMinutes"]
    m = ARM_WINDOW_CHOICE.match(variables.get("missedRunWindowMinutes", ""))
    if not m:
        return ["azuredeploy.json: missedRunWindowMinutes must be first(filter(variables(<choices>), "
                "lambda(w, greaterOrEquals(lambdaVariables(w), mul(3, parameters('syncIntervalMinutes'))))))"]
    choices = variables.get(m[1]) or []
    factor = int(m[3])
    freq = re.match(r"^\[if\(greaterOrEquals\(parameters\('syncIntervalMinutes'\), (\d+)\), '(\w+)', '(\w+)'\)\]$",
                    variables.get("missedRunFrequency", ""))
    if not freq:
        return ["azuredeploy.json: missedRunFrequency is not the Bicep's conditional"]
    return missed_run_window_problems(
        range(spec["minValue"], spec["maxValue"] + 1), lambda i: first_at_least(choices, factor, i),
        lambda i: iso_minutes(freq[2] if i >= int(freq[1]) else freq[3]))


WORKBOOK_VIEWS = {
    "runs-over-time": ("countif(ok)", "countif(not(ok))"),
    "records-sent": ("customDimensions['addresses.added']", "customDimensions['groups.removed']", "customDimensions['users.added']"),
    "read-kind": ("customDimensions.readKind",),
    "duration": ("customDimensions.durationSeconds", "customDimensions.graphRequests"),
    "last-error": ("customDimensions.error", "where not(ok)"),
    "held-deletions": ("customDimensions.heldDeletions", "customDimensions['users.held']"),
}


def check_workbook(root: Path) -> list[str]:
    problems: list[str] = []
    wb = load(root, "app/workbook.bicep")
    main = load(root, "main.bicep")
    books = wb.resources_of_type("Microsoft.Insights/workbooks")
    if len(books) != 1:
        return ["workbook.bicep must declare one workbook"]
    body = books[0].body
    if expr(wb, body, "properties.sourceId") != "applicationInsightsId":
        problems.append("the workbook must be linked to Application Insights")
    if expr(wb, body, "properties.serializedData") != "string(content)":
        problems.append("the workbook's serializedData must be the content object, serialized")
    if lit(wb, body, "kind") != "shared" or lit(wb, body, "properties.category") != "workbook":
        problems.append("the workbook must be a shared workbook")
    items = lookup(wb, wb.variables["content"], "items")
    calls = {}
    for item in items.named_children:
        if item.type != "object" or lit(wb, item, "type") != 3:
            continue
        m = re.fullmatch(r"'\$\{runs\}\$\{(\w+)\}'", expr(wb, item, "content.query"))
        if m and lit(wb, item, "content.version") == "KqlItem/1.0":
            calls[lit(wb, item, "name")] = (m.group(1), lit(wb, item, "content.visualization"))
    for view, needles in WORKBOOK_VIEWS.items():
        if view not in calls:
            problems.append(f"the workbook lacks the {view} view")
            continue
        query = var_text(wb, "runs") + var_text(wb, calls[view][0])
        for needle in needles:
            if needle not in query:
                problems.append(f"the {view} view must use {needle}")
    if "customDimensions.event == 'SyncRunSummary'" not in var_text(wb, "runs"):
        problems.append("every workbook query must start from the SyncRunSummary records")
    wired = module_params(main, "workbook") if "workbook" in main.modules else {}
    if wired.get("applicationInsightsId") != "monitoring.outputs.applicationInsightsId":
        problems.append("main.bicep must link the workbook to the monitoring module's Application Insights")
    return problems


def check_dimensions_exist(root: Path) -> list[str]:
    known = all_dimensions()
    problems = []
    for rel in ("app/ops-alerts.bicep", "app/workbook.bicep", "app/alert.bicep"):
        for name in sorted(dimensions_used(root / rel) - known):
            problems.append(f"{rel} queries customDimensions {name!r}, which the run summary record never carries")
    return problems


CHECKS = [check_ops_alerts, check_workbook, check_dimensions_exist, check_alert_windows, check_portal_alert_windows]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_structural_check_passes(check) -> None:
    assert check(INFRA) == []


MUTATIONS = [
    (check_ops_alerts, "app/ops-alerts.bicep", "minutes >= 3 * syncIntervalMinutes", "minutes >= 30 * syncIntervalMinutes"),
    # the window before this fix: 3 x the interval, refused for 30, 45, 240 ... minutes
    (check_alert_windows, "app/ops-alerts.bicep",
     "first(filter(missedRunWindowChoices, minutes => minutes >= 3 * syncIntervalMinutes))", "3 * syncIntervalMinutes"),
    (check_alert_windows, "app/ops-alerts.bicep", "minutes >= 3 * syncIntervalMinutes", "minutes >= 2 * syncIntervalMinutes"),
    (check_alert_windows, "app/ops-alerts.bicep", "  120\n  180\n", "  90\n  180\n"),
    (check_alert_windows, "app/ops-alerts.bicep", "  1440\n  2880\n", "  1440\n"),
    (check_alert_windows, "app/ops-alerts.bicep", "    windowSize: 'PT1H'\n", "    windowSize: 'PT90M'\n"),
    (check_alert_windows, "app/alert.bicep", "    evaluationFrequency: 'PT15M'\n", "    evaluationFrequency: 'PT1H'\n"),
    (check_alert_windows, "main.bicep", "@maxValue(960)\nparam syncIntervalMinutes", "@maxValue(1440)\nparam syncIntervalMinutes"),
    (check_portal_alert_windows, "portal/azuredeploy.json",
     "\"[first(filter(variables('missedRunWindowChoices'), lambda('minutes', greaterOrEquals(lambdaVariables('minutes'), mul(3, parameters('syncIntervalMinutes'))))))]\"",
     "\"[mul(3, parameters('syncIntervalMinutes'))]\""),
    (check_portal_alert_windows, "portal/azuredeploy.json", "              120,\n", "              90,\n"),
    (check_ops_alerts, "app/ops-alerts.bicep", "| where tobool(customDimensions.ok)\n", "\n"),
    (check_ops_alerts, "app/ops-alerts.bicep", "          operator: 'LessThan'\n", "          operator: 'GreaterThan'\n"),
    (check_ops_alerts, "app/ops-alerts.bicep", "param secretExpiryDays int = 30", "param secretExpiryDays int = 7"),
    (check_ops_alerts, "app/ops-alerts.bicep", "| where heldDeletions > 0", "| where heldDeletions > 10"),
    (check_ops_alerts, "main.bicep", "    actionGroupId: alert.outputs.actionGroupId\n", "    actionGroupId: ''\n"),
    (check_workbook, "app/workbook.bicep", "    sourceId: applicationInsightsId\n", "    sourceId: 'Azure Monitor'\n"),
    (check_workbook, "app/workbook.bicep", "| where not(ok)\n", "\n"),
    (check_workbook, "app/workbook.bicep", "      name: 'read-kind'\n", "      name: 'read-kinds'\n"),
    (check_dimensions_exist, "app/workbook.bicep", "customDimensions.graphRequests", "customDimensions.graphCalls"),
    (check_dimensions_exist, "app/ops-alerts.bicep", "customDimensions['users.held']", "customDimensions['users.hold']"),
]


@pytest.mark.parametrize(("check", "relative", "old", "new"), MUTATIONS, ids=lambda v: getattr(v, "__name__", None))
def test_structural_check_catches_a_mutation(tmp_path: Path, check, relative: str, old: str, new: str) -> None:
    assert check(mutated_infra(tmp_path, relative, old, new)) != []


def test_the_missed_run_window_is_three_hourly_runs_by_default() -> None:
    ops = load(INFRA, "app/ops-alerts.bicep")
    main = load(INFRA, "main.bicep")
    assert ops.text(ops.params["syncIntervalMinutes"].default) == "60"
    assert main.text(main.params["syncIntervalMinutes"].default) == "60"
    # The default schedule (hourly) and the interval agree.
    assert main.text(main.params["syncSchedule"].default) == "'0 0 * * * *'"


def test_the_failure_alert_also_counts_failed_summary_records() -> None:
    """In the OpenTelemetry mode a timer execution may have no request row; the run's own record counts."""
    alert = load(INFRA, "app/alert.bicep")
    query = alert.text(alert.variables["failedRunsQuery"])
    assert "customDimensions.event == \\'SyncRunSummary\\'" in query
    assert "not(tobool(customDimensions.ok))" in query


def test_host_json_runs_the_opentelemetry_mode() -> None:
    host = json.loads((INFRA.parent / "host.json").read_text())
    assert host["telemetryMode"] == "OpenTelemetry"
    requirements = (INFRA.parent / "requirements.in").read_text() if (INFRA.parent / "requirements.in").exists() else (INFRA.parent / "requirements.txt").read_text()
    assert re.search(r"^azure-monitor-opentelemetry==", requirements, re.M)
