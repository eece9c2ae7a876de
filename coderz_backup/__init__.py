"""coderz-backup: Prefect-native backup and restore for the Coderz Stack.

Public surface: the flow :func:`coderz_backup.flows.backup.coderz_backup`, config
loading (:mod:`coderz_backup.config`), the snapshot store
(:mod:`coderz_backup.snapshot`) and the exception tree (:mod:`coderz_backup.errors`).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
