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
from typing import BinaryIO, Protocol

from isal import igzip, igzip_threaded

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
    zlib and isal read as any other. The compressed bytes reach ``below`` from one writer
    thread, in order; an error there (a full disk) is raised by the next write or by close."""

    name = "gzip"
    suffix = ".gz"

    def layer(self, below: BinaryIO) -> Layer:
        return igzip_threaded.open(below, "wb", compresslevel=GZIP_LEVEL, threads=GZIP_THREADS,
                                   block_size=GZIP_BLOCK)

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
