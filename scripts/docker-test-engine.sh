#!/usr/bin/env bash
# The test suite's private Docker Engine (never pulls; no bridge; own data root and socket).
#   bash scripts/docker-test-engine.sh install   apt-install docker.io + debootstrap + docker-compose when missing (root)
#   bash scripts/docker-test-engine.sh start     start (or reuse) dockerd on unix:///run/coderz-test-docker/docker.sock
#   bash scripts/docker-test-engine.sh image     build the base image coderz-test-base:<hash> if not cached
#   bash scripts/docker-test-engine.sh status|stop|clean
# The pytest fixtures (tests/docker_engine.py) do start/image/stop by themselves; scripts/test.sh
# only runs `install`.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-status}" in
  install)
    need=()
    command -v dockerd >/dev/null && command -v containerd >/dev/null && command -v runc >/dev/null || need+=(docker.io)
    command -v debootstrap >/dev/null || need+=(debootstrap)
    # the worker's compose file (deployments/worker/compose.yaml) in tests/test_worker_container.py;
    # Debian 12 packages Compose v1 only (1.29.2, `docker-compose`), not the v2 plugin
    command -v docker-compose >/dev/null || need+=(docker-compose)
    if [ ${#need[@]} -gt 0 ]; then
      if [ "$(id -u)" != 0 ]; then
        echo "docker-test-engine: ${need[*]} missing and not root; the Docker tests will be skipped" >&2
        exit 0
      fi
      echo "docker-test-engine: installing ${need[*]}"
      export DEBIAN_FRONTEND=noninteractive
      # Do not let the package start a system Docker (it would add docker0 and iptables rules):
      # the tests run their own engine. policy-rc.d exit 101 = "action forbidden".
      if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
      fi
      apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq "${need[@]}"; }
    fi
    ;;
  start|stop|status|image|clean)
    exec .venv/bin/python tests/docker_engine.py "$1"
    ;;
  *)
    sed -n '2,8p' "$0" >&2
    exit 2
    ;;
esac
