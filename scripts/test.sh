#!/usr/bin/env bash
# The whole test suite, from a fresh clone: setup, then pytest (it starts Azurite, the Graph
# emulator and the sync API receiver itself, on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# checkov (the offline Bicep scan of infra/) pins packaging<24, which pytest cannot share,
# so it lives in its own virtual environment; only the tests need it.
if [ ! -x .local/checkov/bin/checkov ]; then
  echo "test: installing checkov into .local/checkov"
  PY=${PYTHON:-python3.11}
  command -v "$PY" >/dev/null 2>&1 || PY=python3
  "$PY" -m venv .local/checkov
  .local/checkov/bin/python -m pip install --quiet -r infra/requirements-checkov.txt
fi
# The infra checks must not skip checkov silently once setup has installed it.
export REQUIRE_CHECKOV=1
exec .venv/bin/python -m pytest -q "$@"
