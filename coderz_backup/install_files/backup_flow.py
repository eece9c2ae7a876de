"""The Prefect flow of the Coderz Stack's daily backup (installed by ``coderz-backup install``).

``prefect.yaml`` next to this file deploys it as ``coderz-backup/coderz-backup-daily``
(03:00 UTC). The flow itself ships in the installed coderz-backup package; this file only
names it, so the worker needs that package (``pip install coderz-backup``). It runs every
enabled service of the config as its own task, checks the sizes, writes ``manifest.json`` and
``backup.log`` into the snapshot and sends the ✅ / ⚠️ / 🔴 mail.
Config: ``CODERZ_BACKUP_CONFIG`` in the worker's environment, else
/opt/coderz/backup/coderz-backup.toml.
"""

from coderz_backup.flows.backup import coderz_backup

__all__ = ["coderz_backup"]
