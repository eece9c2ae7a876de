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

from typing import BinaryIO, Protocol

from isal import igzip, isal_zlib

__all__ = ["CODECS", "Codec", "Encoder", "GZIP", "GZIP_LEVEL", "chain_for"]

GZIP_LEVEL = 1  # isal level 1: ~1.5 GB/s on a pg_dump stream, ratio close to zlib-6


class Encoder(Protocol):
    """One artifact's encoding state (zlib's compressobj shape)."""

    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class Codec(Protocol):
    """One layer of the chain: a file-name suffix, an encoder for the writer, a decoder for the reader."""

    name: str
    suffix: str

    def encoder(self) -> Encoder:
        """A fresh encoder for one artifact."""

    def decoder(self, raw: BinaryIO) -> BinaryIO:
        """A readable stream of the decoded bytes of ``raw``."""


class _Gzip:
    name = "gzip"
    suffix = ".gz"

    def encoder(self) -> Encoder:
        return isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31)

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
