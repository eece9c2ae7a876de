"""The post-snapshot stage: what runs once a snapshot is finished (signed, renamed, ``latest`` moved).

Off-site copies (and later drills) plug in here. A stage is a small object::

    class SnapshotStage(Protocol):
        name: str                                    # "offsite-s3", …
        def run(self, snapshot: Path, manifest: dict) -> StageResult: ...

:func:`run_stages` runs the configured stages one after the other on the finished folder. A
stage never changes the snapshot's artifacts and never fails the snapshot: an exception
becomes a ``failed`` result with its message. The results are recorded in the manifest under
``post_snapshot`` — re-signed with :meth:`~coderz_backup.snapshot.SnapshotStore.update_manifest`,
so the snapshot stays authenticated at every instant. Without stages the manifest is left
exactly as it was finished. Plain Python: the flow wraps it in one task.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

from .errors import CoderzBackupError

__all__ = ["SnapshotStage", "StageResult", "run_stages", "stages_for"]

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


def run_stages(stages: Sequence[SnapshotStage], store, folder: Path, manifest: dict, *, signer) -> list[StageResult]:
    """Run ``stages`` on the finished snapshot ``folder``; record their results in its manifest."""
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
    manifest["post_snapshot"] = [r.as_manifest() for r in results]
    store.update_manifest(folder, manifest, signer=signer)
    return results
