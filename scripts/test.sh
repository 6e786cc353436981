#!/usr/bin/env bash
# The README's test command: install everything, make sure Postgres/Redis run, run the static checks
# (scripts/check.sh: ruff, ruff format, mypy, import-linter), then the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-browser
bash scripts/services.sh
bash scripts/check.sh
export PYTHONHASHSEED=0
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
