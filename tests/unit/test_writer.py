"""The streaming artifact writer: what lands on disk, and that a failure never lands at all."""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import sys

import pytest

from coderz_backup.access import LocalAccess
from coderz_backup.errors import ArtifactError, IncompleteArtifactError, ProducerError, StoreError
from coderz_backup.writer import ArtifactWriter, write_command, write_stream

KEEP = 64 * 1024   # the writer keeps this much of the stream's head and tail for checks


def payload(n: int) -> bytes:
    """n bytes that do not repeat in short cycles (so head/tail mix-ups show)."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(str(i).encode()).digest()
        i += 1
    return bytes(out[:n])


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_compressed_artifact_decompresses_to_the_stream_and_its_record_matches_the_file(tmp_path):
    data = payload(300_000)

    rec = write_stream(tmp_path, "db.sql.gz", [data[:1000], data[1000:]])

    on_disk = (tmp_path / "db.sql.gz").read_bytes()
    assert gzip.decompress(on_disk) == data
    assert rec.bytes == len(on_disk) and rec.sha256 == hashlib.sha256(on_disk).hexdigest()
    assert rec.raw_bytes == len(data)
    assert rec.as_manifest() == {"path": "db.sql.gz", "bytes": len(on_disk), "sha256": rec.sha256}


def test_uncompressed_artifact_is_the_stream_byte_for_byte(tmp_path):
    data = payload(5000)

    rec = write_stream(tmp_path, "redis.rdb", [data])

    assert (tmp_path / "redis.rdb").read_bytes() == data
    assert rec.bytes == rec.raw_bytes == len(data)


def test_finished_artifact_is_private_and_leaves_no_partial_file(tmp_path):
    write_stream(tmp_path, "x.gz", [b"data"])

    assert stat.S_IMODE(os.stat(tmp_path / "x.gz").st_mode) == 0o600
    assert leftovers(tmp_path) == ["x.gz"]


def test_artifact_in_a_subfolder_gets_its_folder(tmp_path):
    rec = write_stream(tmp_path, "grafana/dashboards/a.json", [b"{}"])

    assert (tmp_path / "grafana" / "dashboards" / "a.json").read_bytes() == b"{}"
    assert rec.path == "grafana/dashboards/a.json"


def test_empty_output_is_refused_and_nothing_is_left(tmp_path):
    with pytest.raises(IncompleteArtifactError, match="wrote nothing"):
        write_stream(tmp_path, "empty.sql.gz", [b"", b""])

    assert leftovers(tmp_path) == []


def test_a_check_that_rejects_the_stream_leaves_no_file(tmp_path):
    def no_trailer(ends):
        raise IncompleteArtifactError("no end marker")

    with pytest.raises(IncompleteArtifactError, match="no end marker"):
        write_stream(tmp_path, "db.sql.gz", [b"-- dump"], check=no_trailer)

    assert leftovers(tmp_path) == []


def test_a_producer_that_breaks_mid_stream_keeps_the_previous_file_of_that_name(tmp_path):
    (tmp_path / "db.sql.gz").write_bytes(b"last night's good dump")

    def chunks():
        yield b"half a dump"
        raise ArtifactError("connection lost")

    with pytest.raises(ArtifactError, match="connection lost"):
        write_stream(tmp_path, "db.sql.gz", chunks())

    assert (tmp_path / "db.sql.gz").read_bytes() == b"last night's good dump"
    assert leftovers(tmp_path) == ["db.sql.gz"]


def test_the_check_sees_the_first_and_last_64k_of_the_uncompressed_stream(tmp_path):
    data = payload(5 * KEEP + 123)
    seen = {}

    def check(ends):
        seen.update(head=ends.head, tail=ends.tail, raw=ends.raw_bytes)

    big = 7000 + 3 * KEEP   # chunks both smaller and larger than what is kept
    pieces = [data[:7000], data[7000:big]] + [data[i:i + 7000] for i in range(big, len(data), 7000)]
    write_stream(tmp_path, "a.gz", pieces, check=check)

    assert seen == {"head": data[:KEEP], "tail": data[-KEEP:], "raw": len(data)}


def test_a_short_stream_is_seen_whole_as_head_and_tail(tmp_path):
    seen = {}
    write_stream(tmp_path, "a", [b"PGDMP", b"...", b"END"],
                 check=lambda ends: seen.update(head=ends.head, tail=ends.tail))

    assert seen == {"head": b"PGDMP...END", "tail": b"PGDMP...END"}


def test_observe_receives_every_uncompressed_chunk_in_order(tmp_path):
    got = []
    data = [b"one", b"two", payload(100_000)]

    write_stream(tmp_path, "a.gz", data, observe=got.append)

    assert got == data


def test_a_root_that_is_a_file_is_a_store_error_naming_it(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")

    with pytest.raises(StoreError, match="not-a-folder"):
        ArtifactWriter(blocker, "a.gz")


def test_writer_context_aborts_when_the_block_raises(tmp_path):
    with pytest.raises(RuntimeError):
        with ArtifactWriter.open(tmp_path, "a.gz") as w:
            w.write(b"some")
            raise RuntimeError("caller gave up")

    assert leftovers(tmp_path) == []


def test_command_that_exits_non_zero_after_writing_is_never_committed(tmp_path):
    argv = [sys.executable, "-c", "import sys; sys.stdout.write('x' * 100000); sys.stderr.write('disk gone'); sys.exit(3)"]

    with pytest.raises(ProducerError, match="exited with status 3: disk gone"):
        write_command(LocalAccess(), argv, tmp_path, "dump.gz", label="pg_dump")

    assert leftovers(tmp_path) == []


def test_command_output_is_written_as_the_artifact(tmp_path):
    argv = [sys.executable, "-c", "import sys; sys.stdout.write('hello ' * 1000)"]

    rec = write_command(LocalAccess(), argv, tmp_path, "out.gz")

    assert gzip.decompress((tmp_path / "out.gz").read_bytes()) == b"hello " * 1000
    assert rec.raw_bytes == 6000




def test_a_big_artifact_compressed_on_every_core_is_one_plain_gzip_member(tmp_path):
    """Multi-block (pigz-style) output: the system's gzip -d and zlib read it as one member."""
    import shutil
    import subprocess
    import threading
    import zlib

    data = payload(5 * 1024 * 1024) + b"compressible " * 400_000 + os.urandom(3 * 1024 * 1024)
    before = threading.active_count()
    rec = write_stream(tmp_path, "big.tar.gz", (data[i:i + 10240] for i in range(0, len(data), 10240)))

    on_disk = (tmp_path / "big.tar.gz").read_bytes()
    assert rec.raw_bytes == len(data) and rec.bytes == len(on_disk)
    assert rec.sha256 == hashlib.sha256(on_disk).hexdigest()
    d = zlib.decompressobj(31)
    assert d.decompress(on_disk) == data and d.eof and d.unused_data == b""   # exactly one member
    assert shutil.which("gzip"), "the gzip tool is part of every Debian system"
    out = subprocess.run(["gzip", "-dc", str(tmp_path / "big.tar.gz")], capture_output=True, check=True).stdout
    assert out == data
    assert threading.active_count() == before   # the compression threads are gone


def test_blocks_that_would_not_shrink_are_stored_and_the_rest_is_still_deflated(tmp_path):
    """TSDB chunks and Lucene segments hardly shrink: their blocks go out as deflate stored
    blocks (a copy, not a deflate pass); text beside them is compressed as before. The file
    stays one gzip member every reader takes."""
    import subprocess
    import zlib

    from coderz_backup.codecs import GZIP_BLOCK, incompressible

    noise = os.urandom(3 * GZIP_BLOCK)
    text = b"level=info msg=\"scrape ok\" target=node-exporter\n" * (2 * GZIP_BLOCK // 48)
    assert incompressible(noise[:GZIP_BLOCK]) and not incompressible(text[:GZIP_BLOCK])

    write_stream(tmp_path, "noise.tar.gz", [noise])
    on_disk = (tmp_path / "noise.tar.gz").read_bytes()
    # after the 10-byte gzip header: a stored block (BFINAL 0, BTYPE 00) of 65535 bytes
    assert on_disk[10:15] == bytes([0, 0xFF, 0xFF, 0, 0]) and on_disk[15:15 + 65535] == noise[:65535]
    assert len(on_disk) < len(noise) * 1.0001 + 64

    data = noise[:GZIP_BLOCK] + text + noise[GZIP_BLOCK:2 * GZIP_BLOCK]
    rec = write_stream(tmp_path, "mixed.tar.gz", (data[i:i + 10240] for i in range(0, len(data), 10240)))
    on_disk = (tmp_path / "mixed.tar.gz").read_bytes()
    assert rec.bytes < 2 * GZIP_BLOCK + len(text) // 10   # the text part still compresses
    d = zlib.decompressobj(31)
    assert d.decompress(on_disk) == data and d.eof and d.unused_data == b""
    assert subprocess.run(["gzip", "-dc", str(tmp_path / "mixed.tar.gz")], capture_output=True,
                          check=True).stdout == data


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_disk_that_fills_mid_artifact_fails_it_and_leaves_nothing_behind(tmp_path):
    import subprocess
    import threading

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        before = threading.active_count()
        chunks = (os.urandom(1024 * 1024) for _ in range(8))   # incompressible: 8 MiB on a 2 MiB disk
        with pytest.raises(ArtifactError, match=r"writing big\.tar\.gz failed: No space left on device"):
            write_stream(small, "big.tar.gz", chunks)
        assert leftovers(small) == []
        assert threading.active_count() == before
    finally:
        subprocess.run(["umount", str(small)], check=True)
