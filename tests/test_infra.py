"""Offline checks of the infra/ deployment (issue 3).

What runs here, with no Azure and no network:
  * every .bicep file parses under tree-sitter-bicep, a real Bicep grammar (see
    infra_helpers.py for how the `extension` line, newer than that grammar, is handled);
  * structural checks a reviewer would make: every product setting is set, and from the
    right place; the role and app-role ids match their named permissions; no secret has
    a default or reaches an output; storage, Key Vault and the Function App are locked
    down; the Function uses its user-assigned identity for storage and for Key Vault;
  * each structural check is also run on a mutated copy of infra/, to prove it can fail;
  * the rotation script and the ARM build script, against fake `az` and `bicep`;
  * checkov's Bicep scan (offline), when checkov is installed (infra/requirements-checkov.txt);
  * `bicep build` and `bicep lint`, when Bicep 0.36.1 or later is on PATH.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from infra_helpers import (
    CHECKOV_CONFIG,
    EXTENSION_LINE,
    INFRA,
    REPO,
    BicepSourceError,
    bicep_cli,
    bicep_files,
    blank_extension_lines,
    checkov_report,
    copy_infra,
    descendants,
    expr,
    int_bounds,
    lit,
    literal,
    load,
    lookup,
    module_params,
    mutated_infra,
    object_properties,
    parse_bicep,
    require_checkov,
    skipped_checks,
)

# ----------------------------------------------------------------------------- facts
# The product's settings (the settings table of the product's sync rules), hard-coded
# here on purpose: the tests do not read anything outside the repository.
PRODUCT_SETTINGS = [
    "GRAPH_TENANT_ID",
    "GRAPH_CLIENT_ID",
    "KEY_VAULT_URL",
    "GRAPH_CLIENT_SECRET_NAME",
    "SYNC_API_CREDENTIAL_NAME",
    "GRAPH_BASE_URL",
    "GRAPH_AUTH",
    "SYNC_API_URL",
    "SYNC_DATASETS",
    "ADDRESS_DOMAINS",
    "SYNC_STATE",
    "SYNC_SCHEDULE",
    # added by the delta and safety issues (README settings table)
    "FULL_SYNC_INTERVAL_HOURS",
    "DELETE_THRESHOLD_PERCENT",
    "DELETE_THRESHOLD_COUNT",
    "DELETE_THRESHOLD_FLOOR",
    # added by the Exchange Online issue
    "EXO_MODE",
    # added by the scope and exclusions issue (optional: set only when given)
    "SYNC_SCOPE_GROUPS",
    "EXCLUDE_USER_TYPES",
    "EXCLUDE_ADDRESS_PATTERNS",
]
# The same table's two secrets: only ever read from Key Vault in Azure, never app settings.
SECRET_SETTINGS = ["GRAPH_CLIENT_SECRET", "SYNC_API_CREDENTIAL"]
# Settings that Flex Consumption rejects, or that would mean a storage key.
FORBIDDEN_SETTINGS = [
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "AzureWebJobsStorage",
    "AzureWebJobsStorage__accountKey",
]
# main.bicep defaults that must equal the settings table's defaults.
SETTING_DEFAULTS = {
    "graphBaseUrl": "https://graph.microsoft.com/v1.0",
    "graphAuth": "client_secret",
    "syncDatasets": "addresses,groups,users",
    "addressDomains": "",
    "syncScopeGroups": "",
    "excludeUserTypes": "",
    "excludeAddressPatterns": "",
    "syncSchedule": "0 0 * * * *",
    "stateContainerName": "sync-state",
    "graphClientSecretName": "graph-client-secret",
    "syncApiCredentialName": "sync-api-credential",
    "fullSyncIntervalHours": 24,
    "deleteThresholdPercent": 10,
    "deleteThresholdCount": 500,
    "deleteThresholdFloor": 25,
    "exoMode": "off",
}

# Built-in Azure role definitions (Azure built-in roles reference).
AZURE_ROLES = {
    "storageBlobDataOwner": ("Storage Blob Data Owner", "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"),
    "keyVaultSecretsUser": ("Key Vault Secrets User", "4633458b-17de-408a-b874-0445c86b69e6"),
    "keyVaultSecretsOfficer": ("Key Vault Secrets Officer", "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"),
    "monitoringMetricsPublisher": ("Monitoring Metrics Publisher", "3913510d-42f4-4e42-8a64-420c390055eb"),
}
# Microsoft Graph and its application permissions (app roles), from the Microsoft
# Graph permissions reference.
MICROSOFT_GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
GRAPH_APP_ROLES = {
    "User.Read.All": "df021288-bdef-4463-88db-98f22de89214",
    "Group.Read.All": "5b567255-7703-4780-807c-7be8301ae99b",
    "GroupMember.Read.All": "98830695-27a2-44f7-8c18-0c3ebc9698f6",
    "OrgContact.Read.All": "e1a88a34-94c4-4418-be12-c87b00e26bea",
    "Directory.Read.All": "7ab1d382-f21e-4acd-a863-ba3e13f7da61",
}
# Office 365 Exchange Online and its app-only permission, and the default directory role that
# Exchange requires for app-only access (Global Reader, read-only).
EXCHANGE_ONLINE_APP_ID = "00000002-0000-0ff1-ce00-000000000000"
EXCHANGE_MANAGE_AS_APP = "dc50a0fb-09a3-484d-be87-e023b12c6440"
GLOBAL_READER = "f2ef992c-3afb-46b9-b7cf-a126ee74c451"
# The smallest documented set for what a sync reads (README, "Graph permissions"); Group.Read.All
# only as the documented group-read-all choice.
LEAST_PRIVILEGE = ["User.Read.All", "GroupMember.Read.All", "OrgContact.Read.All"]
GROUP_READ_ALL = ["User.Read.All", "Group.Read.All", "OrgContact.Read.All"]
TIMER_FUNCTION = "sync_timer"
MIN_BICEP = (0, 36, 1)
GRAPH_EXTENSION_REF = "br:mcr.microsoft.com/bicep/extensions/microsoftgraph/v1.0:"


# ----------------------------------------------------------------------------- helpers
def text_of(bicep, node) -> str:
    return bicep.text(node) if node is not None else ""


def settings_of(fa) -> tuple[dict[str, object], list]:
    """(setting name -> value node, ternaries that guard settings) of the app settings."""
    config = [r for r in fa.resources_of_type("Microsoft.Web/sites/config") if lit(fa, r.body, "name") == "appsettings"]
    assert len(config) == 1, "function-app.bicep must have exactly one appsettings config resource"
    settings: dict[str, object] = {}
    guards: list = []
    seen: set[str] = set()

    def walk(node, guard=None) -> None:
        if node.type == "identifier":
            name = fa.text(node)
            if name in fa.variables and name not in seen:
                seen.add(name)
                walk(fa.variables[name], guard)
            return
        if node.type == "ternary_expression":
            condition = node.child_by_field_name("condition")
            for branch in ("consequence", "alternative"):
                walk(node.child_by_field_name(branch), fa.text(condition))
            return
        if node.type == "object":
            for key, value in object_properties(fa, node).items():
                settings[key] = value
                if guard is not None:
                    guards.append((key, guard))
            return
        for child in node.named_children:
            walk(child, guard)

    walk(lookup(fa, config[0].body, "properties"))
    return settings, guards


# ----------------------------------------------------------------------------- checks
# Each check takes an infra/ directory and returns a list of problems (empty: passes),
# so that the same check runs on infra/ and on mutated copies of it.


def check_module_wiring(root: Path) -> list[str]:
    """Every module exists; main passes only real params and every required one."""
    problems = []
    main = load(root, "main.bicep")
    if not main.modules:
        return ["main.bicep composes no modules"]
    for name, module in main.modules.items():
        path = (root / module.path).resolve()
        if not path.is_file():
            problems.append(f"module {name}: {module.path} does not exist")
            continue
        target = parse_bicep(path)
        passed = set(module_params(main, name))
        declared = set(target.params)
        for extra in sorted(passed - declared):
            problems.append(f"module {name} gets {extra!r}, which {module.path} does not declare")
        required = {p.name for p in target.params.values() if p.default is None and not p.type_text.endswith("?")}
        for missing in sorted(required - passed):
            problems.append(f"module {name} does not get its required param {missing!r}")
    return problems


def check_settings(root: Path) -> list[str]:
    """Every product setting is set, from the right parameter or resource."""
    problems = []
    fa = load(root, "app/function-app.bicep")
    main = load(root, "main.bicep")
    settings, guards = settings_of(fa)
    for name in PRODUCT_SETTINGS:
        if name not in settings:
            problems.append(f"app setting {name} is not set")
    for name in SECRET_SETTINGS + FORBIDDEN_SETTINGS:
        if name in settings:
            problems.append(f"app setting {name} must not be set")
    if problems:
        return problems

    def value(name: str) -> str:
        return fa.text(settings[name])

    if value("GRAPH_TENANT_ID") != "tenant().tenantId":
        problems.append("GRAPH_TENANT_ID must be tenant().tenantId")
    if not value("SYNC_STATE").startswith("'blob:${"):
        problems.append("SYNC_STATE must be 'blob:<state container>'")
    # Settings that come straight from a function-app.bicep parameter ...
    from_params = {
        "KEY_VAULT_URL": "keyVaultUrl",
        "GRAPH_CLIENT_ID": "graphClientId",
        "GRAPH_AUTH": "graphAuth",
        "GRAPH_BASE_URL": "graphBaseUrl",
        "GRAPH_CLIENT_SECRET_NAME": "graphClientSecretName",
        "SYNC_API_CREDENTIAL_NAME": "syncApiCredentialName",
        "SYNC_API_URL": "syncApiUrl",
        "SYNC_DATASETS": "syncDatasets",
        "ADDRESS_DOMAINS": "addressDomains",
        "SYNC_SCOPE_GROUPS": "syncScopeGroups",
        "EXCLUDE_USER_TYPES": "excludeUserTypes",
        "EXCLUDE_ADDRESS_PATTERNS": "excludeAddressPatterns",
        "SYNC_SCHEDULE": "syncSchedule",
        "EXO_MODE": "exoMode",
    }
    for setting, param in from_params.items():
        if value(setting) != param or param not in fa.params:
            problems.append(f"{setting} must be the function-app.bicep parameter {param}")
    # ... numbers, as app settings are strings.
    for setting, param in {"FULL_SYNC_INTERVAL_HOURS": "fullSyncIntervalHours", "DELETE_THRESHOLD_PERCENT": "deleteThresholdPercent",
                           "DELETE_THRESHOLD_COUNT": "deleteThresholdCount", "DELETE_THRESHOLD_FLOOR": "deleteThresholdFloor"}.items():
        if value(setting) != f"string({param})" or param not in fa.params:
            problems.append(f"{setting} must be string() of the function-app.bicep parameter {param}")
    if "stateContainerName" not in value("SYNC_STATE"):
        problems.append("SYNC_STATE must name the stateContainerName container")
    # ADDRESS_DOMAINS is only set when an allow-list is given (unset, not '').
    for setting, param in (("ADDRESS_DOMAINS", "addressDomains"), ("SYNC_SCOPE_GROUPS", "syncScopeGroups"),
                           ("EXCLUDE_USER_TYPES", "excludeUserTypes"), ("EXCLUDE_ADDRESS_PATTERNS", "excludeAddressPatterns")):
        if (setting, f"empty({param})") not in guards:
            problems.append(f"{setting} must be left unset when {param} is empty")
    # ... which main.bicep fills from its own parameters or from the deployed resources.
    wired = module_params(main, "functionApp")
    expected = {
        "keyVaultUrl": "keyVault.outputs.uri",
        "graphClientId": "graphClientId",
        "graphAuth": "graphAuth",
        "graphBaseUrl": "graphBaseUrl",
        "graphClientSecretName": "graphClientSecretName",
        "syncApiCredentialName": "syncApiCredentialName",
        "syncApiUrl": "syncApiUrl",
        "syncDatasets": "syncDatasets",
        "addressDomains": "addressDomains",
        "syncScopeGroups": "syncScopeGroups",
        "excludeUserTypes": "excludeUserTypes",
        "excludeAddressPatterns": "excludeAddressPatterns",
        "syncSchedule": "syncSchedule",
        "stateContainerName": "storage.outputs.stateContainerName",
        "fullSyncIntervalHours": "fullSyncIntervalHours",
        "deleteThresholdPercent": "deleteThresholdPercent",
        "deleteThresholdCount": "deleteThresholdCount",
        "deleteThresholdFloor": "deleteThresholdFloor",
        "exoMode": "exoMode",
    }
    for param, source in expected.items():
        if wired.get(param) != source:
            problems.append(f"main.bicep must pass {param}: {source} to functionApp, not {wired.get(param)!r}")
    if "graphApp!.outputs.appId" not in text_of(main, main.variables.get("graphClientId")):
        problems.append("GRAPH_CLIENT_ID must come from the app registration (graphApp.outputs.appId)")
    kv = load(root, "app/keyvault.bicep")
    if text_of(kv, kv.outputs.get("uri")) != "vault.properties.vaultUri":
        problems.append("KEY_VAULT_URL must be the vault's URI")
    graph = load(root, "app/graph-app.bicep")
    if text_of(graph, graph.outputs.get("appId")) != "app.appId":
        problems.append("the graph module's appId output must be the app registration's appId")
    for param in ("syncApiUrl", "alertEmail"):
        if param not in main.params or main.params[param].default is not None:
            problems.append(f"main.bicep parameter {param} must be required (no default)")
    for param, default in SETTING_DEFAULTS.items():
        p = main.params.get(param)
        if p is None or p.default is None or literal(main, p.default) != default:
            problems.append(f"main.bicep parameter {param} must default to {default!r}")
    graph_auth = fa.params.get("graphAuth")
    if graph_auth is None or "allowed" not in graph_auth.decorators:
        problems.append("function-app.bicep graphAuth must be restricted with @allowed")
    src = main.src.decode()
    block = re.search(r"@allowed\(\[\s*'client_secret'\s*'managed_identity'\s*\]\)\s*param graphAuth string", src)
    if block is None:
        problems.append("main.bicep graphAuth must allow exactly client_secret and managed_identity")
    return problems


def check_identity_use(root: Path) -> list[str]:
    """The Function uses its user-assigned identity for storage and for Key Vault."""
    problems = []
    fa = load(root, "app/function-app.bicep")
    main = load(root, "main.bicep")
    site = fa.resources_of_type("Microsoft.Web/sites")
    if len(site) != 1:
        return ["function-app.bicep must declare one Microsoft.Web/sites"]
    body = site[0].body
    if lit(fa, body, "identity.type") != "UserAssigned":
        problems.append("the Function's identity must be UserAssigned only")
    if "identityId" not in expr(fa, body, "identity.userAssignedIdentities"):
        problems.append("the Function must carry the user-assigned identity")
    auth = "properties.functionAppConfig.deployment.storage.authentication"
    if lit(fa, body, f"{auth}.type") != "UserAssignedIdentity":
        problems.append("deployment storage must authenticate with the user-assigned identity")
    if expr(fa, body, f"{auth}.userAssignedIdentityResourceId") != "identityId":
        problems.append("deployment storage must use identityId")
    settings, _ = settings_of(fa)

    def setting(name: str) -> str:
        return fa.text(settings[name]) if name in settings else ""

    if setting("AzureWebJobsStorage__credential") != "'managedidentity'":
        problems.append("AzureWebJobsStorage__credential must be managedidentity")
    if setting("AzureWebJobsStorage__clientId") != "identityClientId":
        problems.append("AzureWebJobsStorage__clientId must be the identity's client id")
    if "primaryEndpoints.blob" not in setting("AzureWebJobsStorage__blobServiceUri"):
        problems.append("AzureWebJobsStorage__blobServiceUri must be the account's blob endpoint")
    if setting("AZURE_CLIENT_ID") != "identityClientId":
        problems.append("AZURE_CLIENT_ID must be the identity's client id (Key Vault, Graph assertion)")
    auth_string = setting("APPLICATIONINSIGHTS_AUTHENTICATION_STRING")
    if "ClientId=${identityClientId}" not in auth_string or "Authorization=AAD" not in auth_string:
        problems.append("telemetry must authenticate with the identity (APPLICATIONINSIGHTS_AUTHENTICATION_STRING)")
    wired = module_params(main, "functionApp")
    if wired.get("identityId") != "identity.outputs.id" or wired.get("identityClientId") != "identity.outputs.clientId":
        problems.append("main.bicep must give functionApp the identity module's id and clientId")
    identity = load(root, "app/identity.bicep")
    if text_of(identity, identity.outputs.get("clientId")) != "identity.properties.clientId":
        problems.append("identity.bicep clientId output must be the identity's clientId")
    if text_of(identity, identity.outputs.get("id")) != "identity.id":
        problems.append("identity.bicep id output must be the identity's resource id")
    if module_params(main, "roles").get("identityPrincipalId") != "identity.outputs.principalId":
        problems.append("the role assignments must be for the identity module's principal")
    if "roles" not in text_of(main, lookup(main, main.modules["functionApp"].body, "dependsOn")):
        problems.append("the Function App must wait for its role assignments (dependsOn roles)")
    return problems


def check_function_app(root: Path) -> list[str]:
    problems = []
    fa = load(root, "app/function-app.bicep")
    plans = fa.resources_of_type("Microsoft.Web/serverfarms")
    sites = fa.resources_of_type("Microsoft.Web/sites")
    if len(plans) != 1 or len(sites) != 1:
        return ["function-app.bicep must declare one plan and one site"]
    plan, site = plans[0].body, sites[0].body
    if lit(fa, plan, "sku.name") != "FC1" or lit(fa, plan, "sku.tier") != "FlexConsumption":
        problems.append("the plan must be Flex Consumption (FC1)")
    if lit(fa, plan, "properties.reserved") is not True:
        problems.append("the plan must be Linux (reserved: true)")
    if lit(fa, site, "kind") != "functionapp,linux":
        problems.append("the site must be kind functionapp,linux")
    if expr(fa, site, "properties.serverFarmId") != "plan.id":
        problems.append("the site must run on the Flex Consumption plan")
    if lit(fa, site, "properties.httpsOnly") is not True:
        problems.append("httpsOnly must be true")
    if lit(fa, site, "properties.siteConfig.ftpsState") != "Disabled":
        problems.append("FTP must be disabled (ftpsState: Disabled)")
    if lit(fa, site, "properties.siteConfig.minTlsVersion") not in ("1.2", "1.3"):
        problems.append("minTlsVersion must be 1.2 or higher")
    config = "properties.functionAppConfig"
    if lit(fa, site, f"{config}.runtime.name") != "python" or lit(fa, site, f"{config}.runtime.version") != "3.11":
        problems.append("the runtime must be Python 3.11")
    if lit(fa, site, f"{config}.deployment.storage.type") != "blobContainer":
        problems.append("the deployment package must live in a blob container")
    for key in ("maximumInstanceCount", "instanceMemoryMB"):
        if not expr(fa, site, f"{config}.scaleAndConcurrency.{key}"):
            problems.append(f"scaleAndConcurrency.{key} must be set")
    # Flex Consumption scales out to at most 1,000 instances and takes a maximum instance count
    # of 40 or more (learn.microsoft.com flex-consumption-plan, "Scale-out instances (max) 1000";
    # the Consumption-to-Flex migration guide: "must be set to a value of 40 or higher"): bounds on
    # the parameter stop a wrong value at validation, not halfway through a deployment.
    for relative in ("app/function-app.bicep", "main.bicep", "portal/main.bicep"):
        lo, hi = int_bounds(load(root, relative), "maximumInstanceCount")
        if lo is None or hi is None or lo < 40 or hi > 1000 or lo > hi:
            problems.append(f"{relative}: maximumInstanceCount needs @minValue/@maxValue within Flex Consumption's 40..1000, not {lo}..{hi}")
    policies = {
        lit(fa, r.body, "name"): lit(fa, r.body, "properties.allow")
        for r in fa.resources_of_type("Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    }
    if policies != {"ftp": False, "scm": False}:
        problems.append("basic-auth publishing (ftp and scm) must be disabled")
    if "'azd-service-name': 'sync'" not in expr(fa, site, "tags"):
        problems.append("the site must carry the azd-service-name tag 'sync' (azure.yaml)")
    return problems


def check_storage(root: Path) -> list[str]:
    problems = []
    st = load(root, "app/storage.bicep")
    accounts = st.resources_of_type("Microsoft.Storage/storageAccounts")
    if len(accounts) != 1:
        return ["storage.bicep must declare one storage account"]
    body = accounts[0].body
    expected = {
        "properties.allowSharedKeyAccess": False,
        "properties.minimumTlsVersion": "TLS1_2",
        "properties.supportsHttpsTrafficOnly": True,
        "properties.allowBlobPublicAccess": False,
    }
    for path, value in expected.items():
        if lit(st, body, path) != value:
            problems.append(f"storage {path} must be {value!r}")
    containers = st.resources_of_type("Microsoft.Storage/storageAccounts/blobServices/containers")
    names = {expr(st, c.body, "name") for c in containers}
    if names != {"deploymentContainerName", "stateContainerName", "'azure-webjobs-hosts'", "'azure-webjobs-secrets'"}:
        problems.append(f"storage must hold the deployment, state and Functions host containers, not {sorted(names)}")
    for c in containers:
        if lit(st, c.body, "properties.publicAccess") != "None":
            problems.append(f"container {c.symbol} must not be public")
    return problems


def check_keyvault(root: Path) -> list[str]:
    problems = []
    kv = load(root, "app/keyvault.bicep")
    vaults = kv.resources_of_type("Microsoft.KeyVault/vaults")
    if len(vaults) != 1:
        return ["keyvault.bicep must declare one vault"]
    body = vaults[0].body
    for path, value in {
        "properties.enableRbacAuthorization": True,
        "properties.enableSoftDelete": True,
        "properties.enablePurgeProtection": True,
    }.items():
        if lit(kv, body, path) is not value:
            problems.append(f"Key Vault {path} must be {value}")
    retention = lit(kv, body, "properties.softDeleteRetentionInDays")
    if not isinstance(retention, int) or not 7 <= retention <= 90:
        problems.append("Key Vault soft delete retention must be 7-90 days")
    if "accessPolicies" in object_properties(kv, lookup(kv, body, "properties")):
        problems.append("Key Vault must not use access policies (RBAC only)")
    secrets = kv.resources_of_type("Microsoft.KeyVault/vaults/secrets")
    if len(secrets) != 1:
        return problems + ["keyvault.bicep must declare the sync API credential secret"]
    secret = secrets[0]
    if text_of(kv, secret.condition) != "(!empty(syncApiCredential))":
        problems.append("the sync API credential secret must only be written when the credential is given")
    if expr(kv, secret.body, "properties.value") != "syncApiCredential":
        problems.append("the secret's value must be the secure parameter")
    if not kv.params.get("syncApiCredential") or not kv.params["syncApiCredential"].secure:
        problems.append("keyvault.bicep syncApiCredential must be @secure()")
    if not lit(kv, secret.body, "properties.contentType"):
        problems.append("the secret must set contentType")
    if expr(kv, secret.body, "name") != "syncApiCredentialName":
        problems.append("the secret must be named by syncApiCredentialName")
    return problems


def check_secrets(root: Path) -> list[str]:
    """No secure parameter has a default or reaches an output, in any file."""
    problems = []
    for path in sorted(root.rglob("*.bicep")):
        bicep = parse_bicep(path.resolve())
        name = path.relative_to(root)
        secure = {p.name for p in bicep.params.values() if p.secure}
        for param in sorted(secure):
            if bicep.params[param].default is not None:
                problems.append(f"{name}: @secure() parameter {param} has a default")
        for output, value in bicep.outputs.items():
            leaked = secure & bicep.identifiers(value)
            if leaked:
                problems.append(f"{name}: output {output} uses the secure parameter(s) {sorted(leaked)}")
            if re.search(r"\blist\w*\(", bicep.text(value)):
                problems.append(f"{name}: output {output} calls a list*() function")
            lowered = output.lower()
            if "password" in lowered or ("secret" in lowered and not lowered.endswith("name")):
                problems.append(f"{name}: output {output} is named like a secret")
        # A secure value handed to a module must stay secure there.
        for module_name, module in bicep.modules.items():
            target_path = (path.parent / module.path).resolve()
            if not target_path.is_file():
                continue
            target = parse_bicep(target_path)
            for param, value in object_properties(bicep, lookup(bicep, module.body, "params")).items():
                if secure & bicep.identifiers(value) and not (param in target.params and target.params[param].secure):
                    problems.append(f"{name}: module {module_name} gets a secure value in non-secure {param}")
    main = load(root, "main.bicep")
    if "syncApiCredential" not in main.params or not main.params["syncApiCredential"].secure:
        problems.append("main.bicep syncApiCredential must be @secure()")
    return problems


def check_role_assignments(root: Path) -> list[str]:
    """Role ids match their names; the identity gets exactly its three data roles."""
    problems = []
    ra = load(root, "app/role-assignments.bicep")
    ids = lit(ra, ra.variables.get("roleIds")) if "roleIds" in ra.variables else None
    expected_ids = {key: role_id for key, (_name, role_id) in AZURE_ROLES.items()}
    if ids != expected_ids:
        problems.append(f"roleIds must be {expected_ids}, not {ids}")
    # The comment on each id names the role, for a reader.
    src = ra.src.decode()
    for key, (role_name, role_id) in AZURE_ROLES.items():
        if not re.search(rf"{key}: '{role_id}' // {re.escape(role_name)}\n", src):
            problems.append(f"roleIds.{key} must be commented with its role name {role_name!r}")
    grants = set()
    for r in ra.resources_of_type("Microsoft.Authorization/roleAssignments"):
        role_def = expr(ra, r.body, "properties.roleDefinitionId")
        match = re.fullmatch(r"subscriptionResourceId\('Microsoft\.Authorization/roleDefinitions', roleIds\.(\w+)\)", role_def)
        if not match:
            problems.append(f"{r.symbol}: roleDefinitionId must be a named entry of roleIds, not {role_def!r}")
            continue
        role = match.group(1)
        principal = expr(ra, r.body, "properties.principalId")
        scope = expr(ra, r.body, "scope")
        grants.add((principal, role, scope, text_of(ra, r.condition)))
        name = expr(ra, r.body, "name")
        if name != f"guid({scope}.id, {principal}, roleIds.{role})".replace("guid(containers[i].id", "guid(containers[i].id"):
            problems.append(f"{r.symbol}: name must be guid(scope, principal, role) so that reruns are idempotent")
        if principal == "identityPrincipalId" and lit(ra, r.body, "properties.principalType") != "ServicePrincipal":
            problems.append(f"{r.symbol}: the identity's assignments must set principalType ServicePrincipal")
    expected = {
        # blob data on each container that needs it, never on the whole account
        ("identityPrincipalId", "storageBlobDataOwner", "containers[i]", ""),
        ("identityPrincipalId", "keyVaultSecretsUser", "vault", ""),
        ("identityPrincipalId", "monitoringMetricsPublisher", "applicationInsights", ""),
        ("secretsOfficerPrincipalId", "keyVaultSecretsOfficer", "vault", "(!empty(secretsOfficerPrincipalId))"),
    }
    if grants != expected:
        problems.append(f"role assignments must be exactly {sorted(expected)}, not {sorted(grants)}")
    scopes = {r.symbol: r.full_type.split("@")[0] for r in ra.resources if r.existing}
    if scopes != {
        "containers": "Microsoft.Storage/storageAccounts/blobServices/containers",
        "vault": "Microsoft.KeyVault/vaults",
        "applicationInsights": "Microsoft.Insights/components",
    }:
        problems.append(f"role scopes must be the blob containers, the vault and Application Insights: {scopes}")
    main = load(root, "main.bicep")
    wired = module_params(main, "roles").get("blobContainerNames", "")
    for needed in ("'azure-webjobs-hosts'", "'azure-webjobs-secrets'", "deploymentContainerName", "stateContainerName"):
        if needed not in wired:
            problems.append(f"main.bicep must give the roles module the container {needed}")
    return problems


def check_graph_app(root: Path) -> list[str]:
    """The app registration: ids named once and right, consent, federated credential."""
    problems = []
    graph = load(root, "app/graph-app.bicep")
    main = load(root, "main.bicep")
    if lit(graph, graph.variables.get("microsoftGraphAppId")) != MICROSOFT_GRAPH_APP_ID:
        problems.append(f"microsoftGraphAppId must be {MICROSOFT_GRAPH_APP_ID}")
    role_ids = lit(graph, graph.variables.get("graphAppRoleIds"))
    if role_ids != GRAPH_APP_ROLES:
        problems.append(f"graphAppRoleIds must be {GRAPH_APP_ROLES}, not {role_ids}")
    all_ids = re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", graph.src.decode())
    if sorted(all_ids) != sorted([MICROSOFT_GRAPH_APP_ID, *GRAPH_APP_ROLES.values(), EXCHANGE_ONLINE_APP_ID, EXCHANGE_MANAGE_AS_APP]):
        problems.append("each well-known id must be written once, in graphAppRoleIds, microsoftGraphAppId or the Exchange variables")
    sets = lit(graph, graph.variables.get("permissionSets"))
    if sets != {"least-privilege": LEAST_PRIVILEGE, "group-read-all": GROUP_READ_ALL, "directory-read-all": ["Directory.Read.All"]}:
        problems.append(f"permission sets must be least-privilege {LEAST_PRIVILEGE}, group-read-all or Directory.Read.All: {sets}")
    for bicep, param in ((graph, "permissionSet"), (main, "graphPermissionSet")):
        p = bicep.params.get(param)
        if p is None or p.default is None or literal(bicep, p.default) != "least-privilege":
            problems.append(f"{param} must default to least-privilege")
    apps = [r for r in graph.resources_of_type("Microsoft.Graph/applications") if not r.existing]
    if len(apps) != 1:
        return problems + ["graph-app.bicep must declare one application"]
    app = apps[0].body
    if lit(graph, app, "signInAudience") != "AzureADMyOrg":
        problems.append("the app registration must be single-tenant (AzureADMyOrg)")
    if expr(graph, app, "uniqueName") != "uniqueName":
        problems.append("the app registration needs its stable uniqueName")
    rra = lookup(graph, app, "requiredResourceAccess")
    if rra.type != "array":  # concat([Microsoft Graph], exchangeRequiredAccess)
        arrays = [n for n in descendants(rra) if n.type == "array"]
        rra = arrays[0] if arrays else rra
    entries = [c for c in rra.named_children if c.type == "object"]
    if len(entries) != 1 or expr(graph, entries[0], "resourceAppId") != "microsoftGraphAppId":
        problems.append("requiredResourceAccess must list Microsoft Graph")
    else:
        access = graph.text(lookup(graph, entries[0], "resourceAccess"))
        if "for roleId in grantedRoleIds" not in access or "type: 'Role'" not in access:
            problems.append("requiredResourceAccess must list every granted app role as type Role")
    granted = graph.text(graph.variables.get("grantedRoleIds")) if "grantedRoleIds" in graph.variables else ""
    if granted != "map(grantedPermissions, permission => graphAppRoleIds[permission])":
        problems.append("grantedRoleIds must map the chosen permission set through graphAppRoleIds")
    consent = [r for r in graph.resources_of_type("Microsoft.Graph/appRoleAssignedTo") if r.symbol != "exchangeConsent"]
    if len(consent) != 1 or consent[0].loop is None or "grantedRoleIds" not in graph.text(consent[0].loop):
        problems.append("one appRoleAssignedTo per granted role (the admin consent) is required")
    else:
        body = consent[0].body
        if (expr(graph, body, "principalId"), expr(graph, body, "resourceId"), expr(graph, body, "appRoleId")) != (
            "servicePrincipal.id",
            "microsoftGraph.id",
            "roleId",
        ):
            problems.append("appRoleAssignedTo must grant the app's service principal roles on Microsoft Graph")
    sps = {r.symbol: r for r in graph.resources_of_type("Microsoft.Graph/servicePrincipals")}
    if "servicePrincipal" not in sps or expr(graph, sps["servicePrincipal"].body, "appId") != "app.appId":
        problems.append("the app registration needs its service principal")
    if (
        "microsoftGraph" not in sps
        or not sps["microsoftGraph"].existing
        or (expr(graph, sps["microsoftGraph"].body, "appId") != "microsoftGraphAppId")
    ):
        problems.append("Microsoft Graph's service principal must be looked up by its appId")
    # The federated identity credential that trusts the Function's managed identity.
    fics = graph.resources_of_type("Microsoft.Graph/applications/federatedIdentityCredentials")
    if len(fics) != 1:
        return problems + ["the app registration needs one federated identity credential"]
    if fics[0].condition is None or graph.text(fics[0].condition) != "(federatedCredential)":
        problems.append("the federated credential must exist only when federatedCredential (GRAPH_AUTH=managed_identity)")
    fic = fics[0].body
    issuer = graph.text(graph.variables.get("federatedIssuer")) if "federatedIssuer" in graph.variables else ""
    if issuer != "'${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'":
        problems.append("the federated credential's issuer must be https://login.microsoftonline.com/<tenant>/v2.0")
    if expr(graph, fic, "issuer") != "federatedIssuer":
        problems.append("the federated credential must use federatedIssuer")
    if lit(graph, graph.variables.get("federatedAudience")) != "api://AzureADTokenExchange":
        problems.append("the federated credential's audience must be api://AzureADTokenExchange")
    if expr(graph, fic, "audiences") != "[\n      federatedAudience\n    ]":
        problems.append("the federated credential must have exactly the one audience")
    if expr(graph, fic, "subject") != "managedIdentityPrincipalId":
        problems.append("the federated credential's subject must be the identity's principal (object) id")
    if not expr(graph, fic, "name").startswith("'${app.uniqueName}/"):
        problems.append("the federated credential must be named <app uniqueName>/<name>")
    wired = module_params(main, "graphApp")
    if wired.get("managedIdentityPrincipalId") != "identity.outputs.principalId":
        problems.append("main.bicep must trust the identity module's principal id")
    if wired.get("permissionSet") != "graphPermissionSet":
        problems.append("main.bicep must pass graphPermissionSet to the graph module")
    if wired.get("federatedCredential") != "graphAuth == 'managed_identity'":
        problems.append("main.bicep must create the federated credential only for graphAuth == 'managed_identity'")
    return problems


def check_audit(root: Path) -> list[str]:
    """Key Vault AuditEvent and blob reads/writes/deletes reach the workspace; the audit tables
    keep their rows for auditRetentionDays (a parameter)."""
    problems = []
    audit = load(root, "app/audit.bicep")
    settings = {expr(audit, r.body, "scope"): r for r in audit.resources_of_type("Microsoft.Insights/diagnosticSettings")}
    want = {"vault": {"AuditEvent"}, "storage::blobService": {"StorageRead", "StorageWrite", "StorageDelete"}}
    if set(settings) != set(want):
        return [f"diagnostic settings must be on the vault and the blob service, not {sorted(settings)}"]
    for scope, categories in want.items():
        body = settings[scope].body
        if expr(audit, body, "properties.workspaceId") != "logAnalytics.id":
            problems.append(f"{scope}: diagnostics must go to the Log Analytics workspace")
        logs = lit(audit, body, "properties.logs") or []
        enabled = {entry.get("category") for entry in logs if entry.get("enabled") is True}
        if enabled != categories:
            problems.append(f"{scope}: enabled categories must be {sorted(categories)}, not {sorted(enabled)}")
    tables = audit.resources_of_type("Microsoft.OperationalInsights/workspaces/tables")
    if len(tables) != 1 or "'AZKVAuditLogs'" not in audit.text(tables[0].loop) or "'StorageBlobLogs'" not in audit.text(tables[0].loop):
        problems.append("the audit tables AZKVAuditLogs and StorageBlobLogs need their own retention")
    elif expr(audit, tables[0].body, "properties.retentionInDays") != "auditRetentionDays":
        problems.append("the audit tables' retention must be the auditRetentionDays parameter")
    main = load(root, "main.bicep")
    if module_params(main, "audit").get("auditRetentionDays") != "auditRetentionDays" or "auditRetentionDays" not in main.params:
        problems.append("main.bicep must pass its auditRetentionDays parameter to the audit module")
    return problems


def check_exchange_app(root: Path) -> list[str]:
    """Exchange.ManageAsApp: named once, granted to the app's service principal on Exchange
    Online only when exoMode is not off; the directory role assigned by the azd hook."""
    problems = []
    graph = load(root, "app/graph-app.bicep")
    main = load(root, "main.bicep")
    if lit(graph, graph.variables.get("exchangeOnlineAppId")) != EXCHANGE_ONLINE_APP_ID:
        problems.append(f"exchangeOnlineAppId must be {EXCHANGE_ONLINE_APP_ID} (Office 365 Exchange Online)")
    if lit(graph, graph.variables.get("exchangeManageAsAppRoleId")) != EXCHANGE_MANAGE_AS_APP:
        problems.append(f"exchangeManageAsAppRoleId must be {EXCHANGE_MANAGE_AS_APP} (Exchange.ManageAsApp)")
    p = graph.params.get("exchangeAccess")
    if p is None or p.default is None or literal(graph, p.default) is not False:
        problems.append("graph-app.bicep exchangeAccess must default to false")
    sps = {r.symbol: r for r in graph.resources_of_type("Microsoft.Graph/servicePrincipals")}
    exo = sps.get("exchangeOnline")
    if exo is None or not exo.existing or expr(graph, exo.body, "appId") != "exchangeOnlineAppId":
        problems.append("Exchange Online's service principal must be looked up by its appId")
    consent = [r for r in graph.resources_of_type("Microsoft.Graph/appRoleAssignedTo") if r.symbol == "exchangeConsent"]
    if len(consent) != 1:
        return problems + ["one appRoleAssignedTo (exchangeConsent) must grant Exchange.ManageAsApp"]
    body = consent[0].body
    if (expr(graph, body, "principalId"), expr(graph, body, "resourceId"), expr(graph, body, "appRoleId")) != (
        "servicePrincipal.id", "exchangeOnline.id", "exchangeManageAsAppRoleId",
    ):
        problems.append("exchangeConsent must grant the app's service principal Exchange.ManageAsApp on Exchange Online")
    if consent[0].condition is None or "exchangeAccess" not in graph.text(consent[0].condition):
        problems.append("exchangeConsent must be granted only with exchangeAccess")
    access = graph.text(graph.variables["exchangeRequiredAccess"]) if "exchangeRequiredAccess" in graph.variables else ""
    if "resourceAppId: exchangeOnlineAppId" not in access or "id: exchangeManageAsAppRoleId" not in access or "type: 'Role'" not in access:
        problems.append("exchangeRequiredAccess must list Exchange.ManageAsApp as a Role on Exchange Online")
    apps = [r for r in graph.resources_of_type("Microsoft.Graph/applications") if not r.existing]
    if apps and "exchangeRequiredAccess" not in expr(graph, apps[0].body, "requiredResourceAccess"):
        problems.append("the app registration's requiredResourceAccess must include exchangeRequiredAccess")
    if module_params(main, "graphApp").get("exchangeAccess") != "exoMode != 'off'":
        problems.append("main.bicep must pass exchangeAccess: exoMode != 'off' to the graph module")
    src = main.src.decode()
    if re.search(r"@allowed\(\[\s*'off'\s*'augment'\s*'only'\s*\]\)\s*param exoMode string = 'off'", src) is None:
        problems.append("main.bicep exoMode must allow exactly off, augment, only and default to off")
    role = main.params.get("exoDirectoryRoleId")
    if role is None or role.default is None or literal(main, role.default) != GLOBAL_READER:
        problems.append(f"main.bicep exoDirectoryRoleId must default to Global Reader ({GLOBAL_READER})")
    for output, source in (("EXO_MODE", "exoMode"), ("EXO_DIRECTORY_ROLE_ID", "exoDirectoryRoleId")):
        if text_of(main, main.outputs.get(output)) != source:
            problems.append(f"main.bicep must output {output} = {source} for the postprovision hook")
    if "graphApp!.outputs.servicePrincipalId" not in text_of(main, main.outputs.get("GRAPH_SERVICE_PRINCIPAL_ID")):
        problems.append("main.bicep must output GRAPH_SERVICE_PRINCIPAL_ID for the postprovision hook")
    script = (root / "scripts/assign-exchange-role.sh")
    text = script.read_text() if script.is_file() else ""
    if "roleManagement/directory/roleAssignments" not in text or '"directoryScopeId":"/"' not in text:
        problems.append("scripts/assign-exchange-role.sh must POST the role assignment at the tenant scope")
    return problems


def check_graph_confinement(root: Path) -> list[str]:
    """Microsoft Graph lives in graph-app.bicep only, behind the configured extension."""
    problems = []
    config = json.loads((root / "bicepconfig.json").read_text())
    reference = config.get("extensions", {}).get("microsoftGraphV1", "")
    match = re.fullmatch(re.escape(GRAPH_EXTENSION_REF) + r"(\d+)\.(\d+)\.(\d+)", reference)
    if not match or tuple(map(int, match.groups())) < (1, 0, 0):
        problems.append(f"bicepconfig.json must alias microsoftGraphV1 to the GA v1.0 types (>= 1.0.0): {reference!r}")
    for path in sorted(root.rglob("*.bicep")):
        bicep = parse_bicep(path.resolve())
        rel = str(path.relative_to(root))
        uses_graph = any(r.full_type.startswith("Microsoft.Graph/") for r in bicep.resources)
        if rel == "app/graph-app.bicep":
            if bicep.extension_lines != ["extension microsoftGraphV1"]:
                problems.append(f"{rel} must declare `extension microsoftGraphV1` once")
        elif uses_graph or bicep.extension_lines:
            problems.append(f"{rel}: Microsoft Graph resources belong in app/graph-app.bicep")
    return problems


def check_monitoring_and_alert(root: Path) -> list[str]:
    problems = []
    mon = load(root, "app/monitoring.bicep")
    ai = mon.resources_of_type("Microsoft.Insights/components")
    if len(ai) != 1 or lit(mon, ai[0].body, "properties.DisableLocalAuth") is not True:
        problems.append("Application Insights must disable local (key) authentication")
    elif expr(mon, ai[0].body, "properties.WorkspaceResourceId") != "logAnalytics.id":
        problems.append("Application Insights must be workspace-based (Log Analytics)")
    alert = load(root, "app/alert.bicep")
    main = load(root, "main.bicep")
    rules = alert.resources_of_type("Microsoft.Insights/scheduledQueryRules")
    groups = alert.resources_of_type("Microsoft.Insights/actionGroups")
    if len(rules) != 1 or len(groups) != 1:
        return problems + ["alert.bicep must declare one log alert rule and one action group"]
    rule, group = rules[0].body, groups[0].body
    if expr(alert, rule, "properties.scopes") != "[\n      applicationInsightsId\n    ]":
        problems.append("the alert must query Application Insights")
    query = text_of(alert, alert.variables.get("failedRunsQuery"))
    if not re.search(r"requests\\n\| where operation_Name == \\'\$\{functionName\}\\' and success == false", query):
        problems.append("the alert query must count failed requests of the timer function")
    conditions = [c for c in lookup(alert, rule, "properties.criteria.allOf").named_children if c.type == "object"]
    if len(conditions) != 1 or expr(alert, conditions[0], "query") != "failedRunsQuery":
        return problems + ["the alert must have one condition on failedRunsQuery"]
    condition = conditions[0]
    if (lit(alert, condition, "operator"), lit(alert, condition, "threshold"), lit(alert, condition, "timeAggregation")) != (
        "GreaterThan",
        0,
        "Count",
    ):
        problems.append("the alert must fire on any failed run (Count > 0)")
    if "actionGroup.id" not in expr(alert, rule, "properties.actions.actionGroups"):
        problems.append("the alert must notify the action group")
    receivers = lookup(alert, group, "properties.emailReceivers").named_children
    if not receivers or expr(alert, receivers[0], "emailAddress") != "alertEmail":
        problems.append("the action group must mail alertEmail")
    if main.params.get("alertEmail") is None or main.params["alertEmail"].default is not None:
        problems.append("main.bicep alertEmail must be a required parameter")
    wired = module_params(main, "alert")
    if wired.get("functionName") != "timerFunctionName" or lit(main, main.variables.get("timerFunctionName")) != TIMER_FUNCTION:
        problems.append(f"the alert must watch the timer function {TIMER_FUNCTION!r}")
    if wired.get("alertEmail") != "alertEmail" or wired.get("applicationInsightsId") != "monitoring.outputs.applicationInsightsId":
        problems.append("main.bicep must wire the alert to alertEmail and the monitoring module")
    return problems


BICEPPARAM_LINE = re.compile(r"param (\w+) = (.+)")


def check_bicepparam(root: Path) -> list[str]:
    """main.bicepparam (a syntax tree-sitter-bicep does not cover) is checked line by line."""
    problems = []
    main = load(root, "main.bicep")
    lines = (root / "main.bicepparam").read_text().splitlines()
    statements = [line for line in lines if line.strip() and not line.lstrip().startswith("//")]
    if not statements or statements[0] != "using './main.bicep'":
        problems.append("main.bicepparam must start with using './main.bicep'")
    values: dict[str, str] = {}
    for line in statements[1:]:
        match = BICEPPARAM_LINE.fullmatch(line)
        if not match:
            problems.append(f"main.bicepparam: unexpected line {line!r}")
            continue
        name, value = match.groups()
        if name not in main.params:
            problems.append(f"main.bicepparam sets {name}, which main.bicep does not declare")
        if not re.fullmatch(r"readEnvironmentVariable\('[A-Z_]+'(, '[^']*')?\)|int\(readEnvironmentVariable\('[A-Z_]+', '\d+'\)\)"
                            r"|bool\(readEnvironmentVariable\('[A-Z_]+', '(true|false)'\)\)"
                            r"|readEnvironmentVariable\('[A-Z_]+', readEnvironmentVariable\('[A-Z_]+', ''\)\)", value):
            problems.append(f"main.bicepparam: {name} must come from readEnvironmentVariable(), not {value!r}")
        values[name] = value
    for name, param in main.params.items():
        if param.default is None and name not in values:
            problems.append(f"main.bicepparam does not set the required parameter {name}")
    for name in ("syncApiUrl", "alertEmail"):
        if name in values and "," in values[name]:
            problems.append(f"main.bicepparam: {name} is required; it must have no fallback value")
    # A parameter that becomes a product setting (graphAuth -> GRAPH_AUTH) reads that setting's
    # own variable, and falls back to the settings table's default, as main.bicep does.
    for name, default in SETTING_DEFAULTS.items():
        if name not in values:
            continue
        variable = re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()
        fallback = re.fullmatch(r"(?:int\()?readEnvironmentVariable\('([A-Z_]+)', '([^']*)'\)\)?", values[name])
        if fallback is None or fallback.groups() != (variable, str(default)):
            problems.append(f"main.bicepparam: {name} must be readEnvironmentVariable('{variable}', '{default}'), not {values[name]!r}")
    return problems


CHECKS = [
    check_module_wiring,
    check_settings,
    check_identity_use,
    check_function_app,
    check_storage,
    check_keyvault,
    check_secrets,
    check_role_assignments,
    check_graph_app,
    check_exchange_app,
    check_graph_confinement,
    check_monitoring_and_alert,
    check_bicepparam,
    check_audit,
]


# ----------------------------------------------------------------------------- grammar
@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_bicep_file_parses_under_the_bicep_grammar(path: Path) -> None:
    bicep = parse_bicep(path)
    assert bicep.tree.root_node.type == "infrastructure"
    assert bicep.tree.root_node.named_child_count > 0


def test_the_expected_bicep_files_exist() -> None:
    names = {str(p.relative_to(INFRA)) for p in bicep_files()}
    assert names == {
        "main.bicep",
        "app/identity.bicep",
        "app/storage.bicep",
        "app/monitoring.bicep",
        "app/alert.bicep",
        "app/ops-alerts.bicep",
        "app/workbook.bicep",
        "app/keyvault.bicep",
        "app/graph-app.bicep",
        "app/role-assignments.bicep",
        "app/function-app.bicep",
        "app/audit.bicep",
        "portal/main.bicep",
    }


def test_only_the_extension_line_is_outside_the_grammar() -> None:
    """The grammar rejects the graph module's `extension` line, and only that line."""
    import tree_sitter
    import tree_sitter_bicep

    raw = (INFRA / "app/graph-app.bicep").read_bytes()
    tree = tree_sitter.Parser(tree_sitter.Language(tree_sitter_bicep.language())).parse(raw)
    errors = []

    def walk(node):
        if node.type == "ERROR" or node.is_missing:
            errors.append(node.start_point[0])
        for child in node.children:
            walk(child)

    walk(tree.root_node)
    extension_rows = [i for i, line in enumerate(raw.decode().splitlines()) if line.startswith("extension ")]
    assert extension_rows == [0]
    assert errors and set(errors) == set(extension_rows)


def test_the_extension_guard_is_strict() -> None:
    assert EXTENSION_LINE.fullmatch("extension microsoftGraphV1")
    assert EXTENSION_LINE.fullmatch("extension 'br:mcr.microsoft.com/bicep/extensions/microsoftgraph/v1.0:1.0.0' // pinned")
    for bad in (
        "extension microsoftGraphBeta",
        "extension kubernetes with { namespace: 'x' } as k8s",
        "extension 'br:example.com/evil:1.0.0'",
        "extension microsoftGraphV1; resource x 'y@z' = {}",
    ):
        with pytest.raises(BicepSourceError):
            blank_extension_lines(bad + "\nparam a string\n")
    prepared, blanked = blank_extension_lines("extension microsoftGraphV1\nparam a string\n")
    assert blanked == ["extension microsoftGraphV1"]
    assert prepared == " " * len("extension microsoftGraphV1") + "\nparam a string\n"


def test_a_syntax_error_fails_the_parse(tmp_path: Path) -> None:
    broken = tmp_path / "broken.bicep"
    text = (INFRA / "app/storage.bicep").read_text()
    broken.write_text(text.replace("  properties: {\n    accessTier", "  properties: \n    accessTier", 1))
    with pytest.raises(BicepSourceError):
        parse_bicep(broken)


# ----------------------------------------------------------------------------- structure
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_structural_check_passes(check) -> None:
    assert check(INFRA) == []


MUTATIONS = [
    (check_module_wiring, "main.bicep", "    syncSchedule: syncSchedule\n", ""),
    (check_module_wiring, "main.bicep", "    tags: allTags\n    applicationInsightsId:", "    tagz: allTags\n    applicationInsightsId:"),
    (check_settings, "app/function-app.bicep", "  SYNC_SCHEDULE: syncSchedule\n", ""),
    (check_settings, "app/function-app.bicep", "  GRAPH_TENANT_ID: tenant().tenantId\n", "  GRAPH_TENANT_ID: graphClientId\n"),
    (check_settings, "app/function-app.bicep", "  SYNC_STATE: 'blob:${stateContainerName}'\n", "  SYNC_STATE: 'file:/tmp'\n"),
    (
        check_settings,
        "app/function-app.bicep",
        "  KEY_VAULT_URL: keyVaultUrl\n",
        "  KEY_VAULT_URL: keyVaultUrl\n  GRAPH_CLIENT_SECRET: 'x'\n",
    ),
    (
        check_settings,
        "app/function-app.bicep",
        "empty(addressDomains) ? {} : { ADDRESS_DOMAINS: addressDomains }",
        "{ ADDRESS_DOMAINS: addressDomains }",
    ),
    (check_settings, "main.bicep", "param syncSchedule string = '0 0 * * * *'", "param syncSchedule string = '0 */5 * * * *'"),
    (check_settings, "app/function-app.bicep", "empty(syncScopeGroups) ? {} : { SYNC_SCOPE_GROUPS: syncScopeGroups }", "{ SYNC_SCOPE_GROUPS: syncScopeGroups }"),
    (check_settings, "app/function-app.bicep", "{ EXCLUDE_USER_TYPES: excludeUserTypes }", "{ EXCLUDE_USER_TYPES: excludeAddressPatterns }"),
    (check_settings, "main.bicep", "    excludeAddressPatterns: excludeAddressPatterns\n", ""),
    (check_settings, "main.bicep", "param syncScopeGroups string = ''", "param syncScopeGroups string = 'x'"),
    (check_settings, "main.bicep", "    keyVaultUrl: keyVault.outputs.uri\n", "    keyVaultUrl: 'https://example.vault.azure.net/'\n"),
    (
        check_identity_use,
        "app/function-app.bicep",
        "AzureWebJobsStorage__credential: 'managedidentity'",
        "AzureWebJobsStorage__credential: 'connectionstring'",
    ),
    (check_identity_use, "app/function-app.bicep", "  AZURE_CLIENT_ID: identityClientId\n", ""),
    (check_identity_use, "app/function-app.bicep", "type: 'UserAssignedIdentity'", "type: 'SystemAssignedIdentity'"),
    (check_identity_use, "app/function-app.bicep", "    type: 'UserAssigned'\n", "    type: 'SystemAssigned, UserAssigned'\n"),
    (check_function_app, "app/function-app.bicep", "    httpsOnly: true\n", "    httpsOnly: false\n"),
    (check_function_app, "app/function-app.bicep", "ftpsState: 'Disabled'", "ftpsState: 'AllAllowed'"),
    (check_function_app, "app/function-app.bicep", "    name: 'FC1'\n", "    name: 'Y1'\n"),
    (check_function_app, "app/function-app.bicep", "version: '3.11'", "version: '3.12'"),
    (check_function_app, "app/function-app.bicep", "@maxValue(1000)\nparam maximumInstanceCount", "param maximumInstanceCount"),
    (check_function_app, "main.bicep", "@minValue(40)\n@maxValue(1000)\nparam maximumInstanceCount", "@minValue(1)\n@maxValue(1000)\nparam maximumInstanceCount"),
    (check_function_app, "portal/main.bicep", "@maxValue(1000)\nparam maximumInstanceCount", "@maxValue(2000)\nparam maximumInstanceCount"),
    (check_storage, "app/storage.bicep", "allowSharedKeyAccess: false", "allowSharedKeyAccess: true"),
    (check_storage, "app/storage.bicep", "minimumTlsVersion: 'TLS1_2'", "minimumTlsVersion: 'TLS1_0'"),
    (check_storage, "app/storage.bicep", "supportsHttpsTrafficOnly: true", "supportsHttpsTrafficOnly: false"),
    (check_keyvault, "app/keyvault.bicep", "enableRbacAuthorization: true", "enableRbacAuthorization: false"),
    (check_keyvault, "app/keyvault.bicep", "enablePurgeProtection: true", "enablePurgeProtection: false"),
    (check_keyvault, "app/keyvault.bicep", "enableSoftDelete: true", "enableSoftDelete: false"),
    (check_keyvault, "app/keyvault.bicep", " = if (!empty(syncApiCredential)) {", " = {"),
    (check_secrets, "app/keyvault.bicep", "param syncApiCredential string\n", "param syncApiCredential string = 'hunter2'\n"),
    (check_secrets, "main.bicep", "param syncApiCredential string\n", "param syncApiCredential string = ''\n"),
    (check_secrets, "main.bicep", "output STORAGE_ACCOUNT_NAME", "output leaked string = syncApiCredential\noutput STORAGE_ACCOUNT_NAME"),
    (
        check_secrets,
        "main.bicep",
        "var timerFunctionName = 'sync_timer'\n",
        "var timerFunctionName = 'sync_timer'\nvar hidden = 'x${syncApiCredential}'\noutput indirect string = hidden\n",
    ),
    (check_secrets, "app/keyvault.bicep", "@secure()\nparam syncApiCredential string", "param syncApiCredential string"),
    (check_role_assignments, "app/role-assignments.bicep", "b7e6dc6d-f1e8-4753-8033-0f276bb0955b", "ba92f5b4-2d11-453d-a403-e96b0029c9fe"),
    (
        check_role_assignments,
        "app/role-assignments.bicep",
        "scope: vault\n  properties: {\n    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultSecretsUser)",
        "scope: vault\n  properties: {\n    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultSecretsOfficer)",
    ),
    (
        check_role_assignments,
        "app/role-assignments.bicep",
        "    scope: containers[i]\n",
        "    scope: resourceGroup()\n",
    ),
    (check_role_assignments, "main.bicep", "      'azure-webjobs-secrets'\n      deploymentContainerName\n", "      deploymentContainerName\n"),
    (check_storage, "app/storage.bicep", "      name: 'azure-webjobs-secrets'\n", "      name: 'azure-webjobs-keys'\n"),
    (check_graph_app, "app/graph-app.bicep", "'federatedIdentityCredentials@v1.0' = if (federatedCredential) {", "'federatedIdentityCredentials@v1.0' = {"),
    (check_graph_app, "main.bicep", "federatedCredential: graphAuth == 'managed_identity'", "federatedCredential: true"),
    (check_graph_app, "app/graph-app.bicep", "    'User.Read.All'\n    'GroupMember.Read.All'\n", "    'User.Read.All'\n    'Group.Read.All'\n    'GroupMember.Read.All'\n"),
    (check_audit, "app/audit.bicep", "        category: 'StorageRead'\n", "        category: 'StorageWrite'\n"),
    (check_audit, "app/audit.bicep", "        category: 'AuditEvent'\n        enabled: true", "        category: 'AuditEvent'\n        enabled: false"),
    (check_audit, "app/audit.bicep", "      retentionInDays: auditRetentionDays\n", "      retentionInDays: 30\n"),
    (check_audit, "app/audit.bicep", "    workspaceId: logAnalytics.id\n    logAnalyticsDestinationType", "    workspaceId: ''\n    logAnalyticsDestinationType"),
    (check_graph_app, "app/graph-app.bicep", "98830695-27a2-44f7-8c18-0c3ebc9698f6", "bc024368-1153-4739-b217-4326f2e966d0"),
    (
        check_graph_app,
        "app/graph-app.bicep",
        "    'GroupMember.Read.All'\n    'OrgContact.Read.All'\n  ]",
        "    'GroupMember.Read.All'\n    'OrgContact.Read.All'\n    'Directory.Read.All'\n  ]",
    ),
    (
        check_graph_app,
        "app/graph-app.bicep",
        "var federatedAudience = 'api://AzureADTokenExchange'",
        "var federatedAudience = 'api://AzureADTokenExchangeUSGov'",
    ),
    (check_graph_app, "app/graph-app.bicep", "    subject: managedIdentityPrincipalId\n", "    subject: uniqueName\n"),
    (check_graph_app, "app/graph-app.bicep", "signInAudience: 'AzureADMyOrg'", "signInAudience: 'AzureADMultipleOrgs'"),
    (check_graph_app, "app/graph-app.bicep", "    appRoleId: roleId\n", "    appRoleId: '7ab1d382-f21e-4acd-a863-ba3e13f7da61'\n"),
    (check_exchange_app, "app/graph-app.bicep", "dc50a0fb-09a3-484d-be87-e023b12c6440", "dc50a0fb-09a3-484d-be87-e023b12c6441"),
    (check_exchange_app, "app/graph-app.bicep", "00000002-0000-0ff1-ce00-000000000000", "00000003-0000-0000-c000-000000000000"),
    (check_exchange_app, "app/graph-app.bicep", "  resourceId: exchangeOnline.id\n", "  resourceId: microsoftGraph.id\n"),
    (check_exchange_app, "app/graph-app.bicep", "'Microsoft.Graph/appRoleAssignedTo@v1.0' = if (exchangeAccess) {", "'Microsoft.Graph/appRoleAssignedTo@v1.0' = {"),
    (check_exchange_app, "app/graph-app.bicep", "param exchangeAccess bool = false", "param exchangeAccess bool = true"),
    (check_exchange_app, "app/graph-app.bicep", "  ], exchangeRequiredAccess)", "  ], [])"),
    (check_exchange_app, "main.bicep", "    exchangeAccess: exoMode != 'off'\n", "    exchangeAccess: true\n"),
    (check_exchange_app, "main.bicep", "param exoMode string = 'off'", "param exoMode string = 'augment'"),
    (check_exchange_app, "main.bicep", "f2ef992c-3afb-46b9-b7cf-a126ee74c451", "62e90394-69f5-4237-9190-012177145e10"),
    (check_exchange_app, "scripts/assign-exchange-role.sh", '"directoryScopeId":"/"', '"directoryScopeId":"/administrativeUnits/x"'),
    (check_settings, "app/function-app.bicep", "  EXO_MODE: exoMode\n", ""),
    (check_settings, "app/function-app.bicep", "  DELETE_THRESHOLD_FLOOR: string(deleteThresholdFloor)\n", ""),
    (check_settings, "app/function-app.bicep", "  DELETE_THRESHOLD_FLOOR: string(deleteThresholdFloor)\n", "  DELETE_THRESHOLD_FLOOR: string(deleteThresholdCount)\n"),
    (check_settings, "main.bicep", "param deleteThresholdFloor int = 25", "param deleteThresholdFloor int = 0"),
    (check_settings, "main.bicep", "    deleteThresholdFloor: deleteThresholdFloor\n", "    deleteThresholdFloor: deleteThresholdCount\n"),
    (check_settings, "main.bicep", "    exoMode: exoMode\n  }", "  }"),
    (check_graph_confinement, "app/identity.bicep", "// The user-assigned", "extension microsoftGraphV1\n// The user-assigned"),
    (check_graph_confinement, "bicepconfig.json", "microsoftgraph/v1.0:1.0.0", "microsoftgraph/v1.0:0.1.9-preview"),
    (check_monitoring_and_alert, "main.bicep", "var timerFunctionName = 'sync_timer'", "var timerFunctionName = 'timer'"),
    (check_monitoring_and_alert, "app/alert.bicep", "and success == false", "and success == true"),
    (check_monitoring_and_alert, "app/monitoring.bicep", "DisableLocalAuth: true", "DisableLocalAuth: false"),
    (check_monitoring_and_alert, "app/alert.bicep", "        emailAddress: alertEmail\n", "        emailAddress: 'ops@example.com'\n"),
    (check_bicepparam, "main.bicepparam", "param alertEmail = readEnvironmentVariable('ALERT_EMAIL')\n", ""),
    (
        check_bicepparam,
        "main.bicepparam",
        "param syncApiCredential = readEnvironmentVariable('SYNC_API_CREDENTIAL', '')",
        "param syncApiCredential = 'user:password'",
    ),
    (
        check_bicepparam,
        "main.bicepparam",
        "param syncApiUrl = readEnvironmentVariable('SYNC_API_URL')",
        "param syncApiUrl = readEnvironmentVariable('SYNC_API_URL', 'http://localhost/v1')",
    ),
    (check_bicepparam, "main.bicepparam", "readEnvironmentVariable('DELETE_THRESHOLD_FLOOR', '25')", "readEnvironmentVariable('DELETE_THRESHOLD_FLOOR', '0')"),
    (check_bicepparam, "main.bicepparam", "readEnvironmentVariable('DELETE_THRESHOLD_FLOOR', '25')", "readEnvironmentVariable('DELETE_THRESHOLD_COUNT', '25')"),
    (check_bicepparam, "main.bicepparam", "readEnvironmentVariable('GRAPH_AUTH', 'client_secret')", "readEnvironmentVariable('GRAPH_AUTH', 'managed_identity')"),
]


@pytest.mark.parametrize(
    ("check", "relative", "old", "new"),
    MUTATIONS,
    ids=[f"{m[0].__name__}:{m[1]}:{i}" for i, m in enumerate(MUTATIONS)],
)
def test_structural_check_catches_a_mutation(tmp_path: Path, check, relative: str, old: str, new: str) -> None:
    assert check(mutated_infra(tmp_path, relative, old, new)) != []


# ----------------------------------------------------------------------------- other infra files
# The one committed ARM template: the portal's "Deploy to Azure" template and its UI definition,
# checked against infra/portal/main.bicep by tests/test_portal_template.py. Nothing else.
PORTAL_ARM_FILES = ["portal/azuredeploy.json", "portal/createUiDefinition.json"]


def test_no_hand_written_arm_json() -> None:
    json_files = sorted(str(p.relative_to(INFRA)) for p in INFRA.rglob("*.json") if ".build" not in p.parts)
    assert json_files == sorted(["bicepconfig.json", *PORTAL_ARM_FILES])
    for path in INFRA.rglob("*.json"):
        if ".build" not in path.parts and str(path.relative_to(INFRA)) != "portal/azuredeploy.json":
            assert "deploymentTemplate.json" not in path.read_text()


def test_bicepconfig_makes_secret_leaks_lint_errors() -> None:
    config = json.loads((INFRA / "bicepconfig.json").read_text())
    rules = config["analyzers"]["core"]["rules"]
    for rule in ("secure-parameter-default", "outputs-should-not-contain-secrets"):
        assert rules[rule]["level"] == "error"


def test_azure_yaml_deploys_the_function_and_rotates_the_secret() -> None:
    azure = yaml.safe_load((REPO / "azure.yaml").read_text())
    assert azure["infra"]["path"] == "infra"
    assert azure["services"]["sync"] == {"project": ".", "language": "python", "host": "function"}
    hook = azure["hooks"]["postprovision"]
    for platform in ("posix", "windows"):
        run = hook[platform]["run"]
        assert "rotate-graph-secret" in run and ("--if-needed" in run or "-IfNeeded" in run)
        assert (REPO / re.search(r"infra/scripts/[\w.-]+", run).group(0)).is_file()


def test_deploy_workflow_uses_oidc_and_previews_before_deploying() -> None:
    path = REPO / ".github/workflows/deploy.yml"
    workflow = yaml.safe_load(path.read_text())
    text = path.read_text()
    assert workflow["permissions"]["id-token"] == "write"
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    logins = [s for s in steps if str(s.get("uses", "")).startswith("azure/login@")]
    assert logins and all(set(s["with"]) >= {"client-id", "tenant-id", "subscription-id"} for s in logins)
    assert all("creds" not in s["with"] and "client-secret" not in s["with"] for s in logins)
    assert "secrets.AZURE_CLIENT_SECRET" not in text
    what_if = text.index("az deployment group what-if")
    create = text.index("az deployment group create")
    assert what_if < create
    jobs = workflow["jobs"]
    deploy_jobs = [name for name, job in jobs.items() if "az deployment group create" in json.dumps(job)]
    assert deploy_jobs and all(jobs[name].get("needs") for name in deploy_jobs)


def test_deployment_doc_covers_every_path() -> None:
    doc = (REPO / "docs/deployment.md").read_text()
    for needle in (
        "azd up",
        "az deployment group what-if",
        "az deployment group create",
        "az ts create",
        "build-arm.sh",
        ".github/workflows/deploy.yml",
        "Privileged Role Administrator",
        "Application Administrator",
        "Owner",
        "GRAPH_AUTH=managed_identity",
        "rotate-graph-secret.sh",
        "traces",
        TIMER_FUNCTION,
        "Exchange.ManageAsApp",
        "Global Reader",
        "View-Only Recipients",
        "assign-exchange-role.sh",
        "EXO_MODE",
        "403",
    ):
        assert needle in doc, needle


def parameter_table_problems(doc: str, bicepparam: str) -> list[str]:
    """docs/deployment.md's Parameters table against main.bicepparam: the same parameters, each
    read from the variable the table names first, with the table's default as its fallback."""
    section = doc.split("\n## Parameters\n", 1)[1].split("\n## ", 1)[0]
    table: dict[str, tuple[list[str], str | None]] = {}
    for row in section.splitlines():
        if not row.startswith("| `"):
            continue
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        param = re.match(r"`(\w+)`", cells[1])
        default = re.match(r"`([^`]*)`", cells[2])
        if param is None:
            continue
        table[param.group(1)] = (re.findall(r"`([A-Z_]+)`", cells[0]), default.group(1) if default else None)
    read = {}
    for name, value in BICEPPARAM_LINE.findall(bicepparam):
        variable = re.match(r"(?:\w+\()?readEnvironmentVariable\('([A-Z_]+)'(?:, '([^']*)')?", value)
        read[name] = (variable.group(1), variable.group(2) or None) if variable else (None, None)
    problems = [f"main.bicepparam sets {name}, which the Parameters table of docs/deployment.md lacks" for name in sorted(set(read) - set(table))]
    problems += [f"docs/deployment.md lists {name}, which main.bicepparam does not set" for name in sorted(set(table) - set(read))]
    for name in sorted(set(read) & set(table)):
        (variables, doc_default), (variable, fallback) = table[name], read[name]
        if not variables or variables[0] != variable:
            problems.append(f"docs/deployment.md: {name} comes from {variable}, not {variables[:1]}")
        if doc_default != fallback:
            problems.append(f"docs/deployment.md: {name} defaults to {fallback!r} in main.bicepparam, {doc_default!r} in the table")
    return problems


def test_deployment_doc_parameter_table_matches_the_bicepparam() -> None:
    doc = (REPO / "docs/deployment.md").read_text()
    bicepparam = (INFRA / "main.bicepparam").read_text()
    assert parameter_table_problems(doc, bicepparam) == []
    # ... and the comparison fails on a dropped row, a wrong variable and a wrong default.
    row = "| `DELETE_THRESHOLD_FLOOR` | `deleteThresholdFloor` | `25` |"
    assert doc.count(row) == 1
    for changed in (doc.replace(row, "| `DELETE_THRESHOLD_FLOOR` | `x` | `25` |"), doc.replace(row, "| `DELETE_THRESHOLD_COUNT` | `deleteThresholdFloor` | `25` |"),
                    doc.replace(row, "| `DELETE_THRESHOLD_FLOOR` | `deleteThresholdFloor` | `0` |")):
        assert parameter_table_problems(changed, bicepparam) != []
    assert parameter_table_problems(doc, bicepparam.replace("param deleteThresholdFloor = ", "param deleteThresholdFlor = ")) != []


# ----------------------------------------------------------------------------- scripts
FAKE_AZ = r"""#!/usr/bin/env python3
import json, os, sys
log = os.environ["FAKE_AZ_LOG"]
args = sys.argv[1:]
entry = {"argv": args}
if args[:3] == ["keyvault", "secret", "set"]:
    entry["stdin"] = sys.stdin.read()
with open(log, "a") as f:
    f.write(json.dumps(entry) + "\n")
if args[:3] == ["keyvault", "secret", "list"]:
    print(os.environ.get("FAKE_EXPIRY", ""))
elif args[:4] == ["ad", "app", "credential", "reset"]:
    print("WARNING: The output includes credentials that you must protect.", file=sys.stderr)
    print(os.environ.get("FAKE_SECRET", ""))
elif args[:4] == ["ad", "app", "credential", "list"]:
    print(os.environ.get("FAKE_OLD_KEYS", ""))
sys.exit(int(os.environ.get("FAKE_KV_FAIL", "0")) if args[:3] == ["keyvault", "secret", "set"] else 0)
"""

SECRET = "Zq8~fake.secret-value_0123456789abcdefXYZ"


def run_rotate(tmp_path: Path, *args: str, env_extra: dict[str, str] | None = None):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    az = bin_dir / "az"
    az.write_text(FAKE_AZ)
    az.chmod(0o755)
    log = tmp_path / "az.log"
    log.write_text("")
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "FAKE_AZ_LOG": str(log),
        "FAKE_SECRET": SECRET,
        "GRAPH_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
        "KEY_VAULT_NAME": "kv-dirsync-test",
    }
    env.update(env_extra or {})
    result = subprocess.run(
        ["bash", str(INFRA / "scripts/rotate-graph-secret.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return result, calls


def call(calls, *prefix: str):
    return [c for c in calls if c["argv"][: len(prefix)] == list(prefix)]


def flag(entry, name: str) -> str:
    argv = entry["argv"]
    return argv[argv.index(name) + 1]


def test_rotate_script_never_prints_or_passes_the_secret_as_an_argument(tmp_path: Path) -> None:
    result, calls = run_rotate(tmp_path)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout and SECRET not in result.stderr
    assert all(SECRET not in " ".join(c["argv"]) for c in calls)
    (stored,) = call(calls, "keyvault", "secret", "set")
    assert stored["stdin"] == SECRET
    assert flag(stored, "--file") == "/dev/stdin"
    assert flag(stored, "--name") == "graph-client-secret"
    assert flag(stored, "--vault-name") == "kv-dirsync-test"
    (reset,) = call(calls, "ad", "app", "credential", "reset")
    assert "--append" in reset["argv"]
    assert flag(reset, "--id") == "11111111-2222-3333-4444-555555555555"
    end = datetime.strptime(flag(reset, "--end-date"), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(end - (datetime.now(UTC) + timedelta(days=180))) < timedelta(minutes=5)
    assert flag(stored, "--expires") == flag(reset, "--end-date")
    script = (INFRA / "scripts/rotate-graph-secret.sh").read_text()
    assert "set +x" in script and not re.search(r"set -\w*x|xtrace", script)


def test_rotate_script_lifetime_is_a_parameter(tmp_path: Path) -> None:
    result, calls = run_rotate(tmp_path, "--days", "30")
    assert result.returncode == 0, result.stderr
    (reset,) = call(calls, "ad", "app", "credential", "reset")
    end = datetime.strptime(flag(reset, "--end-date"), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(end - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=5)
    for bad in ("0", "731", "x"):
        result, calls = run_rotate(tmp_path, "--days", bad)
        assert result.returncode == 2 and not call(calls, "ad", "app", "credential", "reset")


def test_rotate_script_creates_nothing_in_managed_identity_mode(tmp_path: Path) -> None:
    result, calls = run_rotate(tmp_path, env_extra={"GRAPH_AUTH": "managed_identity"})
    assert result.returncode == 0
    assert calls == []
    assert "managed_identity" in result.stdout


def test_rotate_script_never_stores_an_empty_secret(tmp_path: Path) -> None:
    result, calls = run_rotate(tmp_path, env_extra={"FAKE_SECRET": ""})
    assert result.returncode != 0
    assert not call(calls, "keyvault", "secret", "set")


def test_rotate_script_reports_a_failed_vault_write_without_the_secret(tmp_path: Path) -> None:
    result, _calls = run_rotate(tmp_path, env_extra={"FAKE_KV_FAIL": "1"})
    assert result.returncode != 0
    assert "could not be stored" in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_rotate_script_if_needed_keeps_a_valid_secret_and_renews_an_expiring_one(tmp_path: Path) -> None:
    far = (datetime.now(UTC) + timedelta(days=120)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    near = (datetime.now(UTC) + timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    result, calls = run_rotate(tmp_path, "--if-needed", env_extra={"FAKE_EXPIRY": far})
    assert result.returncode == 0 and not call(calls, "ad", "app", "credential", "reset")
    result, calls = run_rotate(tmp_path, "--if-needed", env_extra={"FAKE_EXPIRY": near})
    assert result.returncode == 0 and call(calls, "ad", "app", "credential", "reset")
    result, calls = run_rotate(tmp_path, "--if-needed", env_extra={"FAKE_EXPIRY": ""})
    assert result.returncode == 0 and call(calls, "ad", "app", "credential", "reset")
    # The expiry comes from the secret list, which never carries a secret value.
    assert len(call(calls, "keyvault", "secret", "list")) == 1
    assert not call(calls, "keyvault", "secret", "show")


def test_rotate_script_prune_removes_only_older_secrets(tmp_path: Path) -> None:
    result, calls = run_rotate(tmp_path, "--prune", env_extra={"FAKE_OLD_KEYS": "old-key-1\nold-key-2"})
    assert result.returncode == 0, result.stderr
    deleted = [flag(c, "--key-id") for c in call(calls, "ad", "app", "credential", "delete")]
    assert deleted == ["old-key-1", "old-key-2"]
    (listing,) = call(calls, "ad", "app", "credential", "list")
    assert "[:-1]" in flag(listing, "--query")


def test_rotate_script_needs_its_inputs(tmp_path: Path) -> None:
    result, calls = run_rotate(tmp_path, env_extra={"GRAPH_CLIENT_ID": ""})
    assert result.returncode == 2 and calls == []
    result, calls = run_rotate(tmp_path, env_extra={"KEY_VAULT_NAME": ""})
    assert result.returncode == 2 and calls == []


FAKE_BICEP = r"""#!/usr/bin/env bash
echo "$*" >> "$FAKE_BICEP_LOG"
case "$1" in
  --version) echo "Bicep CLI version ${FAKE_BICEP_VERSION} (abcdef)";;
  build|build-params) out=""; while [ $# -gt 0 ]; do [ "$1" = --outfile ] && out="$2"; shift; done; echo '{}' > "$out";;
esac
"""


def run_build(tmp_path: Path, version: str, env_extra: dict[str, str] | None = None):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    bicep = bin_dir / "bicep"
    bicep.write_text(FAKE_BICEP)
    bicep.chmod(0o755)
    log = tmp_path / "bicep.log"
    log.write_text("")
    out = tmp_path / "out"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_BICEP_LOG": str(log), "FAKE_BICEP_VERSION": version}
    env.update(env_extra or {})
    result = subprocess.run(["bash", str(INFRA / "scripts/build-arm.sh"), str(out)], env=env, capture_output=True, text=True, timeout=60)
    return result, log.read_text().splitlines(), out


def test_build_arm_builds_main_bicep_with_the_bicep_cli(tmp_path: Path) -> None:
    result, log, out = run_build(tmp_path, "0.36.1")
    assert result.returncode == 0, result.stderr
    assert f"build {INFRA / 'main.bicep'} --outfile {out / 'main.json'}" in log
    assert (out / "main.json").is_file() and (out / ".gitignore").read_text() == "*\n"
    assert not any(line.startswith("build-params") for line in log)


def test_build_arm_refuses_an_old_bicep(tmp_path: Path) -> None:
    result, log, _out = run_build(tmp_path, "0.30.23")
    assert result.returncode == 2
    assert not any(line.startswith("build ") for line in log)


def test_build_arm_never_writes_the_credential_into_a_parameters_file(tmp_path: Path) -> None:
    env = {"SYNC_API_URL": "https://sync.example/v1", "ALERT_EMAIL": "ops@example.com"}
    result, log, out = run_build(tmp_path, "0.37.4", env)
    assert result.returncode == 0 and (out / "main.parameters.json").is_file()
    result, log, out = run_build(tmp_path, "0.37.4", {**env, "SYNC_API_CREDENTIAL": "user:pass"})
    assert result.returncode == 2 and "user:pass" not in result.stdout + result.stderr


# ----------------------------------------------------------------------------- checkov
# graph-app.bicep: `extension` and lambdas are outside pycep's grammar; it is scanned as ARM
# JSON after the documented compile step (test_checkov_scans_the_compiled_arm_template).
UNPARSEABLE_BY_CHECKOV = {"app/graph-app.bicep"}


def run_checkov(checkov: str, directory: Path) -> dict:
    command = [checkov, "-d", str(directory), "--framework", "bicep", "--skip-download", "-o", "json"]
    return checkov_report(command, "bicep", directory)


@pytest.fixture(scope="module")
def checkov() -> str:
    return require_checkov()


def test_every_checkov_skip_has_a_reason() -> None:
    reasons = skipped_checks()
    assert reasons
    for check_id, reason in reasons.items():
        assert len(reason) >= 30, f"{check_id} needs its reason on its line"


def test_checkov_scan_has_no_unexplained_failure(checkov: str, tmp_path: Path) -> None:
    # The command of record, with infra/.checkov.yaml.
    report = run_checkov(checkov, INFRA)
    failed = sorted({(c["check_id"], c["file_path"], c["resource"]) for c in report["results"]["failed_checks"]})
    assert failed == []
    assert report["summary"]["passed"] > 0
    parse_errors = {str(Path(p).resolve().relative_to(INFRA)) for p in report["results"]["parsing_errors"]}
    assert parse_errors == UNPARSEABLE_BY_CHECKOV
    # The same scan without the skips: every skip must still match a real failure.
    raw = run_checkov(checkov, copy_infra(tmp_path, ".checkov.yaml"))
    raw_failed = {c["check_id"] for c in raw["results"]["failed_checks"]}
    assert raw_failed == set(skipped_checks())


def test_checkov_scan_catches_a_weakened_storage_account(checkov: str, tmp_path: Path) -> None:
    copy = copy_infra(tmp_path)
    storage = copy / "app/storage.bicep"
    storage.write_text(
        storage.read_text()
        .replace("minimumTlsVersion: 'TLS1_2'", "minimumTlsVersion: 'TLS1_0'")
        .replace("supportsHttpsTrafficOnly: true", "supportsHttpsTrafficOnly: false")
    )
    report = run_checkov(checkov, copy)
    failed = {c["check_id"] for c in report["results"]["failed_checks"]}
    assert {"CKV_AZURE_44", "CKV_AZURE_3"} <= failed


# ----------------------------------------------------------------------------- bicep CLI
def test_bicep_build_and_lint() -> None:
    found = bicep_cli()
    if found is None or found[1] < MIN_BICEP:
        reason = (
            "bicep is not on PATH" if found is None else f"bicep {'.'.join(map(str, found[1]))} is older than 0.36.1"
        ) + ": skipping bicep build and bicep lint of infra/main.bicep"
        print(reason)
        pytest.skip(reason)
    bicep = found[0]
    build = subprocess.run([bicep, "build", str(INFRA / "main.bicep"), "--stdout"], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    template = json.loads(build.stdout)
    assert template["resources"]
    lint = subprocess.run([bicep, "lint", str(INFRA / "main.bicep")], capture_output=True, text=True, timeout=600)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_checkov_scans_the_compiled_arm_template(checkov: str, tmp_path: Path) -> None:
    """The documented compile step for what checkov's Bicep parser cannot read: build the ARM
    JSON with the Bicep CLI (infra/scripts/build-arm.sh) and scan it as ARM."""
    found = bicep_cli()
    if found is None or found[1] < MIN_BICEP:
        reason = "bicep (0.36.1 or later) is not on PATH: the compile-then-scan step of infra/.checkov.yaml cannot run here"
        print(reason)
        pytest.skip(reason)
    build = subprocess.run(["bash", str(INFRA / "scripts/build-arm.sh"), str(tmp_path)], capture_output=True, text=True, timeout=600,
                           env={k: v for k, v in os.environ.items() if k not in ("SYNC_API_URL", "ALERT_EMAIL", "SYNC_API_CREDENTIAL")})
    assert build.returncode == 0, build.stderr
    command = [checkov, "-f", str(tmp_path / "main.json"), "--framework", "arm", "--skip-download", "-o", "json",
               "--config-file", str(CHECKOV_CONFIG)]
    arm = checkov_report(command, "arm", REPO)
    assert arm["results"]["parsing_errors"] == []
    assert arm["summary"]["passed"] > 0


def test_deploy_workflow_is_least_privilege_and_pinned() -> None:
    """Issue 14: a read-only what-if identity of its own, the deployment identity behind the
    production environment only, no Graph or Key Vault secret rights in CI, every action pinned
    to a commit, one Bicep version."""
    path = REPO / ".github/workflows/deploy.yml"
    workflow = yaml.safe_load(path.read_text())
    jobs = workflow["jobs"]
    what_if = next(job for job in jobs.values() if "what-if" in json.dumps(job) and "az deployment group create" not in json.dumps(job))
    deploy = next(job for job in jobs.values() if "az deployment group create" in json.dumps(job))
    login = {id(job): [s for s in job["steps"] if str(s.get("uses", "")).startswith("azure/login@")] for job in (what_if, deploy)}
    assert [s["with"]["client-id"] for s in login[id(what_if)]] == ["${{ vars.AZURE_WHATIF_CLIENT_ID }}"]
    assert [s["with"]["client-id"] for s in login[id(deploy)]] == ["${{ vars.AZURE_CLIENT_ID }}"]
    assert deploy["environment"] == "production" and what_if.get("environment") not in (None, "production")
    assert "--validation-level ProviderNoRbac" in json.dumps(what_if)
    for job in jobs.values():
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), f"not pinned to a commit: {step['uses']}"
    text = path.read_text()
    assert "az bicep upgrade" not in text and re.search(r"BICEP_VERSION: v\d+\.\d+\.\d+", text)
    assert workflow["env"]["DEPLOY_APP_REGISTRATION"] == "false" and workflow["env"]["SECRETS_OFFICER_PRINCIPAL_ID"] == ""
    assert "rotate-graph-secret" not in text and "AppRoleAssignment.ReadWrite.All" not in text.split("Neither gets")[0]


def unpinned_actions(workflow_text: str) -> list[str]:
    """Every `uses:` of a workflow that is not pinned to a full commit SHA with its tag in a comment."""
    found = []
    for line in workflow_text.splitlines():
        match = re.match(r"\s*(?:-\s+)?uses:\s*(\S+)(.*)$", line)
        if match and not (re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", match.group(1)) and re.fullmatch(r"\s*#\s*v\d+(\.\d+)*\s*", match.group(2))):
            found.append(line.strip())
    return found


WORKFLOWS = sorted((REPO / ".github/workflows").glob("*.y*ml"))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_workflow_pins_its_actions_to_a_commit(path: Path) -> None:
    text = path.read_text()
    uses = [step["uses"] for job in yaml.safe_load(text)["jobs"].values() for step in job.get("steps", []) if "uses" in step]
    assert uses, f"{path.name} uses no action"
    assert unpinned_actions(text) == []
    # The line check and the parsed workflow see the same steps.
    assert len([line for line in text.splitlines() if re.match(r"\s*(?:-\s+)?uses:", line)]) == len(uses)


def test_the_pinning_check_catches_a_tag() -> None:
    assert {"ci.yml", "deploy.yml"} <= {p.name for p in WORKFLOWS}
    pinned = "      - uses: actions/setup-node@49933ea5288caeca8642d1e84afbd3f7d6820020 # v4.4.0\n"
    assert unpinned_actions(pinned) == []
    for bad in ("      - uses: actions/setup-node@v4\n",
                "      - uses: actions/setup-node@49933ea5288caeca8642d1e84afbd3f7d6820020\n",
                "        uses: actions/setup-node@49933ea\n",
                "      - uses: actions/setup-node@main # v4\n"):
        assert unpinned_actions(bad) == [bad.strip()]


# ----------------------------------------------------------------------------- the Exchange directory role hook
SERVICE_PRINCIPAL = "77777777-8888-9999-aaaa-bbbbbbbbbbbb"


def run_assign(tmp_path: Path, *args: str, env_extra: dict[str, str] | None = None, existing: str = "0"):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    az = bin_dir / "az"
    az.write_text(FAKE_AZ.replace('sys.exit(', 'print(os.environ.get("FAKE_EXISTING", "0")) if args[:3] == ["rest", "--method", "GET"] else None\nsys.exit(', 1))
    az.chmod(0o755)
    log = tmp_path / "az.log"
    log.write_text("")
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path), "FAKE_AZ_LOG": str(log), "FAKE_EXISTING": existing,
           "EXO_MODE": "augment", "GRAPH_SERVICE_PRINCIPAL_ID": SERVICE_PRINCIPAL, "EXO_DIRECTORY_ROLE_ID": GLOBAL_READER}
    env.update(env_extra or {})
    result = subprocess.run(["bash", str(INFRA / "scripts/assign-exchange-role.sh"), *args], env=env, capture_output=True, text=True, timeout=60)
    return result, [json.loads(line) for line in log.read_text().splitlines()]


def test_assign_exchange_role_posts_the_role_assignment(tmp_path: Path) -> None:
    result, calls = run_assign(tmp_path)
    assert result.returncode == 0, result.stderr
    posts = call(calls, "rest", "--method", "POST")
    assert len(posts) == 1
    assert flag(posts[0], "--url") == "https://graph.microsoft.com/v1.0/roleManagement/directory/roleAssignments"
    assert json.loads(flag(posts[0], "--body")) == {"principalId": SERVICE_PRINCIPAL, "roleDefinitionId": GLOBAL_READER, "directoryScopeId": "/"}
    assert "403" in result.stdout and "propagate" in result.stdout


def test_assign_exchange_role_is_idempotent_and_off_does_nothing(tmp_path: Path) -> None:
    result, calls = run_assign(tmp_path, existing="1")
    assert result.returncode == 0 and call(calls, "rest", "--method", "GET") and not call(calls, "rest", "--method", "POST")
    (tmp_path / "off").mkdir()
    result, calls = run_assign(tmp_path / "off", env_extra={"EXO_MODE": "off"})
    assert result.returncode == 0 and calls == []


@pytest.mark.parametrize("env_extra", [{"EXO_MODE": "sometimes"}, {"GRAPH_SERVICE_PRINCIPAL_ID": ""}, {"EXO_DIRECTORY_ROLE_ID": "Global Reader"}])
def test_assign_exchange_role_needs_its_inputs(tmp_path: Path, env_extra: dict[str, str]) -> None:
    result, calls = run_assign(tmp_path, env_extra=env_extra)
    assert result.returncode == 2 and calls == []


def test_azure_yaml_assigns_the_exchange_role_after_provisioning() -> None:
    azure = yaml.safe_load((REPO / "azure.yaml").read_text())
    hook = azure["hooks"]["postprovision"]
    assert "assign-exchange-role.sh" in hook["posix"]["run"] and "assign-exchange-role.ps1" in hook["windows"]["run"]
    assert (INFRA / "scripts/assign-exchange-role.ps1").is_file()
