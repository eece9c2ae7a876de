"""The one streaming artifact writer.

Every artifact is written through :class:`ArtifactWriter`::

    producer chunks → codec layers (gzip for *.gz) → sha256 + byte count → <dir>/.<name>.partial
                                                                        → fsync, 0600, rename to <name>

gzip compresses on every core (:mod:`coderz_backup.codecs`): the producer's thread only hands
1 MiB blocks over, compression threads work on them side by side, and one writer thread
hashes and writes the compressed bytes in order, so a big tarball is not bound by one core.

The codec chain follows from the artifact's name (:func:`coderz_backup.codecs.chain_for`);
:mod:`coderz_backup.reader` undoes the same chain when the artifact is read back.

It keeps only the first and last few KiB of the *uncompressed* stream so a check can
look for completeness markers (pg_dump's header and trailer, an RDB's CRC), so memory
stays flat whatever the size. On any failure — the producer exits non-zero, the output
is empty, the check rejects it, the disk fills — the partial file is removed and an
:class:`~coderz_backup.errors.ArtifactError` is raised: a failed artifact never lands
under its final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .access import Access, CHUNK
from .codecs import GZIP_LEVEL, chain_for
from .errors import ArtifactError, IncompleteArtifactError, StoreError
from .snapshot import fsync_dir

__all__ = ["FileRecord", "StreamEnds", "ArtifactWriter", "write_stream", "write_command", "GZIP_LEVEL"]

_KEEP = 64 * 1024


@dataclass
class FileRecord:
    """One file written into a snapshot."""

    path: str          # relative to the snapshot folder
    bytes: int         # size on disk
    sha256: str        # of the bytes on disk
    raw_bytes: int     # uncompressed bytes produced

    def as_manifest(self) -> dict:
        return {"path": self.path, "bytes": self.bytes, "sha256": self.sha256}


@dataclass
class StreamEnds:
    """What a completeness check sees of the uncompressed stream."""

    head: bytes
    tail: bytes
    raw_bytes: int
    extra: dict = field(default_factory=dict)


Check = Callable[[StreamEnds], None]


class ArtifactWriter:
    """A file-like sink for one artifact; see the module docstring.

    ``observe`` (optional) is called with every uncompressed chunk, e.g. to compute a
    CRC over the stream without a second read.
    The codecs follow from ``relpath`` (:func:`~coderz_backup.codecs.chain_for`): a ``.gz``
    name is compressed, callers never say so themselves.
    """

    def __init__(self, root: Path, relpath: str, *, check: Check | None = None,
                 observe: Callable[[bytes], None] | None = None):
        self.root = Path(root)
        self.relpath = relpath
        self.final = self.root / relpath
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StoreError(f"cannot create the folder {self.final.parent}: {exc.strerror}") from None
        self.partial = self.final.with_name(f".{self.final.name}.partial")
        self.check = check
        self.observe = observe
        self._sha = hashlib.sha256()
        self._bytes = 0
        self._raw = 0
        self._head = bytearray()
        self._tail = bytearray()
        try:
            fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create {self.partial}: {exc.strerror}") from None
        self._fh = os.fdopen(fd, "wb", buffering=0)
        self._done = False
        self._dropping = False
        # data-facing layer first: each writes into the one after it, the last into the file
        self._layers: list = []
        below = _Sink(self)
        try:
            for codec in reversed(chain_for(relpath)):
                below = codec.layer(below)
                self._layers.insert(0, below)
        except BaseException:
            self.abort()
            raise

    # file-like protocol (tarfile and friends write here)
    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        n = len(data)
        if not n:
            return 0
        self._raw += n
        if len(self._head) < _KEEP:
            self._head += data[: _KEEP - len(self._head)]
        if n >= _KEEP:
            self._tail = bytearray(data[-_KEEP:])
        else:
            self._tail += data
            if len(self._tail) > 2 * _KEEP:
                del self._tail[: len(self._tail) - _KEEP]
        if self.observe:
            self.observe(data)
        if self._layers:
            self._layers[0].write(data)
        else:
            self._emit(data)
        return n

    def _emit(self, out: bytes) -> None:
        """The encoded bytes, in order (from the gzip layer's writer thread when there is one)."""
        if not out or self._dropping:
            return
        self._sha.update(out)
        self._bytes += len(out)
        try:
            self._fh.write(out)
        except OSError as exc:
            raise ArtifactError(f"writing {self.relpath} failed: {exc.strerror}") from None

    def flush(self) -> None:  # tarfile calls it; data goes out on close
        pass

    def ends(self) -> StreamEnds:
        return StreamEnds(bytes(self._head), bytes(self._tail[-_KEEP:]), self._raw)

    def commit(self) -> FileRecord:
        """Finish the file: check it, fsync, rename into place."""
        try:
            for layer in self._layers:   # each one's rest (and trailer) goes through the ones below
                layer.close()
        except OSError as exc:
            raise ArtifactError(f"writing {self.relpath} failed: {exc.strerror or exc}") from None
        finally:
            self._layers = []
        if self._raw == 0:
            raise IncompleteArtifactError(f"{self.relpath}: the producer wrote nothing (empty output)")
        if self.check:
            self.check(self.ends())
        try:
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise ArtifactError(f"writing {self.relpath} failed: {exc.strerror}") from None
        self._fh.close()
        os.replace(self.partial, self.final)
        if self.final.parent != self.root:
            # a file in a subfolder (grafana/, elasticsearch/<index>/): make its rename durable
            # too; the snapshot folder itself is fsynced when the snapshot is finished
            _fsync_dirs(self.final.parent, self.root)
        self._done = True
        return FileRecord(self.relpath, self._bytes, self._sha.hexdigest(), self._raw)

    def abort(self) -> None:
        if self._done:
            return
        self._dropping = True   # the layers' remaining output is thrown away, their threads end
        for layer in self._layers:
            with contextlib.suppress(Exception):
                layer.close()
        self._layers = []
        with contextlib.suppress(OSError):
            self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.partial)
        self._done = True

    @classmethod
    @contextlib.contextmanager
    def open(cls, root: Path, relpath: str, *, check: Check | None = None,
             observe: Callable[[bytes], None] | None = None) -> Iterator["ArtifactWriter"]:
        """Context manager form: aborts on exception. Call :meth:`commit` inside."""
        w = cls(root, relpath, check=check, observe=observe)
        try:
            yield w
        finally:
            w.abort()  # no-op after commit()


class _Sink:
    """The bottom of an artifact's codec layers: encoded bytes into the writer's sha256, count and file."""

    def __init__(self, writer: ArtifactWriter) -> None:
        self._writer = writer

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._writer._emit(bytes(data) if isinstance(data, memoryview) else data)
        return len(data)

    def flush(self) -> None:
        pass


def write_stream(root: Path, relpath: str, chunks: Iterable[bytes], *,
                 check: Check | None = None, observe: Callable[[bytes], None] | None = None) -> FileRecord:
    """Write an iterable of chunks as one artifact."""
    with ArtifactWriter.open(root, relpath, check=check, observe=observe) as w:
        for chunk in chunks:
            w.write(chunk)
        return w.commit()


def write_command(access: Access, argv: list[str], root: Path, relpath: str, *,
                  check: Check | None = None, env: dict[str, str] | None = None,
                  timeout: float | None = None, label: str | None = None,
                  observe: Callable[[bytes], None] | None = None) -> FileRecord:
    """Run a producer command through ``access`` and write its stdout as one artifact.

    The producer's exit status is checked *before* the completeness check and the
    rename, so a dump that dies mid-stream can never be committed. ``observe`` as for
    :class:`ArtifactWriter` (e.g. a fingerprint counter).
    """
    with ArtifactWriter.open(root, relpath, check=check, observe=observe) as w:
        with access.stream(argv, env=env, timeout=timeout, label=label) as cmd:
            for chunk in cmd.chunks(CHUNK):
                w.write(chunk)
            cmd.finish()
        return w.commit()


def _fsync_dirs(folder: Path, root: Path) -> None:
    """fsync ``folder`` and its parents up to (not including) ``root``: new entries survive a crash."""
    while folder != root and root in folder.parents:
        fsync_dir(folder)
        folder = folder.parent
