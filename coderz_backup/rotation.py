"""Rotation: keep N days of snapshots, plus grandfather-father-son keeps.

Rules, in order (a snapshot is a folder whose name is a snapshot name):

1. ``keep_days == 0`` keeps everything (the GFS keeps then change nothing).
2. If the run that just finished produced no usable snapshot, nothing is deleted.
3. Only snapshot folders older than ``keep_days`` days are candidates; anything else in
   the destination (stray folders, files, in-progress folders, ``latest``) is never touched.
4. Never deleted: ``latest``'s target, the newest snapshot with status ``ok``, the
   snapshot the current run produced, and for every artifact (e.g. ``postgres-prefect.sql.gz``)
   the newest snapshot holding an ok copy of it — so a service that has failed for longer
   than ``keep_days`` (or runs with ``--only`` that move ``latest``) never costs its last
   good copy.
5. GFS keeps (``keep_daily``, ``keep_weekly``, ``keep_monthly``; 0 = unused), like restic's
   ``forget --keep-daily``: the newest *usable* snapshot of each of the last N calendar days
   (UTC) that have one is kept, likewise ISO weeks (``2026-W53``) and calendar months.
   Usable means status ``ok``; a ``partial`` one stands for a period only when that period
   has no ok one. Failed (or unreadable) snapshots never count, so they never use up a day.

The same :func:`plan` decides for the local destination and for every off-site target
(:mod:`coderz_backup.offsite.retention`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Callable

from .snapshot import DELETING_PREFIX, SnapshotInfo, SnapshotStore, fsync_dir

__all__ = ["plan", "rotate", "RotationPlan", "gfs_keeps", "describe_policy"]

log = logging.getLogger(__name__)


@dataclass
class RotationPlan:
    delete: list[str]
    keep_reasons: dict[str, str]


def plan(snapshots: list[SnapshotInfo], *, keep_days: int, now: dt.datetime,
         latest: str | None, current: str | None, current_usable: bool,
         keep_daily: int = 0, keep_weekly: int = 0, keep_monthly: int = 0,
         latest_reason: str = "latest") -> RotationPlan:
    """Decide which snapshots to delete (pure function; see the module docstring).

    ``keep_reasons`` says why each snapshot older than ``keep_days`` stays, e.g.
    ``"newest ok snapshot"``, ``"daily 2026-11-30, weekly 2026-W48"``, ``"monthly 2026-10"``."""
    if keep_days <= 0:
        return RotationPlan([], {})
    if not current_usable:
        return RotationPlan([], {})
    cutoff = now - dt.timedelta(days=keep_days)
    newest_ok = next((s.name for s in sorted(snapshots, key=lambda s: s.name, reverse=True)
                      if s.status == "ok"), None)
    protected = {latest: latest_reason, newest_ok: "newest ok snapshot", current: "this run"}
    for path, name in newest_copies(snapshots).items():
        protected.setdefault(name, f"newest ok copy of {path}")
    gfs = gfs_keeps(snapshots, keep_daily=keep_daily, keep_weekly=keep_weekly, keep_monthly=keep_monthly)
    delete, reasons = [], {}
    for snap in snapshots:
        if snap.when >= cutoff:
            continue
        why = ([protected[snap.name]] if snap.name in protected else []) + gfs.get(snap.name, [])
        if why:
            reasons[snap.name] = ", ".join(why)
            continue
        delete.append(snap.name)
    return RotationPlan(sorted(delete), reasons)


#: GFS period of a snapshot time (UTC): its calendar day, ISO week, calendar month
PERIODS: tuple[tuple[str, Callable[[dt.datetime], str]], ...] = (
    ("daily", lambda t: t.strftime("%Y-%m-%d")),
    ("weekly", lambda t: "{0}-W{1:02d}".format(*t.isocalendar())),
    ("monthly", lambda t: t.strftime("%Y-%m")),
)


def gfs_keeps(snapshots: list[SnapshotInfo], *, keep_daily: int = 0, keep_weekly: int = 0,
              keep_monthly: int = 0) -> dict[str, list[str]]:
    """Snapshot name → its GFS keep reasons (``["daily 2026-11-30", "monthly 2026-11"]``).

    For each of the last ``keep_daily`` days (UTC) that have a usable snapshot, that day's
    newest ok one (or, when the day has none, its newest partial one); likewise weeks and
    months. Snapshots with any other status never count."""
    counts = {"daily": keep_daily, "weekly": keep_weekly, "monthly": keep_monthly}
    usable = [s for s in snapshots if s.status in ("ok", "partial")]
    out: dict[str, list[str]] = {}
    for kind, period_of in PERIODS:
        n = counts[kind]
        if n <= 0:
            continue
        best: dict[str, SnapshotInfo] = {}
        for snap in usable:
            key = period_of(snap.when)
            have = best.get(key)
            # ok beats partial; among equals, the newest
            if have is None or (snap.status == "ok", snap.name) > (have.status == "ok", have.name):
                best[key] = snap
        for key in sorted(best, reverse=True)[:n]:
            out.setdefault(best[key].name, []).append(f"{kind} {key}")
    return out


def describe_policy(keep_days: int, keep_daily: int = 0, keep_weekly: int = 0, keep_monthly: int = 0) -> str:
    """The retention in words: ``"7 days"``, ``"7 days + 7 daily, 4 weekly, 12 monthly"``, ``"forever"``."""
    if keep_days <= 0:
        return "forever"
    gfs = [f"{n} {kind}" for kind, n in (("daily", keep_daily), ("weekly", keep_weekly), ("monthly", keep_monthly))
           if n > 0]
    return f"{keep_days} days" + (f" + {', '.join(gfs)}" if gfs else "")


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
           now: dt.datetime | None = None, keep_daily: int = 0, keep_weekly: int = 0,
           keep_monthly: int = 0) -> list[str]:
    """Apply :func:`plan` to ``store``; returns the names deleted (and logs them)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    if keep_days <= 0:
        log.info("rotation: keep 0 = keep forever, nothing deleted")
        return []
    if not current_usable:
        log.warning("rotation skipped: this run produced no usable snapshot, nothing deleted")
        return []
    p = plan(store.list(), keep_days=keep_days, now=now, latest=store.latest_name(),
             current=current, current_usable=current_usable, keep_daily=keep_daily,
             keep_weekly=keep_weekly, keep_monthly=keep_monthly)
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
