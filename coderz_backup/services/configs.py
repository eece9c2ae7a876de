"""Configuration trees → ``configs.tar.gz``.

Each configured absolute path is stored under its own path without the leading ``/``
(``/opt/coderz/configs/x.yml`` → ``opt/coderz/configs/x.yml``), with modes, owners and
mtimes, streamed through the writer (tar stream mode, never the whole tree in memory).
Excludes are glob patterns matched against each entry's name and its full path.

Restore is path-safe: every member is checked before anything is written (no absolute
paths, no ``..``, no links pointing out of the target, no device files), then the
archive is extracted into the target root (``/`` by default) keeping modes and owners.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import tarfile
from pathlib import Path
from typing import ClassVar

from isal import igzip

from ..access import ARCHIVE_ERRORS, check_member
from ..config import ConfigsConfig
from ..errors import ArtifactError, IncompleteArtifactError, RestoreError, VerifyError
from ..writer import ArtifactWriter
from .base import ArtifactResult, BaseService

__all__ = ["ConfigsService", "check_member"]

log = logging.getLogger(__name__)


class ConfigsService(BaseService):
    kind: ClassVar[str] = "configs"
    config: ConfigsConfig

    @property
    def artifact_path(self) -> str:
        return f"{self.name}.tar.gz"

    def artifacts(self) -> list[str]:
        return [self.artifact_path]

    def _excluded(self, path: str) -> bool:
        base = os.path.basename(path)
        return any(fnmatch.fnmatch(base, pat) or fnmatch.fnmatch(path, pat) for pat in self.config.exclude)

    # -- backup -------------------------------------------------------------
    def backup(self, into: Path) -> list[ArtifactResult]:
        missing = [p for p in self.config.paths if not os.path.lexists(p)]
        if missing:
            raise ArtifactError(f"{self.name}: configured path(s) do not exist: {', '.join(missing)}")
        count = files = excluded = 0

        def _filter(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            nonlocal count, files, excluded
            if self._excluded("/" + info.name):
                excluded += 1
                return None
            count += 1
            files += info.isfile()
            return info

        def _check(ends) -> None:
            if files == 0:
                raise IncompleteArtifactError(f"{self.name}: no files to archive in {', '.join(self.config.paths)} "
                                              f"({count} entries, {excluded} excluded): every file excluded, or "
                                              "the folders are empty")

        with ArtifactWriter.open(into, self.artifact_path, compress=True, check=_check) as w:
            try:
                with tarfile.open(fileobj=w, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                    for path in self.config.paths:
                        # a configured path that is a symlink (/opt/coderz/configs -> a checkout) is
                        # followed: its contents are archived under the configured name, not the link
                        source = os.path.realpath(path) if os.path.islink(path) else path
                        if source != path:
                            log.info("%s: %s is a link to %s; archiving what it points to", self.name, path, source)
                        tar.add(source, arcname=path.lstrip("/"), recursive=True, filter=_filter)
            except OSError as exc:
                what = exc.filename or "a file that changed while it was read"
                raise ArtifactError(f"{self.name}: cannot read {what}: {exc.strerror or exc}") from None
            rec = w.commit()
        log.info("%s: archived %d entries from %s (%d excluded)", self.name, count,
                 ", ".join(self.config.paths), excluded)
        return [ArtifactResult.from_files(self.name, self.kind, self.artifact_path, [rec],
                                          details={"entries": count, "files": files, "excluded": excluded,
                                                   "paths": list(self.config.paths)})]

    # -- verify -------------------------------------------------------------
    def _members(self, artifact: Path, root: str):
        try:
            with igzip.open(artifact, "rb") as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
                links: set[str] = set()
                for member in tar:
                    check_member(member, root, links)
                    if member.isfile():
                        f = tar.extractfile(member)
                        while f and f.read(1 << 20):
                            pass
                    yield member
        except tarfile.FilterError as exc:
            raise VerifyError(f"{artifact.name}: unsafe member: {exc}") from None
        except ARCHIVE_ERRORS as exc:
            raise VerifyError(f"{artifact.name}: archive is damaged ({exc})") from None

    def verify(self, artifact: Path) -> str:
        n = sum(1 for _ in self._members(artifact, "/restore-check"))
        if n == 0:
            raise VerifyError(f"{artifact.name}: archive is empty")
        return f"gzip and tar intact, {n} entries, all paths safe"

    # -- restore ------------------------------------------------------------
    def restore_target(self) -> str:
        root = self.config.restore_root
        where = ", ".join(os.path.join(root, p.lstrip("/")) for p in self.config.paths)
        return f"files in {where} are overwritten with the archived ones (others are left in place)"

    def health(self) -> str:
        root = self.config.restore_root
        missing = [p for p in self.config.paths if not os.path.lexists(os.path.join(root, p.lstrip("/")))]
        if missing:
            raise RestoreError(f"{self.name}: not in place after restore: {', '.join(missing)}")
        return "files in place"

    def restore(self, artifact: Path, *, target: str | Path | None = None, **_: object) -> str:
        """Extract into ``target`` (default: the config's restore_root, ``/``), after checking every member."""
        root = os.path.realpath(target or self.config.restore_root)
        try:
            n = sum(1 for _ in self._members(artifact, root))  # pass 1: nothing written yet
        except VerifyError as exc:
            raise RestoreError(f"{self.name}: refusing to restore, nothing changed: {exc}") from None

        links: set[str] = set()

        def _safe(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
            check_member(member, dest, links)
            return member  # keep modes and owners as archived

        try:
            with igzip.open(artifact, "rb") as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
                tar.extractall(root, numeric_owner=True, filter=_safe)
        except ARCHIVE_ERRORS as exc:
            raise RestoreError(f"{self.name}: extraction into {root} failed: {exc}") from None
        log.info("%s: restored %d entries into %s", self.name, n, root)
        return f"{n} entries restored into {root}"
