#!/usr/bin/env bash
# /opt/coderz/backup/backup.sh — installed by `coderz-backup install`; runs `coderz-backup backup`.
#   bash backup.sh                         full backup, keep 7 days
#   bash backup.sh --dest /mnt/external-drive
#   bash backup.sh --keep 14               (0 = keep forever)
#   KEEP_DAYS=30 bash backup.sh
# Config: $CODERZ_BACKUP_CONFIG, else the coderz-backup.toml next to this script.
set -euo pipefail
config=@CONFIG@   # the coderz-backup.toml installed next to this script
export CODERZ_BACKUP_CONFIG="${CODERZ_BACKUP_CONFIG:-$config}"
coderz_backup=(@COMMAND@)   # the coderz-backup that ran `install`
if ! [ -x "${coderz_backup[0]}" ]; then
  if command -v coderz-backup >/dev/null; then
    coderz_backup=(coderz-backup)
  else
    echo "coderz-backup is not installed at ${coderz_backup[0]} (nor on PATH): reinstall it, then run \`coderz-backup install\` again" >&2
    exit 2
  fi
fi
exec "${coderz_backup[@]}" backup "$@"
