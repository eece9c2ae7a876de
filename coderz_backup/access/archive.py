"""Tar streams and their safety checks, shared by every access and by the services that read
their own artifacts: :func:`check_member` (the one member check), :class:`SeenMembers`,
:class:`ChunkReader` (a file object over byte chunks) and
``ARCHIVE_ERRORS`` (everything a damaged gzip/tar can raise)."""

from __future__ import annotations

import io
import os
from ..tarfile_compat import tarfile
import zlib
from typing import Iterable

from isal import isal_zlib


__all__ = ["ARCHIVE_ERRORS", "ChunkReader", "SeenMembers", "check_member", "copy_checked", "tar_writer"]

#: how much of a member's data tarfile reads and writes at a time (its default is 16 KiB)
TAR_COPY = 1024 * 1024


# Everything reading a damaged gzip/tar can raise. isal's and zlib's errors are not OSErrors:
# a flipped byte inside a deflate block raises IsalError ("invalid lookback distance"),
# one in the trailer a BadGzipFile (OSError), a cut one EOFError.
ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, isal_zlib.error)


class SeenMembers(set):
    """Per-archive state for :func:`check_member`: the archive's symlinks (the set itself) and
    the regular files it held so far (``files``, the only allowed hard-link targets)."""

    def __init__(self) -> None:
        super().__init__()
        self.files: set[str] = set()


def check_member(member: tarfile.TarInfo, root: str, links: set[str] | None = None) -> None:
    """Raise tarfile.FilterError when ``member`` could write outside ``root``.

    Our own archives never hold absolute paths or ``..``; one that does was tampered
    with, so it is refused rather than silently re-rooted. Links out of ``root`` and
    device files are refused too (tarfile's data filter) — and, not relying on that filter
    alone (before Python 3.11.13 its realpath checks can be bypassed with symlink chains
    deeper than PATH_MAX, CVE-2025-4517), link targets are also checked as text. With
    ``links`` (one set per archive) a member may not pass through, replace or hard-link to a
    symlink that came earlier in the same archive. With a :class:`SeenMembers` a hard link must
    point to a regular file that came earlier in the same archive (never to a file that was
    already on disk: writing the member after it would change that file).
    """
    name = member.name.rstrip("/")
    if name.startswith("/"):
        raise tarfile.AbsolutePathError(member)
    parts = name.split("/")
    if ".." in parts:
        raise tarfile.OutsideDestinationError(member, os.path.join(root, name))
    if member.issym():
        target = member.linkname
        where = os.path.normpath(target if target.startswith("/")
                                 else os.path.join(root, os.path.dirname(name), target))
        if not (root == "/" or where == root or where.startswith(root.rstrip("/") + "/")):
            raise tarfile.LinkOutsideDestinationError(member, where)
    elif member.islnk():
        if member.linkname.startswith("/") or ".." in member.linkname.split("/"):
            raise tarfile.LinkOutsideDestinationError(member, member.linkname)
    if links is not None:
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in links:
                raise tarfile.OutsideDestinationError(member, f"{name} (through the symlink {'/'.join(parts[:i])} "
                                                              "of the same archive)")
        if name in links and not member.issym():
            raise tarfile.OutsideDestinationError(member, f"{name} (would write through a symlink of the archive)")
        if member.islnk() and member.linkname.rstrip("/") in links:
            raise tarfile.LinkOutsideDestinationError(member, member.linkname)
        if member.issym():
            links.add(name)
        if isinstance(links, SeenMembers):
            if member.islnk() and os.path.normpath(member.linkname.rstrip("/")) not in links.files:
                raise tarfile.LinkOutsideDestinationError(
                    member, f"{member.linkname} (a hard link must point to a file earlier in the same archive)")
            if member.isfile():
                links.files.add(os.path.normpath(name))
    tarfile.data_filter(member, root)


class ChunkReader(io.RawIOBase):
    """A read-only file object over an iterable of byte chunks (for tarfile stream mode)."""

    def __init__(self, chunks: Iterable[bytes]):
        self._it = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class _Position:
    """A write-only file object that knows how much went through it (``tell()``), over any sink."""

    def __init__(self, out) -> None:
        self._out = out
        self._pos = 0

    def write(self, data) -> int:
        self._out.write(data)
        n = len(data)
        self._pos += n
        return n

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        flush = getattr(self._out, "flush", None)
        if flush:
            flush()


def tar_writer(out) -> tarfile.TarFile:
    """A PAX tar writer streaming into the file object ``out`` (a pipe, an artifact writer).

    tarfile's stream mode (``"w|"``) cuts everything into 10 KiB records through a bytes
    buffer it copies on every write; here headers go straight to ``out`` and member data in
    1 MiB pieces. The bytes are the same tar (NUL-padded to a 10 KiB record at the end)."""
    return tarfile.open(fileobj=_Position(out), mode="w", format=tarfile.PAX_FORMAT, copybufsize=TAR_COPY)


def copy_checked(chunks: Iterable[bytes], out) -> int:
    """Copy the tar stream ``chunks`` into the file object ``out`` member by member, each one
    passing :func:`check_member` first (tarfile.FilterError at the first unsafe one). Returns the
    number of members. For accesses that extract elsewhere (a container, behind a prefix)."""
    count = 0
    with tarfile.open(fileobj=ChunkReader(chunks), mode="r|") as src, \
            tar_writer(out) as dst:
        links = SeenMembers()
        for member in src:
            check_member(member, "/restore-check", links)
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
            count += 1
    return count
