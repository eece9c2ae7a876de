"""The contract every off-site target kind implements (restic's backend shape).

A target stores files under relative paths (``<snapshot>/<file>``) and answers a few small
calls; everything else — which files in which order, what makes a copy complete, what is
checked — is the same for every kind and lives in :mod:`coderz_backup.offsite.copy`:

- :meth:`Target.put` stores one file from a local path and checks what arrived (a re-read,
  the store's own checksum); it never leaves a half-written file under the final name.
- :meth:`Target.open` reads one file back; :meth:`Target.names` lists the names directly
  under a folder; :meth:`Target.exists`; :meth:`Target.remove` deletes a snapshot's folder.
- optional: ``lock_status(rel) -> str | None`` says when file ``rel`` may not be deleted yet
  (S3 Object Lock: ``"under Object Lock until …"``); retention keeps such a snapshot
  (:mod:`coderz_backup.offsite.retention`). A kind without it has no locks.

Every failure is an :class:`~coderz_backup.errors.OffsiteError` whose message says what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
import time
from pathlib import Path
from typing import BinaryIO, ClassVar, Protocol

from pydantic import Field, SecretStr, field_validator

from ..schema import _Model

__all__ = ["Target", "TargetBase", "Throttle", "file_digest"]


class TargetBase(_Model):
    """Keys every ``[offsite.<name>]`` table has."""

    kind: str
    enabled: bool = Field(True, description="copy each finished snapshot to this target")
    timeout_s: float = Field(3600.0, gt=0, description="give up on one copy attempt after this long")
    parallel_files: int = Field(4, ge=1, le=32, description="files of a snapshot sent at the same time")
    bwlimit_kbps: int | None = Field(None, ge=1, description="limit what is sent to this target to this many "
                                     "KiB/s in all (unset: no limit)")
    encrypt_to: list[str] = Field(default_factory=list, description="age recipients (age1… or ssh-ed25519 "
                                  "public keys): every file is encrypted to them before it leaves the host")
    identity: SecretStr | None = Field(None, description="the age identity that reads encrypted copies back "
                                       "(fetch, verify --from, restore --from): a file of AGE-SECRET-KEY-1… "
                                       "lines, env:NAME or prefect-secret:NAME; --identity overrides it")

    @field_validator("encrypt_to")
    @classmethod
    def _recipients(cls, v: list[str]) -> list[str]:
        from .crypt import parse_recipient

        for r in v:
            parse_recipient(r)
        return [r.strip() for r in v]

    def recipients(self) -> list:
        """The parsed ``encrypt_to`` recipients ([] = copies are not encrypted)."""
        from .crypt import parse_recipient

        return [parse_recipient(r) for r in self.encrypt_to]
    keep_days: int | None = Field(None, ge=0, description="retention on this target: keep this many days "
                                  "(0 = forever; unset: the local keep_days)")
    keep_daily: int | None = Field(None, ge=0, description="retention on this target: also keep the newest usable "
                                   "snapshot of each of the last N days (unset: the local keep_daily)")
    keep_weekly: int | None = Field(None, ge=0, description="likewise for ISO weeks (unset: the local keep_weekly)")
    keep_monthly: int | None = Field(None, ge=0, description="likewise for months (unset: the local keep_monthly)")


class Target(Protocol):
    """One off-site target (see the module docstring)."""

    kind: ClassVar[str]
    config_model: ClassVar[type[TargetBase]]
    name: str

    def describe(self) -> str:
        """Where the copies go, in words (no secrets)."""

    def put(self, rel: str, source: Path, *, size: int, sha256: str) -> None:
        """Store ``source`` as ``rel`` and check what arrived (size and sha256)."""

    def open(self, rel: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """Read ``rel`` back (OffsiteError when it is not there)."""

    def names(self, rel: str = "") -> list[str]:
        """The names directly under folder ``rel`` ("" = the target's root); [] when there is none."""

    def exists(self, rel: str) -> bool:
        """True when file ``rel`` is there."""

    def remove(self, rel: str) -> None:
        """Delete the folder ``rel`` and everything in it (missing is fine)."""


def file_digest(path: Path) -> tuple[int, str]:
    """Size and sha256 of a local file, streamed."""
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
        return fh.tell(), digest


class Throttle:
    """A bandwidth limit shared by every transfer of one target (``bwlimit_kbps``): each
    :meth:`consume` books its bytes on one timeline and sleeps until they are due, so parallel
    files and parts together stay under the limit (a burst of a quarter second is let through)."""

    BURST_S = 0.25

    def __init__(self, kbps: int | None):
        self.rate = kbps * 1024 if kbps else None
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def consume(self, n: int) -> None:
        if not self.rate or n <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._next = max(self._next, now - self.BURST_S) + n / self.rate
            delay = self._next - now - self.BURST_S
        if delay > 0:
            time.sleep(delay)

    def wrap(self, fh):
        """``fh`` (a readable binary file) with its reads throttled; seek/tell pass through."""
        return fh if not self.rate else _Throttled(fh, self)


class _Throttled(io.RawIOBase):
    def __init__(self, fh, throttle: Throttle):
        self._fh, self._t = fh, throttle

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._fh.seekable()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self._t.consume(len(data))
        return data

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)
