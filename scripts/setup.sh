#!/usr/bin/env bash
# One-time setup from a fresh clone: .venv/ from the dependency locks, and Azurite (npm) for the
# local stack. Safe to rerun: it only reinstalls when a lock changed.
#   bash scripts/setup.sh [--runtime-only]
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PY=$candidate; break
    fi
  done
fi
[ -n "$PY" ] || { echo "error: Python 3.11 or later is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# Installs from the locks (every version pinned, hashes required). --runtime-only: the
# Function's own dependencies (requirements.txt), all the demo needs; otherwise the test and
# local-stack tools too (requirements-dev.txt, a superset). checkov is scripts/test.sh's.
mode=dev
[ "${1:-}" = "--runtime-only" ] && mode=runtime
stamp=.venv/.requirements.sha256
runtime_hash=$(sha256sum requirements.txt | cut -d' ' -f1)
dev_hash=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
have=$(cat "$stamp" 2>/dev/null || true)
if [ "$have" != "dev:$dev_hash" ] && { [ "$mode" = dev ] || [ "$have" != "runtime:$runtime_hash" ]; }; then
  lock=requirements-dev.txt; want="dev:$dev_hash"
  if [ "$mode" = runtime ]; then lock=requirements.txt; want="runtime:$runtime_hash"; fi
  echo "setup: installing Python dependencies into .venv from $lock"
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install --quiet --require-hashes -r "$lock"
  echo "$want" > "$stamp"
fi

# `.venv/bin/python -m shared ...` works from any working directory: the repository root is
# on the venv's import path.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$PWD" > "$site/entra-dirsync.pth"

if [ ! -x node_modules/.bin/azurite-blob ]; then
  command -v npm >/dev/null 2>&1 || { echo "error: npm (Node.js 20) is required for Azurite, the local storage emulator" >&2; exit 1; }
  echo "setup: installing Azurite (npm ci)"
  npm ci --no-audit --no-fund --silent
fi
