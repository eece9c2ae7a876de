"""The product document's installation, on the suite's private Docker Engine: the worker image
from ``deployments/worker/Dockerfile`` (FROM the locally built base image, no network), run by
``deployments/worker/compose.yaml`` as ``coderz-prefect-worker`` beside the Prefect server
container of its ``server`` profile, an ``install --prefix`` layout mounted at the same path,
and the document's commands verbatim:

    docker exec coderz-prefect-worker prefect --no-prompt deploy --all
    docker exec coderz-prefect-worker prefect deployment run coderz-backup/coderz-backup-daily
    bash /opt/coderz/backup/backup.sh --keep 14
    bash /opt/coderz/backup/restore.sh --list

The container names are the document's, so one run at a time holds a lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import pytest
import redis as redis_lib

from coderz_backup.waiting import wait_until
from docker_engine import RUN_DIR, free_port

ROOT = Path(__file__).resolve().parent.parent
WORKER = "coderz-prefect-worker"
SERVER = "coderz-prefect-server"
WHEEL_CACHE = Path("/var/cache/coderz-test-wheels")
# Besides the project's dependencies as this venv's Python resolves them: setuptools (the build
# backend, installed with no index) and what the base image's older Python (Debian's 3.11.2) adds
# by marker — backports.tarfile (< 3.11.4) and async-timeout for redis (< 3.11.3).
EXTRA_WHEELS = ("setuptools>=68", "backports.tarfile", "async-timeout>=4.0.3")
# what .dockerignore lets into the build context (the test copies exactly that)
CONTEXT = ("pyproject.toml", "constraints.txt", "README.md", ".dockerignore", "coderz_backup",
           "deployments/worker")

pytestmark = pytest.mark.skipif(shutil.which("docker-compose") is None and shutil.which("docker") is None,
                                reason="docker CLI / docker-compose missing: bash scripts/docker-test-engine.sh install")


def _wheelhouse() -> Path:
    """Wheels of every runtime dependency (cached by pyproject.toml + constraints.txt), so the image
    build needs no network. Built once per dependency change with the venv's pip (PyPI)."""
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + (ROOT / "constraints.txt").read_bytes()
                         + "\0".join(EXTRA_WHEELS).encode()).hexdigest()[:16]
    done = WHEEL_CACHE / key
    if (done / ".complete").exists():
        return done
    part = WHEEL_CACHE / f"{key}.partial-{os.getpid()}"
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", str(part),
                    "-c", str(ROOT / "constraints.txt"), str(ROOT), *EXTRA_WHEELS],
                   check=True, timeout=1200)
    for own in part.glob("coderz_backup-*.whl"):
        own.unlink()
    (part / ".complete").touch()
    shutil.rmtree(done, ignore_errors=True)
    part.rename(done)
    return done


def _docker(env: dict, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert res.returncode == 0, f"docker {' '.join(args)} → {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def worker_image(docker_engine, tmp_path_factory) -> str:
    """``docker build -f deployments/worker/Dockerfile .`` — the README's command — on the test
    engine, from a copy of the repository with the wheels dropped in deployments/worker/wheels/."""
    ctx = tmp_path_factory.mktemp("worker-build")
    for rel in CONTEXT:
        src = ROOT / rel
        if src.is_dir():
            shutil.copytree(src, ctx / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.whl"))
        else:
            (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, ctx / rel)
    digest = hashlib.sha256()
    for p in sorted(x for x in ctx.rglob("*") if x.is_file()):
        digest.update(str(p.relative_to(ctx)).encode() + b"\0" + p.read_bytes())
    digest.update(docker_engine.image.encode())
    tag = f"coderz-backup-test:{digest.hexdigest()[:12]}"
    env = dict(os.environ, DOCKER_HOST=docker_engine.base_url, DOCKER_BUILDKIT="0")
    if _docker(env, "image", "inspect", tag, check=False).returncode == 0:
        return tag
    wheels = _wheelhouse()
    for whl in wheels.glob("*.whl"):
        os.link(whl, ctx / "deployments/worker/wheels" / whl.name)
    # --network none: no RUN step reaches anything; the FROM image is local, so nothing is pulled
    res = _docker(env, "build", "--network", "none", "-f", "deployments/worker/Dockerfile", "-t", tag,
                  "--build-arg", f"BASE={docker_engine.image}",
                  "--build-arg", "PIP_OPTIONS=--no-index --find-links=/wheels", str(ctx), timeout=1200)
    # the base image has every tool: the apt step installs nothing (it could not: no network)
    assert not re.search(r"^worker image: installing", res.stdout, re.M), res.stdout
    return tag


@pytest.fixture
def document_host(docker_engine, docker_services, worker_image, tmp_path):
    """An installed /opt/coderz (under a prefix), containerised PostgreSQL and Redis, and the
    compose file's two containers up; yields what the tests need; `down -v` after."""
    lock_fd = os.open(RUN_DIR / "worker-container.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    prefix = tmp_path / "host"
    prefix.mkdir()
    res = subprocess.run([sys.executable, "-m", "coderz_backup", "install", "--prefix", str(prefix)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    coderz = prefix / "opt/coderz"

    pg = docker_services.postgres(database="coderapi")
    with psycopg.connect(host="127.0.0.1", port=pg.port, user=pg.user, password=pg.password,
                         dbname="coderapi", autocommit=True) as conn:
        conn.execute("CREATE TABLE users AS SELECT g AS id, 'u' || g AS email FROM generate_series(1, 2500) g")
    rd = docker_services.redis()
    redis_lib.Redis(port=rd.port, password=rd.password).mset({f"session:{i}": i for i in range(200)})
    (coderz / "configs/docker-compose.yml").write_text("services: {}\n")
    toml_path = coderz / "backup/coderz-backup.toml"
    toml_path.write_text(toml_path.read_text() + f'''
[services.postgres-coderapi]
kind = "postgres"
title = "PostgreSQL — CoderAPI DB"
host = "127.0.0.1"
port = {pg.port}
user = "{pg.user}"
password = "env:PG_CODERAPI_PASSWORD"
database = "coderapi"

[services.redis]
kind = "redis"
container = "{rd.name}"
port = {rd.port}
password = "env:REDIS_PASSWORD"
data_dir = "/data"

[services.configs]
kind = "configs"
paths = ["{coderz / 'configs'}"]
''')

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    project = tmp_path / "compose"
    project.mkdir()
    env_text = (ROOT / "deployments/worker/env.example").read_text()
    values = {"PREFECT_API_URL": api, "CODERZ_WORKER_IMAGE": worker_image, "CODERZ_ROOT": str(coderz),
              "PG_CODERAPI_PASSWORD": pg.password, "REDIS_PASSWORD": rd.password,
              "COMPOSE_PROJECT_NAME": f"coderz-test-{docker_services.scope}"}
    for k, v in values.items():
        env_text, n = re.subn(rf"^{k}=.*$", f"{k}={v}", env_text, flags=re.M)
        assert n == 1, f"env.example has no {k}="
    env_text += f"DOCKER_SOCKET={RUN_DIR / 'docker.sock'}\nPREFECT_SERVER_PORT={port}\nPREFECT_UI_API_URL={api}\n"
    (project / ".env").write_text(env_text)
    (project / ".env").chmod(0o600)
    denv = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DOCKER_HOST": docker_engine.base_url}
    compose = ["docker-compose", "-f", str(ROOT / "deployments/worker/compose.yaml"),
               "--project-directory", str(project), "--env-file", str(project / ".env")]

    def up(*args: str) -> None:
        res = subprocess.run([*compose, *args], env=denv, capture_output=True, text=True, timeout=300, check=False)
        assert res.returncode == 0, res.stdout + res.stderr

    client = docker_engine.client
    for name in (WORKER, SERVER):   # a container left by a killed run
        try:
            client.containers.get(name).remove(force=True)
        except Exception:
            pass
    try:
        # --no-build: a missing image is an error, never a build or a pull
        up("--profile", "server", "up", "-d", "--no-build", SERVER)

        def server_up() -> bool:
            try:
                return httpx.get(f"{api}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(server_up, timeout=120, interval=0.5, error=lambda _last: AssertionError(
            f"{SERVER} never answered on {api}:\n"
            f"{client.containers.get(SERVER).logs(tail=40).decode(errors='replace')}"))
        up("up", "-d", "--no-build", WORKER)

        class Host:
            pass

        h = Host()
        h.prefix, h.coderz, h.api, h.pg, h.redis, h.denv, h.client = prefix, coderz, api, pg, rd, denv, client
        h.secrets = [pg.password, rd.password]
        h.compose = compose
        yield h
    finally:
        subprocess.run([*compose, "--profile", "server", "down", "-v", "--remove-orphans"], env=denv,
                       capture_output=True, timeout=180, check=False)
        os.close(lock_fd)


def _exec(h, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``docker exec coderz-prefect-worker …`` exactly as an operator types it."""
    return subprocess.run(["docker", "exec", WORKER, *argv], env=h.denv, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _worker_logs(h) -> str:
    return h.client.containers.get(WORKER).logs(tail=60).decode(errors="replace")


def _flow_run(h, run_id: str) -> dict:
    return httpx.get(f"{h.api}/flow_runs/{run_id}", timeout=10).json()


def test_the_documents_commands_in_the_worker_container_make_a_verified_snapshot(document_host):
    h = document_host
    res = _exec(h, "coderz-backup", "setup")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "coderz-backup" in res.stdout

    res = _exec(h, "prefect", "--no-prompt", "deploy", "--all")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "coderz-backup/coderz-backup-daily" in out
    dep = httpx.get(f"{h.api}/deployments/name/coderz-backup/coderz-backup-daily", timeout=10).json()
    assert dep["work_pool_name"] == "coderz-backup"
    # the pull step points at the flows folder, recorded by the container's own `pwd -P`
    assert dep["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == \
        str(h.coderz / "configs/prefect/flows")

    res = _exec(h, "prefect", "deployment", "run", "coderz-backup/coderz-backup-daily")
    assert res.returncode == 0, res.stdout + res.stderr
    m = re.search(r"UUID:\s*([0-9a-f-]{36})", res.stdout)
    assert m, res.stdout
    run_id = m.group(1)

    def finished() -> bool:
        return _flow_run(h, run_id)["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")

    wait_until(finished, timeout=300, interval=1, error=lambda _last: AssertionError(
        f"flow run {run_id} still {_flow_run(h, run_id)['state']['type']}\n{_worker_logs(h)}"))
    state = _flow_run(h, run_id)["state"]
    assert state["type"] == "COMPLETED", f"{state}\n{_worker_logs(h)}"

    snaps = h.coderz / "backup/snapshots"
    latest = snaps / "latest"
    manifest = json.loads((latest / "manifest.json").read_text())
    assert (manifest["status"], manifest["passed"], manifest["failed"]) == ("ok", 3, 0)
    assert manifest["flow_run_id"] == run_id
    assert {a["service"]: (a["status"], a["path"]) for a in manifest["artifacts"]} == {
        "postgres-coderapi": ("ok", "postgres-coderapi.sql.gz"), "redis": ("ok", "redis.rdb"),
        "configs": ("ok", "configs.tar.gz")}
    # the dump holds the table, counted by the image's own pg_dump
    assert manifest["artifacts"][0]["fingerprint"]["tables"] == {"public.users": 2500}
    for name in ("postgres-coderapi.sql.gz", "redis.rdb", "configs.tar.gz"):
        assert (latest / name).stat().st_size > 0, name
    # the host's own commands, with the installed config and signing key (nothing from this session)
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "DOCKER_HOST": h.denv["DOCKER_HOST"],
           "PREFECT_API_URL": h.api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PG_CODERAPI_PASSWORD": h.pg.password, "REDIS_PASSWORD": h.redis.password}
    # the host verifies what the container wrote (same paths, same signing key)
    res = subprocess.run([str(Path(sys.executable).with_name("coderz-backup")), "verify", "--config",
                          str(h.coderz / "backup/coderz-backup.toml")],
                         capture_output=True, text=True, timeout=120, check=False, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    logs = _worker_logs(h)
    for secret in h.secrets:
        assert secret not in logs and secret not in (latest / "backup.log").read_text()

    # then the host's own scripts: backup.sh --keep 14 (Redis through the same test engine), restore.sh --list
    res = subprocess.run(["bash", str(h.coderz / "backup/backup.sh"), "--keep", "14"], env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "║ ✓ Passed : 3" in res.stdout + res.stderr
    second = json.loads((snaps / "latest" / "manifest.json").read_text())
    assert second["snapshot"] != manifest["snapshot"] and second["keep_days"] == 14
    res = subprocess.run(["bash", str(h.coderz / "backup/restore.sh"), "--list"], env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = {line.split()[0]: line.split()[1] for line in res.stdout.splitlines()
            if line[:1].isdigit() and len(line.split()) > 1}
    assert rows.get(manifest["snapshot"]) == "ok" and rows.get(second["snapshot"]) == "ok", res.stdout


def test_a_run_on_the_docker_pool_runs_in_its_own_container_from_the_worker_image(document_host, worker_image):
    """`coderz-backup setup --type docker`: the worker starts one container per flow run (the
    pool's defaults: image_pull_policy Never, host network, auto_remove), secrets from Prefect
    Secret blocks, and the snapshot lands on the host."""
    h = document_host
    res = _exec(h, "coderz-backup", "setup", "--type", "docker", "--pool", "coderz-backup-docker")
    assert res.returncode == 0, res.stdout + res.stderr
    pool = httpx.get(f"{h.api}/work_pools/coderz-backup-docker", timeout=10).json()
    assert pool["type"] == "docker"
    # the passwords as Prefect Secret blocks, made from the worker's environment (never argv)
    script = ("import os\nfrom prefect.blocks.system import Secret\n"
              "Secret(value=os.environ['PG_CODERAPI_PASSWORD']).save('coderz-pg-coderapi', overwrite=True)\n"
              "Secret(value=os.environ['REDIS_PASSWORD']).save('coderz-redis', overwrite=True)\n")
    res = _exec(h, "python3", "-c", script)
    assert res.returncode == 0, res.stdout + res.stderr
    installed = h.coderz / "backup/coderz-backup.toml"
    config = h.coderz / "backup/coderz-backup-docker.toml"
    config.write_text(installed.read_text().replace('"env:PG_CODERAPI_PASSWORD"', '"prefect-secret:coderz-pg-coderapi"')
                      .replace('"env:REDIS_PASSWORD"', '"prefect-secret:coderz-redis"'))
    assert "env:" not in config.read_text().split("[services.postgres-coderapi]")[1]

    res = _exec(h, "prefect", "--no-prompt", "deploy", "--name", "coderz-backup-daily", "--pool", "coderz-backup-docker")
    assert res.returncode == 0, res.stdout + res.stderr
    subprocess.run(["docker", "exec", "-d", WORKER, "prefect", "worker", "start", "--pool", "coderz-backup-docker"],
                   env=h.denv, check=True, timeout=60)
    socket_path = RUN_DIR / "docker.sock"
    jv = {"image": worker_image, "volumes": [f"{h.coderz}:{h.coderz}", f"{socket_path}:/var/run/docker.sock"],
          "env": {"CODERZ_BACKUP_CONFIG": str(config)}, "labels": {"coderz.test.run": "docker-pool"},
          "auto_remove": False}
    argv = ["prefect", "deployment", "run", "coderz-backup/coderz-backup-daily"]
    for k, v in jv.items():
        argv += ["--job-variable", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
    res = _exec(h, *argv)
    assert res.returncode == 0, res.stdout + res.stderr
    run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", res.stdout).group(1)

    def finished() -> bool:
        return _flow_run(h, run_id)["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")

    try:
        wait_until(finished, timeout=300, interval=1, error=lambda _last: AssertionError(
            f"flow run {run_id} still {_flow_run(h, run_id)['state']['type']}\n{_worker_logs(h)}"))
        run = _flow_run(h, run_id)
        [container] = h.client.containers.list(all=True, filters={"label": "coderz.test.run=docker-pool"})
        logs = container.logs().decode(errors="replace")
        assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{logs}"
        # the run executed in that container, from the worker image, on the host network
        assert container.image.tags == [worker_image] or worker_image in container.image.tags
        assert container.attrs["HostConfig"]["NetworkMode"] == "host"
        assert container.attrs["Config"]["Labels"].get("io.prefect.flow-run-id") == run_id
        for secret in h.secrets:
            assert secret not in logs
            assert secret not in json.dumps(container.attrs["Config"]["Env"])
    finally:
        for c in h.client.containers.list(all=True, filters={"label": "coderz.test.run=docker-pool"}):
            c.remove(force=True)
    manifest = json.loads((h.coderz / "backup/snapshots/latest/manifest.json").read_text())
    assert (manifest["status"], manifest["passed"], manifest["failed"]) == ("ok", 3, 0)
    assert manifest["flow_run_id"] == run_id   # this snapshot is that run's
