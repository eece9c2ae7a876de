"""Unit tier: the stream counters of coderz_backup.fingerprint at every chunk boundary, and compare()."""

from __future__ import annotations

import io
import os
from coderz_backup.tarfile_compat import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coderz_backup.fingerprint import (PgDumpCounter, TarCounter, compare, pg_dump_fingerprint, tee,
                                       tree_fingerprint)

DUMP = (b"--\n-- PostgreSQL database dump\n--\n\n"
        b"\\restrict AbC123\n\n"
        b"-- Dumped from database version 15.10 (Debian 15.10-1.pgdg120+1)\n"
        b"-- Dumped by pg_dump version 15.14 (Debian 15.14-0+deb12u1)\n\n"
        b"SET statement_timeout = 0;\n\n"
        b"CREATE TABLE public.users (id integer, name text);\n"
        b"COMMENT ON TABLE public.users IS 'no COPY public.x (a) FROM stdin; here';\n\n"
        b"--\n-- Data for Name: users; Type: TABLE DATA; Schema: public; Owner: u\n--\n\n"
        b"COPY public.users (id, name) FROM stdin;\n"
        b"1\tplain\n2\tback\\\\slash\n3\tmulti\\nline\\r\\nvalue\n4\t\\\\.\n5\t\\.x\n6\t\\N\n\\.\n\n"
        b"COPY public.empty (id) FROM stdin;\n\\.\n\n"
        b'COPY "Other Schema"."Odd ""T""" ("a b", c) FROM stdin;\n\\\\.\n\t\n\\.\n\n'
        b"COPY public.last (x) FROM stdin;\n\\.\n"
        b"\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict AbC123\n\n")

EXPECTED = {"pg_dump_version": "15.14", "server_version": "15.10",
            "tables": {'Other Schema.Odd "T"': 2, "public.empty": 0, "public.last": 0, "public.users": 6}}


def _chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def test_a_whole_dump():
    assert pg_dump_fingerprint([DUMP]) == EXPECTED


def test_every_single_cut_and_one_byte_chunks():
    for i in range(len(DUMP) + 1):
        assert pg_dump_fingerprint([DUMP[:i], DUMP[i:]]) == EXPECTED, i
    assert pg_dump_fingerprint([DUMP[i:i + 1] for i in range(len(DUMP))]) == EXPECTED


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(DUMP)), max_size=12))
def test_any_chunking_gives_the_same_counts(cuts):
    cuts = sorted(set(cuts))
    bounds = [0, *cuts, len(DUMP)]
    assert pg_dump_fingerprint([DUMP[a:b] for a, b in zip(bounds, bounds[1:])]) == EXPECTED


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.text(alphabet="ab\\\n.\t\r", max_size=6), min_size=1, max_size=3), max_size=8),
       st.integers(min_value=1, max_value=17))
def test_rows_with_any_escaped_values(rows, size):
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")

    body = "".join("\t".join(esc(v) for v in row) + "\n" for row in rows)
    dump = (b"-- Dumped from database version 16.2\nCOPY public.t (a) FROM stdin;\n" + body.encode()
            + b"\\.\n\nCOPY public.u (a) FROM stdin;\n\\.\n")
    fp = pg_dump_fingerprint(_chunked(dump, size))
    assert fp == {"server_version": "16.2", "tables": {"public.t": len(rows), "public.u": 0}}


def _dump_of(tables: list[tuple[int, int, bool]]) -> tuple[bytes, dict]:
    parts, expected = [b"-- Dumped from database version 15.1\n"], {}
    for n, (width, rows, escapes) in enumerate(tables):
        value = (b"x\\.y\\n" if escapes else b"") + b"v" * width
        parts.append(b"COPY public.t%d (a) FROM stdin;\n" % n + b"".join(b"%d\t" % r + value + b"\n"
                                                                        for r in range(rows)) + b"\\.\n\n")
        expected[f"public.t{n}"] = rows
    return b"".join(parts), {"server_version": "15.1", "tables": expected}


@pytest.mark.parametrize("size", [1 << 20, 100_003, 65_536, 4093])
def test_tables_of_long_and_short_rows_in_big_chunks(size):
    """The counter switches between two ways of counting rows by their length (judged on pieces
    of ≥ 64 KiB): long rows, short rows, long rows with escapes, at the writer's chunk size and others."""
    dump, expected = _dump_of([(100, 25_000, False), (0, 150_000, False), (300, 5_000, True), (60, 30_000, False),
                               (1, 3, False)])
    assert pg_dump_fingerprint(_chunked(dump, size)) == expected


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=1, max_value=300), st.integers(min_value=0, max_value=3000),
                          st.booleans()), min_size=1, max_size=5),
       st.sampled_from([1 << 20, 65536, 65537, 4093]))
def test_any_mix_of_row_lengths_gives_the_same_counts(tables, size):
    dump, expected = _dump_of(tables)
    assert pg_dump_fingerprint(_chunked(dump, size)) == expected


def test_a_dump_cut_inside_table_data_has_no_fingerprint():
    c = PgDumpCounter()
    c.observe(DUMP[: DUMP.index(b"2\tback")])
    assert c.result() is None


def test_observers_never_raise_and_tee_shows_every_chunk():
    c = PgDumpCounter()
    c._feed = lambda data: 1 / 0
    seen = []
    both = tee(c.observe, seen.append)
    both(b"abc")
    both(b"def")                      # the failed counter stays quiet, the other one still sees it
    assert seen == [b"abc", b"def"] and c.result() is None and c.failed.startswith("ZeroDivisionError")


def _tar(tmp_path) -> bytes:
    root = tmp_path / "t"
    (root / "d").mkdir(parents=True)
    (root / "a").write_bytes(os.urandom(1000))
    (root / "d" / ("x" * 120)).write_bytes(b"y" * 513)
    (root / "empty").write_bytes(b"")
    os.symlink("a", root / "l")
    os.link(root / "a", root / "d" / "hard")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        big = tarfile.TarInfo("big-pax")
        big.size = 3
        big.pax_headers = {"comment": "x" * 600}
        tar.addfile(big, io.BytesIO(b"abc"))
        tar.add(root, arcname="t")
    return buf.getvalue()


def test_tar_counter_at_any_chunking(tmp_path):
    data = _tar(tmp_path)
    expected = {"files": 5, "bytes": 1000 + 513 + 0 + 3, "dirs": 2, "symlinks": 1}
    for size in (1, 13, 511, 512, 513, 10_000, len(data)):
        c = TarCounter()
        for i in range(0, len(data), size):
            c.observe(data[i:i + size])
        assert c.result() == expected, size
    assert {k: v for k, v in tree_fingerprint([tmp_path / "t"]).items()} == {
        "files": 4, "bytes": 1513, "dirs": 2, "symlinks": 1}   # the tree has no big-pax


def test_tar_counter_keeps_the_members_asked_for(tmp_path):
    data = _tar(tmp_path)
    c = TarCounter(keep=lambda name: name == "big-pax")
    c.observe(data)
    assert c.kept == {"big-pax": b"abc"}


def test_compare_names_each_difference():
    expected = {"server_version": "15.10", "pg_dump_version": "15.14",
                "tables": {"public.users": 3000, "public.gone": 1, "public.same": 0}}
    got = {"server_version": "15.2", "tables": {"public.users": 2990, "public.same": 0, "public.new": 4}}
    assert compare(expected, got) == [
        "table public.gone: 1 rows in the manifest, missing in the restored instance",
        "table public.new: not in the manifest, 4 rows restored",
        "table public.users: 3000 rows in the manifest, 2990 restored",
    ]
    assert compare({"server_version": "15.10"}, {"server_version": "16.2"}) == ["server_version 15.10 vs 16.2"]
    assert compare({"keys": {"0": 5}, "keys_from": "records", "expires": {"0": 1}},
                   {"keys": {"0": 5}, "expires": {"0": 0}}) == []
    assert compare({"keys": 31, "revision": 40}, {"keys": 31, "revision": 45}) == []
    assert compare({"keys": 31, "revision": 40}, {"keys": 30, "revision": 12}) == [
        "keys: 31 in the manifest, 30 restored", "revision 40 in the manifest, 12 restored (older)"]
    assert compare({"blocks": 3, "series": 90, "samples": 10}, {"blocks": 1, "series": 30, "samples": 10}) == []
    assert compare(None, {}) == ["the manifest has no fingerprint for this artifact"]


def _tsdb_tar(blocks: dict[str, dict | None]) -> bytes:
    """A Prometheus snapshot tarball's stream: each block dir with chunks and index, and its
    meta.json unless the value is None."""
    import io
    import json

    from coderz_backup.tarfile_compat import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for ulid, meta in blocks.items():
            d = tarfile.TarInfo(f"./{ulid}")
            d.type = tarfile.DIRTYPE
            tar.addfile(d)
            add(f"./{ulid}/chunks/000001", os.urandom(3000))
            add(f"./{ulid}/index", b"idx" * 100)
            if meta is not None:
                add(f"./{ulid}/meta.json", json.dumps(meta).encode())
        add("./lock", b"")
    return buf.getvalue()


def test_prometheus_blocks_from_the_stream_are_the_blocks_read_back_from_the_file(tmp_path):
    """The backup takes the blocks' meta.json from the tar stream as it is written (no second
    pass); that gives exactly what reading the written tarball back gives, errors included."""
    import pytest

    from coderz_backup.errors import VerifyError
    from coderz_backup.fingerprint import TarCounter
    from coderz_backup.services.prometheus import _is_block_meta, blocks_of, read_blocks
    from coderz_backup.writer import write_stream

    a, b = "01HZAAAAAAAAAAAAAAAAAAAAAA", "01HZBBBBBBBBBBBBBBBBBBBBBB"
    metas = {a: {"ulid": a, "minTime": 1000, "maxTime": 7201000, "stats": {"numSamples": 480, "numSeries": 2}},
             b: {"ulid": b, "minTime": 7201000, "maxTime": 14401000, "stats": {"numSamples": 960, "numSeries": 4}}}

    def both(blocks):
        stream = _tsdb_tar(blocks)
        counter = TarCounter(keep=_is_block_meta)
        write_stream(tmp_path, "p.tar.gz", (stream[i:i + 777] for i in range(0, len(stream), 777)),
                     observe=counter.observe)
        assert counter.result() is not None
        kept = {name.split("/", 1)[0]: body for name, body in counter.kept.items()}
        return (lambda: blocks_of("p.tar.gz", kept, counter.tops, allow_empty=False),
                lambda: read_blocks(tmp_path / "p.tar.gz"))

    from_stream, from_file = both(metas)
    assert from_stream() == from_file() and set(from_stream()) == {a, b}
    assert from_stream()[b]["samples"] == 960

    from_stream, from_file = both({a: metas[a], b: None})
    for read in (from_stream, from_file):
        with pytest.raises(VerifyError, match=f"block\\(s\\) without meta.json: {b}"):
            read()
    from_stream, from_file = both({a: {"ulid": a}})
    for read in (from_stream, from_file):
        with pytest.raises(VerifyError, match=f"{a}/meta.json is not a block meta.json"):
            read()
