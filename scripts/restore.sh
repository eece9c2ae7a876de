#!/usr/bin/env bash
# Drop-in for /opt/coderz/backup/restore.sh: runs `coderz-backup restore` with the same arguments.
#   bash restore.sh --list                     list available snapshots
#   bash restore.sh                            restore latest (asks you to type its name)
#   bash restore.sh 2026-03-06_03-00-00        restore a specific snapshot
# Restore overwrites current data; you are asked to confirm before anything is changed.
set -euo pipefail
here="$(cd "$(dirname "$(readlink -f "$0")")" && pwd)"
if command -v coderz-backup >/dev/null; then
  exec coderz-backup restore "$@"
elif [ -x "$here/../.venv/bin/coderz-backup" ]; then
  exec "$here/../.venv/bin/coderz-backup" restore "$@"
else
  echo "coderz-backup is not installed: run scripts/setup.sh or pip install coderz-backup" >&2
  exit 2
fi
