"""``kind = "dir"``: a mounted path — an external drive, an NFS or SMB share.

Each file is written as ``.<name>.partial`` beside its final name, fsynced, re-read and
compared (size and sha256) and only then renamed into place, so a copy cut short never
leaves a file that looks whole. Folders are created 0700, files 0600. The target folder must
exist (a drive that is not mounted must not silently fill the host's own disk).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import BinaryIO, ClassVar, Iterator, Literal

from pydantic import Field

from ..errors import OffsiteError
from ..reader import safe_relpath
from .base import TargetBase, Throttle, file_digest

__all__ = ["DirTarget", "DirTargetConfig"]

CHUNK = 1 << 20


class DirTargetConfig(TargetBase):
    """A mounted folder (external drive, NFS share) that receives a copy of every snapshot."""

    kind: Literal["dir"]
    path: str = Field(..., description="existing folder the snapshots are copied into (<path>/<snapshot>/)")


class DirTarget:
    kind: ClassVar[str] = "dir"
    config_model: ClassVar[type[DirTargetConfig]] = DirTargetConfig

    def __init__(self, name: str, config: DirTargetConfig):
        self.name = name
        self.config = config
        self.root = Path(config.path)
        self.throttle = Throttle(config.bwlimit_kbps)

    def describe(self) -> str:
        return f"folder {self.root}"

    def _root(self) -> Path:
        if not self.root.is_dir():
            raise OffsiteError(f"off-site {self.name}: {self.root} is not a folder (is the drive mounted?); "
                               "create it or fix path")
        return self.root

    def _path(self, rel: str) -> Path:
        return self._root() / safe_relpath(rel)

    def put(self, rel: str, source: Path, *, size: int, sha256: str) -> None:
        final = self._path(rel)
        partial = final.with_name(f".{final.name}.partial")
        try:
            final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(source, "rb") as src:
                fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(self.throttle.wrap(src), out, CHUNK)
                    out.flush()
                    os.fsync(out.fileno())
            got_size, got_sha = file_digest(partial)
            if (got_size, got_sha) != (size, sha256):
                raise OffsiteError(f"off-site {self.name}: {rel} arrived as {got_size} bytes with another sha256 "
                                   f"than the {size} bytes sent (the target changed it); not kept")
            os.replace(partial, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise OffsiteError(f"off-site {self.name}: writing {rel} into {self.root} failed: "
                               f"{exc.strerror or exc}") from None
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise

    @contextlib.contextmanager
    def open(self, rel: str) -> Iterator[BinaryIO]:
        path = self._path(rel)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise OffsiteError(f"off-site {self.name}: {rel} cannot be read from {self.root}: "
                               f"{exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            yield fh

    def names(self, rel: str = "") -> list[str]:
        folder = self._path(rel) if rel else self._root()
        try:
            return sorted(p.name for p in folder.iterdir() if not p.is_symlink())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise OffsiteError(f"off-site {self.name}: cannot list {folder}: {exc.strerror}") from None

    def exists(self, rel: str) -> bool:
        path = self._path(rel)
        return path.is_file() and not path.is_symlink()

    def remove(self, rel: str) -> None:
        path = self._path(rel)
        if path.is_symlink():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)

