"""Infra suite, operations part: the alerts on the existing action group (missed runs, secret
expiry, guard holds), the workbook, and their KQL against the dimensions the product really
writes (shared/common/telemetry.py). Bicep is parsed with the real grammar (infra_helpers); each
check also runs on a mutated copy of infra/ and must catch the mutation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from infra_helpers import INFRA, expr, lit, load, lookup, module_params, mutated_infra

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
            ops.text(ops.variables["missedRunWindowMinutes"]) != "3 * syncIntervalMinutes":
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


CHECKS = [check_ops_alerts, check_workbook, check_dimensions_exist]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_structural_check_passes(check) -> None:
    assert check(INFRA) == []


MUTATIONS = [
    (check_ops_alerts, "app/ops-alerts.bicep", "var missedRunWindowMinutes = 3 * syncIntervalMinutes", "var missedRunWindowMinutes = 30 * syncIntervalMinutes"),
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
