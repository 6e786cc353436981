#!/usr/bin/env bash
# The README's main command: install, start the embedded service (SQLite, local object store,
# SQL-backed Celery broker, a worker beside the API), submit the demo job over HTTP, follow it live,
# print the HYDRA-vs-LWM table, download the compressed network and check that it loads.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/hydra-service demo "$@"
