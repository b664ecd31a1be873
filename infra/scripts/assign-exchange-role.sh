#!/usr/bin/env bash
# Assigns the Entra directory role that Exchange Online requires for app-only access
# (docs/deployment.md, "Exchange Online") to the directory sync app's service principal.
# The Microsoft Graph Bicep extension grants Exchange.ManageAsApp (graph-app.bicep) but
# cannot assign directory roles, so this azd postprovision hook does it through
# POST /roleManagement/directory/roleAssignments. It is idempotent: an existing
# assignment of the role to the principal at the tenant scope is left as it is.
#
# Does nothing when EXO_MODE is off (the default).
#
# Needs: Azure CLI, signed in as a Privileged Role Administrator (or Global
# Administrator): no other role may assign directory roles. The role takes a while to
# reach Exchange Online: a sync run right after may get 403 (its message says so).
#
# Inputs come from flags or from the azd environment / deployment outputs:
#   EXO_MODE                    off | augment | only                (--exo-mode)
#   GRAPH_SERVICE_PRINCIPAL_ID  object id of the app's service principal (--principal-id)
#   EXO_DIRECTORY_ROLE_ID       role template id; main.bicep's default is Global Reader (--role-id)
#   GRAPH_ENDPOINT              Microsoft Graph root for national clouds (default https://graph.microsoft.com)
set -euo pipefail

exo_mode="${EXO_MODE:-off}"
principal="${GRAPH_SERVICE_PRINCIPAL_ID:-}"
role="${EXO_DIRECTORY_ROLE_ID:-}"
graph="${GRAPH_ENDPOINT:-https://graph.microsoft.com}"

while [ $# -gt 0 ]; do
  case "$1" in
    --exo-mode) exo_mode="${2:?--exo-mode needs a value}"; shift 2 ;;
    --principal-id) principal="${2:?--principal-id needs a value}"; shift 2 ;;
    --role-id) role="${2:?--role-id needs a value}"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "assign-exchange-role: unknown argument $1" >&2; exit 2 ;;
  esac
done

case "$exo_mode" in
  off) echo "assign-exchange-role: EXO_MODE is off; no directory role needed"; exit 0 ;;
  augment|only) ;;
  *) echo "assign-exchange-role: EXO_MODE must be off, augment or only, not '$exo_mode'" >&2; exit 2 ;;
esac
guid='^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'
if ! [[ "$principal" =~ $guid ]]; then
  echo "assign-exchange-role: GRAPH_SERVICE_PRINCIPAL_ID (--principal-id) must be the app's service principal object id" >&2; exit 2
fi
if ! [[ "$role" =~ $guid ]]; then
  echo "assign-exchange-role: EXO_DIRECTORY_ROLE_ID (--role-id) must be a directory role template id" >&2; exit 2
fi

url="$graph/v1.0/roleManagement/directory/roleAssignments"
existing=$(az rest --method GET --url "$url" \
  --url-parameters "\$filter=principalId eq '$principal' and roleDefinitionId eq '$role'" \
  --query "length(value[?directoryScopeId=='/'])" --output tsv)
if [ "${existing:-0}" != "0" ]; then
  echo "assign-exchange-role: the service principal already holds directory role $role"
  exit 0
fi
body=$(printf '{"principalId":"%s","roleDefinitionId":"%s","directoryScopeId":"/"}' "$principal" "$role")
if ! az rest --method POST --url "$url" --headers "Content-Type=application/json" --body "$body" --output none; then
  echo "assign-exchange-role: assigning directory role $role failed; the signed-in account must be a Privileged Role Administrator" >&2
  exit 1
fi
echo "assign-exchange-role: assigned directory role $role to $principal; Exchange Online may answer 403 until it propagates (up to an hour or more)"
