#!/usr/bin/env bash
# Run the whole test suite against real servers (installs what it needs first).
#   bash scripts/test.sh [pytest args...]
# Without test paths in the args: the unit tier (tests/unit: no servers, well under a minute)
# first, and only when it passes the integration tests (everything else). With test paths:
# exactly those, through pytest unchanged.
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
# Debian's age: the off-site encryption tests decrypt our files with the reference tool
if ! command -v age >/dev/null; then
  echo "test: installing age"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq age >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq age >/dev/null; }
fi
# A private sshd for the rsync off-site tests (tests/sshd.py). The system ssh service is never
# started: apt asks /usr/sbin/policy-rc.d, which answers 101 (denied); if there is none, one is
# put in place for the install only.
if [ ! -x /usr/sbin/sshd ]; then
  echo "test: installing openssh-server (the system ssh service is not started)"
  export DEBIAN_FRONTEND=noninteractive
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# coderz-backup scripts/test.sh: no service starts during this install\nexit 101\n' \
      > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT   # removed even when the install fails or is interrupted
  fi
  rc=0
  apt-get install -y -qq openssh-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq openssh-server >/dev/null; } || rc=$?
  if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
  [ "$rc" -eq 0 ] || exit "$rc"
fi

# Does the caller name tests (a path, or path::test)? Values of pytest's options that take one
# (-k aof, -m slow, …) are not paths; --help and --version are passed through as they are.
explicit=""
skip_value=""
for arg in "$@"; do
  if [ -n "$skip_value" ]; then skip_value=""; continue; fi
  case "$arg" in
    -h|--help|-V|--version) explicit=1 ;;
    -k|-m|-p|-c|-o|-r|--tb|--maxfail|--durations|--timeout|--basetemp|--rootdir|--confcutdir|\
    --junitxml|--junit-xml|--deselect|--ignore|--ignore-glob|--log-file|--log-level) skip_value=1 ;;
    -*) ;;
    *) if [ -e "${arg%%::*}" ]; then explicit=1; fi ;;
  esac
done
if [ -n "$explicit" ]; then
  exec .venv/bin/python -m pytest "$@"
fi

# pytest's exit 5 = nothing collected (e.g. a -k that only matches tests of the other tier)
echo "test: unit tier (tests/unit)"
unit=0
.venv/bin/python -m pytest tests/unit "$@" || unit=$?
if [ "$unit" -ne 0 ] && [ "$unit" -ne 5 ]; then
  echo "test: the unit tier failed (exit $unit); integration tests not run" >&2
  exit "$unit"
fi
echo "test: integration tests"
integration=0
.venv/bin/python -m pytest --ignore=tests/unit "$@" || integration=$?
if [ "$integration" -eq 5 ] && [ "$unit" -eq 0 ]; then
  exit 0
fi
exit "$integration"
