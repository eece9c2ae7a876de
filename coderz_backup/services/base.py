"""The contract every service module implements.

A service is built from its config table (name + typed config) and an
:class:`~coderz_backup.access.Access`. It knows nothing of Prefect.

- :meth:`Service.artifacts` — the artifact paths a backup produces (relative to the
  snapshot folder), known before it runs so a failure can be reported per artifact.
- :meth:`Service.backup` — write the artifacts into a snapshot folder through the
  streaming writer; return one :class:`ArtifactResult` per artifact; raise an
  :class:`~coderz_backup.errors.CoderzBackupError` when it cannot (the flow retries).
- :meth:`Service.verify` — check one artifact on disk; raise VerifyError or return a
  short description of what was checked.
- :meth:`Service.restore` — put an artifact back; raise RestoreError on failure.
- :meth:`Service.restore_target` / :meth:`Service.health` — what a restore overwrites
  (for the plan), and whether the service answers afterwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Protocol, Sequence

from ..access import Precheck, has
from ..errors import ArtifactError, CoderzBackupError, ConfigError, PartialBackupError, SecretError
from ..reader import ArtifactPath
from ..writer import FileRecord

log = logging.getLogger("coderz_backup")

__all__ = ["ArtifactResult", "BaseService", "Service", "backup_each"]


@dataclass
class ArtifactResult:
    """The outcome of one artifact, as it goes into the manifest and report."""

    service: str
    kind: str
    path: str
    status: str = "ok"                 # ok | failed | skipped
    bytes: int = 0
    sha256: str | None = None
    duration_s: float = 0.0
    attempts: int = 1
    error: str | None = None
    files: list[FileRecord] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)   # extra report lines before the file line
    summary: str | None = None   # report line instead of "<path> (<size>)", e.g. "Elasticsearch: 4 indices exported"
    details: dict = field(default_factory=dict)
    #: what the artifact holds, in numbers (rows per table, keys per db, files and bytes …), for a
    #: restore drill to compare with fingerprint_live(); None when it could not be made
    #: (see coderz_backup.fingerprint)
    fingerprint: dict | None = None

    @classmethod
    def from_files(cls, service: str, kind: str, path: str, files: list[FileRecord], **kw) -> "ArtifactResult":
        single = len(files) == 1 and files[0].path == path
        return cls(service=service, kind=kind, path=path, status="ok",
                   bytes=sum(f.bytes for f in files),
                   sha256=files[0].sha256 if single else None,
                   files=[] if single else files, **kw)

    def as_manifest(self) -> dict:
        return {
            "service": self.service,
            "kind": self.kind,
            "path": self.path,
            "status": self.status,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "duration_s": round(self.duration_s, 3),
            "attempts": self.attempts,
            "error": self.error,
            "files": [f.as_manifest() for f in self.files],
            "summary": self.summary,
            "details": self.details,
            "fingerprint": self.fingerprint,
        }


class Service(Protocol):
    """One stateful service of the stack (see the module docstring)."""

    kind: ClassVar[str]
    config_model: ClassVar[type]
    name: str

    def artifacts(self) -> list[str]: ...

    def precheck(self) -> None:
        """Checks before a backup attempt (BaseService: the access's own precheck, if it has one)."""

    def backup(self, into: Path) -> list[ArtifactResult]: ...

    def verify(self, artifact: ArtifactPath | Path) -> str:
        """Check one artifact (read through :mod:`coderz_backup.reader`; a plain path is read as it is)."""

    def restore(self, artifact: ArtifactPath | Path, **options) -> str:
        """Put one artifact back (read through the reader, like :meth:`verify`)."""

    def restore_target(self) -> str:
        """What a restore overwrites, in words (for the restore plan)."""

    def health(self) -> str:
        """Check the service answers after a restore; raise RestoreError if not."""

    def fingerprint_live(self) -> dict:
        """The running instance's fingerprint, in the shape backup() records (for a restore drill;
        :func:`coderz_backup.fingerprint.compare`). NotDrillable when the service cannot be read."""



class BaseService:
    """Shared plumbing for service classes: name, typed config, access, artifact list.

    Subclasses set ``kind`` and ``artifact_names`` (``{name}`` is the service name),
    and implement backup/verify/restore/restore_target/health.
    """

    kind: ClassVar[str]
    #: the kind's config model (declared next to the class, registered in services/__init__.py)
    config_model: ClassVar[type]
    artifact_names: ClassVar[tuple[str, ...]] = ("{name}",)

    def __init__(self, name: str, config, access):
        self.name = name
        self.config = config
        self.access = access

    def artifacts(self) -> list[str]:
        return [a.format(name=self.name) for a in self.artifact_names]

    def fingerprint_live(self) -> dict:
        from ..fingerprint import NotDrillable

        raise NotDrillable(f"{self.name}: a {self.kind} service cannot be fingerprinted live yet (not drillable)")

    def precheck(self) -> None:
        """Before a backup attempt: what the access can check up front (a container exists and
        runs), so a missing one fails with that reason instead of a producer's error."""
        if has(self.access, Precheck):
            self.access.precheck()


def backup_each(service: str, steps: Sequence[tuple[str, Callable[[], ArtifactResult]]]) -> list[ArtifactResult]:
    """Produce a service's artifacts independently: one failing does not cost the others.

    Each step writes one artifact and cleans up after itself when it fails. All written →
    the results. Some failed → :class:`PartialBackupError` carrying the written ones (the
    flow retries the service and, after the last attempt, keeps what was written). Nothing
    written → the error itself (a config or secret problem first: retrying cannot fix it).
    Either error carries ``results`` (what was written or skipped) and ``failed`` (each
    failed artifact's own reason) for the report. Anything but a CoderzBackupError propagates at once.
    """
    done: list[ArtifactResult] = []
    failed: list[tuple[str, CoderzBackupError]] = []
    for path, step in steps:
        try:
            done.append(step())
        except CoderzBackupError as exc:
            if len(steps) > 1:
                log.error("%s: %s failed: %s", service, path, exc)
            failed.append((path, exc))
    if not failed:
        return done
    per_path = {p: str(e) for p, e in failed}
    if not any(r.status == "ok" for r in done):
        fatal = [e for _, e in failed if isinstance(e, (ConfigError, SecretError))]
        err: CoderzBackupError = (fatal or [failed[0][1]])[0] if fatal or len(failed) == 1 else \
            ArtifactError("; ".join(f"{p}: {e}" for p, e in failed))
        err.results = list(done)    # skipped ones stay skipped
        err.failed = per_path       # each artifact's own reason, for the report
        raise err
    partial = PartialBackupError("; ".join(f"{p} failed: {e}" for p, e in failed)
                                 + " (written: " + ", ".join(r.path for r in done if r.status == "ok") + ")")
    partial.results = list(done)
    partial.failed = per_path
    raise partial
