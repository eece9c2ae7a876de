"""Content fingerprints: what an artifact holds, in numbers, recorded in the signed manifest.

A fingerprint is a small JSON dict (keys sorted, counts as ints) per artifact — rows per
table of a PostgreSQL dump, keys per Redis db, files and bytes of a tarball, … — computed
while the artifact is written (mostly from the uncompressed stream through the writer's
``observe`` hook, so no second read). Each service's ``fingerprint_live()`` reads the same
numbers from a running instance; a restore drill compares the two with :func:`compare`.

Fingerprinting never changes what is written: every counter here only *reads* the chunks it
is shown, and never fails a backup — an exception in a counter is logged as a warning and the
artifact's fingerprint stays ``None`` (:class:`StreamCounter`, :func:`safely`).

Shapes per kind and what a drill can reproduce: docs/services.md, "Fingerprints".
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import stat
import struct
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

log = logging.getLogger("coderz_backup")

__all__ = ["StreamCounter", "PgDumpCounter", "TarCounter", "RdbCounter", "bolt_fingerprint", "tree_fingerprint",
           "sqlite_tables", "tee", "safely", "normalized", "compare", "NotDrillable", "NOT_REPRODUCIBLE"]


class NotDrillable(NotImplementedError):
    """``fingerprint_live`` cannot read this service (yet); the message says why."""


def _sorted(obj: Any) -> Any:
    """The fingerprint as a plain JSON value, dict keys sorted (nested too)."""
    if isinstance(obj, dict):
        return {str(k): _sorted(obj[k]) for k in sorted(obj, key=str)}
    if isinstance(obj, (list, tuple)):
        return [_sorted(v) for v in obj]
    return obj


normalized = _sorted


def safely(what: str, fn: Callable[[], dict | None]) -> dict | None:
    """``fn()`` as a sorted dict, or None (with a warning) when it raises: a fingerprint never fails a backup."""
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - fingerprinting is best effort by design
        log.warning("%s: no fingerprint (%s: %s)", what, type(exc).__name__, exc)
        return None
    return _sorted(out) if out is not None else None


def tee(*observers: Callable[[bytes], None] | None) -> Callable[[bytes], None] | None:
    """One ``observe`` callable that shows each chunk to every observer in turn."""
    fns = [f for f in observers if f is not None]
    if not fns:
        return None
    if len(fns) == 1:
        return fns[0]

    def _all(data: bytes) -> None:
        for f in fns:
            f(data)
    return _all


class StreamCounter:
    """Base of the stream counters: ``observe`` never raises (a failure disables the counter),
    :meth:`result` is the fingerprint or None."""

    what = "fingerprint"

    def __init__(self) -> None:
        self.failed: str | None = None

    def observe(self, data: bytes) -> None:
        if self.failed is not None:
            return
        try:
            self._feed(data)
        except Exception as exc:  # noqa: BLE001 - never fail the backup
            self.failed = f"{type(exc).__name__}: {exc}"
            log.warning("%s: fingerprint disabled (%s)", self.what, self.failed)

    def result(self) -> dict | None:
        if self.failed is not None:
            return None
        return safely(self.what, self._result)

    def _feed(self, data: bytes) -> None:
        raise NotImplementedError

    def _result(self) -> dict | None:
        raise NotImplementedError


# -- PostgreSQL plain dumps -----------------------------------------------------------

_COPY_LINE = re.compile(rb'^COPY ((?:"(?:[^"]|"")*"|[^ ."]+)\.(?:"(?:[^"]|"")*"|[^ ."(]+))(?: \(.*\))? FROM stdin;$')
_IDENT = re.compile(rb'"((?:[^"]|"")*)"|([^."]+)')
_DUMPED_FROM = b"-- Dumped from database version "
_DUMPED_BY = b"-- Dumped by pg_dump version "
_LONG_LINE = 4 << 20          # a DDL line longer than this cannot be a COPY line we need
_LONG_ROW = 48                # mean COPY row length (bytes) from which memchr-counting pays


def _end_marker(block: bytes, pos: int) -> int:
    """``block.find(b"\\n\\\\.\\n", pos)``, faster: every end marker holds a backslash, so the
    search starts at the first backslash (memchr, ~20× faster than the 4-byte search). Most table
    data has none; data full of escapes costs one extra memchr."""
    i = block.find(b"\\", pos)
    if i < 0:
        return -1
    return block.find(b"\n\\.\n", max(pos, i - 1))


def _unquote(qualified: bytes) -> str:
    """The table name as the catalog spells it: quotes removed, doubled quotes undone."""
    parts = [(m.group(1).replace(b'""', b'"') if m.group(1) is not None else m.group(2))
             for m in _IDENT.finditer(qualified)]
    return ".".join(p.decode("utf-8", "replace") for p in parts)


class PgDumpCounter(StreamCounter):
    """Rows per table of a plain-format pg_dump, counted as the dump streams by.

    Outside table data, whole lines are looked at (``COPY <schema>.<table> (…) FROM stdin;``
    starts a table's data, the header names the server version). Inside, rows are counted
    with ``bytes.count(b"\\n")`` up to the ``\\.`` line — the one line a data row can never be
    (a backslash in a value is written ``\\\\``, a newline ``\\n``) — so the bulk of the dump is
    never split into lines or decoded. A line cut between two chunks is carried over (inside
    COPY data only the first bytes of a partial line are kept: enough to tell ``\\.``).
    """

    what = "pg_dump fingerprint"

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, int] = {}
        self.server_version: str | None = None
        self.pg_dump_version: str | None = None
        self._table: str | None = None   # inside this table's COPY data
        self._rows = 0
        self._carry = b""                # the partial last line (outside COPY: all of it, ≤ _LONG_LINE)
        self._midline = False            # inside COPY: the carried partial line is longer than 2 bytes
        self._skip_line = False          # outside COPY: the partial line is too long to matter
        self._long_rows = False          # the last long piece of COPY data had long rows: count by memchr

    def _feed(self, data: bytes) -> None:
        start = 0
        if self._table is not None and self._midline:
            # the partial line inside COPY data is a row (not the end marker): find where it ends
            nl = data.find(b"\n")
            if nl < 0:
                return
            self._rows += 1
            self._midline = False
            start = nl + 1
        elif self._carry:
            data, self._carry = self._carry + data, b""
        self._scan(data, start)

    def _scan(self, block: bytes, pos: int) -> None:
        """``block[pos:]`` starts at the start of a line."""
        end = len(block)
        while pos < end:
            if self._table is not None:
                if block.startswith(b"\\.\n", pos):
                    stop = pos
                else:
                    i = _end_marker(block, pos)
                    stop = i + 1 if i >= 0 else -1
                if stop < 0:
                    last = block.rfind(b"\n", pos) + 1      # rows complete in this block
                    if last > pos:
                        self._rows += self._count_rows(block, pos, last)
                    else:
                        last = pos
                    rest = block[last:last + 3]
                    if end - last > 2 or (rest and not b"\\.".startswith(rest)):
                        self._midline = True
                    else:
                        self._carry = bytes(rest)
                    return
                self._rows += self._count_rows(block, pos, stop)
                self.tables[self._table] = self.tables.get(self._table, 0) + self._rows
                self._table, self._rows = None, 0
                pos = stop + 3
                continue
            nl = block.find(b"\n", pos)
            if nl < 0:
                if self._skip_line or end - pos > _LONG_LINE:
                    self._skip_line = True
                else:
                    self._carry = block[pos:]
                return
            if self._skip_line:
                self._skip_line = False
            else:
                self._line(block[pos:nl])
            pos = nl + 1
            if self._table is None:
                # fast-forward to the next line that can matter (COPY, or the header comments)
                nxt = block.find(b"\nCOPY ", nl)
                if self.server_version is None or self.pg_dump_version is None:
                    hdr = block.find(b"\n-- Dumped ", nl)
                    if hdr >= 0 and (nxt < 0 or hdr < nxt):
                        nxt = hdr
                pos = (block.rfind(b"\n", nl) if nxt < 0 else nxt) + 1

    def _count_rows(self, block: bytes, start: int, stop: int) -> int:
        """Newlines in ``block[start:stop]``. ``bytes.count`` tests every byte (≈1 GB/s here);
        ``replace`` jumps from newline to newline with memchr, 2.5× faster on rows of ~100 bytes
        and 10× slower on rows of 2. The mean row length of the last long piece decides."""
        if not self._long_rows:
            n = block.count(b"\n", start, stop)
        elif start < 4096 and block.find(b"\n", stop) < 0:   # the usual piece: the whole block but its ends
            n = len(block) - len(block.replace(b"\n", b"")) - block.count(b"\n", 0, start)
        else:
            part = block[start:stop]
            n = len(part) - len(part.replace(b"\n", b""))
        if stop - start >= 1 << 16:   # a piece long enough to judge the rows by: the next one likely alike
            self._long_rows = stop - start >= _LONG_ROW * n
        return n

    def _line(self, line: bytes) -> None:
        if line.startswith(b"COPY "):
            m = _COPY_LINE.match(line)
            if m:
                self._table = _unquote(m.group(1))
                self.tables.setdefault(self._table, 0)
                self._rows = 0
        elif line.startswith(_DUMPED_FROM) and self.server_version is None:
            self.server_version = line[len(_DUMPED_FROM):].split()[0].decode("ascii", "replace")
        elif line.startswith(_DUMPED_BY) and self.pg_dump_version is None:
            self.pg_dump_version = line[len(_DUMPED_BY):].split()[0].decode("ascii", "replace")

    def _result(self) -> dict:
        if self._table is not None:
            raise ValueError(f"the dump ends inside the data of {self._table}")
        out: dict[str, Any] = {"tables": dict(self.tables)}
        if self.server_version:
            out["server_version"] = self.server_version
        if self.pg_dump_version:
            out["pg_dump_version"] = self.pg_dump_version
        return out


def pg_dump_fingerprint(chunks: Iterable[bytes]) -> dict | None:
    """The fingerprint of a whole dump given as chunks (tests, re-fingerprinting an old artifact)."""
    c = PgDumpCounter()
    for chunk in chunks:
        c.observe(chunk)
    return c.result()


# -- tar streams ----------------------------------------------------------------------

_BLOCK = 512


def _tar_number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:             # base-256 (GNU) for big values
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


class TarCounter(StreamCounter):
    """Files and bytes of a tar stream, read header by header as it streams into the writer.

    ``files``: regular files and hard links (after an extraction each is a file name);
    ``bytes``: the regular files' sizes (a hard link adds no bytes); ``dirs``, ``symlinks``.
    ``keep``: a predicate on member names whose contents (≤1 MiB) are kept in :attr:`kept`.
    :attr:`tops`: the first path component of every member.
    """

    what = "tar fingerprint"

    def __init__(self, keep: Callable[[str], bool] | None = None) -> None:
        super().__init__()
        self.files = self.bytes = self.dirs = self.symlinks = self.hardlinks = 0
        self.keep = keep
        self.kept: dict[str, bytes] = {}
        self.tops: set[str] = set()
        self._hdr = bytearray()
        self._skip = 0
        self._collect: tuple[str, int, int] | None = None   # (purpose, size, padding) while reading contents
        self._buf = bytearray()
        self._pax: dict[str, str] = {}
        self._longname: str | None = None
        self._zeros = 0
        self._ended = False

    def _feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n and not self._ended:
            if self._skip:
                k = min(self._skip, n - i)
                self._skip -= k
                i += k
                continue
            if self._collect is not None:
                purpose, size, pad = self._collect
                k = min(size - len(self._buf), n - i)
                self._buf += data[i:i + k]
                i += k
                if len(self._buf) == size:
                    self._collected(purpose, bytes(self._buf))
                    self._buf.clear()
                    self._collect = None
                    self._skip = pad
                continue
            k = min(_BLOCK - len(self._hdr), n - i)
            self._hdr += data[i:i + k]
            i += k
            if len(self._hdr) == _BLOCK:
                self._header(bytes(self._hdr))
                self._hdr.clear()

    def _collected(self, purpose: str, body: bytes) -> None:
        if purpose == "pax":
            for rec in _pax_records(body):
                self._pax[rec[0]] = rec[1]
        elif purpose == "longname":
            self._longname = body.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif purpose.startswith("keep:"):
            self.kept[purpose[5:]] = body

    def _header(self, h: bytes) -> None:
        if h == bytes(_BLOCK):
            self._zeros += 1
            self._ended = self._zeros >= 2
            return
        self._zeros = 0
        typ = h[156:157]
        size = _tar_number(h[124:136])
        if typ in (b"x", b"g", b"L", b"K"):
            pad = -size % _BLOCK
            if typ == b"x":
                self._collect = ("pax", size, pad)
            elif typ == b"L":
                self._collect = ("longname", size, pad)
            else:
                self._skip = size + pad
            if size == 0:
                self._collect = None
                self._skip = pad
            return
        pax, self._pax = self._pax, {}
        longname, self._longname = self._longname, None
        if "size" in pax:
            size = int(pax["size"])
        name = pax.get("path") or longname or _header_name(h)
        name = name[2:] if name.startswith("./") else name
        self.tops.add(name.split("/", 1)[0])
        if typ in (b"0", b"\0", b"7"):
            self.files += 1
            self.bytes += size
        elif typ == b"1":
            self.files += 1
            self.hardlinks += 1
        elif typ == b"2":
            self.symlinks += 1
        elif typ == b"5":
            self.dirs += 1
        data = size if typ not in (b"1", b"2", b"3", b"4", b"5", b"6") else 0
        pad = -data % _BLOCK
        if data and typ in (b"0", b"\0", b"7") and self.keep and size <= 1 << 20 and self.keep(name.rstrip("/")):
            self._collect = (f"keep:{name.rstrip('/')}", data, pad)
        else:
            self._skip = data + pad

    def _result(self) -> dict:
        if not self._ended and (self._hdr or self._skip or self._collect):
            raise ValueError("the tar stream ends inside a member")
        return {"files": self.files, "bytes": self.bytes, "dirs": self.dirs, "symlinks": self.symlinks}


def _header_name(h: bytes) -> str:
    name = h[0:100].split(b"\0", 1)[0]
    if h[257:262] == b"ustar":
        prefix = h[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _pax_records(body: bytes) -> Iterator[tuple[str, str]]:
    pos = 0
    while pos < len(body):
        sp = body.find(b" ", pos)
        if sp < 0:
            return
        length = int(body[pos:sp])
        if length <= 0:
            return
        rec = body[sp + 1:pos + length - 1]
        key, _, value = rec.partition(b"=")
        yield key.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")
        pos += length


def tree_fingerprint(paths: Iterable[str | Path], *, skip: Callable[[str], bool] | None = None) -> dict:
    """``files``/``bytes``/``dirs``/``symlinks`` of folders on disk, counted as :class:`TarCounter`
    counts their tarball: ``files`` are regular-file names, ``bytes`` the sizes of distinct inodes
    (hard links count once), the top folders themselves are counted as dirs. ``skip(path)``
    leaves a path (and what is under it) out."""
    files = size = dirs = links = 0
    seen: set[tuple[int, int]] = set()

    def _one(p: str) -> bool:
        nonlocal files, size, dirs, links
        if skip and skip(p):
            return False
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode):
            files += 1
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                size += st.st_size
        elif stat.S_ISLNK(st.st_mode):
            links += 1
        elif stat.S_ISDIR(st.st_mode):
            dirs += 1
            return True
        return False

    for top in paths:
        top = os.path.realpath(top) if os.path.islink(top) else str(top)
        if not os.path.lexists(top) or not _one(top):
            continue
        for root, dnames, fnames in os.walk(top):
            dnames[:] = [d for d in sorted(dnames) if _one(os.path.join(root, d))]   # links: counted, not entered
            for f in fnames:
                _one(os.path.join(root, f))
    return {"files": files, "bytes": size, "dirs": dirs, "symlinks": links}


# -- Redis RDB ------------------------------------------------------------------------

_READ, _SKIP = 0, 1


class _Incomplete(Exception):
    """The walk met a record it cannot step over (a module type, a newer encoding)."""


class RdbCounter(StreamCounter):
    """Keys per db of a streamed RDB file.

    The walk steps over every record (lengths and strings only — values are never built), so
    each db's ``SELECTDB`` is found and its keys counted; ``RESIZEDB`` (the sizes Redis states
    for each db) is read too. ``keys_from``: ``records`` when the walk reached the end of the
    file, else ``resizedb`` (a record type it cannot step over stopped it; dbs after that one
    are missing and ``partial`` says so).
    """

    what = "RDB fingerprint"

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[int, int] = {}
        self.resize: dict[int, tuple[int, int]] = {}
        self.expires: dict[int, int] = {}
        self.complete = False
        self.stopped: str | None = None
        self._gen = self._walk()
        self._req = next(self._gen)
        self._buf = bytearray()

    def _feed(self, data: bytes) -> None:
        if self._gen is None:
            return
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        gen = self._gen
        kind, n = self._req
        try:
            while True:
                if kind == _SKIP:
                    if end - pos < n:
                        kind, n = _SKIP, n - (end - pos)
                        pos = end
                        break
                    pos += n
                    kind, n = gen.send(None)
                else:
                    if end - pos < n:
                        break
                    value = bytes(buf[pos:pos + n])
                    pos += n
                    kind, n = gen.send(value)
        except StopIteration:
            self._gen = None
        except _Incomplete as exc:
            self.stopped = str(exc)
            self._gen = None
        self._req = (kind, n)
        del buf[:pos]

    def _length(self):
        b = (yield (_READ, 1))[0]
        kind = b >> 6
        if kind == 0:
            return b & 0x3F, -1
        if kind == 1:
            return ((b & 0x3F) << 8) | (yield (_READ, 1))[0], -1
        if b == 0x80:
            return int.from_bytes((yield (_READ, 4)), "big"), -1
        if b == 0x81:
            return int.from_bytes((yield (_READ, 8)), "big"), -1
        if kind == 3:
            return None, b & 0x3F
        raise _Incomplete(f"bad length byte {b:#x}")

    def _len(self):
        n, special = yield from self._length()
        if n is None:
            raise _Incomplete("an encoded value where a length belongs")
        return n

    def _skip_string(self):
        n, special = yield from self._length()
        if n is not None:
            if n:
                yield (_SKIP, n)
        elif special in (0, 1, 2):
            yield (_SKIP, (1, 2, 4)[special])
        elif special == 3:             # LZF: compressed length, original length, data
            clen = yield from self._len()
            yield from self._len()
            yield (_SKIP, clen)
        else:
            raise _Incomplete(f"unknown string encoding {special}")

    def _skip_strings(self, count: int):
        for _ in range(count):
            yield from self._skip_string()

    def _skip_value(self, t: int):
        if t == 0 or t in (9, 10, 11, 12, 13, 16, 17, 20):
            yield from self._skip_string()
        elif t in (1, 2, 14):
            yield from self._skip_strings((yield from self._len()))
        elif t == 4:
            yield from self._skip_strings(2 * (yield from self._len()))
        elif t == 3:
            for _ in range((yield from self._len())):
                yield from self._skip_string()
                n = (yield (_READ, 1))[0]
                if n < 253:
                    yield (_SKIP, n)
        elif t == 5:
            for _ in range((yield from self._len())):
                yield from self._skip_string()
                yield (_SKIP, 8)
        elif t == 18:
            for _ in range((yield from self._len())):
                yield from self._len()
                yield from self._skip_string()
        elif t in (15, 19, 21):
            yield from self._skip_stream(t)
        elif t == 7:
            yield from self._len()                  # module id
            while True:
                op = yield from self._len()
                if op == 0:
                    break
                if op in (1, 2):
                    yield from self._len()
                elif op == 3:
                    yield (_SKIP, 4)
                elif op == 4:
                    yield (_SKIP, 8)
                elif op == 5:
                    yield from self._skip_string()
                else:
                    raise _Incomplete(f"module value opcode {op}")
        else:
            raise _Incomplete(f"record type {t}")

    def _skip_stream(self, t: int):
        yield from self._skip_strings(2 * (yield from self._len()))   # listpacks: (node key, listpack)
        for _ in range(3):                                           # length, last id ms, seq
            yield from self._len()
        if t >= 19:
            for _ in range(5):                                       # first id, max deleted id, entries added
                yield from self._len()
        for _ in range((yield from self._len())):                    # consumer groups
            yield from self._skip_string()
            yield from self._len()
            yield from self._len()
            if t >= 19:
                yield from self._len()                               # entries read
            pel = yield from self._len()
            for _ in range(pel):
                yield (_SKIP, 16 + 8)                                # raw id, delivery time
                yield from self._len()                               # delivery count
            for _ in range((yield from self._len())):                # consumers
                yield from self._skip_string()
                yield (_SKIP, 16 if t >= 21 else 8)                  # seen time (+ active time)
                cpel = yield from self._len()
                if cpel:
                    yield (_SKIP, 16 * cpel)

    def _walk(self):
        magic = yield (_READ, 9)
        if magic[:5] != b"REDIS":
            raise _Incomplete("not an RDB file")
        db = 0
        while True:
            op = (yield (_READ, 1))[0]
            if op == 0xFF:
                self.complete = True
                return
            if op == 0xFA:                                           # AUX
                yield from self._skip_string()
                yield from self._skip_string()
            elif op == 0xFE:                                         # SELECTDB
                db = yield from self._len()
                self.records.setdefault(db, 0)
            elif op == 0xFB:                                         # RESIZEDB
                size = yield from self._len()
                expires = yield from self._len()
                self.resize[db] = (size, expires)
            elif op == 0xFD:
                yield (_SKIP, 4)
            elif op == 0xFC:
                yield (_SKIP, 8)
            elif op == 0xF8:                                         # LRU idle
                yield from self._len()
            elif op == 0xF9:                                         # LFU frequency
                yield (_SKIP, 1)
            elif op == 0xF5:                                         # FUNCTION2
                yield from self._skip_string()
            elif op == 0xF4:                                         # SLOT_INFO (7.4+)
                for _ in range(3):
                    yield from self._len()
            elif op in (0xF6, 0xF7):
                raise _Incomplete(f"opcode {op:#x} (function/module aux data)")
            else:
                yield from self._skip_string()                       # the key
                yield from self._skip_value(op)
                self.records[db] = self.records.get(db, 0) + 1

    def _result(self) -> dict:
        if self.complete:
            keys = {str(db): n for db, n in self.records.items() if n}
            out: dict[str, Any] = {"keys": keys, "keys_from": "records"}
        else:
            if not self.resize:
                raise ValueError(f"RDB walk stopped ({self.stopped or 'truncated'}) before any RESIZEDB")
            keys = {str(db): size for db, (size, _) in self.resize.items()}
            out = {"keys": keys, "keys_from": "resizedb", "partial": f"walk stopped at {self.stopped or 'the end'}: "
                                                                     "dbs after it are not listed"}
        if self.resize:
            out["expires"] = {str(db): e for db, (_, e) in self.resize.items() if str(db) in keys}
        return out


# -- etcd / bbolt -----------------------------------------------------------------------

_BOLT_MAGIC = 0xED0CDAED
_BRANCH, _LEAF, _META = 0x01, 0x02, 0x04
_BUCKET_LEAF = 0x01


class _Bolt:
    """A read-only walk over a bbolt file (an etcd snapshot): buckets and their key/values."""

    def __init__(self, buf) -> None:
        self.buf = buf
        metas = []
        for off in (0, 4096):
            try:
                metas.append(self._meta(off))
            except ValueError:
                pass
        if not metas:
            raise ValueError("no valid bbolt meta page")
        meta = max(metas, key=lambda m: m["txid"])
        self.page_size = meta["page_size"]
        self.root = meta["root"]

    def _meta(self, off: int) -> dict:
        flags = struct.unpack_from("<H", self.buf, off + 8)[0]
        magic, version, page_size, _flags, root, _seq, _free, _pgid, txid = struct.unpack_from(
            "<IIIIQQQQQ", self.buf, off + 16)
        if not flags & _META or magic != _BOLT_MAGIC or page_size < 512:
            raise ValueError("not a meta page")
        return {"page_size": page_size, "root": root, "txid": txid}

    def _items(self, page: int, inline: bytes | None = None) -> Iterator[tuple[bytes, bytes, int]]:
        buf, base = (inline, 0) if inline is not None else (self.buf, page * self.page_size)
        flags, count = struct.unpack_from("<HH", buf, base + 8)
        elems = base + 16
        if flags & _BRANCH:
            for i in range(count):
                e = elems + 16 * i
                child = struct.unpack_from("<Q", buf, e + 8)[0]
                yield from self._items(child)
        elif flags & _LEAF:
            for i in range(count):
                e = elems + 16 * i
                eflags, pos, ksize, vsize = struct.unpack_from("<IIII", buf, e)
                k = e + pos
                yield bytes(buf[k:k + ksize]), bytes(buf[k + ksize:k + ksize + vsize]), eflags
        else:
            raise ValueError(f"page {page} is neither branch nor leaf")

    def bucket(self, name: bytes) -> Iterator[tuple[bytes, bytes]]:
        for k, v, flags in self._items(self.root):
            if k == name and flags & _BUCKET_LEAF:
                root = struct.unpack_from("<Q", v, 0)[0]
                items = self._items(root) if root else self._items(0, inline=v[16:])
                for k2, v2, f2 in items:
                    if not f2 & _BUCKET_LEAF:
                        yield k2, v2
                return


def _pb_key(value: bytes) -> bytes:
    """Field 1 (key) of an mvccpb.KeyValue."""
    i = 0
    while i < len(value):
        tag = value[i]
        i += 1
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            while value[i] & 0x80:
                i += 1
            i += 1
        elif wire == 2:
            n = shift = 0
            while True:
                b = value[i]
                i += 1
                n |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            if field == 1:
                return value[i:i + n]
            i += n
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
    return b""


def bolt_fingerprint(path: str | Path) -> dict:
    """``keys`` (live keys at the snapshot's revision) and ``revision`` of an etcd snapshot file.

    The ``key`` bucket holds every kept revision of every key (key: 8-byte revision, ``_``,
    8-byte sub-revision, ``t`` for a deletion); in revision order the last one of a key tells
    whether it exists. ``revision`` is the newest revision in it (or the last compaction's,
    when that is newer), as etcd itself recovers it on start.
    """
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        bolt = _Bolt(buf)
        alive: dict[bytes, bool] = {}
        revision = 0
        for k, v in bolt.bucket(b"key"):
            rev = int.from_bytes(k[:8], "big")
            revision = max(revision, rev)
            alive[_pb_key(v)] = not (len(k) > 17 and k[17:18] == b"t")
        for k, v in bolt.bucket(b"meta"):
            if k == b"finishedCompactRev" and len(v) >= 8:
                revision = max(revision, int.from_bytes(v[:8], "big"))
        keys = sum(alive.values())
    return {"keys": keys, "revision": revision}


# -- SQLite copies ----------------------------------------------------------------------

def sqlite_tables(path: str | Path) -> dict[str, int]:
    """``{table: rows}`` of a SQLite file (a copy this run made; opened read-only)."""
    import sqlite3
    import urllib.parse

    conn = sqlite3.connect("file:" + urllib.parse.quote(str(path)) + "?mode=ro", uri=True)
    try:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        return {n: conn.execute(f'SELECT count(*) FROM "{n.replace(chr(34), chr(34) * 2)}"').fetchone()[0]
                for n in names}
    finally:
        conn.close()


# -- comparing ------------------------------------------------------------------------

#: fields a restored instance does not reproduce exactly; compare() leaves them out
#: (pg_dump_version: the client's; blocks/series: Prometheus compacts blocks, a series counts once
#: per block; keys_from/partial/expires: how the count was made, and TTLs run out; dirs/symlinks:
#: informational; revision: compared as "not older", below)
NOT_REPRODUCIBLE = frozenset({"pg_dump_version", "blocks", "series", "keys_from", "partial", "expires",
                              "dirs", "symlinks"})

_NOUN = {"tables": ("table", "rows"), "keys": ("db", "keys"), "indices": ("index", "docs")}


def _major(version: str) -> str:
    return str(version).split(".")[0].split()[0]


def compare(expected: dict | None, got: dict | None) -> list[str]:
    """Human-readable differences between a manifest's fingerprint and one read from a restored
    instance (empty: they agree). Fields in :data:`NOT_REPRODUCIBLE` are ignored; a field only one
    side has is ignored too (each side records what it can read), except inside the per-table /
    per-db / per-index maps, where a missing entry is a difference."""
    if expected is None:
        return ["the manifest has no fingerprint for this artifact"]
    if got is None:
        return ["no fingerprint could be read from the restored instance"]
    out: list[str] = []
    for key in sorted(set(expected) & set(got)):
        if key in NOT_REPRODUCIBLE:
            continue
        a, b = expected[key], got[key]
        if key == "server_version":
            if _major(a) != _major(b):
                out.append(f"server_version {a} vs {b}")
        elif key == "revision":
            if isinstance(a, int) and isinstance(b, int) and b < a:
                out.append(f"revision {a} in the manifest, {b} restored (older)")
        elif isinstance(a, dict) and isinstance(b, dict):
            noun, unit = _NOUN.get(key, (key.rstrip("s"), ""))
            for name in sorted(set(a) | set(b), key=str):
                if name not in b:
                    out.append(f"{noun} {name}: {a[name]} {unit} in the manifest, missing in the restored instance".replace("  ", " "))
                elif name not in a:
                    out.append(f"{noun} {name}: not in the manifest, {b[name]} {unit} restored".replace("  ", " "))
                elif a[name] != b[name]:
                    out.append(f"{noun} {name}: {a[name]} {unit} in the manifest, {b[name]} restored".replace("  ", " "))
        elif a != b:
            out.append(f"{key}: {a} in the manifest, {b} restored")
    return out
