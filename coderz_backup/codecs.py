"""The codec chain of an artifact: what the writer applies and the reader undoes.

An artifact's codecs follow from its file name, outermost suffix last::

    postgres-prefect.sql.gz        → (gzip,)
    configs.tar.gz                 → (gzip,)
    etcd-apisix.snapshot, *.json   → ()   (stored as produced)

:class:`~coderz_backup.writer.ArtifactWriter` encodes through :func:`chain_for` and
:mod:`coderz_backup.reader` decodes through the same function, so adding a codec (say an
encryption layer with its own suffix) means one more :class:`Codec` in :data:`CODECS`; no
service module changes.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO, Protocol

from isal import igzip, igzip_threaded, isal_zlib

__all__ = ["CODECS", "Codec", "Layer", "GZIP", "GZIP_LEVEL", "GZIP_THREADS", "chain_for"]

GZIP_LEVEL = 1  # isal level 1: ~1.5 GB/s on a pg_dump stream, ratio close to zlib-6


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: compression threads per gzip artifact: every core (at most 4), pigz-style 1 MiB blocks
GZIP_THREADS = max(1, min(4, _cores()))
GZIP_BLOCK = 1024 * 1024
#: a block whose samples deflate to at least this share of their size is stored, not deflated
STORE_RATIO = 0.97
_SAMPLE = 8192          # bytes per sample; three samples per block (start, middle, end)
_STORED_MAX = 0xFFFF    # a deflate stored block holds at most 65535 bytes


def incompressible(block) -> bool:
    """Whether deflate would gain next to nothing on ``block``, judged from three 8 KiB samples
    (start, middle, end) at level 1: ~2 % of the block's deflate cost."""
    n = len(block)
    if n < 4 * _SAMPLE:
        return False
    view = memoryview(block)
    size = 0
    for start in (0, n // 2, n - _SAMPLE):
        size += len(isal_zlib.compress(view[start:start + _SAMPLE], GZIP_LEVEL, -15))
    return size >= STORE_RATIO * 3 * _SAMPLE


def stored_blocks(block) -> bytes:
    """``block`` as deflate stored blocks (BFINAL 0, BTYPE 00), starting and ending on a byte
    boundary like a sync-flushed block: a decoder copies them and keeps them in its window."""
    view = memoryview(block)
    parts = []
    for start in range(0, len(view), _STORED_MAX):
        piece = view[start:start + _STORED_MAX]
        parts.append(struct.pack("<BHH", 0, len(piece), len(piece) ^ 0xFFFF))
        parts.append(piece)
    return b"".join(parts)


class _StoreIfIncompressible:
    """One compression thread's compressor: a block that would not shrink (TSDB chunks, Lucene's
    compressed stored fields, tarballs of tarballs) is stored instead of deflated, which costs a
    copy instead of a deflate pass; any other block goes to isal as before."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def compress_and_crc(self, data, zdict):
        if incompressible(data):
            return stored_blocks(data), isal_zlib.crc32(data)
        return self._inner.compress_and_crc(data, zdict)


try:
    _Writer = igzip_threaded._ThreadedGzipWriter
    _Buffered = igzip_threaded.FlushableBufferedWriter
except AttributeError:   # another isal layout: plain threaded gzip, every block deflated
    _Writer = _Buffered = None

if _Writer is not None:
    class _AdaptiveGzipWriter(_Writer):
        """isal's threaded gzip writer with each thread's compressor wrapped before the threads start."""

        def start(self):
            self.compressors = [_StoreIfIncompressible(c) for c in self.compressors]
            super().start()


class Layer(Protocol):
    """One artifact's encoding state: takes plain bytes, writes encoded bytes to the layer below."""

    def write(self, data: bytes) -> int: ...

    def close(self) -> None:
        """Write the rest (and any trailer) below; the layer below stays open."""


class Codec(Protocol):
    """One layer of the chain: a file-name suffix, an encoding layer for the writer, a decoder for the reader."""

    name: str
    suffix: str

    def layer(self, below: BinaryIO) -> Layer:
        """A fresh encoding layer for one artifact, writing into ``below``."""

    def decoder(self, raw: BinaryIO) -> BinaryIO:
        """A readable stream of the decoded bytes of ``raw``."""


class _Gzip:
    """gzip through isal, compressed on every core: the stream is cut into 1 MiB blocks, each
    compressed in a thread with the previous block's last 32 KiB as dictionary and ended on a
    byte boundary (pigz's layout), so the result is one ordinary gzip member that ``gzip -d``,
    zlib and isal read as any other. A block that would not shrink is stored as deflate stored
    blocks instead (:func:`incompressible`): same format, a fraction of the CPU. The compressed
    bytes reach ``below`` from one writer thread, in order; an error there (a full disk) is
    raised by the next write or by close."""

    name = "gzip"
    suffix = ".gz"

    def layer(self, below: BinaryIO) -> Layer:
        if _Writer is None:
            return igzip_threaded.open(below, "wb", compresslevel=GZIP_LEVEL, threads=GZIP_THREADS,
                                       block_size=GZIP_BLOCK)
        return _Buffered(_AdaptiveGzipWriter(below, "wb", level=GZIP_LEVEL, threads=GZIP_THREADS,
                                             block_size=GZIP_BLOCK), buffer_size=GZIP_BLOCK)

    def decoder(self, raw: BinaryIO) -> BinaryIO:
        return igzip.IGzipFile(fileobj=raw, mode="rb")


GZIP: Codec = _Gzip()
CODECS: tuple[Codec, ...] = (GZIP,)


def chain_for(relpath: str) -> tuple[Codec, ...]:
    """The codecs an artifact file is written with, innermost first (the order the writer applies them)."""
    name = relpath.rsplit("/", 1)[-1]
    chain: list[Codec] = []
    while True:
        codec = next((c for c in CODECS if name.endswith(c.suffix) and len(name) > len(c.suffix)), None)
        if codec is None:
            return tuple(reversed(chain))
        chain.append(codec)
        name = name[: -len(codec.suffix)]
