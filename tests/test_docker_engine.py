"""The test suite's private Docker Engine, its locally built base image and the service starters.

These run against a real dockerd (``tests/docker_engine.py``); no image is ever pulled (with
``CODERZ_TEST_REGISTRY`` set the service starters pull the official images instead — off here).
"""

from __future__ import annotations

import os
import re
import socket
import time

import docker
import httpx
import psycopg
import pytest
import redis

from docker_engine import BASE_URL, DATA_ROOT, IMAGE, IMAGE_NAME, PIDFILE, REGISTRY_ENV, DockerTestError

from coderz_backup.waiting import wait_until


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def _other_dockerd_running() -> bool:
    ours = PIDFILE.read_text().strip() if PIDFILE.exists() else None
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and pid != ours and open(f"/proc/{pid}/comm").read().strip() == "dockerd":
                return True
        except OSError:
            pass
    return False


def _argv_of_all_processes() -> list[bytes]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    out.append(fh.read())
            except OSError:
                pass
    return out


def test_private_engine_has_no_bridge_network(docker_engine):
    client = docker_engine.client
    assert docker_engine.base_url == BASE_URL
    info = client.info()
    assert info["DockerRootDir"] == str(DATA_ROOT)
    assert info["Driver"] == "overlay2"
    names = {n.name for n in client.networks.list()}
    assert "bridge" not in names and names <= {"host", "none"}
    if not _other_dockerd_running():  # a system Docker may own a docker0; ours must not create one
        assert not os.path.exists("/sys/class/net/docker0")


def test_base_image_is_local_and_missing_images_are_never_pulled(docker_engine, base_image):
    client = docker_engine.client
    assert re.fullmatch(rf"{IMAGE_NAME}:[0-9a-f]{{12}}", base_image)
    img = client.images.get(base_image)
    assert img.attrs["Config"]["Env"] and any(e.startswith("PATH=/usr/lib/postgresql/15/bin:")
                                              for e in img.attrs["Config"]["Env"])
    since = int(time.time()) - 1
    missing = "coderz-test-missing:does-not-exist"
    with pytest.raises(docker.errors.ImageNotFound):
        client.containers.create(missing, ["true"], network_mode="none")
    with pytest.raises(DockerTestError, match="never pulled"):
        docker_engine.run_service("coderz-never", ["true"], image=missing)
    until = int(time.time()) + 1
    events = list(client.events(since=since, until=until, decode=True, filters={"type": "image"}))
    assert [e for e in events if e.get("Action") == "pull"] == []
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(missing)
    assert client.containers.list(all=True, filters={"name": "coderz-never"}) == []


def test_postgres_container_accepts_password_login_over_loopback(docker_services):
    pg = docker_services.postgres()
    c = pg.reload()
    assert c.attrs["HostConfig"]["NetworkMode"] == "host" and c.attrs["HostConfig"]["Init"] is True
    if not os.environ.get(REGISTRY_ENV):  # the official image starts as root and drops to postgres itself
        assert c.attrs["Config"]["User"] == "postgres"
    # either way the server runs as the image's `postgres` user (by name: the uids differ between images)
    owner = c.exec_run(["sh", "-c", "stat -c %U /proc/$(head -n1 /var/lib/postgresql/data/postmaster.pid)"])
    assert (owner.exit_code, owner.output.decode().strip()) == (0, "postgres")
    [mount] = c.attrs["Mounts"]
    assert (mount["Type"], mount["Name"], mount["Destination"]) == ("volume", pg.volume, "/var/lib/postgresql/data")
    dsn = dict(host="127.0.0.1", port=pg.port, user=pg.user, dbname=pg.database, connect_timeout=5)
    with psycopg.connect(**dsn, password=pg.password) as conn:
        row = conn.execute("SELECT current_user, current_database(), current_setting('server_version_num')::int, "
                           "current_setting('data_directory')").fetchone()
    assert row[:2] == (pg.user, pg.database)
    assert 150000 <= row[2] < 160000
    assert row[3] == "/var/lib/postgresql/data"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(**dsn, password="wrong-password").close()


def test_redis_container_requires_its_password_and_keeps_it_out_of_argv(docker_services):
    rd = docker_services.redis()
    assert redis.Redis(host="127.0.0.1", port=rd.port, password=rd.password).ping() is True
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=rd.port).get("k")
    assert not [a for a in _argv_of_all_processes() if rd.password.encode() in a]


def test_prometheus_container_is_ready_scrapes_itself_and_has_the_admin_api(docker_services):
    prom = docker_services.prometheus()
    assert httpx.get(f"{prom.url}/-/ready", timeout=5).status_code == 200
    # the first self-scrape lands within a few scrape intervals
    result = wait_until(lambda: httpx.get(f"{prom.url}/api/v1/query", params={"query": 'up{job="prometheus"}'},
                                          timeout=5).json()["data"]["result"],
                        timeout=15, interval=0.3, error=lambda _: AssertionError("no self-scrape within 15 s"))
    assert [r["value"][1] for r in result] == ["1"]
    snap = httpx.post(f"{prom.url}/api/v1/admin/tsdb/snapshot", timeout=30)
    assert snap.status_code == 200 and snap.json()["status"] == "success"
    name = snap.json()["data"]["name"]
    listing = prom.container.exec_run(["ls", f"/prometheus/snapshots/{name}"])
    assert listing.exit_code == 0


def test_etcd_container_answers_version_and_stores_keys(docker_services):
    et = docker_services.etcd()
    version = httpx.get(f"{et.url}/version", timeout=5).json()
    assert version["etcdserver"].startswith("3.4.")
    put = httpx.post(f"{et.url}/v3/kv/put", json={"key": "Zm9v", "value": "YmFy"}, timeout=5)
    assert put.status_code == 200
    got = httpx.post(f"{et.url}/v3/kv/range", json={"key": "Zm9v"}, timeout=5).json()
    assert [kv["value"] for kv in got["kvs"]] == ["YmFy"]


def test_stopped_container_is_not_running_and_its_volume_survives(docker_services):
    rd = docker_services.redis()
    r = redis.Redis(host="127.0.0.1", port=rd.port, password=rd.password)
    r.set("survives", "yes")
    rd.container.stop(timeout=10)
    assert rd.running is False
    assert rd.container.status == "exited"
    assert _refused(rd.port)
    rd.container.start()
    docker_services.wait_ready(rd.container, lambda c: r.ping())
    assert rd.running is True
    assert r.get("survives") == b"yes"


def test_failed_start_reports_the_log_and_cleanup_removes_everything(docker_engine):
    client = docker_engine.client
    svc = docker_engine.scope()
    name = "coderz-broken-" + svc.scope[:6]
    with pytest.raises(DockerTestError, match=r"(?s)exited \(3\).*boom-7431"):
        svc.run_service(name, ["bash", "-c", "echo boom-7431 >&2; exit 3"],
                        volumes={f"{name}-data": "/data"}, user="redis", ready=lambda c: False)
    flt = {"label": f"coderz.test.scope={svc.scope}"}
    assert [c.name for c in client.containers.list(all=True, filters=flt)] == [name]
    assert [v.name for v in client.volumes.list(filters=flt)] == [f"{name}-data"]
    svc.cleanup()
    assert client.containers.list(all=True, filters=flt) == []
    assert client.volumes.list(filters=flt) == []


def test_the_registry_switch_picks_official_images_only_when_set():
    from docker_engine import service_image

    services = ("postgres", "redis", "prometheus", "etcd")
    for off in (None, ""):  # switch off: every service runs the locally built base image
        assert [service_image(s, off) for s in services] == [IMAGE] * 4
    assert [service_image(s, "docker.io") for s in services] == [
        "docker.io/library/postgres:15", "docker.io/library/redis:7", "docker.io/prom/prometheus:v2.42.0",
        "quay.io/coreos/etcd:v3.4.23",  # etcd is not on Docker Hub
    ]
    assert [service_image(s, "registry.local:5000/") for s in services] == [
        "registry.local:5000/library/postgres:15", "registry.local:5000/library/redis:7",
        "registry.local:5000/prom/prometheus:v2.42.0", "registry.local:5000/coreos/etcd:v3.4.23",
    ]
    assert service_image("redis", "https://mirror.local") == "mirror.local/library/redis:7"
