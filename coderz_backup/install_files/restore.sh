#!/usr/bin/env bash
# /opt/coderz/backup/restore.sh — installed by `coderz-backup install`; runs `coderz-backup restore`.
#   bash restore.sh --list                     list available snapshots
#   bash restore.sh                            restore latest (asks you to type its name)
#   bash restore.sh 2026-03-06_03-00-00        restore a specific snapshot
# Restore overwrites current data; you are asked to confirm before anything is changed.
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
exec "${coderz_backup[@]}" restore "$@"
