"""The missed-run check (plain Python; the flow is :mod:`coderz_backup.flows.missed`, the
automation that starts it is made by :mod:`coderz_backup.setup`).

:func:`newest_ok` is the newest ``ok`` snapshot in the destination whose signature checks out.
A folder anyone could write is not trusted to say "a backup happened": a forged or unsigned
manifest never silences the MISSED mail.
"""

from __future__ import annotations

import datetime as dt
import logging

from .config import Config
from .errors import CoderzBackupError
from .snapshot import SnapshotInfo, SnapshotStore
from .verify import authenticate_snapshot

__all__ = ["newest_ok", "started_at", "within_window"]

log = logging.getLogger("coderz_backup.missed")


def started_at(snap: SnapshotInfo) -> dt.datetime:
    """When the snapshot's run started (its name is the start time, in UTC)."""
    return snap.when.replace(tzinfo=dt.timezone.utc) if snap.when.tzinfo is None else snap.when


def newest_ok(cfg: Config) -> SnapshotInfo | None:
    """The newest authentic ``ok`` snapshot of ``cfg.dest`` (None: there is none)."""
    for snap in SnapshotStore(cfg.dest).list():
        if snap.status != "ok":
            continue
        try:
            authenticate_snapshot(snap, cfg)
        except CoderzBackupError as exc:
            log.warning("not counted as a backup: %s", exc)
            continue
        return snap
    return None


def within_window(snap: SnapshotInfo | None, window_h: float, now: dt.datetime | None = None) -> bool:
    """Did ``snap`` start less than ``window_h`` hours before ``now``?"""
    if snap is None:
        return False
    now = now or dt.datetime.now(dt.timezone.utc)
    return now - started_at(snap) < dt.timedelta(hours=window_h)
