"""Docker access on a real Docker Engine: exec streaming, archives, volumes, lifecycle.

The containers come from ``tests/docker_engine.py`` (a private dockerd, a locally built
Debian image, services run like the Coderz Stack: ``--network host``, ``--init``, a
non-root user, data in named volumes). Nothing is pulled.
"""

from __future__ import annotations

import io
from coderz_backup.tarfile_compat import tarfile
import time

import psycopg
import pytest
import redis as redis_lib
from isal import igzip
from pydantic import SecretStr

from coderz_backup.access import DockerAccess
from coderz_backup.services.etcd import EtcdConfig
from coderz_backup.services.postgres import PostgresConfig
from coderz_backup.services.redis import RedisConfig
from coderz_backup.errors import AccessError, ArtifactError, ProducerError
from coderz_backup.services import create
from coderz_backup.waiting import wait_until
from coderz_backup.writer import write_command



def _acc(c) -> DockerAccess:
    return DockerAccess(c.name if hasattr(c, "name") else c)


@pytest.fixture
def pgc(docker_services):
    return docker_services.postgres()


def _pg_cfg(pgc, **over) -> PostgresConfig:
    data = dict(kind="postgres", container=pgc.name, host="127.0.0.1", port=pgc.port, user=pgc.user,
                password=SecretStr(pgc.password), database=pgc.database)
    data.update(over)
    return PostgresConfig(**data)


# -- exec --------------------------------------------------------------------------------


def test_exec_keeps_stderr_out_of_stdout_and_checks_the_exit_code(pgc):
    acc = _acc(pgc)
    with acc.stream(["sh", "-c", "echo out1; echo 'chatter' >&2; echo out2"], label="t") as cmd:
        out = b"".join(cmd.chunks())
        cmd.finish()
    assert out == b"out1\nout2\n" and cmd.stderr_text == "chatter"
    with pytest.raises(ProducerError, match=r"exited with status 3.*boom"):
        acc.run(["sh", "-c", "echo boom >&2; exit 3"], label="t")


def test_a_dump_that_dies_mid_stream_is_never_committed(pgc, tmp_path):
    acc = _acc(pgc)
    # 8 MB of output, then a failure: the partial file is removed, nothing under the final name
    with pytest.raises(ProducerError, match="status 2"):
        write_command(acc, ["sh", "-c", "head -c 8000000 /dev/zero; echo 'pg_dump: error: lost' >&2; exit 2"],
                      tmp_path, "x.sql.gz", label="pg_dump")
    assert list(tmp_path.iterdir()) == []


def test_postgres_dump_runs_inside_the_container_with_the_password_only_in_its_environment(pgc, tmp_path):
    with psycopg.connect(host="127.0.0.1", port=pgc.port, user=pgc.user, password=pgc.password,
                         dbname=pgc.database) as conn:
        conn.execute("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g")
    svc = create("postgres-prefect", _pg_cfg(pgc))
    assert isinstance(svc.access, DockerAccess)
    seen: list[dict] = []
    api = svc.access.client.api
    real_create = api.exec_create

    def spy(container, cmd, **kw):  # records what the engine is asked to run (not a mock: it calls through)
        seen.append({"cmd": list(cmd), "env": dict(kw.get("environment") or {})})
        return real_create(container, cmd, **kw)

    api.exec_create = spy
    [res] = svc.backup(tmp_path)
    assert res.status == "ok"
    assert seen and seen[0]["cmd"][0] == "pg_dump"
    assert all(pgc.password not in " ".join(s["cmd"]) for s in seen)
    assert seen[0]["env"]["PGPASSWORD"] == pgc.password
    sql = igzip.decompress((tmp_path / res.path).read_bytes()).decode()
    assert "CREATE TABLE public.t" in sql and "PostgreSQL database dump complete" in sql
    assert "chatter" not in sql
    assert "pg_dump header" in svc.verify(tmp_path / res.path)
    # round trip inside the same server: the restore path runs psql in the container too
    with psycopg.connect(host="127.0.0.1", port=pgc.port, user=pgc.user, password=pgc.password,
                         dbname=pgc.database, autocommit=True) as conn:
        conn.execute("DROP TABLE t")
    svc.restore(tmp_path / res.path)
    with psycopg.connect(host="127.0.0.1", port=pgc.port, user=pgc.user, password=pgc.password,
                         dbname=pgc.database) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 20000


def test_stopped_and_missing_containers_fail_clearly(pgc, tmp_path):
    pgc.container.stop(timeout=10)
    with pytest.raises(AccessError, match=f"container '{pgc.name}' is not running.*docker start"):
        create("p", _pg_cfg(pgc)).backup(tmp_path)
    with pytest.raises(AccessError, match="container 'coderz-nope' does not exist"):
        create("p", _pg_cfg(pgc, container="coderz-nope")).backup(tmp_path)
    assert list(tmp_path.iterdir()) == []


# -- files, volumes, images -------------------------------------------------------------


def test_archive_round_trip_through_a_stopped_container_and_a_never_started_volume_helper(docker_services, tmp_path):
    rc = docker_services.redis()
    client = redis_lib.Redis(port=rc.port, password=rc.password)
    client.set("k", "v")
    client.save()
    acc = _acc(rc)
    with acc.open_read("/data/dump.rdb") as fh:
        rdb = fh.read()
    assert rdb.startswith(b"REDIS")
    rc.container.stop(timeout=10)  # Redis saves again on SIGTERM
    # archives work on a stopped container
    with acc.open_read("/data/dump.rdb") as fh:
        rdb = fh.read()
    buf = io.BytesIO()
    assert acc.tar_dir("/data", buf) >= 1
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        assert "dump.rdb" in tar.getnames()
    # the volume alone, through a helper that is created but never started
    vacc = DockerAccess(None, volume=rc.volume, volume_path="/data", helper_image=docker_services.image)
    before = {c.id for c in vacc.client.containers.list(all=True)}
    buf2 = io.BytesIO()
    vacc.tar_dir("/data", buf2)
    buf2.seek(0)
    with tarfile.open(fileobj=buf2) as tar:
        assert tar.extractfile("dump.rdb").read() == rdb
    assert {c.id for c in vacc.client.containers.list(all=True)} == before  # helper removed


def test_helper_image_is_never_pulled(docker_services):
    rc = docker_services.redis()
    vacc = DockerAccess(None, volume=rc.volume, volume_path="/data", helper_image="busybox:latest")
    images = {i.id for i in vacc.client.images.list()}
    with pytest.raises(AccessError, match="image 'busybox:latest' is not on this Docker host and is never pulled"):
        vacc.tar_dir("/data", io.BytesIO())
    assert {i.id for i in vacc.client.images.list()} == images


def test_untar_refuses_unsafe_members_and_writes_nothing(docker_services):
    rc = docker_services.redis()
    acc = _acc(rc)
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        ok = tarfile.TarInfo("fine.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        bad = tarfile.TarInfo("../../etc/evil")
        bad.size = 1
        tar.addfile(bad, io.BytesIO(b"x"))
    with pytest.raises(AccessError, match="unsafe|refusing"):
        acc.untar_into("/data", [evil.getvalue()])
    assert not acc.readable("/etc/evil")

    # a link chain that only a textual check lets through: s -> ., p -> s/.., then p/evil
    from helpers import tar_bytes

    chain = tar_bytes([("sym", "s", "."), ("sym", "p", "s/.."), ("file", "p/evil", "x")])
    with pytest.raises(AccessError, match="unsafe|refusing"):
        acc.untar_into("/data", [chain])
    # (the members before the refused one may have landed: services verify a whole archive with
    # the same rules before they restore from it; what matters here is that nothing got out)
    assert not acc.readable("/evil")


# -- services in containers --------------------------------------------------------------


def test_redis_round_trip_stops_and_starts_the_container(docker_services, tmp_path):
    rc = docker_services.redis()
    cfg = RedisConfig(kind="redis", container=rc.name, port=rc.port, password=SecretStr(rc.password),
                      data_dir="/data")
    client = redis_lib.Redis(port=rc.port, password=rc.password)
    client.mset({f"key:{i}": f"v{i}" for i in range(500)})
    svc = create("redis", cfg)
    [res] = svc.backup(tmp_path)
    assert res.status == "ok"
    client.flushall()
    client.set("only-after", "1")
    detail = svc.restore(tmp_path / res.path)
    assert "500 keys" in detail
    assert rc.running
    client = redis_lib.Redis(port=rc.port, password=rc.password)
    assert client.get("key:42") == b"v42" and client.get("only-after") is None
    assert "PING ok" in svc.health()


def test_etcdctl_snapshot_runs_in_the_container(docker_services, tmp_path):
    ec = docker_services.etcd()
    cfg = EtcdConfig(kind="etcd", container=ec.name, method="etcdctl",
                     endpoint=f"http://127.0.0.1:{ec.ports['client']}")
    [res] = create("etcd-apisix", cfg).backup(tmp_path)
    assert res.status == "ok" and (tmp_path / "etcd-apisix.snapshot").stat().st_size % 512 == 32
    # the temporary file inside the container is gone
    out = DockerAccess(ec.name).run(["sh", "-c", "ls -a /tmp"], label="ls")
    assert ".coderz-backup" not in out


def test_etcd_restore_in_place_in_its_container(docker_services, tmp_path):
    import base64

    import httpx

    ec = docker_services.etcd()
    url = f"http://127.0.0.1:{ec.ports['client']}"

    def put(k: str, v: str) -> None:
        httpx.post(f"{url}/v3/kv/put", json={"key": base64.b64encode(k.encode()).decode(),
                                              "value": base64.b64encode(v.encode()).decode()}).raise_for_status()

    def get(k: str) -> str | None:
        r = httpx.post(f"{url}/v3/kv/range", json={"key": base64.b64encode(k.encode()).decode()}).json()
        kvs = r.get("kvs") or []
        return base64.b64decode(kvs[0]["value"]).decode() if kvs else None

    for i in range(20):
        put(f"/apisix/routes/{i}", f"route-{i}")
    cfg = EtcdConfig(kind="etcd", container=ec.name, endpoint=url, data_dir="/var/lib/etcd/data",
                     name="s1", peer_url=f"http://127.0.0.1:{ec.ports['peer']}")
    svc = create("etcd-apisix", cfg)
    [res] = svc.backup(tmp_path)
    put("/apisix/routes/3", "changed")
    put("/apisix/routes/99", "new")
    detail = svc.restore(tmp_path / res.path)
    assert "old data kept at /var/lib/etcd/data.coderz-old-" in detail
    assert ec.running
    assert get("/apisix/routes/3") == "route-3" and get("/apisix/routes/99") is None
    listing = DockerAccess(ec.name).run(["ls", "/var/lib/etcd", "/tmp"], label="ls")
    assert ".coderz-restore-" not in listing and "coderz-restore-" not in listing.split("/tmp:")[1]


def test_grafana_db_is_copied_consistently_out_of_a_busy_container(docker_services, tmp_path):
    """A container keeps writing grafana.db (two tables, one transaction each time) during the backup."""
    import sqlite3

    from standins.grafana import GrafanaStandin

    from coderz_backup.services.grafana import GrafanaConfig

    writer = ('mkdir -p /tmp/grafana/plugins && echo plugin > /tmp/grafana/plugins/p.txt && '
              'sqlite3 /tmp/grafana/grafana.db "CREATE TABLE a (n INTEGER); CREATE TABLE b (n INTEGER);" && '
              'i=0; while true; do i=$((i+1)); sqlite3 /tmp/grafana/grafana.db '
              '"BEGIN; INSERT INTO a VALUES ($i); INSERT INTO b VALUES ($i); COMMIT;"; done')
    c = docker_services.run_service("coderz-grafana-t", ["sh", "-c", writer], user="nobody")
    api = GrafanaStandin(users={"admin": "pw"}).start()
    try:
        acc = DockerAccess(c.name)
        # the writer loop is committing: both tables exist and rows keep arriving
        def rows() -> int:   # raises while the file or table is not there yet, or the db is busy
            return int(acc.run(["sqlite3", "/tmp/grafana/grafana.db", "SELECT count(*) FROM b"]).strip())

        first = wait_until(rows, timeout=20, interval=0.2, retry=Exception)
        wait_until(lambda: rows() > first, timeout=20, interval=0.2, retry=Exception)
        cfg = GrafanaConfig(kind="grafana", url=api.url, user="admin", password=SecretStr("pw"),
                            container=c.name, data_dir="/tmp/grafana")
        results = create("grafana", cfg).backup(tmp_path)
    finally:
        api.stop()
    tarball = next(r for r in results if r.path.endswith("grafana-data.tar.gz"))
    assert tarball.status == "ok", tarball.error
    c.reload()
    assert c.status == "running"          # unpaused again
    out = tmp_path / "x"
    with tarfile.open(tmp_path / tarball.path) as tar:
        names = tar.getnames()
        tar.extractall(out, filter="data")
    assert "plugins/p.txt" in names and not [n for n in names if n.endswith(("-journal", "-wal"))]
    db = sqlite3.connect(out / "grafana.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    a, b = db.execute("SELECT count(*) FROM a").fetchone()[0], db.execute("SELECT count(*) FROM b").fetchone()[0]
    assert a == b > 0                     # whole transactions only


def test_pg_dump_killed_mid_stream_in_the_container_is_never_ok(pgc, tmp_path):
    """The server ends pg_dump's session while it streams a big table: exit 1, nothing committed."""
    import threading

    with psycopg.connect(host="127.0.0.1", port=pgc.port, user=pgc.user, password=pgc.password,
                         dbname=pgc.database) as conn:
        conn.execute("CREATE TABLE big AS SELECT g AS id, repeat(md5(g::text), 4) AS v "
                     "FROM generate_series(1, 1500000) g")
    killed = threading.Event()

    def killer() -> None:
        with psycopg.connect(host="127.0.0.1", port=pgc.port, user=pgc.user, password=pgc.password,
                             dbname=pgc.database, autocommit=True) as conn:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not killed.is_set():
                rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'coderz-backup' "
                                    "AND query ILIKE 'COPY public.big%'").fetchall()
                for (pid,) in rows:
                    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    killed.set()
                time.sleep(0.01)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    with pytest.raises(ArtifactError, match="pg_dump.*exited with status 1"):
        create("postgres-prefect", _pg_cfg(pgc)).backup(tmp_path)
    t.join()
    assert killed.is_set()
    assert list(tmp_path.iterdir()) == []


def test_command_prefix_file_work_happens_on_the_far_side(docker_engine, docker_services, tmp_path):
    """PrefixAccess (`kubectl exec -i … --`, here `docker exec -i … --`): removing, moving aside and
    chowning run behind the prefix — never on this host, where the same paths may not exist or,
    worse, may hold other data."""
    import os
    import shutil
    import subprocess

    from coderz_backup.access import PrefixAccess

    rc = docker_services.redis()
    prefix = [shutil.which("docker"), "-H", docker_engine.base_url, "exec", "-i", "-u", "root", rc.name]
    acc = PrefixAccess(prefix)
    far = "/var/lib/coderz-far-side"
    assert not os.path.exists(far)
    acc.run(["sh", "-c", f"mkdir -p {far}/data {far}/gone && echo 1 > {far}/data/a && chown -R 999:999 {far}/data"],
            timeout=60)
    acc.move_contents(f"{far}/data", f"{far}/data/.old")
    acc.remove_tree(f"{far}/gone")
    acc.run(["sh", "-c", f"echo 2 > {far}/data/b"], timeout=60)
    acc.chown_like_parent(f"{far}/data")
    listing = subprocess.run(prefix + ["find", far, "-printf", "%p %u\\n"], capture_output=True, text=True,
                             check=True).stdout.split("\n")
    assert f"{far}/data/.old/a 999" in listing and f"{far}/data/b 999" in listing
    assert not [line for line in listing if "/gone" in line]
    assert not os.path.exists(far)   # nothing of it on this host
