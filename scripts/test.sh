#!/usr/bin/env bash
# Run the whole test suite against real servers (installs what it needs first).
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP_EXTRAS=test bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
