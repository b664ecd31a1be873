#!/usr/bin/env bash
# The main job. With no Azure settings (no SYNC_API_URL in the environment) it brings up the
# embedded local stack and shows test-update, update, and an incremental update after a change
# to the demo directory. With real settings it runs the ACTION (default: update) for real.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --runtime-only  # the demo needs no test tool
if [ -z "${SYNC_API_URL:-}" ]; then
  exec .venv/bin/python -m devstack.demo
fi
exec .venv/bin/python -m shared "${1:-update}" "${@:2}"
