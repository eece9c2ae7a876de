"""The Coderz Stack as containers, end to end through the real flows and the CLI.

``coderz-postgres`` (two databases), ``coderz-redis``, ``coderz-etcd`` and an application
container ``coderz-app`` (each name with a suffix of its own per test, so a leftover or a second
session never meets a container of the same name) run on the private test engine
(``tests/docker_engine.py``) with ``--network host`` on 127.0.0.1, non-root, data in named
volumes. The CLI runs the ``coderz-backup`` flow in Docker mode (pg_dump and etcdctl exec'd in
the containers, the RDB copied out of the container), then ``coderz-restore`` stops the
dependent app container, restores, starts everything again and the data is back.
"""

from __future__ import annotations

import json
import secrets

import httpx

import psycopg
import pytest
import redis as redis_lib

from helpers import run_cli

from coderz_backup.waiting import wait_until


@pytest.fixture
def docker_stack(docker_engine, docker_services, tmp_path, cli_env):
    tag = secrets.token_hex(3)
    names = {n: f"coderz-{n}-{tag}" for n in ("postgres", "redis", "etcd", "prometheus", "app")}
    pg = docker_services.postgres(name=names["postgres"], database="prefect")
    with psycopg.connect(host="127.0.0.1", port=pg.port, user=pg.user, password=pg.password,
                         dbname="prefect", autocommit=True) as conn:
        conn.execute("CREATE DATABASE coderapi")
        conn.execute("CREATE TABLE flow_run AS SELECT g AS id, 'run-' || g AS name FROM generate_series(1, 5000) g")
    with psycopg.connect(host="127.0.0.1", port=pg.port, user=pg.user, password=pg.password,
                         dbname="coderapi") as conn:
        conn.execute("CREATE TABLE users AS SELECT g AS id, 'u' || g AS email FROM generate_series(1, 3000) g")
    rd = docker_services.redis(name=names["redis"])
    redis_lib.Redis(port=rd.port, password=rd.password).mset({f"session:{i}": i for i in range(300)})
    et = docker_services.etcd(name=names["etcd"])
    pr = docker_services.prometheus(name=names["prometheus"])
    wait_until(lambda: httpx.get(f"{pr.url}/api/v1/query", params={"query": "up"}).json()["data"]["result"],
               timeout=30, interval=0.3, error=lambda _: AssertionError(f"{names['prometheus']} scraped nothing"))
    # the app refuses to start again once /tmp/coderz-broken exists (a test makes it so)
    app = docker_services.run_service(
        names["app"], ["sh", "-c", "if [ -e /tmp/coderz-broken ]; then exit 3; fi; exec sleep infinity"],
        user="nobody")
    conf = tmp_path / "configs"
    conf.mkdir()
    (conf / "docker-compose.yml").write_text("services: {}\n")
    dest = tmp_path / "snapshots"
    config = tmp_path / "coderz-backup.toml"
    config.write_text(f'''dest = "{dest}"
retries = 1
retry_delay_s = [0.2]

[services.postgres-prefect]
kind = "postgres"
title = "PostgreSQL — Prefect DB"
container = "{names['postgres']}"
port = {pg.port}
user = "{pg.user}"
password = "env:T_PG"
database = "prefect"
stop_containers = ["{names['app']}"]

[services.postgres-coderapi]
kind = "postgres"
title = "PostgreSQL — CoderAPI DB"
container = "{names['postgres']}"
port = {pg.port}
user = "{pg.user}"
password = "env:T_PG"
database = "coderapi"

[services.redis]
kind = "redis"
container = "{names['redis']}"
port = {rd.port}
password = "env:T_REDIS"
data_dir = "/data"
stop_containers = ["{names['app']}"]

[services.prometheus]
kind = "prometheus"
container = "{names['prometheus']}"
url = "{pr.url}"
data_dir = "/prometheus"

[services.configs]
kind = "configs"
paths = ["{conf}"]

[services.etcd-apisix]
kind = "etcd"
container = "{names['etcd']}"
method = "etcdctl"
endpoint = "http://127.0.0.1:{et.ports['client']}"
''')
    env = dict(cli_env, T_PG=pg.password, T_REDIS=rd.password, DOCKER_HOST=docker_engine.base_url)

    class S:
        pass

    s = S()
    s.pg, s.redis, s.etcd, s.app, s.config, s.dest, s.env = pg, rd, et, app, config, dest, env
    s.names = names
    s.secrets = [pg.password, rd.password]
    return s


def _manifest(s) -> dict:
    return json.loads((s.dest / "latest" / "manifest.json").read_text())


def test_full_backup_of_the_containerised_stack_then_restore_stops_and_restarts_containers(docker_stack):
    s = docker_stack
    res = run_cli(["backup", "--config", str(s.config)], s.env)
    assert res.returncode == 0, res.stdout + res.stderr
    for line in ("✓ postgres-prefect.sql.gz (", "✓ postgres-coderapi.sql.gz (", "✓ redis.rdb (",
                 "✓ prometheus-snapshot.tar.gz (", "✓ configs.tar.gz (", "✓ etcd-apisix.snapshot (",
                 "║ ✓ Passed : 6"):
        assert line in res.stdout
    m = _manifest(s)
    assert m["status"] == "ok" and {a["status"] for a in m["artifacts"]} == {"ok"}
    log = (s.dest / "latest" / "backup.log").read_text()
    for secret in s.secrets:
        assert secret not in res.stdout + res.stderr + log + json.dumps(m)

    # change the data, then restore through the approval-less CLI path (--yes)
    with psycopg.connect(host="127.0.0.1", port=s.pg.port, user=s.pg.user, password=s.pg.password,
                         dbname="prefect", autocommit=True) as conn:
        conn.execute("DELETE FROM flow_run WHERE id > 10")
    r = redis_lib.Redis(port=s.redis.port, password=s.redis.password)
    r.flushall()
    s.app.reload()
    app_started = s.app.attrs["State"]["StartedAt"]
    res = run_cli(["restore", "--yes", "--no-safety-backup", "--only", "postgres-prefect,redis",
                   "--config", str(s.config)], s.env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    with psycopg.connect(host="127.0.0.1", port=s.pg.port, user=s.pg.user, password=s.pg.password,
                         dbname="prefect") as conn:
        assert conn.execute("SELECT count(*) FROM flow_run").fetchone()[0] == 5000
    r = redis_lib.Redis(port=s.redis.port, password=s.redis.password)
    assert r.get("session:299") == b"299"
    # the app container was stopped for the restore and runs again; redis' own container too
    app = s.app
    app.reload()
    assert app.status == "running" and app.attrs["State"]["StartedAt"] != app_started
    assert s.redis.running and s.pg.running
    restore_log = (s.dest / "latest" / "restore.log").read_text()
    assert f"container {s.names['app']} stopped for the restore" in restore_log
    assert f"container {s.names['app']} started again" in restore_log
    assert "docker compose restart" not in res.stdout  # only printed when it could not restart them


def test_a_refused_restore_changes_nothing_and_leaves_the_containers_running(docker_stack):
    s = docker_stack
    res = run_cli(["backup", "--config", str(s.config)], s.env)
    assert res.returncode == 0, res.stdout + res.stderr
    r = redis_lib.Redis(port=s.redis.port, password=s.redis.password)
    r.set("after-backup", "1")
    s.app.reload()
    started = s.app.attrs["State"]["StartedAt"]
    res = run_cli(["restore", "--only", "redis", "--config", str(s.config)], s.env)   # no terminal, no --yes
    assert res.returncode == 3, res.stdout + res.stderr
    assert r.get("after-backup") == b"1"
    s.app.reload()
    assert s.app.status == "running" and s.app.attrs["State"]["StartedAt"] == started
    assert s.redis.running


def test_a_container_that_does_not_come_back_makes_the_restore_exit_1_with_the_hint(docker_stack):
    s = docker_stack
    res = run_cli(["backup", "--config", str(s.config)], s.env)
    assert res.returncode == 0, res.stdout + res.stderr
    r = redis_lib.Redis(port=s.redis.port, password=s.redis.password)
    r.set("after-backup", "1")
    assert s.app.exec_run(["touch", "/tmp/coderz-broken"]).exit_code == 0
    res = run_cli(["restore", "--yes", "--no-safety-backup", "--only", "redis", "--config", str(s.config)],
                  s.env, timeout=600)
    # the data is back, but the stack is not whole again: not a success
    assert res.returncode == 1, res.stdout + res.stderr
    assert r.get("after-backup") is None and r.get("session:299") == b"299"
    assert s.names["app"] in res.stdout + res.stderr and "cd /opt/coderz && docker compose restart" in res.stdout
    s.app.reload()
    assert s.app.status == "exited"


def test_a_stopped_container_fails_only_its_artifact(docker_stack):
    s = docker_stack
    s.redis.container.stop(timeout=10)
    res = run_cli(["backup", "--config", str(s.config)], s.env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "✗ redis.rdb — " in res.stdout and s.names["redis"] in res.stdout
    m = _manifest(s)
    by = {a["path"]: a for a in m["artifacts"]}
    assert m["status"] == "partial"
    assert by["redis.rdb"]["status"] == "failed"
    assert all(a["status"] == "ok" for p, a in by.items() if p != "redis.rdb")
    assert not (s.dest / "latest" / "redis.rdb").exists()


def _drill_leftovers(client) -> list[str]:
    flt = {"label": "io.coderz.backup.drill"}
    return ([c.name for c in client.containers.list(all=True, filters=flt)]
            + [v.name for v in client.volumes.list(filters=flt)])


def _production_state(s) -> dict:
    with psycopg.connect(host="127.0.0.1", port=s.pg.port, user=s.pg.user, password=s.pg.password,
                         dbname="prefect") as conn:
        rows = conn.execute("SELECT count(*) FROM flow_run").fetchone()[0]
    r = redis_lib.Redis(port=s.redis.port, password=s.redis.password)
    started = {}
    for c in (s.pg.container, s.redis.container, s.app):
        c.reload()
        started[c.name] = (c.status, c.attrs["State"]["StartedAt"])
    return {"rows": rows, "keys": r.dbsize(), "started": started}


def test_a_drill_of_the_containerised_stack_restores_into_scratch_containers_of_the_production_images(
        docker_stack, docker_engine):
    s = docker_stack
    res = run_cli(["backup", "--config", str(s.config)], s.env)
    assert res.returncode == 0, res.stdout + res.stderr
    before = _production_state(s)
    res = run_cli(["drill", "--json", "--config", str(s.config)], s.env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    status = {r["service"]: r["status"] for r in out["results"]}
    assert status == {"postgres-prefect": "matched", "postgres-coderapi": "matched", "redis": "matched",
                      "prometheus": "matched", "configs": "matched", "etcd-apisix": "matched"}, res.stdout
    by = {r["service"]: r for r in out["results"]}
    assert by["postgres-prefect"]["got"]["tables"] == {"public.flow_run": 5000}
    assert by["redis"]["got"]["keys"] == {"0": 300}
    # the production containers kept running the whole time, untouched; nothing of the drill is left
    assert _production_state(s) == before
    assert _drill_leftovers(docker_engine.client) == []
    log = (s.dest / "latest" / "drill.log").read_text()
    assert "scratch container coderz-drill-" in log and f"{s.names['postgres']}'s image" in log and "--network none" in log
    for secret in s.secrets:
        assert secret not in res.stdout + res.stderr + log


def test_a_killed_docker_mode_drill_leaves_no_scratch_container_or_volume(docker_stack, docker_engine):
    import os
    import signal
    import subprocess
    import sys

    s = docker_stack
    assert run_cli(["backup", "--only", "postgres-prefect", "--config", str(s.config)], s.env).returncode == 0
    before = _production_state(s)
    client = docker_engine.client
    proc = subprocess.Popen([sys.executable, "-m", "coderz_backup", "drill", "--only", "postgres-prefect",
                             "--config", str(s.config)], env=s.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=os.getcwd())
    try:
        def scratch():
            if proc.poll() is not None:
                raise AssertionError(f"the drill ended (exit {proc.returncode}) before a scratch container appeared")
            return [c for c in client.containers.list(filters={"label": "io.coderz.backup.drill"})
                    if not c.name.endswith("-prep")]

        [c] = wait_until(scratch, timeout=120, interval=0.1,
                         error=lambda _: AssertionError("no scratch container appeared within 120 s"))
        # a container of the production container's own image, with no network at all
        assert c.attrs["Image"] == s.pg.container.attrs["Image"]
        assert c.attrs["HostConfig"]["NetworkMode"] == "none"
        assert not c.attrs["HostConfig"].get("PortBindings")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    wait_until(lambda: not _drill_leftovers(client), timeout=60, interval=0.3,
               error=lambda _: AssertionError(f"left behind after 60 s: {_drill_leftovers(client)}"))
    assert _production_state(s) == before
