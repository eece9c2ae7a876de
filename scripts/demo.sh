#!/usr/bin/env bash
# The main job on a fresh machine: start a sandbox of real servers (PostgreSQL with the
# two Coderz databases, Redis, a configs tree) and back it up through flow
# `coderz-backup` on the embedded Prefect API. Prints the boxed report.
#   bash scripts/demo.sh [--workdir DIR] [--dest DIR] [--keep-running]
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP_EXTRAS=test bash scripts/setup.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/python -m coderz_backup.sandbox "$@"
