#!/usr/bin/env bash
# Adds a client secret with a bounded lifetime to the directory sync's app
# registration and writes it straight into Key Vault. The secret never appears on
# the terminal, in a file or in a process argument: it goes from
# `az ad app credential reset` into a shell variable and, through a pipe, into
# `az keyvault secret set --file /dev/stdin`.
#
# Rerun it to rotate: each run adds a new secret, stores it as the vault secret's new
# version (with the same expiry date) and, with --prune, removes this script's older
# secrets from the app. The Function reads the vault on every run, so nothing else
# needs restarting.
#
# With GRAPH_AUTH=managed_identity no secret is created: the Function authenticates
# with its managed identity as a federated credential.
#
# Used as the azd postprovision hook (azure.yaml) with --if-needed: it then only adds
# a secret when the vault has none, or when the current one expires within 30 days.
#
# Needs: Azure CLI, signed in as a principal that may add credentials to the app
# (Application Administrator, Cloud Application Administrator or an owner of the app)
# and holds Key Vault Secrets Officer on the vault (main.bicep grants it to the
# deployer).
#
# Inputs come from flags or from the azd environment / deployment outputs:
#   GRAPH_CLIENT_ID   application (client) id of the app registration   (--app-id)
#   KEY_VAULT_NAME    the vault                                           (--vault)
#   GRAPH_AUTH        client_secret (default) or managed_identity         (--graph-auth)
#   GRAPH_CLIENT_SECRET_NAME  vault secret name, default graph-client-secret (--secret-name)
#   GRAPH_SECRET_DAYS lifetime in days, default 180                       (--days)
set +x
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: rotate-graph-secret.sh [--app-id ID] [--vault NAME] [--secret-name NAME]
                              [--days N] [--graph-auth MODE] [--if-needed] [--prune]

  --app-id ID        application (client) id       (default: $GRAPH_CLIENT_ID)
  --vault NAME       Key Vault name                (default: $KEY_VAULT_NAME)
  --secret-name NAME vault secret name             (default: $GRAPH_CLIENT_SECRET_NAME or graph-client-secret)
  --days N           lifetime of the new secret    (default: $GRAPH_SECRET_DAYS or 180; 1-730)
  --graph-auth MODE  client_secret or managed_identity (default: $GRAPH_AUTH or client_secret)
  --if-needed        only add a secret when the vault has none or it expires within 30 days
  --prune            after storing the new secret, remove this script's older secrets from the app
USAGE
}

app_id="${GRAPH_CLIENT_ID:-}"
vault="${KEY_VAULT_NAME:-}"
secret_name="${GRAPH_CLIENT_SECRET_NAME:-graph-client-secret}"
days="${GRAPH_SECRET_DAYS:-180}"
graph_auth="${GRAPH_AUTH:-client_secret}"
if_needed=false
prune=false
renew_within_days=30
display_name="directory-sync (rotate-graph-secret)"

while [ $# -gt 0 ]; do
  case "$1" in
    --app-id) app_id="${2:?--app-id needs a value}"; shift 2 ;;
    --vault) vault="${2:?--vault needs a value}"; shift 2 ;;
    --secret-name) secret_name="${2:?--secret-name needs a value}"; shift 2 ;;
    --days) days="${2:?--days needs a value}"; shift 2 ;;
    --graph-auth) graph_auth="${2:?--graph-auth needs a value}"; shift 2 ;;
    --if-needed) if_needed=true; shift ;;
    --prune) prune=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "rotate-graph-secret: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

case "$graph_auth" in
  managed_identity)
    echo "rotate-graph-secret: GRAPH_AUTH=managed_identity: the Function uses its managed identity as a federated credential; no client secret is created."
    exit 0 ;;
  client_secret) ;;
  *) echo "rotate-graph-secret: GRAPH_AUTH must be client_secret or managed_identity, not '$graph_auth'." >&2; exit 2 ;;
esac

if [ -z "$app_id" ]; then
  echo "rotate-graph-secret: no app id: pass --app-id or set GRAPH_CLIENT_ID (a deployment output)." >&2; exit 2
fi
if [ -z "$vault" ]; then
  echo "rotate-graph-secret: no vault: pass --vault or set KEY_VAULT_NAME (a deployment output)." >&2; exit 2
fi
case "$days" in
  ''|*[!0-9]*) echo "rotate-graph-secret: --days must be a whole number of days (1-730), not '$days'." >&2; exit 2 ;;
esac
if [ "$days" -lt 1 ] || [ "$days" -gt 730 ]; then
  echo "rotate-graph-secret: --days must be between 1 and 730, not $days." >&2; exit 2
fi
command -v az >/dev/null 2>&1 || { echo "rotate-graph-secret: the Azure CLI (az) is not installed." >&2; exit 2; }

# GNU date (Linux, Cloud Shell) or BSD date (macOS).
days_from_now() {
  date -u -d "+$1 days" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || date -u -v+"$1"d +%Y-%m-%dT%H:%M:%SZ
}
to_epoch() {
  date -u -d "$1" +%s 2>/dev/null \
    || date -u -j -f '%Y-%m-%dT%H:%M:%S' "${1%%[.+Z]*}" +%s 2>/dev/null \
    || echo 0
}

# The expiry of the vault's current secret, read from the secret list: listing never
# returns a secret value.
current_expiry="$(az keyvault secret list --vault-name "$vault" \
  --query "[?name=='${secret_name}'] | [0].attributes.expires" -o tsv)"

if [ "$if_needed" = true ] && [ -n "$current_expiry" ]; then
  if [ "$(to_epoch "$current_expiry")" -gt $(( $(date -u +%s) + renew_within_days * 86400 )) ]; then
    echo "rotate-graph-secret: $vault/$secret_name is valid until $current_expiry; nothing to do (rerun without --if-needed to rotate now)."
    exit 0
  fi
fi

end_date="$(days_from_now "$days")"

# Add the secret (--append keeps the app's other credentials, so the running Function
# keeps working until it reads the new one), then hand it to Key Vault on a pipe.
# The value lives only in this shell variable: printf is a shell builtin, so it never
# becomes a process argument, and nothing echoes it.
new_secret="$(az ad app credential reset --id "$app_id" --append \
  --display-name "$display_name" --end-date "$end_date" \
  --query password -o tsv)"
if [ -z "$new_secret" ]; then
  echo "rotate-graph-secret: Entra ID returned no secret for app $app_id; the vault is unchanged." >&2
  exit 1
fi
if ! printf '%s' "$new_secret" \
  | az keyvault secret set --vault-name "$vault" --name "$secret_name" \
      --file /dev/stdin --encoding utf-8 --expires "$end_date" \
      --content-type "client secret of app $app_id" \
      --query id -o none; then
  new_secret=""
  echo "rotate-graph-secret: the new secret was added to app $app_id but could not be stored in $vault/$secret_name." >&2
  echo "rotate-graph-secret: check that you hold Key Vault Secrets Officer on $vault, then rerun; remove the unused secret" >&2
  echo "rotate-graph-secret: (display name '$display_name', expiring $end_date) with 'az ad app credential delete'." >&2
  exit 1
fi
new_secret=""
unset new_secret

echo "rotate-graph-secret: added a client secret to app $app_id, valid until $end_date, and stored it as $vault/$secret_name."

if [ "$prune" = true ]; then
  # This script's secrets, newest last; keep the newest (the one just stored).
  old_key_ids="$(az ad app credential list --id "$app_id" \
    --query "sort_by([?displayName=='${display_name}'], &endDateTime)[:-1].keyId" -o tsv)"
  for key_id in $old_key_ids; do
    az ad app credential delete --id "$app_id" --key-id "$key_id" >/dev/null
    echo "rotate-graph-secret: removed the older secret $key_id from app $app_id."
  done
fi
