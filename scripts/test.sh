#!/usr/bin/env bash
# The whole test suite, from a fresh clone: setup, then pytest (it starts Azurite, the Graph
# emulator and the sync API receiver itself, on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The infra checks must not skip checkov silently once setup has installed it.
export REQUIRE_CHECKOV=1
exec .venv/bin/python -m pytest -q "$@"
