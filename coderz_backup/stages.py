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

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

from .errors import CoderzBackupError
from .snapshot import read_manifest_bytes, write_bytes_atomic

__all__ = ["RECORD", "SnapshotStage", "StageResult", "read_record", "run_stages", "stages_for"]

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

    def as_manifest(self) -> dict:
        d = asdict(self)
        d["duration_s"] = round(self.duration_s, 3)
        return d


class SnapshotStage(Protocol):
    """One step after a snapshot is finished (see the module docstring)."""

    name: str

    def run(self, snapshot: Path, manifest: dict) -> StageResult: ...


def stages_for(cfg) -> list[SnapshotStage]:
    """The stages a config asks for, in order (none yet: off-site targets add theirs here)."""
    return []


def run_stages(stages: Sequence[SnapshotStage], folder: Path, manifest: dict) -> list[StageResult]:
    """Run ``stages`` on the finished snapshot ``folder``; record their results beside its manifest."""
    if not stages:
        return []
    results: list[StageResult] = []
    for stage in stages:
        started = time.monotonic()
        try:
            result = stage.run(folder, manifest)
        except CoderzBackupError as exc:
            result = StageResult(stage.name, "failed", str(exc))
        except Exception as exc:  # noqa: BLE001 - a stage never takes the finished snapshot down
            log.exception("post-snapshot stage %s failed unexpectedly", stage.name)
            result = StageResult(stage.name, "failed", f"{type(exc).__name__}: {exc}")
        result.duration_s = time.monotonic() - started
        (log.info if result.status != "failed" else log.error)("post-snapshot %s: %s %s", result.stage,
                                                                result.status, result.detail)
        results.append(result)
    signed = read_manifest_bytes(folder) or b""
    record = {"snapshot": folder.name, "manifest_sha256": hashlib.sha256(signed).hexdigest(),
              "stages": [r.as_manifest() for r in results]}
    write_bytes_atomic(folder / RECORD, (json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode())
    return results


def read_record(folder: Path) -> dict | None:
    """The post-snapshot record of ``folder`` when it belongs to its current manifest, else None
    (no stage ran, or the record is unreadable or left from another manifest)."""
    try:
        fd = os.open(folder / RECORD, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(1 << 20)
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    signed = read_manifest_bytes(folder) or b""
    if not isinstance(record, dict) or record.get("manifest_sha256") != hashlib.sha256(signed).hexdigest():
        return None
    return record
