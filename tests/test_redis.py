"""Redis service against real redis-server 7 instances."""

from __future__ import annotations

import contextlib
import shutil
import time

import pytest
from pydantic import SecretStr

from coderz_backup.access import LocalAccess
from coderz_backup.services.redis import RedisConfig
from coderz_backup.errors import ArtifactError, VerifyError
from coderz_backup.sandbox import RedisServer
from coderz_backup.services.redis import RedisService, crc64


def _cfg(srv: RedisServer, **over) -> RedisConfig:
    data = dict(kind="redis", host="127.0.0.1", port=srv.port, password=SecretStr(srv.password),
                start_command=srv.start_command)
    data.update(over)
    return RedisConfig(**data)


def _fill(srv: RedisServer) -> None:
    r = srv.client()
    r.set("plain", "value")
    r.set("ttl-key", "expires", ex=3600)
    r.hset("hash", mapping={"a": "1", "b": "2"})
    r.rpush("list", *[f"item{i}" for i in range(100)])
    r.sadd("set", "x", "y", "z")
    r.zadd("zset", {"m1": 1.5, "m2": 2.5})
    for i in range(1000):
        r.set(f"bulk:{i}", "v" * 100)


def _state(srv: RedisServer) -> dict:
    r = srv.client()
    out = {}
    for key in r.scan_iter(count=1000):
        t = r.type(key).decode()
        value = {
            "string": lambda: r.get(key),
            "hash": lambda: r.hgetall(key),
            "list": lambda: r.lrange(key, 0, -1),
            "set": lambda: r.smembers(key),
            "zset": lambda: r.zrange(key, 0, -1, withscores=True),
        }[t]()
        out[key] = (t, value)
    return out


def test_crc64_matches_redis_check_value():
    assert crc64(b"123456789") == 0xE9C6D914C4B8D9CA


@pytest.mark.parametrize("via", ["data_dir", "replication"])
def test_redis_round_trip_keeps_keys_and_ttls(redis_server, tmp_path, via):
    _fill(redis_server)
    cfg = _cfg(redis_server, data_dir=str(redis_server.data) if via == "data_dir" else None)
    svc = RedisService("redis", cfg, LocalAccess())
    out = tmp_path / "snap"
    out.mkdir()

    [res] = svc.backup(out)

    rdb = out / "redis.rdb"
    assert res.status == "ok" and res.bytes == rdb.stat().st_size
    assert rdb.read_bytes()[:5] == b"REDIS"
    assert ("replication" in res.details["method"]) == (via == "replication")
    assert "CRC-64" in svc.verify(rdb)
    before = _state(redis_server)

    # A different server (fresh data dir) gets the snapshot: same keys, TTL kept.
    other = RedisServer(tmp_path / "other", password="other-pw").start()
    try:
        other.client().set("stray", "should disappear")
        RedisService("redis", _cfg(other, data_dir=str(other.data)), LocalAccess()).restore(rdb)
        assert _state(other) == before
        ttl = other.client().ttl("ttl-key")
        assert 3500 < ttl <= 3600
    finally:
        other.stop()


def test_empty_redis_backs_up_to_a_valid_empty_rdb(redis_server, tmp_path):
    svc = RedisService("redis", _cfg(redis_server, data_dir=str(redis_server.data)), LocalAccess())
    [res] = svc.backup(tmp_path)
    assert res.status == "ok" and res.details["keys"] == 0
    svc.verify(tmp_path / "redis.rdb")


def test_restore_with_appendonly_loads_the_rdb_not_the_aof(tmp_path):
    """The AOF trap: with appendonly yes, Redis ignores dump.rdb unless we handle it."""
    src = RedisServer(tmp_path / "src", password="pw-src").start()
    dst = RedisServer(tmp_path / "dst", password="pw-dst", appendonly=True).start()
    try:
        _fill(src)
        snap = tmp_path / "snap"
        snap.mkdir()
        RedisService("redis", _cfg(src), LocalAccess()).backup(snap)
        dst.client().set("old", "aof-data")
        time.sleep(0.2)
        msg = RedisService("redis", _cfg(dst, data_dir=str(dst.data)), LocalAccess()).restore(snap / "redis.rdb")
        assert "AOF rebuilt" in msg
        assert _state(dst) == _state(src)
        r = dst.client()
        assert r.config_get("appendonly")["appendonly"] == "yes"
        assert "appendonly yes" in dst.conf.read_text()
        # And the data survives a restart (AOF was rebuilt from the restored data).
        r.shutdown(nosave=True)
        time.sleep(0.3)
        dst.start()
        assert _state(dst) == _state(src)
    finally:
        src.stop()
        dst.stop()


def test_wrong_password_and_down_server_fail_clearly(redis_server, tmp_path):
    tmp_path = tmp_path / "snap"
    tmp_path.mkdir()
    svc = RedisService("redis", _cfg(redis_server, password=SecretStr("nope-pw-991")), LocalAccess())
    with pytest.raises(ArtifactError, match="authentication failed") as err:
        svc.backup(tmp_path)
    assert "nope-pw-991" not in str(err.value)
    redis_server.stop()
    with pytest.raises(ArtifactError, match="unreachable"):
        RedisService("redis", _cfg(redis_server), LocalAccess()).backup(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_verify_rejects_corrupted_or_truncated_rdb(redis_server, tmp_path):
    _fill(redis_server)
    svc = RedisService("redis", _cfg(redis_server), LocalAccess())
    svc.backup(tmp_path)
    good = (tmp_path / "redis.rdb").read_bytes()
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x01
    (tmp_path / "flip.rdb").write_bytes(bytes(flipped))
    with pytest.raises(VerifyError, match="checksum"):
        svc.verify(tmp_path / "flip.rdb")
    (tmp_path / "cut.rdb").write_bytes(good[:-100])
    with pytest.raises(VerifyError):
        svc.verify(tmp_path / "cut.rdb")
    (tmp_path / "text.rdb").write_bytes(b"hello world, not an rdb at all")
    with pytest.raises(VerifyError, match="REDIS"):
        svc.verify(tmp_path / "text.rdb")


def test_redis_check_rdb_agrees_with_our_file(redis_server, tmp_path):
    tool = shutil.which("redis-check-rdb")
    if tool is None:
        pytest.skip("redis-check-rdb not installed")
    import subprocess

    _fill(redis_server)
    RedisService("redis", _cfg(redis_server), LocalAccess()).backup(tmp_path)
    res = subprocess.run([tool, str(tmp_path / "redis.rdb")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_backup_during_an_aof_rewrite_schedules_the_save(redis_server, tmp_path):
    """Redis refuses BGSAVE while an AOF rewrite runs ("Another child process is active (AOF?):
    can't BGSAVE right now"); the backup schedules it and waits instead of failing."""
    _fill(redis_server)
    r = redis_server.client()
    r.config_set("rdb-key-save-delay", 2000)   # µs per key: the rewrite child runs for ~2 s
    try:
        r.bgrewriteaof()
        assert r.info("persistence")["aof_rewrite_in_progress"] == 1
        svc = RedisService("redis", _cfg(redis_server, data_dir=str(redis_server.data)), LocalAccess())
        [res] = svc.backup(tmp_path)
    finally:
        r.config_set("rdb-key-save-delay", 0)
    assert res.status == "ok" and res.details["keys"] >= 1000
    assert "RDB" in svc.verify(tmp_path / res.path)


def test_an_old_dump_where_data_dir_points_is_not_taken_for_this_backup(redis_server, tmp_path):
    """data_dir points at a folder with a leftover dump.rdb while Redis saves elsewhere: the copy
    would pass every format check, so the file's own ctime must come from this BGSAVE."""
    _fill(redis_server)
    redis_server.client().save()
    stale_dir = tmp_path / "old-data"
    stale_dir.mkdir()
    shutil.copy(redis_server.data / "dump.rdb", stale_dir / "dump.rdb")
    time.sleep(6)   # older than this backup's BGSAVE by more than the clock slack
    svc = RedisService("redis", _cfg(redis_server, data_dir=str(stale_dir)), LocalAccess())
    out = tmp_path / "snap"
    out.mkdir()
    with pytest.raises(ArtifactError, match="old file, and Redis saves somewhere else.*CONFIG GET dir"):
        svc.backup(out)
    assert list(out.iterdir()) == []


def test_a_redis_on_a_unix_socket_only_is_backed_up_and_restored_through_it(tmp_path):
    """``socket = …`` instead of host/port: BGSAVE + file, the replication stream, the restore's
    stop/start checks and the client all go through the socket (the server has no TCP port)."""
    srv = RedisServer(tmp_path / "sock-redis", password="sock-pw")
    srv.write_conf()
    sock = tmp_path / "sock-redis" / "redis.sock"
    srv.conf.write_text(srv.conf.read_text().replace(f"port {srv.port}\n", "port 0\n")
                        + f"unixsocket {sock}\nunixsocketperm 700\n")
    import subprocess

    proc = subprocess.Popen(srv.start_command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(unix_socket_path=str(sock), password="sock-pw")
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis on the socket did not start"
                time.sleep(0.1)
        client.mset({f"k{i}": i for i in range(250)})
        for via in ("data_dir", "replication"):
            cfg = RedisConfig(kind="redis", socket=str(sock), password=SecretStr("sock-pw"),
                              start_command=srv.start_command, data_dir=str(srv.data) if via == "data_dir" else None)
            svc = RedisService("redis", cfg, LocalAccess())
            out = tmp_path / via
            out.mkdir()
            [res] = svc.backup(out)
            assert res.status == "ok" and res.details["keys"] == 250, res
            assert ("replication" in res.details["method"]) == (via == "replication")
            assert str(sock) in svc.restore_target()
        client.flushall()
        cfg = RedisConfig(kind="redis", socket=str(sock), password=SecretStr("sock-pw"),
                          start_command=srv.start_command, data_dir=str(srv.data))
        # restore: SHUTDOWN NOSAVE over the socket, wait until the socket refuses, start, wait until loaded
        assert "250 keys" in RedisService("redis", cfg, LocalAccess()).restore(tmp_path / "data_dir" / "redis.rdb")
        assert redis.Redis(unix_socket_path=str(sock), password="sock-pw").dbsize() == 250
    finally:
        with contextlib.suppress(Exception):
            redis.Redis(unix_socket_path=str(sock), password="sock-pw").shutdown(nosave=True)
        proc.kill()
        subprocess.run(["pkill", "-f", str(srv.conf)], check=False)
