"""Content fingerprints against real servers: what backup() records in the manifest entry equals
the truth computed independently, fingerprint_live() on the same instance equals it, and
compare() names a removed row / key."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import time

import pytest
from isal import igzip
from pydantic import SecretStr

from coderz_backup.access import LocalAccess
from coderz_backup.fingerprint import compare
from coderz_backup.services.postgres import PostgresService
from coderz_backup.writer import write_stream


# -- PostgreSQL -----------------------------------------------------------------------

def _pg_fill(db) -> None:
    with db.connect() as c:
        c.execute("CREATE TABLE users AS SELECT g AS id, 'user-' || g AS name FROM generate_series(1, 3000) g")
        c.execute("CREATE TABLE empty_one (id int)")
        c.execute("CREATE SCHEMA other")
        c.execute('CREATE TABLE other."Odd ""Name""" (v text, b bytea)')
        c.execute('INSERT INTO other."Odd ""Name""" VALUES (%s, %s), (%s, %s), (%s, %s), (%s, NULL)',
                  ("back\\slash", b"\\x00", "multi\nline\r\nvalue\\.", b"\n\\.\n", "\\.", b"", "tab\there"))
        c.execute("CREATE TABLE parted (k int, v text) PARTITION BY RANGE (k)")
        c.execute("CREATE TABLE parted_lo PARTITION OF parted FOR VALUES FROM (0) TO (100)")
        c.execute("CREATE TABLE parted_hi PARTITION OF parted FOR VALUES FROM (100) TO (1000)")
        c.execute("INSERT INTO parted SELECT g, repeat('x', g) FROM generate_series(0, 999) g")
        c.execute("CREATE MATERIALIZED VIEW mv AS SELECT * FROM users")


def _pg_truth(db) -> dict:
    """count(*) of each table, named by hand (independent of fingerprint_live's catalog query)."""
    with db.connect() as c:
        counts = {name: c.execute(f"SELECT count(*) FROM {sql}").fetchone()[0] for name, sql in [
            ("public.users", "users"), ("public.empty_one", "empty_one"),
            ('other.Odd "Name"', 'other."Odd ""Name"""'), ("public.parted_lo", "parted_lo"),
            ("public.parted_hi", "parted_hi")]}
        version = c.execute("SELECT current_setting('server_version')").fetchone()[0].split()[0]
    return {"server_version": version, "tables": counts}


def test_postgres_fingerprint_equals_count_star_and_the_live_one(make_db, tmp_path):
    db = make_db()
    _pg_fill(db)
    svc = PostgresService("pg", db.service_config(), LocalAccess())
    [res] = svc.backup(tmp_path / "snap")
    fp = res.as_manifest()["fingerprint"]
    truth = _pg_truth(db)
    assert fp["tables"] == truth["tables"]
    assert truth["tables"]["public.users"] == 3000 and truth["tables"]["public.empty_one"] == 0
    assert truth["tables"]['other.Odd "Name"'] == 4
    assert fp["server_version"] == truth["server_version"] and fp["pg_dump_version"]
    assert list(fp) == sorted(fp) and list(fp["tables"]) == sorted(fp["tables"])
    json.dumps(fp)   # plain JSON

    live = svc.fingerprint_live()
    assert live == {"server_version": truth["server_version"], "tables": truth["tables"]}
    assert compare(fp, live) == []

    with db.connect() as c:
        c.execute("DELETE FROM users WHERE id = 17")
    assert compare(fp, svc.fingerprint_live()) == [
        "table public.users: 3000 rows in the manifest, 2999 restored"]


def test_postgres_fingerprint_does_not_change_the_artifact(make_db, tmp_path):
    """The same dump stream written with and without the counter gives the same bytes and sha256
    (pg_dump itself differs run to run: its \\restrict key is random)."""
    from coderz_backup.fingerprint import PgDumpCounter

    db = make_db()
    _pg_fill(db)
    [res] = PostgresService("pg", db.service_config(), LocalAccess()).backup(tmp_path / "b")
    raw = igzip.decompress((tmp_path / "b" / "pg.sql.gz").read_bytes())
    chunks = [raw[i:i + 4099] for i in range(0, len(raw), 4099)]
    plain = write_stream(tmp_path / "a", "pg.sql.gz", iter(chunks))
    counter = PgDumpCounter()
    counted = write_stream(tmp_path / "c", "pg.sql.gz", iter(chunks), observe=counter.observe)
    assert plain.sha256 == counted.sha256 and plain.bytes == counted.bytes
    assert (tmp_path / "a" / "pg.sql.gz").read_bytes() == (tmp_path / "c" / "pg.sql.gz").read_bytes()
    assert counter.result() == res.fingerprint


def test_a_failing_fingerprint_never_fails_the_backup(make_db, tmp_path, monkeypatch, caplog):
    from coderz_backup import fingerprint

    db = make_db()
    _pg_fill(db)

    def boom(self, data):
        raise RuntimeError("counter bug")

    monkeypatch.setattr(fingerprint.PgDumpCounter, "_feed", boom)
    [res] = PostgresService("pg", db.service_config(), LocalAccess()).backup(tmp_path / "snap")
    assert res.status == "ok" and res.fingerprint is None and res.as_manifest()["fingerprint"] is None
    assert "counter bug" in caplog.text
