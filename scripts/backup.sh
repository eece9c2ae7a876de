#!/usr/bin/env bash
# Drop-in for /opt/coderz/backup/backup.sh: runs `coderz-backup backup` with the same flags.
#   bash backup.sh                         full backup, keep 7 days
#   bash backup.sh --dest /mnt/external-drive
#   bash backup.sh --keep 14               (0 = keep forever)
#   KEEP_DAYS=30 bash backup.sh
set -euo pipefail
here="$(cd "$(dirname "$(readlink -f "$0")")" && pwd)"
if command -v coderz-backup >/dev/null; then
  exec coderz-backup backup "$@"
elif [ -x "$here/../.venv/bin/coderz-backup" ]; then
  exec "$here/../.venv/bin/coderz-backup" backup "$@"
else
  echo "coderz-backup is not installed: run scripts/setup.sh or pip install coderz-backup" >&2
  exit 2
fi
