"""The one artifact reader: the writer's mirror.

Every verify and restore reads an artifact through :class:`ArtifactPath`, a read-only,
``pathlib``-shaped view of an artifact (a file, or a folder such as ``grafana/`` or
``elasticsearch/``)::

    <snapshot>/<file> → O_NOFOLLOW open, size checked → sha256 + byte count → undo the codec chain
                                                     (checked against the manifest at EOF)

- :meth:`SnapshotReader.artifact` gives the view of one manifest entry. Only files the
  manifest lists (of artifacts that are ``ok``) exist in it: a file planted in the snapshot
  folder is not there for a service to read, a path leaving the folder is refused, every
  component is opened without following symlinks, the size is checked when the file is
  opened and the sha256 when it has been read to its end — a service that stops early (a
  tar's end-of-archive marker) has the rest read and hashed on close. A format error raised
  while reading a file whose bytes do not match the manifest is reported as the mismatch
  (the real cause).
- :func:`as_artifact` turns a plain path (a file outside any snapshot, as tests and manual
  checks use) into a view backed by the disk: same API, no manifest, no hash check.
- :meth:`ArtifactPath.open` yields the *decoded* bytes: the chain of
  :func:`coderz_backup.codecs.chain_for` is undone here, so services never decompress
  themselves. A new codec or a new source (a remote copy) changes this module and the
  writer, not the services.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import shutil
import stat
from .tarfile_compat import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

from .access.archive import ARCHIVE_ERRORS
from .codecs import chain_for
from .errors import VerifyError

__all__ = ["ArtifactPath", "SnapshotReader", "as_artifact", "safe_relpath"]

CHUNK = 1 << 20
#: what reading a damaged stream can raise, and a service's own format verdict
_FORMAT_ERRORS = (*ARCHIVE_ERRORS, VerifyError)


def safe_relpath(rel: str) -> str:
    """``rel`` normalised, or VerifyError when it could leave the snapshot folder."""
    if not isinstance(rel, str) or not rel.strip("/") or "\0" in rel or "\\" in rel:
        raise VerifyError(f"the manifest lists an unusable path {rel!r}")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if rel.startswith("/") or ".." in parts or not parts:
        raise VerifyError(f"the manifest lists a path outside the snapshot folder: {rel!r}")
    return "/".join(parts)


class _Checked(io.RawIOBase):
    """Raw bytes of one file, hashed and counted on the way; :meth:`verdict` compares at the end."""

    def __init__(self, fd: int, label: str, record: dict | None, verified: set[str]):
        self._fh = os.fdopen(fd, "rb", buffering=0)
        self.label = label
        self.record = record
        self._verified = verified
        self._sha = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._fh.readinto(b)
        if n:
            self._sha.update(memoryview(b)[:n])
            self.count += n
        return n or 0

    def drain(self) -> None:
        buf = bytearray(CHUNK)
        while self.readinto(buf):
            pass

    def mismatch(self) -> VerifyError | None:
        """The error when what was read differs from the manifest (None: it matches, or nothing to compare)."""
        if self.record is None:
            return None
        if self.count != self.record.get("bytes"):
            return VerifyError(f"{self.label}: {self.count} bytes read, the manifest says {self.record.get('bytes')}")
        if self._sha.hexdigest() != self.record.get("sha256"):
            return VerifyError(f"{self.label}: sha256 differs from the manifest (the file was changed or damaged)")
        self._verified.add(self.label)
        return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
        super().close()


class _Source:
    """Where the bytes of a view come from: a snapshot's manifest, or the plain disk."""

    root: Path
    verified: set[str]   # files read to their end that matched the manifest

    def record(self, rel: str) -> dict | None: ...

    def kind(self, rel: str) -> str | None:
        """"file", "dir" or None (absent)."""

    def children(self, rel: str) -> list[str]: ...

    def open_fd(self, rel: str) -> tuple[int, str, dict | None]: ...


class _ManifestSource(_Source):
    """The files an authenticated manifest lists (ok artifacts only), under the snapshot folder."""

    def __init__(self, root: Path, manifest: dict):
        self.root = Path(root)
        self.manifest = manifest
        self.verified: set[str] = set()
        self.files: dict[str, dict] = {}
        for entry in manifest.get("artifacts", []) or []:
            if entry.get("status") != "ok":
                continue
            for rec in entry.get("files") or [entry]:
                self.files[safe_relpath(rec.get("path", ""))] = rec
        self.dirs: dict[str, set[str]] = {"": set()}
        for rel in self.files:
            parts = rel.split("/")
            for i in range(len(parts)):
                self.dirs.setdefault("/".join(parts[:i]), set()).add(parts[i])

    def record(self, rel: str) -> dict | None:
        return self.files.get(rel)

    def kind(self, rel: str) -> str | None:
        if rel in self.files:
            return "file"
        return "dir" if rel in self.dirs else None

    def children(self, rel: str) -> list[str]:
        return sorted(self.dirs.get(rel, ()))

    def open_fd(self, rel: str) -> tuple[int, str, dict | None]:
        rec = self.files.get(rel)
        if rec is None:
            raise FileNotFoundError(errno.ENOENT, f"{rel}: not in the manifest", rel)
        try:
            fd = _open_beneath(self.root, rel)
        except OSError:
            raise VerifyError(f"{rel}: missing from {self.root}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise VerifyError(f"{rel}: missing from {self.root}")
        if st.st_size != rec.get("bytes"):
            os.close(fd)
            raise VerifyError(f"{rel}: {st.st_size} bytes on disk, the manifest says {rec.get('bytes')}")
        return fd, rel, rec


class _DiskSource(_Source):
    """A folder on disk, outside any snapshot: read as it is, nothing to compare with."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.verified: set[str] = set()

    def record(self, rel: str) -> dict | None:
        return None

    def _path(self, rel: str) -> Path:
        return self.root / rel if rel else self.root

    def kind(self, rel: str) -> str | None:
        p = self._path(rel)
        return "file" if p.is_file() else "dir" if p.is_dir() else None

    def children(self, rel: str) -> list[str]:
        return sorted(p.name for p in self._path(rel).iterdir())

    def open_fd(self, rel: str) -> tuple[int, str, dict | None]:
        try:
            return os.open(self._path(rel), os.O_RDONLY), self._path(rel).name, None
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, "no such file", str(self._path(rel))) from None


def _open_beneath(root: Path, rel: str) -> int:
    """Open ``root/rel`` read-only, following no symlink on the way (each component O_NOFOLLOW)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        parts = rel.split("/")
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)


class ArtifactPath:
    """A read-only, ``pathlib``-shaped view of an artifact file or folder (see the module docstring).

    ``/``, ``name``, ``parent``, ``exists()``, ``is_file()``, ``is_dir()``, ``iterdir()`` work as
    on a Path (limited to what the manifest lists); reads — :meth:`open`, :meth:`read_bytes`,
    :meth:`read_text`, :meth:`chunks`, :meth:`as_tar`, :meth:`copy_to`, :meth:`local_file` — are
    checked against the manifest and give decoded bytes.
    """

    def __init__(self, source: _Source, rel: str):
        self._src = source
        self.rel = rel

    # -- path-like ------------------------------------------------------------
    @property
    def name(self) -> str:
        return PurePosixPath(self.rel).name if self.rel else self._src.root.name

    @property
    def path(self) -> Path:
        """Where it is on this host (for messages; never open it directly)."""
        return self._src.root / self.rel if self.rel else self._src.root

    @property
    def parent(self) -> "ArtifactPath":
        return ArtifactPath(self._src, str(PurePosixPath(self.rel).parent).lstrip(".")) if "/" in self.rel \
            else ArtifactPath(self._src, "")

    def __truediv__(self, other: str) -> "ArtifactPath":
        rel = f"{self.rel}/{other}" if self.rel else str(other)
        if isinstance(self._src, _ManifestSource):
            rel = safe_relpath(rel)
        return ArtifactPath(self._src, rel)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"ArtifactPath({str(self.path)!r})"

    def exists(self) -> bool:
        return self._src.kind(self.rel) is not None

    def is_file(self) -> bool:
        return self._src.kind(self.rel) == "file"

    def is_dir(self) -> bool:
        return self._src.kind(self.rel) == "dir"

    def iterdir(self) -> Iterator["ArtifactPath"]:
        if not self.is_dir():
            raise FileNotFoundError(errno.ENOTDIR, "not a folder of the artifact", str(self.path))
        for child in self._src.children(self.rel):
            yield self / child

    def files(self) -> list["ArtifactPath"]:
        """Every file of this artifact (itself, or all below the folder), in name order."""
        if self.is_file():
            return [self]
        out: list[ArtifactPath] = []
        for child in self.iterdir() if self.is_dir() else ():
            out += child.files()
        return out

    def manifest(self) -> dict | None:
        """The manifest of the snapshot this artifact is read from (None outside a snapshot)."""
        return getattr(self._src, "manifest", None)

    @property
    def size(self) -> int | None:
        """Bytes on disk as recorded in the manifest (None outside a snapshot)."""
        rec = self._src.record(self.rel)
        return rec.get("bytes") if rec else None

    # -- reading ----------------------------------------------------------------
    @contextlib.contextmanager
    def open(self) -> Iterator[BinaryIO]:
        """The decoded bytes of this file, checked against the manifest (VerifyError on a mismatch)."""
        fd, label, record = self._src.open_fd(self.rel)
        raw = _Checked(fd, label, record, self._src.verified)
        stream: BinaryIO = raw  # type: ignore[assignment]
        chain = chain_for(self.rel or self.name)
        layers: list[BinaryIO] = []
        try:
            for codec in reversed(chain):   # undo the outermost first
                stream = codec.decoder(stream)
                layers.append(stream)
            try:
                yield stream
            except _FORMAT_ERRORS as exc:
                # the real cause of a format error may be changed bytes: say that instead
                with contextlib.suppress(OSError):
                    raw.drain()
                wrong = raw.mismatch()
                if wrong is not None:
                    raise wrong from exc
                raise
            else:
                raw.drain()
                wrong = raw.mismatch()
                if wrong is not None:
                    raise wrong
        finally:
            for layer in reversed(layers):
                with contextlib.suppress(Exception):
                    layer.close()
            raw.close()

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The decoded bytes in chunks; the manifest check runs after the last one."""
        with self.open() as fh:
            while True:
                chunk = fh.read(size)
                if not chunk:
                    break
                yield chunk

    def read_bytes(self) -> bytes:
        with self.open() as fh:
            return fh.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def decoded_size(self) -> int:
        """Bytes :meth:`open` yields (known without reading for a file stored as produced)."""
        if not chain_for(self.rel or self.name) and self.size is not None:
            return self.size
        n = 0
        for chunk in self.chunks():
            n += len(chunk)
        return n

    def as_tar(self, arcname: str, *, mode: int = 0o600) -> Iterator[bytes]:
        """A one-file tar stream of the decoded content named ``arcname`` (for ``Access.untar_into``)."""
        size = self.decoded_size()
        info = tarfile.TarInfo(arcname)
        info.size, info.mode, info.mtime = size, mode, int(time.time())
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        sent = 0
        for chunk in self.chunks():
            sent += len(chunk)
            if sent > size:
                raise VerifyError(f"{self.name}: grew while it was read")
            yield chunk
        if sent != size:
            raise VerifyError(f"{self.name}: {sent} bytes read, {size} expected")
        yield b"\0" * ((-size) % tarfile.BLOCKSIZE) + b"\0" * (2 * tarfile.BLOCKSIZE)

    def copy_to(self, dest: str | Path) -> None:
        """Write the decoded, checked content to ``dest`` (a new file)."""
        try:
            with self.open() as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(dest)
            raise

    @contextlib.contextmanager
    def local_file(self) -> Iterator[Path]:
        """A private local copy of the decoded, checked content, for a tool that wants a file name
        (``etcdctl snapshot restore``); removed afterwards. Checked before it is handed out."""
        with tempfile.TemporaryDirectory(prefix="coderz-restore-") as tmp:
            dest = Path(tmp) / self.name
            self.copy_to(dest)
            yield dest


class SnapshotReader:
    """Read the artifacts of one snapshot whose manifest was authenticated (see :mod:`coderz_backup.verify`)."""

    def __init__(self, root: str | Path, manifest: dict):
        self.root = Path(root)
        self._src = _ManifestSource(self.root, manifest)

    def artifact(self, entry_or_path: dict | str) -> ArtifactPath:
        """The view of a manifest entry (or of an artifact path relative to the snapshot folder)."""
        rel = entry_or_path["path"] if isinstance(entry_or_path, dict) else entry_or_path
        return ArtifactPath(self._src, safe_relpath(rel))

    def presence(self, entry: dict) -> None:
        """Each file of ``entry`` is there with its recorded size (VerifyError: what is wrong); reads nothing."""
        for rec in entry.get("files") or [entry]:
            fd, _, _ = self._src.open_fd(safe_relpath(rec.get("path", "")))
            os.close(fd)

    def check(self, entry: dict, *, again: bool = True) -> None:
        """Read every file of ``entry`` to its end: sizes and sha256 against the manifest (with
        ``again=False`` only those no read through :meth:`artifact` has checked yet)."""
        for rec in entry.get("files") or [entry]:
            rel = safe_relpath(rec.get("path", ""))
            if not again and rel in self._src.verified:
                continue
            fd, label, record = self._src.open_fd(rel)
            raw = _Checked(fd, label, record, self._src.verified)
            try:
                raw.drain()
                wrong = raw.mismatch()
                if wrong is not None:
                    raise wrong
            finally:
                raw.close()


def as_artifact(artifact: "ArtifactPath | str | os.PathLike[str]") -> ArtifactPath:
    """``artifact`` itself, or a disk-backed view of a plain path (no manifest, no hash check)."""
    if isinstance(artifact, ArtifactPath):
        return artifact
    p = Path(artifact).absolute()
    return ArtifactPath(_DiskSource(Path("/")), str(p).lstrip("/"))

