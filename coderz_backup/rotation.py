"""Rotation: keep N days of snapshots.

Rules, in order (a snapshot is a folder whose name is a snapshot name):

1. ``keep_days == 0`` keeps everything.
2. If the run that just finished produced no usable snapshot, nothing is deleted.
3. Only snapshot folders older than ``keep_days`` days are candidates; anything else in
   the destination (stray folders, files, in-progress folders, ``latest``) is never touched.
4. Never deleted: ``latest``'s target, the newest snapshot with status ``ok``, the
   snapshot the current run produced, and for every artifact (e.g. ``postgres-prefect.sql.gz``)
   the newest snapshot holding an ok copy of it — so a service that has failed for longer
   than ``keep_days`` (or runs with ``--only`` that move ``latest``) never costs its last
   good copy.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from dataclasses import dataclass

from .snapshot import DELETING_PREFIX, SnapshotInfo, SnapshotStore, fsync_dir

__all__ = ["plan", "rotate", "RotationPlan"]

log = logging.getLogger(__name__)


@dataclass
class RotationPlan:
    delete: list[str]
    keep_reasons: dict[str, str]


def plan(snapshots: list[SnapshotInfo], *, keep_days: int, now: dt.datetime,
         latest: str | None, current: str | None, current_usable: bool) -> RotationPlan:
    """Decide which snapshots to delete (pure function; see the module docstring)."""
    if keep_days <= 0:
        return RotationPlan([], {})
    if not current_usable:
        return RotationPlan([], {})
    cutoff = now - dt.timedelta(days=keep_days)
    newest_ok = next((s.name for s in sorted(snapshots, key=lambda s: s.name, reverse=True)
                      if s.status == "ok"), None)
    protected = {latest: "latest", newest_ok: "newest ok snapshot", current: "this run"}
    for path, name in newest_copies(snapshots).items():
        protected.setdefault(name, f"newest ok copy of {path}")
    delete, reasons = [], {}
    for snap in snapshots:
        if snap.when >= cutoff:
            continue
        if snap.name in protected:
            reasons[snap.name] = protected[snap.name]
            continue
        delete.append(snap.name)
    return RotationPlan(sorted(delete), reasons)


def newest_copies(snapshots: list[SnapshotInfo]) -> dict[str, str]:
    """Artifact path → name of the newest snapshot whose manifest lists it as ok."""
    out: dict[str, str] = {}
    for snap in sorted(snapshots, key=lambda s: s.name, reverse=True):
        artifacts = (snap.manifest or {}).get("artifacts") if isinstance(snap.manifest, dict) else None
        for a in artifacts if isinstance(artifacts, list) else []:
            if isinstance(a, dict) and a.get("status") == "ok" and isinstance(a.get("path"), str):
                out.setdefault(a["path"], snap.name)
    return out


def rotate(store: SnapshotStore, *, keep_days: int, current: str | None, current_usable: bool,
           now: dt.datetime | None = None) -> list[str]:
    """Apply :func:`plan` to ``store``; returns the names deleted (and logs them)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    if keep_days <= 0:
        log.info("rotation: keep 0 = keep forever, nothing deleted")
        return []
    if not current_usable:
        log.warning("rotation skipped: this run produced no usable snapshot, nothing deleted")
        return []
    p = plan(store.list(), keep_days=keep_days, now=now, latest=store.latest_name(),
             current=current, current_usable=current_usable)
    for name, why in p.keep_reasons.items():
        log.info("rotation: keeping %s although older than %d days (%s)", name, keep_days, why)
    deleted = []
    for name in p.delete:
        path = store.dest / name
        # renamed first, so a deletion cut short never leaves a half snapshot under a snapshot
        # name (the next run's clean-up removes the .deleting- folder)
        doomed = store.dest / f"{DELETING_PREFIX}{name}"
        try:
            os.rename(path, doomed)
            fsync_dir(store.dest)
            shutil.rmtree(doomed)
        except OSError as exc:
            log.error("rotation: could not delete %s: %s", path, exc.strerror)
            continue
        deleted.append(name)
        log.info("rotation: deleted %s (older than %d days)", name, keep_days)
    if not deleted:
        log.info("rotation: nothing older than %d days to delete", keep_days)
    return deleted
