#!/usr/bin/env bash
# Builds the ARM JSON that the Azure portal and template specs accept from the Bicep
# source, with the Bicep CLI. The output is a build artifact: never commit it, and
# never edit it by hand (the Bicep is the only source).
# (The one committed ARM template is the portal button's, infra/portal/azuredeploy.json,
# guarded against drift by tests/test_portal_template.py; docs/deployment.md, Path 5.)
#
#   infra/scripts/build-arm.sh [OUT_DIR]      default OUT_DIR: infra/.build
#
# Writes OUT_DIR/main.json (the template) and, when SYNC_API_URL and ALERT_EMAIL are
# set, OUT_DIR/main.parameters.json from main.bicepparam. Uses `bicep` when it is on
# PATH, otherwise `az bicep`. Needs Bicep 0.36.1 or later (the Microsoft Graph
# extension's minimum).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
infra="$(cd "$here/.." && pwd)"
out="${1:-$infra/.build}"
min_version="0.36.1"

# `bicep build FILE` and `az bicep build --file FILE` take the file differently.
if command -v bicep >/dev/null 2>&1; then
  bicep_version() { bicep --version; }
  bicep_build() { bicep build "$1" --outfile "$2"; }
  bicep_build_params() { bicep build-params "$1" --outfile "$2"; }
elif command -v az >/dev/null 2>&1; then
  bicep_version() { az bicep version; }
  bicep_build() { az bicep build --file "$1" --outfile "$2"; }
  bicep_build_params() { az bicep build-params --file "$1" --outfile "$2"; }
else
  echo "build-arm: neither bicep nor az is on PATH; install the Bicep CLI ($min_version or later)." >&2
  exit 2
fi

version="$(bicep_version 2>/dev/null | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | head -n 1 || true)"
if [ -n "$version" ] && [ "$(printf '%s\n%s\n' "$min_version" "$version" | sort -V | head -n 1)" != "$min_version" ]; then
  echo "build-arm: Bicep $version is older than $min_version; run 'az bicep upgrade' or install a newer Bicep CLI." >&2
  exit 2
fi

mkdir -p "$out"
# The output directory ignores itself, so that a build is never committed by accident.
[ -e "$out/.gitignore" ] || printf '*\n' > "$out/.gitignore"
bicep_build "$infra/main.bicep" "$out/main.json"
echo "build-arm: wrote $out/main.json"

if [ -n "${SYNC_API_URL:-}" ] && [ -n "${ALERT_EMAIL:-}" ]; then
  # build-params resolves readEnvironmentVariable() now: leave SYNC_API_CREDENTIAL
  # unset here, or the parameters file would hold the secret.
  if [ -n "${SYNC_API_CREDENTIAL:-}" ]; then
    echo "build-arm: SYNC_API_CREDENTIAL is set; unset it before building a parameters file (it would be written in clear)." >&2
    exit 2
  fi
  bicep_build_params "$infra/main.bicepparam" "$out/main.parameters.json"
  echo "build-arm: wrote $out/main.parameters.json"
fi
