"""The containers that depend on a service being restored (its ``stop_containers``).

A restore stops the running ones among them first and starts them again afterwards, so an app
never writes into a database while it is replaced. Plain Python; the restore flow calls it.
"""

from __future__ import annotations

import logging

from .access import container_access
from .errors import CoderzBackupError

__all__ = ["start_again", "stop_running"]

log = logging.getLogger("coderz_backup.flow")


def stop_running(names: list[str], stopped: list[str]) -> None:
    """Stop the running ones among ``names``, appending each to ``stopped`` as it goes (so the
    caller starts them again even when a later one fails to stop)."""
    for name in names:
        acc = container_access(name)
        try:
            running = acc.is_running()
        except CoderzBackupError as exc:
            log.warning("container %s: %s (not stopped)", name, exc)
            continue
        if running:
            acc.stop_service(timeout=120)
            log.info("container %s stopped for the restore", name)
            stopped.append(name)


def start_again(names: list[str]) -> list[str]:
    """Start ``names`` again; return the problems (empty when all run again)."""
    problems = []
    for name in names:
        try:
            container_access(name).start_service(timeout=180)
            log.info("container %s started again", name)
        except CoderzBackupError as exc:
            log.error("container %s did not start again: %s", name, exc)
            problems.append(f"{name}: {exc}")
    return problems
