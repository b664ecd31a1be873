#!/usr/bin/env bash
# Re-lock the dependency tree: requirements.in → requirements.txt (deployed) and
# requirements-dev.in → requirements-dev.txt (tests, local stack), every transitive version
# pinned with its hashes (pip-compile from pip-tools, in .local/piptools). Run it after
# changing a .in file, then commit the .in and .txt files together.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .local/piptools/bin/pip-compile ]; then
  "$PY" -m venv .local/piptools
  .local/piptools/bin/python -m pip install --quiet pip-tools
fi
opts=(--quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links)
.local/piptools/bin/pip-compile "${opts[@]}" --output-file requirements.txt requirements.in
.local/piptools/bin/pip-compile "${opts[@]}" --output-file requirements-dev.txt requirements-dev.in
echo "lock: wrote requirements.txt and requirements-dev.txt"
