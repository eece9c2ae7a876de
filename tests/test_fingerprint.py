"""Content fingerprints against real servers: what backup() records in the manifest entry equals
the truth computed independently, fingerprint_live() on the same instance equals it, and
compare() names a removed row / key."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from coderz_backup.tarfile_compat import tarfile
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


# -- Redis ----------------------------------------------------------------------------

def _redis_fill(srv) -> dict[str, int]:
    """Keys of every encoding in dbs 0, 3 and 9; returns the truth per db (DBSIZE)."""
    import redis as redis_lib

    for db in (0, 3, 9):
        r = redis_lib.Redis(host="127.0.0.1", port=srv.port, password=srv.password, db=db)
        n = {0: 500, 3: 40, 9: 3}[db]
        for i in range(n):
            r.set(f"s:{i}", "v" * (i % 50))
        r.set("int", 12345)
        r.set("big", os.urandom(200_000))            # LZF-compressible? random: stored raw
        r.set("compressible", "abc" * 50_000)        # stored LZF-compressed
        r.set("ttl", "x", ex=3600)
        r.rpush("list", *[f"item{i}" for i in range(2000)])            # quicklist
        r.hset("hash-small", mapping={"a": "1", "b": "2"})              # listpack
        r.hset("hash-big", mapping={f"f{i}": "v" * 80 for i in range(600)})   # hashtable
        r.sadd("intset", *range(50))
        r.sadd("set-big", *[f"m{i}" for i in range(700)])                # hashtable
        r.zadd("zset-small", {"a": 1.5, "b": -2})
        r.zadd("zset-big", {f"m{i}": i / 3 for i in range(300)})        # skiplist (type 5)
        r.xadd("stream", {"k": "v"})
        r.xadd("stream", {"k2": "v2"})
        r.xgroup_create("stream", "grp", id="0")
        r.xreadgroup("grp", "consumer-1", {"stream": ">"}, count=1)
        r.close()
    r = srv.client()
    try:
        return {str(db): redis_lib.Redis(host="127.0.0.1", port=srv.port, password=srv.password, db=db).dbsize()
                for db in (0, 3, 9)}
    finally:
        r.close()


@pytest.mark.parametrize("via", ["data_dir", "replication"])
def test_redis_fingerprint_counts_keys_per_db(redis_server, tmp_path, via):
    from coderz_backup.services.redis import RedisConfig, RedisService

    truth = _redis_fill(redis_server)
    cfg = RedisConfig(kind="redis", host="127.0.0.1", port=redis_server.port,
                      password=SecretStr(redis_server.password),
                      data_dir=str(redis_server.data) if via == "data_dir" else None)
    svc = RedisService("redis", cfg, LocalAccess())
    [res] = svc.backup(tmp_path / "snap")
    fp = res.as_manifest()["fingerprint"]
    assert fp["keys"] == truth and fp["keys_from"] == "records"
    assert fp["expires"] == {"0": 1, "3": 1, "9": 1}
    live = svc.fingerprint_live()
    assert live["keys"] == truth and live["expires"] == fp["expires"]
    assert compare(fp, live) == []

    r = redis_server.client()
    r.delete("s:7")
    r.close()
    assert compare(fp, svc.fingerprint_live()) == [
        f"db 0: {truth['0']} keys in the manifest, {truth['0'] - 1} restored"]


def test_redis_rdb_counter_is_read_only_and_chunk_independent(redis_server, tmp_path):
    from coderz_backup.fingerprint import RdbCounter
    from coderz_backup.services.redis import RedisConfig, RedisService

    truth = _redis_fill(redis_server)
    cfg = RedisConfig(kind="redis", host="127.0.0.1", port=redis_server.port,
                      password=SecretStr(redis_server.password))
    [res] = RedisService("redis", cfg, LocalAccess()).backup(tmp_path / "snap")
    raw = (tmp_path / "snap" / "redis.rdb").read_bytes()
    assert res.sha256 == hashlib.sha256(raw).hexdigest()
    for size in (1, 7, 4096, len(raw)):
        c = RdbCounter()
        for i in range(0, len(raw), size):
            c.observe(raw[i:i + size])
        assert c.result()["keys"] == truth
    # a record type the walk cannot step over: RESIZEDB still gives the first db's keys
    from coderz_backup.services.redis import _rdb_length

    at = raw.index(b"\xfe\x00\xfb") + 3        # SELECTDB 0, RESIZEDB, then its two lengths
    _, _, at = _rdb_length(raw, at)
    _, _, at = _rdb_length(raw, at)
    c = RdbCounter()
    c.observe(raw[:at] + b"\x06" + b"\x00" * 64)
    assert c.result()["keys_from"] == "resizedb" and c.result()["keys"] == {"0": truth["0"]}


# -- etcd -----------------------------------------------------------------------------

@pytest.fixture
def etcd(tmp_path):
    from etcd_server import EtcdServer

    if not (shutil.which("etcd") and shutil.which("etcdctl")):
        pytest.skip("etcd-server / etcd-client not installed")
    srv = EtcdServer(tmp_path / "etcd").start()
    try:
        for i in range(30):
            srv.put(f"/apisix/routes/{i}".encode(), json.dumps({"uri": f"/r{i}"}).encode())
        for i in range(5):      # history: overwritten keys, and deleted ones
            srv.put(b"/apisix/routes/1", f"v{i}".encode())
        srv.put(b"gone", b"x")
        srv.call("/kv/deleterange", {"key": _b64(b"gone")})
        srv.put(b"binary\x00\xff", bytes(range(256)))
        yield srv
    finally:
        srv.stop()


def _b64(b: bytes) -> str:
    import base64

    return base64.b64encode(b).decode()


@pytest.mark.parametrize("method", ["gateway", "etcdctl"])
def test_etcd_fingerprint_counts_live_keys_at_the_snapshot_revision(etcd, tmp_path, method):
    import subprocess

    from coderz_backup.services.etcd import EtcdConfig, EtcdService

    svc = EtcdService("etcd", EtcdConfig(kind="etcd", endpoint=etcd.url, method=method), LocalAccess())
    [res] = svc.backup(tmp_path / "snap")
    fp = res.as_manifest()["fingerprint"]
    truth = len(etcd.everything())
    assert fp["keys"] == truth == 31
    # the snapshot's own revision, as etcdctl reads it from the file
    status = json.loads(subprocess.run(["etcdctl", "snapshot", "status", "-w", "json",
                                        str(tmp_path / "snap" / "etcd.snapshot")], capture_output=True,
                                       check=True, env=dict(os.environ, ETCDCTL_API="3")).stdout)
    assert fp["revision"] == status["revision"]
    live = svc.fingerprint_live()
    assert live == fp and compare(fp, live) == []
    etcd.call("/kv/deleterange", {"key": _b64(b"/apisix/routes/3")})
    assert compare(fp, svc.fingerprint_live()) == ["keys: 31 in the manifest, 30 restored"]


# -- Prometheus -----------------------------------------------------------------------

def test_prometheus_fingerprint_sums_the_blocks_and_a_restored_tsdb_reads_the_same(tmp_path):
    from coderz_backup.sandbox import PrometheusServer
    from coderz_backup.services import create
    from coderz_backup.services.prometheus import PrometheusConfig

    srv = PrometheusServer(tmp_path / "prom").start()
    try:
        import httpx

        from coderz_backup.waiting import wait_until

        def three_samples() -> bool:
            r = httpx.get(f"{srv.url}/api/v1/query", params={"query": "count_over_time(up[1m])"}).json()
            return bool(r["data"]["result"]) and float(r["data"]["result"][0]["value"][1]) >= 3

        wait_until(three_samples, timeout=60, interval=0.5)   # TimeoutError fails the test
        svc = create("prometheus", PrometheusConfig(kind="prometheus", url=srv.url, data_dir=str(srv.data)))
        [res] = svc.backup(tmp_path / "snap")
    finally:
        srv.stop()
    fp = res.as_manifest()["fingerprint"]
    art = tmp_path / "snap" / res.path
    # the truth: every meta.json in the tarball, read with tarfile here
    metas = []
    with igzip.open(art) as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
        for m in tar:
            if m.name.endswith("/meta.json") and m.name.count("/") == 1:
                metas.append(json.load(tar.extractfile(m)))
    assert fp == {"blocks": len(metas) >= 1 and len(metas),
                  "series": sum(m["stats"]["numSeries"] for m in metas),
                  "samples": sum(m["stats"]["numSamples"] for m in metas),
                  "min_time": min(m["minTime"] for m in metas), "max_time": max(m["maxTime"] for m in metas)}
    assert fp["samples"] >= 3 and fp["series"] >= 1
    # a restored TSDB (the snapshot's blocks extracted into a data dir) reads back the same
    restored = tmp_path / "restored"
    restored.mkdir()
    with igzip.open(art) as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
        tar.extractall(restored, filter="data")
    live = svc.fingerprint_live(str(restored))
    assert live == fp and compare(fp, live) == []
    block = next(p for p in restored.iterdir() if p.is_dir())
    shutil.rmtree(block)
    diffs = compare(fp, svc.fingerprint_live(str(restored)))
    assert diffs and diffs[0].startswith("samples: ")


# -- configs --------------------------------------------------------------------------

def test_configs_fingerprint_counts_files_and_bytes_and_the_restored_tree(tmp_path):
    from coderz_backup.services.configs import ConfigsConfig, ConfigsService

    conf = tmp_path / "src" / "opt" / "conf"
    (conf / "sub" / "deep").mkdir(parents=True)
    sizes = {"a.yml": 10, "sub/b.env": 0, "sub/deep/c.bin": 300_000, "skip.log": 5}
    for rel, n in sizes.items():
        (conf / rel).write_bytes(os.urandom(n))
    os.symlink("a.yml", conf / "link.yml")
    os.link(conf / "a.yml", conf / "sub" / "hard.yml")
    long_name = "n" * 150 + ".txt"        # a PAX / long-name member
    (conf / long_name).write_text("long\n")
    cfg = ConfigsConfig(kind="configs", paths=[str(conf)], exclude=["*.log"], restore_root=str(tmp_path / "dst"))
    svc = ConfigsService("configs", cfg, LocalAccess())
    [res] = svc.backup(tmp_path / "snap")
    fp = res.as_manifest()["fingerprint"]
    # truth: 5 files kept + the hard link name; bytes of distinct files (the hard link adds none)
    assert fp["files"] == 5 and fp["bytes"] == 10 + 0 + 300_000 + 5   # a.yml, b.env, c.bin, the long one
    assert fp["symlinks"] == 1 and fp["dirs"] == 3
    assert svc.fingerprint_live("/") == fp      # the source tree itself (excludes applied the same way)
    svc.restore(tmp_path / "snap" / res.path)
    live = svc.fingerprint_live()
    assert live == fp and compare(fp, live) == []
    os.unlink(tmp_path / "dst" / str(conf).lstrip("/") / "sub" / "deep" / "c.bin")
    assert compare(fp, svc.fingerprint_live()) == ["bytes: 300015 in the manifest, 15 restored",
                                                   "files: 5 in the manifest, 4 restored"]
