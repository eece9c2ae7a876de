"""The post-snapshot stage: what runs once a snapshot is finished (signed, renamed, ``latest`` moved).

Off-site copies (and later drills) plug in here. A stage is a small object::

    class SnapshotStage(Protocol):
        name: str                                    # "offsite-s3", …
        def run(self, snapshot: Path, manifest: dict) -> StageResult: ...

:func:`run_stages` runs the configured stages one after the other on the finished folder. A
stage never changes the snapshot's files and never fails the snapshot: an exception becomes a
``failed`` result with its message. The results are recorded with the snapshot in
``post-snapshot.json`` beside the manifest (:data:`RECORD`): the signed manifest stays exactly
as it was signed — so a copy elsewhere carries the same manifest — and the record names the
manifest it belongs to by its sha256. Without stages nothing is written. Plain Python: the
flow wraps it in one task.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

from .errors import CoderzBackupError
from .snapshot import read_bound_record, write_bound_record

__all__ = ["RECORD", "SnapshotStage", "StageResult", "failed_result", "read_record", "run_stage", "run_stages",
           "write_record"]

#: the post-snapshot record beside ``manifest.json``
RECORD = "post-snapshot.json"

log = logging.getLogger("coderz_backup")


@dataclass
class StageResult:
    """The outcome of one stage, as the manifest records it."""

    stage: str
    status: str = "ok"        # ok | failed | skipped
    detail: str = ""
    duration_s: float = 0.0
    details: dict = field(default_factory=dict)
    attempts: int = 1

    def as_manifest(self) -> dict:
        d = asdict(self)
        d["duration_s"] = round(self.duration_s, 3)
        return d


class SnapshotStage(Protocol):
    """One step after a snapshot is finished (see the module docstring)."""

    name: str

    def run(self, snapshot: Path, manifest: dict) -> StageResult: ...


def run_stages(stages: Sequence[SnapshotStage], folder: Path, manifest: dict) -> list[StageResult]:
    """Run ``stages`` on the finished snapshot ``folder``; record their results beside its manifest."""
    if not stages:
        return []
    results = [run_stage(stage, folder, manifest) for stage in stages]
    write_record(folder, results)
    return results


def failed_result(stage: str, exc: BaseException | None, message: str = "") -> StageResult:
    """The result of a stage that raised (our errors by their message, anything else with its type)."""
    if isinstance(exc, CoderzBackupError):
        return StageResult(stage, "failed", str(exc))
    return StageResult(stage, "failed", f"{type(exc).__name__}: {exc}" if exc else message or "failed")


def run_stage(stage: SnapshotStage, folder: Path, manifest: dict) -> StageResult:
    """One stage, its exception turned into a ``failed`` result (never raises for the stage)."""
    started = time.monotonic()
    try:
        result = stage.run(folder, manifest)
    except Exception as exc:  # noqa: BLE001 - a stage never takes the finished snapshot down
        if not isinstance(exc, CoderzBackupError):
            log.exception("post-snapshot stage %s failed unexpectedly", stage.name)
        result = failed_result(stage.name, exc)
    result.duration_s = time.monotonic() - started
    return result


def write_record(folder: Path, results: Sequence[StageResult]) -> None:
    """Record ``results`` in ``post-snapshot.json`` beside the manifest of ``folder`` (logged too)."""
    for r in results:
        (log.info if r.status != "failed" else log.error)("post-snapshot %s: %s — %s", r.stage, r.status, r.detail)
    write_bound_record(folder, RECORD, {"stages": [r.as_manifest() for r in results]})


def read_record(folder: Path) -> dict | None:
    """The post-snapshot record of ``folder`` when it belongs to its current manifest, else None
    (no stage ran, or the record is unreadable or left from another manifest)."""
    return read_bound_record(folder, RECORD)
