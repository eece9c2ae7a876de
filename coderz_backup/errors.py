"""One exception tree for coderz-backup.

Every error a user can see is one of these. Lower-level errors (subprocess,
psycopg, redis, OSError, pydantic) are mapped into this tree at the boundary
where they happen, with a message that says what failed, why, and what to do::

    CoderzBackupError                 base; ``str(e)`` is the operator message
    ├── ConfigError                   bad config file/flags; lists every problem
    ├── SecretError                   a secret reference cannot be resolved
    ├── StoreError                    destination unusable (missing, not writable)
    │   └── LockHeldError             another run holds the destination lock
    ├── SnapshotNotFoundError         no such snapshot / unsafe snapshot name
    ├── AccessError                   a command or file cannot be reached
    │   └── OrchestratorError         the Prefect API is unreachable, failing or silent
    ├── ArtifactError                 an artifact could not be produced
    │   ├── ProducerError             the producer exited non-zero / timed out
    │   ├── IncompleteArtifactError   empty, truncated or without end marker
    │   └── PartialBackupError        some artifacts of one service written, others failed
    ├── VerifyError                   an artifact on disk fails its checks
    │   └── SignatureError            a snapshot is unsigned, signed by an unknown key, or altered
    ├── RestoreError                  a restore step failed
    ├── OffsiteError                  an off-site target cannot be reached, written or read
    └── RunFailed                     a run finished and reports failures (its flow's Failed state)

Messages never contain secret values: secrets travel in process environments
or library connection objects, never in argv or in text we build.
"""

from __future__ import annotations

__all__ = [
    "CoderzBackupError",
    "ConfigError",
    "SecretError",
    "StoreError",
    "LockHeldError",
    "SnapshotNotFoundError",
    "AccessError",
    "OrchestratorError",
    "ArtifactError",
    "ProducerError",
    "IncompleteArtifactError",
    "VerifyError",
    "RestoreError",
    "PartialBackupError",
    "RunFailed",
    "OffsiteError",
    "SignatureError",
]


class CoderzBackupError(Exception):
    """Base of every error coderz-backup raises on purpose.

    A service backup that fails carries, for the report, what its last attempt achieved —
    set by :func:`~coderz_backup.services.base.backup_each` and the backup task, read by the
    flow (attributes, not constructor arguments, so every subclass keeps its own signature
    and the exception pickles like any other):

    - ``attempts``: how many attempts were made (None: not known);
    - ``results``: the ArtifactResults written (or skipped) by the last attempt;
    - ``failed``: each failed artifact path → its own reason.
    """

    attempts: int | None = None
    results: list = []   # class defaults are never mutated: an instance gets its own values
    failed: dict = {}


class ConfigError(CoderzBackupError):
    """The configuration is invalid. ``problems`` holds every problem found."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


class SecretError(CoderzBackupError):
    """A secret reference (env:NAME, prefect-secret:NAME) cannot be resolved."""


class StoreError(CoderzBackupError):
    """The snapshot destination cannot be used."""


class LockHeldError(StoreError):
    """Another backup run holds the destination lock."""


class SnapshotNotFoundError(CoderzBackupError):
    """The requested snapshot does not exist or its name is not a snapshot name."""


class AccessError(CoderzBackupError):
    """A command, file or container could not be reached."""


class OrchestratorError(AccessError):
    """The Prefect API cannot be used (refused, erroring, silent, or the embedded one did not
    start): the flow cannot run at all."""


class ArtifactError(CoderzBackupError):
    """An artifact could not be produced."""


class ProducerError(ArtifactError):
    """The process producing an artifact failed (non-zero exit, killed, timed out)."""


class IncompleteArtifactError(ArtifactError):
    """The producer finished but its output is empty, truncated or lacks its end marker."""


class PartialBackupError(ArtifactError):
    """Some artifacts of a service were written, others failed (the message says which and why);
    ``results`` and ``failed`` (see :class:`CoderzBackupError`) say which."""


class VerifyError(CoderzBackupError):
    """An artifact on disk does not pass its checks."""


class SignatureError(VerifyError):
    """A snapshot's manifest is not signed by a key this host trusts (or was altered after):
    it is refused before anything in it is looked at."""


class RestoreError(CoderzBackupError):
    """A restore step failed."""


class OffsiteError(CoderzBackupError):
    """An off-site target is unreachable, refuses a write, or holds a damaged or incomplete copy."""


class RunFailed(CoderzBackupError):
    """A backup or restore run finished, and some of it failed (the message says how much).

    The data of the flow's ``Failed`` state: Prefect resolves a failed state into an exception,
    so the summary travels inside one. ``summary`` is the run's summary dict.
    """

    def __init__(self, message: str, summary: dict | None = None):
        super().__init__(message)
        self.summary = summary or {}

    def __reduce__(self):
        return (type(self), (str(self), self.summary))
