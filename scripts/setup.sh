#!/usr/bin/env bash
# Set up coderz-backup on a Debian machine (as root): system packages + .venv.
# Idempotent: installs only what is missing. Used by demo.sh, test.sh and CI.
#   SETUP_EXTRAS=test  also installs the test dependencies (default: test)
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v pg_dump >/dev/null && [ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15 postgresql-client-15)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-check-rdb >/dev/null || need+=(redis-tools)
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v prometheus >/dev/null || need+=(prometheus)
command -v prometheus-node-exporter >/dev/null || need+=(prometheus-node-exporter)   # [monitor] textfile, tests/test_monitor.py
command -v prometheus-pushgateway >/dev/null || need+=(prometheus-pushgateway)       # [monitor] pushgateway, tests/test_monitor.py
command -v sqlite3 >/dev/null || need+=(sqlite3)
command -v rsync >/dev/null || need+=(rsync)            # off-site kind "rsync" (rsync over SSH)
command -v ssh >/dev/null || need+=(openssh-client)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${need[@]}"; }
fi

extras="${SETUP_EXTRAS-test}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.coderz-installed
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)-$extras"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python dependencies into .venv"
  spec="."; [ -n "$extras" ] && spec=".[$extras]"
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e "$spec" 2>&1 \
    | grep -v -e '^WARNING: Location' || true
  .venv/bin/python -c 'import coderz_backup, prefect, isal, psycopg, boto3, pyrage'
  echo "$want" > "$stamp"
fi
