#!/usr/bin/env bash
# One-time setup from a fresh clone: .venv/ with every Python dependency, and Azurite (npm)
# for the local stack. Safe to rerun: it only reinstalls when a requirements file changed.
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
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python dependencies into .venv"
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install --quiet -r requirements-dev.txt
  echo "$want" > "$stamp"
fi

# checkov (the offline Bicep scan of infra/) pins packaging<24, which pytest cannot share,
# so it lives in its own virtual environment.
if [ ! -x .local/checkov/bin/checkov ]; then
  echo "setup: installing checkov into .local/checkov"
  "$PY" -m venv .local/checkov
  .local/checkov/bin/python -m pip install --quiet -r infra/requirements-checkov.txt
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
