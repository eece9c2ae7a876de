"""PostgreSQL service against real PostgreSQL 15 clusters."""

from __future__ import annotations

import gzip
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from helpers import refused_port, watch_argv

from coderz_backup.access import LocalAccess
from coderz_backup.errors import ArtifactError, RestoreError, VerifyError
from coderz_backup.services.postgres import PostgresService


def _fill(db, rows: int = 2000) -> None:
    with db.connect() as c:
        c.execute("CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(10,2), tags text[])")
        c.execute("INSERT INTO items SELECT g, 'item ' || g, g * 1.25, ARRAY['t' || (g %% 7)] "
                  "FROM generate_series(1, %s) g", (rows,))
        c.execute("CREATE VIEW cheap AS SELECT * FROM items WHERE price < 100")
        c.execute("CREATE SEQUENCE counter START 42")


def _snapshot_of(db) -> tuple:
    with db.connect() as c:
        rows = c.execute("SELECT id, name, price, tags FROM items ORDER BY id").fetchall()
        cheap = c.execute("SELECT count(*) FROM cheap").fetchone()[0]
        seq = c.execute("SELECT nextval('counter')").fetchone()[0]
    return rows, cheap, seq


def test_postgres_round_trip_into_a_second_server(make_db, pg_target, tmp_path):
    src = make_db()
    _fill(src)
    svc = PostgresService("postgres-app", src.service_config(), LocalAccess())

    [result] = svc.backup(tmp_path)

    dump = tmp_path / "postgres-app.sql.gz"
    assert result.status == "ok" and result.path == "postgres-app.sql.gz"
    assert result.bytes == dump.stat().st_size and len(result.sha256) == 64
    assert oct(dump.stat().st_mode & 0o777) == "0o600"
    with gzip.open(dump, "rt") as fh:  # readable by standard gzip, as the README says
        assert "-- PostgreSQL database dump" in fh.read(200)
    assert svc.verify(dump) == verified(dump)

    dst = make_db(server=pg_target, name=src.name, user=src.user)  # same names on a fresh server
    restored = PostgresService("postgres-app", dst.service_config(), LocalAccess())
    restored.restore(dump)
    assert _snapshot_of(dst) == _snapshot_of(src)


def test_restore_replaces_existing_data_and_is_all_or_nothing(make_db, tmp_path):
    db = make_db()
    _fill(db, rows=50)
    svc = PostgresService("pg", db.service_config(), LocalAccess())
    svc.backup(tmp_path)
    dump = tmp_path / "pg.sql.gz"
    with db.connect() as c:
        c.execute("DELETE FROM items WHERE id > 10")
        c.execute("CREATE TABLE junk (x int)")
    svc.restore(dump)
    with db.connect() as c:
        assert c.execute("SELECT count(*) FROM items").fetchone()[0] == 50
        assert c.execute("SELECT to_regclass('junk')").fetchone()[0] is None

    # A dump that fails half-way (SQL error) must leave the current database untouched.
    bad = tmp_path / "bad.sql.gz"
    with gzip.open(dump, "rb") as fh:
        text = fh.read()
    marker = b"-- PostgreSQL database dump complete"
    text = text.replace(marker, b"SELECT * FROM no_such_table;\n" + marker)
    with gzip.open(bad, "wb") as fh:
        fh.write(text)
    with db.connect() as c:
        c.execute("DELETE FROM items WHERE id > 20")
    with pytest.raises(RestoreError, match="left unchanged"):
        svc.restore(bad)
    with db.connect() as c:
        assert c.execute("SELECT count(*) FROM items").fetchone()[0] == 20
        assert c.execute("SELECT count(*) FROM pg_database WHERE datname LIKE %s",
                         (db.name + "__coderz%",)).fetchone()[0] == 0


def test_wrong_password_fails_with_pg_dump_message_and_no_file(make_db, tmp_path):
    db = make_db()
    svc = PostgresService("pg", db.service_config(password=__import__("pydantic").SecretStr("wrong-pw-123")),
                          LocalAccess())
    with pytest.raises(ArtifactError, match="password authentication failed") as err:
        svc.backup(tmp_path)
    assert "wrong-pw-123" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no partial, no final file


def test_server_down_fails_clearly(make_db, tmp_path):

    db = make_db()
    svc = PostgresService("pg", db.service_config(port=refused_port()), LocalAccess())
    with pytest.raises(ArtifactError, match="pg_dump .*exited with status 1.*(refused|connect)"):
        svc.backup(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_pg_dump_killed_mid_stream_is_never_ok(make_db, tmp_path):
    db = make_db()
    with db.connect() as c:  # big enough that the dump takes a moment
        c.execute("CREATE TABLE big AS SELECT g AS id, repeat(md5(g::text), 20) AS pad "
                  "FROM generate_series(1, 400000) g")
    svc = PostgresService("pg", db.service_config(), LocalAccess())

    def _kill_pg_dump():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            partial = tmp_path / ".pg.sql.gz.partial"
            if partial.exists() and partial.stat().st_size > 0:
                for pid in os.listdir("/proc"):
                    if pid.isdigit():
                        try:
                            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                        except OSError:
                            continue
                        if b"pg_dump" in cmd and db.name.encode() in cmd:
                            os.kill(int(pid), signal.SIGKILL)
                            return
            time.sleep(0.005)

    killer = threading.Thread(target=_kill_pg_dump)
    killer.start()
    with pytest.raises(ArtifactError, match="killed by signal 9|truncated"):
        svc.backup(tmp_path)
    killer.join()
    assert not (tmp_path / "pg.sql.gz").exists()
    assert not (tmp_path / ".pg.sql.gz.partial").exists()


def verified(dump: Path) -> str:
    """What verify reports for an intact dump: every layer it checked, and the SQL's size."""
    return (f"gzip intact, pg_dump header and trailer present, no psql meta-commands "
            f"({len(gzip.decompress(dump.read_bytes()))} bytes of SQL)")


def test_verify_rejects_truncated_and_corrupted_dumps(make_db, tmp_path):
    db = make_db()
    _fill(db, rows=5000)
    svc = PostgresService("pg", db.service_config(), LocalAccess())
    svc.backup(tmp_path)
    good = (tmp_path / "pg.sql.gz").read_bytes()

    truncated = tmp_path / "truncated.sql.gz"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(VerifyError, match="damaged"):
        svc.verify(truncated)

    corrupt = tmp_path / "corrupt.sql.gz"
    for at in sorted({10, *range(len(good) // 12, len(good), len(good) // 12), len(good) - 5}):
        flipped = bytearray(good)
        flipped[at] ^= 0xFF
        corrupt.write_bytes(bytes(flipped))
        # deflate data or the CRC: the gzip layer notices every flipped byte
        with pytest.raises(VerifyError, match=r"^corrupt\.sql\.gz: gzip stream is damaged \("):
            svc.verify(corrupt)

    # a complete gzip whose SQL lacks the trailer (a dump cut off before compression)
    sql = gzip.decompress(good)
    cut = tmp_path / "cut.sql.gz"
    cut.write_bytes(gzip.compress(sql[: sql.index(b"-- PostgreSQL database dump complete")]))
    with pytest.raises(VerifyError, match="trailer"):
        svc.verify(cut)


def test_password_never_in_process_argv(make_db, tmp_path):
    db = make_db(password="argv-secret-8472")
    with db.connect() as c:
        c.execute("CREATE TABLE big AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 200000) g")
    svc = PostgresService("pg", db.service_config(), LocalAccess())
    with watch_argv() as seen:
        svc.backup(tmp_path)
    assert any(b"pg_dump" in c for c in seen), "the watcher never saw pg_dump running"
    assert not any(b"argv-secret-8472" in c for c in seen)


# -- a dump is code: psql never runs a meta-command from it ----------------------------------


def _dump_with(src, tmp_path, transform) -> Path:
    """A real dump of ``src``, rewritten by ``transform`` (text → text) as an attacker would."""
    svc = PostgresService("postgres-app", src.service_config(), LocalAccess())
    svc.backup(tmp_path)
    dump = tmp_path / "postgres-app.sql.gz"
    with gzip.open(dump, "rt") as fh:
        text = fh.read()
    with gzip.open(dump, "wt") as fh:
        fh.write(transform(text))
    return dump


@pytest.mark.parametrize("where", ["line", "mid-line", "after-unrestrict"])
def test_a_dump_with_a_shell_escape_never_runs_it_and_changes_nothing(make_db, tmp_path, where):
    src = make_db()
    _fill(src, rows=50)
    marker = tmp_path / f"pwned-{where}"
    import re as _re

    def inject(text: str) -> str:
        key = _re.search(r"^\\restrict (\S+)$", text, _re.M).group(1)
        evil = {"line": f"\\! touch {marker}\n",
                "mid-line": f"SELECT 1; \\! touch {marker}\n",
                "after-unrestrict": f"\\unrestrict {key}\n\\! touch {marker}\n"}[where]
        return text.replace("SET statement_timeout = 0;\n", "SET statement_timeout = 0;\n" + evil, 1)

    dump = _dump_with(src, tmp_path, inject)
    svc = PostgresService("postgres-app", src.service_config(), LocalAccess())
    if where == "mid-line":   # not a line of its own: only psql's \restrict can tell, at restore time
        assert svc.verify(dump) == verified(dump)
    else:
        with pytest.raises(VerifyError, match="psql meta-command outside COPY data at line"):
            svc.verify(dump)
    with src.connect() as c:
        c.execute("INSERT INTO items VALUES (9999, 'after the backup', 1, '{}')")
    before = _snapshot_of(src)
    if where == "mid-line":   # psql's \restrict refuses it, inside a scratch database
        with pytest.raises(RestoreError, match=r"left unchanged: psql restore into .*__coderz_restore exited with "
                                               r"status 3: .*backslash commands are restricted"):
            svc.restore(dump)
    else:                     # verify, which a restore runs first, refuses it
        with pytest.raises(VerifyError, match=r"psql meta-command outside COPY data at line \d+ .*refused, nothing "
                                              r"was run"):
            svc.restore(dump)
    assert not marker.exists()
    assert _snapshot_of(src)[0] == before[0]        # the database was not touched
    with src.connect() as c:
        assert c.execute("SELECT count(*) FROM pg_database WHERE datname LIKE %s",
                         (f"{src.name}__coderz%",)).fetchone()[0] == 0


def test_data_that_looks_like_meta_commands_round_trips_exactly(make_db, pg_target, tmp_path):
    """COPY data is data: a row that pg_dump writes as the line ``\\restrict abc`` (a carriage
    return, then 'estrict abc') or ``\\\\! rm`` comes back byte for byte."""
    src = make_db()
    values = ["\restrict abc", "\\! rm -rf /", "\\unrestrict x", "COPY x FROM stdin;", "\\.", "plain"]
    with src.connect() as c:
        c.execute("CREATE TABLE tricky (v text)")
        for v in values:
            c.execute("INSERT INTO tricky VALUES (%s)", (v,))
    svc = PostgresService("postgres-app", src.service_config(), LocalAccess())
    svc.backup(tmp_path)
    dump = tmp_path / "postgres-app.sql.gz"
    with gzip.open(dump, "rt") as fh:
        assert "\n\\restrict abc\n" in fh.read()      # what the stream filter must leave alone
    assert svc.verify(dump) == verified(dump)
    dst = make_db(server=pg_target, name=src.name, user=src.user)
    PostgresService("postgres-app", dst.service_config(), LocalAccess()).restore(dump)
    with dst.connect() as c:
        assert sorted(r[0] for r in c.execute("SELECT v FROM tricky")) == sorted(values)


def test_psql_without_restrict_is_refused_before_anything_changes():
    from coderz_backup.services.postgres import psql_can_restrict

    assert psql_can_restrict("psql (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)")
    assert psql_can_restrict("psql (PostgreSQL) 18.1") and psql_can_restrict("psql (PostgreSQL) 16.10")
    assert not psql_can_restrict("psql (PostgreSQL) 15.13") and not psql_can_restrict("psql (PostgreSQL) 12.22")
    assert not psql_can_restrict("")


def test_the_psql_stream_is_the_same_however_the_dump_is_cut():
    """Chunk boundaries anywhere (inside a line, inside COPY data, at its end) change nothing."""
    from coderz_backup.services.postgres import psql_stream

    dump = (b"--\n-- PostgreSQL database dump\n--\n\n\\restrict K1\n\nSET x = 0;\n"
            b"COPY public.t (v) FROM stdin;\n\\restrict abc\n\\\\! rm\nplain\n\\.\n"
            b"CREATE INDEX i ON public.t (v);\nCOPY public.u (v) FROM stdin;\n1\n\\.\n"
            b"\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict K1\n")
    whole = b"".join(psql_stream([dump], "OURS"))
    assert whole.startswith(b"\\restrict OURS\n") and b"K1" not in whole
    assert b"\n\\restrict abc\n\\\\! rm\n" in whole                       # COPY data kept as it is
    assert whole.replace(b"\\restrict OURS\n", b"", 1) == dump.replace(b"\\restrict K1\n", b"").replace(
        b"\\unrestrict K1\n", b"")
    for size in (1, 2, 3, 7, 13, 64):
        pieces = [dump[i:i + size] for i in range(0, len(dump), size)]
        assert b"".join(psql_stream(pieces, "OURS")) == whole, size
