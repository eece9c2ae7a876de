"""Live progress of a run, for whoever watches it in the same process (the CLI's terminal output).

The flows publish events (``started``, ``attempt``, ``done``, ``finished``, ``restore-plan`` …)
with :func:`emit`; a listener registered with :func:`add_listener` gets ``(event, data)``.
Deployments run without a listener. A broken listener never breaks a run.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

__all__ = ["add_listener", "emit", "remove_listener"]

log = logging.getLogger("coderz_backup.flow")

Listener = Callable[[str, dict], None]
_listeners: list[Listener] = []
_lock = threading.Lock()


def add_listener(fn: Listener) -> None:
    with _lock:
        _listeners.append(fn)


def remove_listener(fn: Listener) -> None:
    with _lock:
        if fn in _listeners:
            _listeners.remove(fn)


def emit(event: str, **data: Any) -> None:
    """Tell every listener; exceptions of a listener are logged at debug level and dropped."""
    with _lock:
        listeners = list(_listeners)
    for fn in listeners:
        try:
            fn(event, data)
        except Exception:  # noqa: BLE001 - a broken progress display never breaks a backup
            log.debug("progress listener failed", exc_info=True)
