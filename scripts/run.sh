#!/usr/bin/env bash
# The main job. With no Azure settings (no SYNC_API_URL in the environment) and no ACTION it
# brings up the embedded local stack and shows test-update, update, and an incremental update
# after a change to the demo directory. With real settings it runs the ACTION (default: update)
# for real; an ACTION without SYNC_API_URL runs the CLI too, which names the missing setting.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --runtime-only  # the demo needs no test tool
if [ -z "${SYNC_API_URL:-}" ] && [ "$#" -eq 0 ]; then
  exec .venv/bin/python -m devstack.demo
fi
exec .venv/bin/python -m shared "${1:-update}" "${@:2}"
