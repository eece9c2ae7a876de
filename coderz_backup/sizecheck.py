"""Size checks: is there room before a run, are the sizes plausible after it.

- :func:`preflight` runs before anything is written. It estimates the new snapshot
  from the previous one (``total_bytes`` × ``margin``) and raises
  :class:`~coderz_backup.errors.StoreError` with the numbers when the destination lacks
  the room — so a full disk fails in a second, not after an hour of half-written dumps.
- :func:`check` runs after every service task. An artifact below its minimum size
  fails (an empty dump is never ok); an artifact that shrank by more than
  ``max_shrink`` against the previous ``ok`` snapshot is flagged (a 90 % smaller database
  dump is how silent data loss shows up). Findings go into the manifest, report, mail
  and flow result.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import SizeCheckConfig
from .errors import StoreError
from .report import human_size
from .snapshot import SnapshotInfo, SnapshotStore

__all__ = ["Finding", "preflight", "check", "previous_ok"]


@dataclass
class Finding:
    level: str        # "error" (artifact failed) | "warning" (flagged)
    artifact: str
    message: str

    def as_dict(self) -> dict:
        return asdict(self)


def previous_ok(store: SnapshotStore) -> SnapshotInfo | None:
    """The newest finished snapshot with status ok (the comparison baseline)."""
    return next((s for s in store.list() if s.status == "ok"), None)


def _bytes(value) -> int | None:
    """A byte count from a manifest, or None when it is not one (a hand-edited or foreign manifest)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _previous_any(store: SnapshotStore) -> SnapshotInfo | None:
    return next((s for s in store.list() if isinstance(s.manifest, dict) and _bytes(s.manifest.get("total_bytes"))),
                None)


def preflight(store: SnapshotStore, cfg: SizeCheckConfig) -> dict:
    """Raise StoreError when the destination has no room for another snapshot like the last one."""
    usage = shutil.disk_usage(store.dest)
    prev = _previous_any(store)
    prev_bytes = _bytes(prev.manifest["total_bytes"]) or 0 if prev else 0
    needed = int(prev_bytes * cfg.margin) + cfg.min_free_bytes
    info = {"free_bytes": usage.free, "estimate_bytes": needed, "based_on": prev.name if prev else None}
    if usage.free < needed:
        basis = (f"the previous snapshot {prev.name} took {human_size(prev_bytes)}, ×{cfg.margin:g} margin"
                 if prev else "no previous snapshot")
        extra = f" + {human_size(cfg.min_free_bytes)} kept free" if cfg.min_free_bytes else ""
        raise StoreError(
            f"not enough space in {store.dest}: {human_size(usage.free)} free, about "
            f"{human_size(needed)} needed ({basis}{extra}); nothing was written — free space, lower "
            f"--keep, or choose another --dest"
        )
    return info


def check(results: list, snapshot_dir: Path, min_bytes: dict[str, int], cfg: SizeCheckConfig,
          previous: SnapshotInfo | None) -> tuple[list, list[Finding]]:
    """Check ``results`` (ArtifactResult list); failing ones are marked failed. Returns (results, findings)."""
    findings: list[Finding] = []
    before = {}
    if previous and isinstance(previous.manifest, dict) and isinstance(previous.manifest.get("artifacts"), list):
        before = {a["path"]: a for a in previous.manifest["artifacts"]
                  if isinstance(a, dict) and a.get("status") == "ok" and isinstance(a.get("path"), str)
                  and _bytes(a.get("bytes")) is not None}
    for r in results:
        if r.status != "ok":
            continue
        minimum = min_bytes.get(r.service, 1)
        if r.bytes < minimum:
            msg = f"{r.path} is {r.bytes} bytes, below its minimum of {minimum} bytes"
            r.status, r.error = "failed", f"size check: {msg}"
            findings.append(Finding("error", r.path, msg))
            continue
        old = before.get(r.path)
        if old and old.get("bytes", 0) >= max(cfg.shrink_floor_bytes, 1):
            shrink = 1 - r.bytes / old["bytes"]
            if shrink > cfg.max_shrink:
                findings.append(Finding(
                    "warning", r.path,
                    f"{r.path} is {shrink:.0%} smaller than in {previous.name} "
                    f"({human_size(old['bytes'])} → {human_size(r.bytes)}); check for lost data"))
    return results, findings
