"""Configuration trees → ``configs.tar.gz``.

Each configured absolute path is stored under its own path without the leading ``/``
(``/opt/coderz/configs/x.yml`` → ``opt/coderz/configs/x.yml``), with modes, owners and
mtimes, streamed through the writer (tar stream mode, never the whole tree in memory).
Excludes are glob patterns matched against each entry's name and its full path.

Restore is confined. One member check, the same in ``verify`` and both restore passes, that
depends only on the archive and the configured ``paths`` (:meth:`ConfigsService._members`):
every member lies under one of the configured paths, inside a folder the archive itself
created before; no absolute names, no ``..``, no device files; a symlink points (as text,
in archive coordinates) inside the same configured path; a hard link only to a regular file
the archive holds earlier; nothing passes through or replaces a symlink of the archive. So a
snapshot that verifies also restores. Restore checks every member first (pass 1, also
against what is on disk: a file where a folder is, a configured path that links outside the
restore root), and only then extracts into ``restore_root`` (``/`` by default) keeping modes
and owners, never writing through what is already there: an existing symlink or file at a
member's place is removed first (a hard link on disk to a file elsewhere is never written
into), a configured path that is itself a link on this host is left as the host has it.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from ..tarfile_compat import tarfile
from pathlib import Path
from typing import ClassVar, Literal


from pydantic import Field, field_validator

from ..access import ARCHIVE_ERRORS, check_member, tar_writer
from ..fingerprint import TarCounter, tree_fingerprint
from ..schema import ServiceBase
from ..errors import ArtifactError, IncompleteArtifactError, RestoreError, VerifyError
from ..reader import ArtifactPath, as_artifact
from ..snapshot import stores_around
from ..writer import ArtifactWriter
from .base import ArtifactResult, BaseService

__all__ = ["ConfigsService", "check_member"]

log = logging.getLogger(__name__)



class ConfigsConfig(ServiceBase):
    """A tar of configuration trees (configs + compose files)."""

    kind: Literal["configs"]
    paths: list[str] = Field(default_factory=lambda: ["/opt/coderz/configs"], min_length=1, description="files/folders to archive")
    exclude: list[str] = Field(default_factory=list, description="glob patterns (matched on each path's name and its full path) to leave out")
    restore_root: str = Field("/", description="restore extracts the archived absolute paths under this root")
    section: ClassVar[str] = "Configs + Compose"
    default_min_bytes: ClassVar[int] = 64
    order: ClassVar[int] = 70

    @field_validator("paths")
    @classmethod
    def _absolute(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if not p.startswith("/")]
        if bad:
            raise ValueError(f"paths must be absolute: {', '.join(bad)}")
        return v


class ConfigsService(BaseService):
    kind: ClassVar[str] = "configs"
    config_model: ClassVar[type[ConfigsConfig]] = ConfigsConfig
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
        """A gzip tar of the configured paths (members relative to ``/``, owners and modes kept)."""
        missing = [p for p in self.config.paths if not os.path.lexists(p)]
        if missing:
            raise ArtifactError(f"{self.name}: configured path(s) do not exist: {', '.join(missing)}")
        count = files = excluded = 0
        own = self._own_stores(into)

        def _filter(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            nonlocal count, files, excluded
            if self._excluded("/" + info.name) or any(info.name == o or info.name.startswith(o + "/") for o in own):
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

        counter = TarCounter()   # files and bytes as the tar streams into the writer (read-only)
        counter.what = f"{self.name}: fingerprint"
        with ArtifactWriter.open(into, self.artifact_path, check=_check, observe=counter.observe) as w:
            try:
                with tar_writer(w) as tar:
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
                                                   "paths": list(self.config.paths)},
                                          fingerprint=counter.result())]

    # -- fingerprint (restore drills) ----------------------------------------
    def fingerprint_live(self, target: str | Path | None = None) -> dict:
        """``files``/``bytes`` (and dirs, symlinks) of the configured paths under ``target`` (default:
        restore_root), counted as the tarball counts them; excluded names are left out the same way."""
        root = os.path.realpath(target or self.config.restore_root)

        def _skip(p: str) -> bool:
            return self._excluded("/" + os.path.relpath(p, root) if root != "/" else p)

        return tree_fingerprint([os.path.join(root, p.lstrip("/")) for p in self.config.paths], skip=_skip)

    def _own_stores(self, into: Path) -> list[str]:
        """Archive names of the snapshot destination(s) when they lie inside a configured path:
        a configs tree holding the backups would take in every earlier snapshot and tonight's
        half-written dump, and grow each night. They are left out, and the log says so."""
        out = []
        for store in stores_around(into):
            real = os.path.realpath(store)
            for path in self.config.paths:
                base = os.path.realpath(path)
                if real == base or real.startswith(base.rstrip("/") + "/"):
                    arc = (path.rstrip("/") + real[len(base):]).lstrip("/")
                    log.warning("%s: the snapshot destination %s is inside the configured path %s; it is left "
                                "out of %s", self.name, store, path, self.artifact_path)
                    out.append(arc)
        return out

    # -- the one member check ------------------------------------------------
    def _roots(self) -> list[str]:
        """The configured paths in archive coordinates (no leading /)."""
        return [os.path.normpath(p).lstrip("/") for p in self.config.paths]

    def _members(self, artifact: ArtifactPath):
        """Every member of ``artifact``, checked (VerifyError at the first unsafe one)."""
        check = MemberCheck(self._roots())
        try:
            with as_artifact(artifact).open() as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
                for member in tar:
                    check(member)
                    if member.isfile():
                        f = tar.extractfile(member)
                        while f and f.read(1 << 20):
                            pass
                    yield member
        except tarfile.FilterError as exc:
            raise VerifyError(f"{artifact.name}: unsafe member: {exc}") from None
        except ARCHIVE_ERRORS as exc:
            raise VerifyError(f"{artifact.name}: archive is damaged ({exc})") from None

    def verify(self, artifact: ArtifactPath | Path) -> str:
        artifact = as_artifact(artifact)
        n = sum(1 for _ in self._members(artifact))
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

    def restore(self, artifact: ArtifactPath | Path, *, target: str | Path | None = None, **_: object) -> str:
        """Extract into ``target`` (default: the config's restore_root, ``/``), after checking every member."""
        artifact = as_artifact(artifact)
        root = os.path.realpath(target or self.config.restore_root)
        roots = {os.path.join(root, r) for r in self._roots()}
        try:
            n = 0
            for member in self._members(artifact):  # pass 1: nothing written yet
                _check_on_disk(member, root, roots)
                n += 1
        except (VerifyError, tarfile.FilterError) as exc:
            raise RestoreError(f"{self.name}: refusing to restore, nothing changed: {exc}") from None

        check = MemberCheck(self._roots())

        def _place(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
            check(member)
            _clear_the_way(member, os.path.join(dest, member.name.rstrip("/")), roots)
            return member  # keep modes and owners as archived

        try:
            with as_artifact(artifact).open() as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
                tar.extractall(root, numeric_owner=True, filter=_place)
        except (ARCHIVE_ERRORS, tarfile.FilterError) as exc:
            raise RestoreError(f"{self.name}: extraction into {root} failed: {exc}") from None
        log.info("%s: restored %d entries into %s", self.name, n, root)
        return f"{n} entries restored into {root}"


class MemberCheck:
    """The member check of one configs archive (verify and restore use this one).

    Pure: it looks only at the archive's own members, in order, and the configured paths
    (``roots``, archive coordinates), never at the disk — so its answer is the same wherever
    it runs. Raises tarfile.FilterError for the first unsafe member.
    """

    def __init__(self, roots: list[str]):
        self.roots = roots
        self.dirs: set[str] = set()      # folders the archive created so far
        self.files: set[str] = set()     # regular files it holds so far (hard-link targets)
        self.links: set[str] = set()     # its symlinks (nothing may go through or replace one)
        self.targets: dict[str, str] = {}   # symlink → its target text, to resolve later targets

    def _resolve(self, folder: str, target: str) -> str | None:
        """Where ``target`` (a symlink's text, in ``folder``) ends up once the archive's own
        symlinks on the way are followed, as the kernel will after the extraction (None: a loop)."""
        todo = target.split("/") if target.startswith("/") else folder.split("/") + target.split("/")
        cur: list[str] = []
        hops = 0
        while todo:
            part = todo.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if cur:
                    cur.pop()
                continue
            cur.append(part)
            link = self.targets.get("/".join(cur))
            if link is not None and todo:   # passes through an earlier symlink of the archive
                hops += 1
                if hops > 40:
                    return None
                cur.pop()
                if link.startswith("/"):
                    cur = []
                todo = link.split("/") + todo
        return "/".join(cur)

    def _root_of(self, name: str) -> str | None:
        return next((r for r in self.roots if name == r or name.startswith(r + "/")), None)

    def __call__(self, member: tarfile.TarInfo) -> None:
        name = os.path.normpath(member.name.rstrip("/"))
        probe = member
        if member.issym() and member.linkname.startswith("/"):
            # tarfile's data filter refuses every absolute link; one into the same configured
            # path (checked below) is an ordinary config tree's, checked as its relative form
            probe = member.replace(linkname=os.path.relpath(member.linkname, "/" + os.path.dirname(name)),
                                   deep=False)
        check_member(probe, "/", self.links)   # absolute names, .., devices, archive link tricks
        root = self._root_of(name)
        if root is None:
            raise tarfile.OutsideDestinationError(
                member, f"/{name} (not under the configured paths {', '.join('/' + r for r in self.roots)})")
        if name == root:
            if member.issym() or member.islnk():
                raise tarfile.OutsideDestinationError(member, f"/{name} (a configured path archived as a link)")
        elif os.path.dirname(name) not in self.dirs:
            raise tarfile.OutsideDestinationError(
                member, f"/{name} (its folder is not in the archive before it)")
        if member.issym():
            text = member.linkname
            where = os.path.normpath(text.lstrip("/") if text.startswith("/")
                                     else os.path.join(os.path.dirname(name), text))
            if not (where == root or where.startswith(root + "/")):
                raise tarfile.LinkOutsideDestinationError(member, f"/{where} (outside the configured path /{root})")
            real = self._resolve(os.path.dirname(name), text)
            if real is None or not (real == root or real.startswith(root + "/")):
                raise tarfile.LinkOutsideDestinationError(
                    member, f"{text} (through the archive's own symlinks it leads to /{real or '… (a loop)'}, "
                            f"outside the configured path /{root})")
            self.targets[name] = text
        elif member.islnk():
            target = os.path.normpath(member.linkname.rstrip("/"))
            if target not in self.files:
                raise tarfile.LinkOutsideDestinationError(
                    member, f"/{target} (a hard link must point to a file earlier in the same archive)")
        if member.isdir():
            self.dirs.add(name)
        elif member.isfile():
            self.files.add(name)


def _check_on_disk(member: tarfile.TarInfo, root: str, roots: set[str]) -> None:
    """Pass 1 of a restore: what on this host would make the extraction fail half-way."""
    path = os.path.join(root, member.name.rstrip("/"))
    if path in roots:
        if os.path.islink(path):
            real = os.path.realpath(path)
            if not (root == "/" or real == root or real.startswith(root.rstrip("/") + "/")):
                raise VerifyError(f"{path} is a link to {real}, outside the restore root {root}")
        return
    if member.isdir() and os.path.lexists(path) and not os.path.islink(path) and not os.path.isdir(path):
        raise VerifyError(f"{path} is a file on this host, the archive has a folder there; move it away")
    if not member.isdir() and os.path.isdir(path) and not os.path.islink(path):
        raise VerifyError(f"{path} is a folder on this host, the archive has a file there; move it away")


def _clear_the_way(member: tarfile.TarInfo, path: str, roots: set[str]) -> None:
    """Never write through what is there: a symlink (except a configured path's own, which the
    host made) or a file at the member's place is removed first, so writing it cannot follow
    a link or change a file that is hard-linked elsewhere."""
    if path in roots and os.path.islink(path):
        return
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
        os.unlink(path)
