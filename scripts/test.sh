#!/usr/bin/env bash
# Run the whole test suite against real servers (installs what it needs first).
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP_EXTRAS=test bash scripts/setup.sh
bash scripts/docker-test-engine.sh install   # docker.io + debootstrap for tests/test_docker_engine.py
# Debian's Chromium for the Prefect UI tests (driven by Playwright; no browser is ever downloaded)
if [ ! -x /usr/bin/chromium ]; then
  echo "test: installing chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
fi
exec .venv/bin/python -m pytest "$@"
