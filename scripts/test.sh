#!/usr/bin/env bash
# Run the whole test suite against real servers (installs what it needs first).
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP_EXTRAS=test bash scripts/setup.sh
bash scripts/docker-test-engine.sh install   # docker.io + debootstrap for tests/test_docker_engine.py
exec .venv/bin/python -m pytest "$@"
