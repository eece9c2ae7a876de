"""Fixtures: real servers on free 127.0.0.1 ports in temp dirs.

- A real Prefect API (``prefect server start``) for the whole session, started before
  test modules import Prefect, so in-process flows and CLI subprocesses share it.
- PostgreSQL 15 (two clusters: source and restore target) and Redis 7 started by
  :mod:`coderz_backup.sandbox`, the same code the README's demo uses.
- SeaweedFS (``weed mini``, a real S3 server) for the off-site S3 tests (:mod:`seaweed`).
- A private OpenSSH ``sshd`` (rsync over SSH) for the off-site rsync tests (:mod:`sshd`).

A run that collects only ``tests/unit`` (the unit tier: no servers, no Docker, no network)
starts none of this; its Prefect settings point at a closed port, so a unit test that
reaches for the Prefect API fails at once instead of starting one.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Real Docker Engine + locally built base image (lazy: only tests that request these start dockerd).
from docker_engine import base_image, docker_engine, docker_services  # noqa: E402,F401

ROOT = Path(__file__).resolve().parent.parent
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="coderz-tests-"))
_SESSION_DIR.chmod(0o755)  # the postgres OS user must reach its cluster dir
_prefect_proc: subprocess.Popen | None = None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


UNIT_TIER = ROOT / "tests" / "unit"


def unit_tier_only(config) -> bool:
    """True when every path pytest was asked to collect lies under ``tests/unit``."""
    if config.option.pyargs:
        return False
    base = Path(config.invocation_params.dir)
    paths = [(base / str(arg).split("::", 1)[0]).resolve() for arg in config.args]
    return bool(paths) and all(p == UNIT_TIER or UNIT_TIER in p.parents for p in paths)


def pytest_configure(config):
    """Start one real Prefect server before any test module imports prefect (not for the unit tier)."""
    global _prefect_proc
    home = _SESSION_DIR / "prefect-home"
    home.mkdir()
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_LOGGING_TO_API_BATCH_INTERVAL"] = "0.3"
    os.environ.pop("PREFECT_API_URL", None)
    # a Prefect server a developer runs on 127.0.0.1:4200 is never picked up by a test's CLI run
    # (the tests of that choice set CODERZ_BACKUP_LOCAL_API themselves)
    os.environ["CODERZ_BACKUP_LOCAL_API"] = "off"
    # the host's snapshot signing key of the test session (never /opt/coderz/backup/keys here)
    os.environ["CODERZ_BACKUP_SIGNING_KEY"] = str(_SESSION_DIR / "keys" / "signing.key")
    config.coderz_unit_tier_only = unit_tier_only(config)
    if config.coderz_unit_tier_only:
        # no server: anything that asks for the Prefect API is refused (port 1 is never open)
        os.environ["PREFECT_API_URL"] = "http://127.0.0.1:1/api"
        return
    url = _start_prefect_server()
    os.environ["PREFECT_API_URL"] = url


def _start_prefect_server(attempts: int = 3) -> str:
    """``prefect server start`` on a free port; the API's URL once ``/health`` answers.

    The port is free when it is picked, not necessarily when the server binds it: a server
    that exits at once (its port taken meanwhile) is started again on another port.
    """
    global _prefect_proc
    import httpx

    from coderz_backup.waiting import wait_until

    prefect_bin = Path(sys.executable).with_name("prefect")
    log_path = _SESSION_DIR / "prefect-server.log"
    os.environ["CODERZ_TEST_PREFECT_LOG"] = str(log_path)
    for attempt in range(attempts):
        port = _free_port()
        # The scheduler service looks for deployments to schedule every 2 s instead of 60 s, so
        # the schedule test sees the runs it creates from prefect.yaml quickly.
        # PREFECT_UI_API_URL: the UI in the browser asks the API there (default port 4200).
        server_env = dict(os.environ, PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
                          PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api")
        with open(log_path, "ab") as log:
            _prefect_proc = subprocess.Popen(
                [str(prefect_bin), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=server_env,
            )
        url = f"http://127.0.0.1:{port}/api"

        def up() -> bool:
            if _prefect_proc.poll() is not None:
                raise ChildProcessError(f"prefect server exited with {_prefect_proc.returncode}")
            return httpx.get(f"{url}/health", timeout=2).status_code == 200

        try:
            wait_until(up, timeout=120, interval=0.5, retry=httpx.HTTPError)
            return url
        except ChildProcessError:
            if attempt == attempts - 1:
                break
        except TimeoutError:
            os.killpg(_prefect_proc.pid, signal.SIGKILL)   # never left behind, however the session ends
            break
    raise RuntimeError(f"prefect server did not start; see {log_path}")


def pytest_unconfigure(config):
    if _prefect_proc and _prefect_proc.poll() is None:
        os.killpg(_prefect_proc.pid, signal.SIGTERM)
        try:
            _prefect_proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(_prefect_proc.pid, signal.SIGKILL)
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


# -- servers ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg():
    """Source PostgreSQL 15 cluster."""
    from coderz_backup.sandbox import PostgresServer

    srv = PostgresServer(_SESSION_DIR / "pg-source").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def pg_target():
    """A second, empty PostgreSQL 15 cluster to restore into."""
    from coderz_backup.sandbox import PostgresServer

    srv = PostgresServer(_SESSION_DIR / "pg-target").start()
    yield srv
    srv.stop()


class PgDatabase:
    """A database with its own owner role on a cluster."""

    def __init__(self, server, name: str, user: str, password: str):
        self.server, self.name, self.user, self.password = server, name, user, password

    def connect(self):
        return self.server.connect(self.name, self.user, self.password)

    def service_config(self, **over):
        from coderz_backup.services.postgres import PostgresConfig
        from pydantic import SecretStr

        data = dict(kind="postgres", host="127.0.0.1", port=self.server.port, user=self.user,
                    password=SecretStr(self.password), database=self.name)
        data.update(over)
        return PostgresConfig(**data)


@pytest.fixture
def make_db(pg):
    """Factory: a fresh database + owner role on ``pg`` (or another server)."""

    def _make(server=None, name: str | None = None, password: str | None = None,
              user: str | None = None) -> PgDatabase:
        server = server or pg
        name = name or f"db_{secrets.token_hex(4)}"
        user = user or f"u_{secrets.token_hex(4)}"
        password = password or f"pw-{secrets.token_hex(8)}"
        server.create_role_db(user, password, name)
        return PgDatabase(server, name, user, password)

    return _make


@pytest.fixture
def redis_server(tmp_path):
    from coderz_backup.sandbox import RedisServer

    srv = RedisServer(tmp_path / "redis", password=f"redis-{secrets.token_hex(6)}").start()
    yield srv
    srv.stop()


@pytest.fixture
def cli_env(tmp_path):
    """Environment for running the CLI as a subprocess (shares the session Prefect API)."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["HOME"] = str(tmp_path)
    return env


@pytest.fixture
def stack(tmp_path, make_db, redis_server, cli_env):
    """Two PostgreSQL databases, Redis and a configs dir with data, plus a config for them.

    Secrets reach the config as ``env:T_*`` references; ``stack.env`` holds their values.
    """
    from helpers import Stack, pg_table

    a, b = make_db(), make_db()
    with a.connect() as c:
        c.execute("CREATE TABLE flow_run AS SELECT g AS id, 'run-' || g AS name FROM generate_series(1, 3000) g")
    with b.connect() as c:
        c.execute("CREATE TABLE users AS SELECT g AS id, 'u' || g AS email FROM generate_series(1, 3000) g")
    redis_server.client().set("k", "v")
    conf = tmp_path / "opt" / "coderz" / "configs"
    conf.mkdir(parents=True)
    (conf / "docker-compose.yml").write_text("services: {}\n")
    env = dict(cli_env, T_PG_A=a.password, T_PG_B=b.password, T_REDIS=redis_server.password)
    services = (
        pg_table("postgres-prefect", a, "T_PG_A").replace("kind =", 'title = "PostgreSQL — Prefect DB"\nkind =')
        + pg_table("postgres-coderapi", b, "T_PG_B").replace("kind =", 'title = "PostgreSQL — CoderAPI DB"\nkind =')
        + f'[services.redis]\nkind = "redis"\nport = {redis_server.port}\npassword = "env:T_REDIS"\n'
          f'data_dir = "{redis_server.data}"\n\n'
        + f'[services.configs]\nkind = "configs"\npaths = ["{conf}"]\n'
    )
    s = Stack(tmp_path, env, services, tmp_path / "snapshots")
    s.dbs = (a, b)
    return s


@pytest.fixture(scope="session")
def seaweed():
    """A real S3 server: SeaweedFS ``weed mini`` on free 127.0.0.1 ports (see tests/seaweed.py)."""
    from seaweed import SeaweedS3

    srv = SeaweedS3(_SESSION_DIR / "seaweed").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def sshd():
    """A real SSH server: a private ``/usr/sbin/sshd`` on a free 127.0.0.1 port (see tests/sshd.py)."""
    from sshd import Sshd

    srv = Sshd(_SESSION_DIR / "sshd").start()
    yield srv
    srv.cleanup()


@pytest.fixture
def smtp():
    """A real SMTP server (aiosmtpd) on a free 127.0.0.1 port."""
    from helpers import Inbox, start_smtp

    inbox = Inbox()
    ctl, inbox.port = start_smtp(inbox)
    yield inbox
    ctl.stop()
