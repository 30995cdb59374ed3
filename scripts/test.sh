#!/usr/bin/env bash
# The project's test command: lint, types, then unit and integration tests
# (integration tests need the Docker engine that scripts/setup.sh starts).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
"$PY" -m ruff check provisioner tests scripts
"$PY" -m mypy
exec "$PY" -m pytest "$@"
