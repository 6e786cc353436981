#!/usr/bin/env bash
# The static checks (run by scripts/test.sh before the tests, so by .ci/run too; pre-commit runs the
# same on each commit): lint, format, types, and the import contracts of the layers (pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports
.venv/bin/pre-commit validate-config .pre-commit-config.yaml
