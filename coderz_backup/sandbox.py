"""A local sandbox of real servers: throwaway PostgreSQL 15 and Redis 7 on free
127.0.0.1 ports in temp dirs, plus a configs tree.

Used by the test fixtures and by ``python -m coderz_backup.sandbox`` (the README's
main-job command), which starts the sandbox, fills it with sample data, writes a config
for it and runs a full backup through the real flow ``coderz-backup``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from .waiting import wait_until

__all__ = ["free_port", "EtcdServer", "PostgresServer", "PrometheusServer", "RedisServer", "pg_bin", "main"]

PG_VERSION = "15"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin(name: str) -> str:
    path = Path(f"/usr/lib/postgresql/{PG_VERSION}/bin") / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install postgresql-{PG_VERSION}")
    return found


def _wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None, what: str = "server") -> None:
    def listening() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited early with status {proc.returncode}")
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True

    wait_until(listening, timeout=timeout, interval=0.1, retry=OSError,
               error=lambda _: RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s"))


def _gone(pid: int, timeout: float, interval: float = 0.1) -> bool:
    """Wait until process ``pid`` is gone; False when it is still there after ``timeout`` seconds."""
    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    try:
        return wait_until(gone, timeout=timeout, interval=interval)
    except TimeoutError:
        return False


def stop_pidfile(pidfile: Path, sig: int = signal.SIGTERM, timeout: float = 30) -> bool:
    """Signal the process in ``pidfile`` (first line) and wait until it is gone (SIGKILL after
    ``timeout``). False when there was nothing to stop."""
    try:
        pid = int(Path(pidfile).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    for s, wait in ((sig, timeout), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, s)
        except ProcessLookupError:
            return True
        if _gone(pid, wait):
            return True
    return True


class PostgresServer:
    """A throwaway PostgreSQL cluster (runs as the ``postgres`` OS user when we are root)."""

    superuser = "postgres"

    def __init__(self, base: Path, port: int | None = None, password: str = "sandbox-superuser-pw"):
        self.base = Path(base)
        self.data = self.base / "pgdata"
        self.port = port or free_port()
        self.password = password
        self.proc: subprocess.Popen | None = None
        self._user = "postgres" if os.geteuid() == 0 else None

    def _run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        res = subprocess.run(argv, capture_output=True, user=self._user, **kw)
        if res.returncode:
            raise RuntimeError(f"{argv[0]} failed ({res.returncode}): {res.stderr.decode(errors='replace')}")
        return res

    def start(self) -> "PostgresServer":
        self.base.mkdir(parents=True, exist_ok=True)
        if self._user:
            pw = pwd.getpwnam(self._user)
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
        if not self.data.exists():
            pwfile = self.base / "pwfile"
            pwfile.write_text(self.password + "\n")
            if self._user:
                os.chown(pwfile, pwd.getpwnam(self._user).pw_uid, -1)
            self._run([pg_bin("initdb"), "-D", str(self.data), "-U", self.superuser, "--auth=scram-sha-256",
                       f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8"])
            pwfile.unlink()
        self.proc = subprocess.Popen(
            [pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
             "-c", f"unix_socket_directories={self.base}", "-c", "fsync=off", "-c", "max_connections=50"],
            stdout=subprocess.DEVNULL, stderr=open(self.base / "postgres.log", "ab"), user=self._user,
            start_new_session=True,
        )
        _wait_port(self.port, 60, self.proc, "postgres")
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import psycopg

        def connects() -> bool:
            with self.connect("postgres"):
                return True

        wait_until(connects, timeout=30, interval=0.2, retry=psycopg.OperationalError, error=lambda exc: exc)

    def connect(self, dbname: str = "postgres", user: str | None = None, password: str | None = None):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=user or self.superuser,
                               password=password or self.password, dbname=dbname, autocommit=True)

    def create_role_db(self, role: str, password: str, database: str) -> None:
        from psycopg import sql

        with self.connect() as c:
            c.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(sql.Identifier(role),
                                                                                sql.Literal(password)))
            c.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(role)))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class RedisServer:
    """A throwaway redis-server with a config file (so CONFIG REWRITE works)."""

    def __init__(self, base: Path, port: int | None = None, password: str | None = None,
                 appendonly: bool = False, extra: dict[str, str] | None = None):
        self.base = Path(base)
        self.data = self.base / "data"
        self.port = port or free_port()
        self.password = password
        self.conf = self.base / "redis.conf"
        self.appendonly = appendonly
        self.extra = extra or {}

    def write_conf(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        lines = {
            "bind": "127.0.0.1", "port": str(self.port), "dir": str(self.data), "dbfilename": "dump.rdb",
            "daemonize": "yes", "pidfile": str(self.base / "redis.pid"), "logfile": str(self.base / "redis.log"),
            "save": '""', "appendonly": "yes" if self.appendonly else "no", "protected-mode": "no",
        }
        if self.password:
            lines["requirepass"] = self.password
        lines.update(self.extra)
        self.conf.write_text("".join(f"{k} {v}\n" for k, v in lines.items()))

    @property
    def start_command(self) -> list[str]:
        return [shutil.which("redis-server") or "redis-server", str(self.conf)]

    def start(self) -> "RedisServer":
        if not self.conf.exists():
            self.write_conf()
        subprocess.run(self.start_command, check=True, capture_output=True)
        _wait_port(self.port, 30, None, "redis-server")
        return self

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    def stop(self) -> None:
        pidfile = self.base / "redis.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        _gone(pid, 5, 0.05)


class PrometheusServer:
    """A throwaway Prometheus (2.42 from Debian) scraping itself, with the TSDB admin API on.

    It runs detached with a pid file, so the same ``start_command``/``stop_command``
    argv a real host would configure can stop and start it during a restore.
    """

    def __init__(self, base: Path, port: int | None = None, admin_api: bool = True, scrape_interval: str = "1s",
                 self_scrape: bool = True):
        self.base = Path(base)
        self.data = self.base / "data"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_api = admin_api
        self.scrape_interval = scrape_interval
        self.self_scrape = self_scrape
        self.pidfile = self.base / "prometheus.pid"
        self.log = self.base / "prometheus.log"

    def argv(self) -> list[str]:
        argv = [shutil.which("prometheus") or "prometheus", f"--config.file={self.base / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.data}", f"--web.listen-address=127.0.0.1:{self.port}"]
        return argv + (["--web.enable-admin-api"] if self.admin_api else [])

    @property
    def start_command(self) -> list[str]:
        return ["sh", "-c", f'setsid "$@" >>{self.log} 2>&1 </dev/null & echo $! > {self.pidfile}', "sh", *self.argv()]

    @property
    def stop_command(self) -> list[str]:
        return ["sh", "-c", f'kill "$(cat {self.pidfile})"']

    def start(self, timeout: float = 60) -> "PrometheusServer":
        self.data.mkdir(parents=True, exist_ok=True)
        scrape = (f"scrape_configs:\n  - job_name: prometheus\n    static_configs:\n"
                  f"      - targets: ['127.0.0.1:{self.port}']\n") if self.self_scrape else ""
        (self.base / "prometheus.yml").write_text(
            f"global:\n  scrape_interval: {self.scrape_interval}\n  evaluation_interval: 10s\n" + scrape)
        subprocess.run(self.start_command, check=True)
        wait_until(lambda: httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200, timeout=timeout,
                   interval=0.2, retry=httpx.HTTPError,
                   error=lambda _: RuntimeError(f"prometheus on {self.url} not ready within {timeout}s; see {self.log}"))
        return self

    def stop(self) -> None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            if _gone(pid, 10):
                return


# -- etcd -------------------------------------------------------------------------------
ROOT_PW = "etcd-root-pw-5517"  # tests only


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


class EtcdServer:
    """A throwaway single-member etcd on free 127.0.0.1 ports."""

    def __init__(self, base: Path, *, name: str = "m1", data: Path | None = None):
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.data = data or self.base / "data"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        self.proc: subprocess.Popen | None = None
        self.token: str | None = None
        self.pidfile = self.base / "etcd.pid"

    def argv(self) -> list[str]:
        return ["etcd", "--name", self.name, "--data-dir", str(self.data),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", f"{self.name}={self.peer_url}", "--initial-cluster-state", "new"]

    @property
    def start_command(self) -> list[str]:
        """Start it detached with a pid file (what a host's restore config would run)."""
        return ["sh", "-c", f'setsid "$@" >>{self.base / "etcd.log"} 2>&1 </dev/null & echo $! > {self.pidfile}',
                "sh", *self.argv()]

    @property
    def stop_command(self) -> list[str]:
        return ["sh", "-c", f'kill "$(cat {self.pidfile})"']

    def start(self, detached: bool = False) -> EtcdServer:
        if detached:  # outlives this process; stopped by stop_command / stop_pidfile
            subprocess.run(self.start_command, check=True)
            self.wait_ready()
            return self
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL,
                                     stderr=open(self.base / "etcd.log", "ab"), start_new_session=True)
        self.wait_ready(lambda: self.proc.poll() is not None)
        return self

    def wait_ready(self, died=lambda: False, timeout: float = 30) -> None:
        def ready() -> bool:
            if died():
                raise RuntimeError(f"etcd exited early; see {self.base / 'etcd.log'}")
            r = httpx.post(f"{self.url}/v3/maintenance/status", json={}, timeout=1)
            return r.status_code == 200 and bool(r.json().get("leader"))

        wait_until(ready, timeout=timeout, interval=0.1, retry=httpx.HTTPError,
                   error=lambda _: RuntimeError(f"etcd on {self.url} not ready within {timeout}s"))

    def stop(self) -> None:
        if self.proc is None:
            stop_pidfile(self.pidfile)
        elif self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # -- gateway helpers ------------------------------------------------------
    def call(self, path: str, body: dict) -> dict:
        headers = {"Authorization": self.token} if self.token else {}
        r = httpx.post(f"{self.url}/v3{path}", json=body, headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def login(self, password: str = ROOT_PW) -> None:
        self.token = httpx.post(f"{self.url}/v3/auth/authenticate", json={"name": "root", "password": password},
                                timeout=10).json()["token"]

    def enable_auth(self, password: str = ROOT_PW) -> None:
        self.call("/auth/user/add", {"name": "root", "password": password})
        self.call("/auth/role/add", {"name": "root"})
        self.call("/auth/user/grant", {"user": "root", "role": "root"})
        self.call("/auth/enable", {})
        self.login(password)

    def put(self, key: bytes, value: bytes) -> None:
        self.call("/kv/put", {"key": _b64(key), "value": _b64(value)})

    def delete(self, key: bytes) -> None:
        self.call("/kv/deleterange", {"key": _b64(key)})

    def everything(self) -> dict[bytes, bytes]:
        res = self.call("/kv/range", {"key": _b64(b"\0"), "range_end": _b64(b"\0")})
        return {base64.b64decode(kv["key"]): base64.b64decode(kv.get("value", "")) for kv in res.get("kvs", [])}


# -- the demo ---------------------------------------------------------------------------
DEMO_PASSWORDS = {"PG_PREFECT_PASSWORD": "prefect-demo-pw", "PG_CODERAPI_PASSWORD": "coderapi-demo-pw",
                  "REDIS_PASSWORD": "redis-demo-pw"}


def _demo_data(pg: PostgresServer, redis_srv: RedisServer, configs: Path) -> None:
    pg.create_role_db("prefect", DEMO_PASSWORDS["PG_PREFECT_PASSWORD"], "prefect")
    pg.create_role_db("coderapi", DEMO_PASSWORDS["PG_CODERAPI_PASSWORD"], "coderapi")
    with pg.connect("prefect", "prefect", DEMO_PASSWORDS["PG_PREFECT_PASSWORD"]) as c:
        c.execute("CREATE TABLE flow_run (id serial PRIMARY KEY, name text, state text, created timestamptz DEFAULT now())")
        c.execute("INSERT INTO flow_run (name, state) SELECT 'run-' || g, 'COMPLETED' FROM generate_series(1, 20000) g")
    with pg.connect("coderapi", "coderapi", DEMO_PASSWORDS["PG_CODERAPI_PASSWORD"]) as c:
        c.execute("CREATE TABLE users (id serial PRIMARY KEY, email text UNIQUE, payload jsonb)")
        c.execute("INSERT INTO users (email, payload) SELECT 'user' || g || '@coderz.local', "
                  "jsonb_build_object('n', g, 'tags', array['a','b']) FROM generate_series(1, 50000) g")
    r = redis_srv.client()
    pipe = r.pipeline()
    for i in range(5000):
        pipe.set(f"session:{i}", f"user-{i}", ex=86400)
    pipe.hset("stats", mapping={"runs": 20000, "users": 50000})
    pipe.execute()
    (configs / "prometheus").mkdir(parents=True, exist_ok=True)
    (configs / "docker-compose.yml").write_text("services:\n  postgres:\n    image: postgres:15\n")
    (configs / "prometheus" / "prometheus.yml").write_text("global:\n  scrape_interval: 15s\n")
    (configs / "cache").mkdir(exist_ok=True)
    (configs / "cache" / "tmp.bin").write_bytes(os.urandom(1024))


def _demo_cluster(etcd: "EtcdServer", k3s: Path) -> None:
    """APISIX-like routes in etcd, and a k3s SQLite datastore (kine's table) with its token."""
    import json
    import sqlite3

    for i in range(1, 21):
        etcd.put(f"/apisix/routes/{i}".encode(), json.dumps({"id": str(i), "uri": f"/api/v1/{i}"}).encode())
    db_dir = k3s / "server" / "db"
    db_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(db_dir / "state.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, value BLOB)")
    db.executemany("INSERT INTO kine (name, value) VALUES (?, ?)",
                   [(f"/registry/configmaps/default/cm-{i}", os.urandom(256)) for i in range(2000)])
    db.commit()
    db.close()
    token = k3s / "server" / "token"
    token.write_text("K10demo::server:" + os.urandom(16).hex() + "\n")
    token.chmod(0o600)


def _wait_scraped(prom: "PrometheusServer", timeout: float = 30) -> None:
    with contextlib.suppress(TimeoutError):   # not scraped yet: the demo goes on
        wait_until(lambda: httpx.get(f"{prom.url}/api/v1/query", params={"query": "up"}, timeout=5).json()
                   .get("data", {}).get("result"), timeout=timeout, interval=0.5)


# where each server of a sandbox keeps its pid (for --stop from another process)
_PIDFILES = (("etcd-apisix/etcd.pid", signal.SIGTERM), ("prometheus/prometheus.pid", signal.SIGTERM),
             ("redis/redis.pid", signal.SIGTERM), ("postgres/pgdata/postmaster.pid", signal.SIGINT))


def stop_sandbox(work: Path) -> list[str]:
    """Stop the servers of the sandbox in ``work`` (started with --keep-running); what was stopped."""
    return [rel.split("/")[0] for rel, sig in _PIDFILES if stop_pidfile(Path(work) / rel, sig)]


def _config(work: Path, dest: Path, pg: "PostgresServer", rd: "RedisServer", prom: "PrometheusServer",
            etcd: "EtcdServer", configs: Path, k3s: Path) -> str:
    """A config for the sandbox whose every service can also be restored (start/stop commands,
    data dirs): the README's restore paths, CLI and UI, end Completed on it."""
    import json

    q = json.dumps  # a JSON array of strings is a TOML array (same string escapes)
    return f"""\
# coderz-backup config of the sandbox in {work} (python -m coderz_backup.sandbox)
dest = "{dest}"
keep_days = 7
retries = 1
retry_delay_s = [2]
signing_key = "{work / 'keys' / 'signing.key'}"   # the sandbox's own (a host's lives in /opt/coderz/backup/keys)

[services.postgres-prefect]
kind = "postgres"
title = "PostgreSQL — Prefect DB"
port = {pg.port}
user = "prefect"
password = "env:PG_PREFECT_PASSWORD"
database = "prefect"

[services.postgres-coderapi]
kind = "postgres"
title = "PostgreSQL — CoderAPI DB"
port = {pg.port}
user = "coderapi"
password = "env:PG_CODERAPI_PASSWORD"
database = "coderapi"

[services.redis]
kind = "redis"
port = {rd.port}
password = "env:REDIS_PASSWORD"
data_dir = "{rd.data}"
start_command = {q(rd.start_command)}

[services.prometheus]
kind = "prometheus"
url = "{prom.url}"
data_dir = "{prom.data}"
stop_command = {q(prom.stop_command)}
start_command = {q(prom.start_command)}

[services.configs]
kind = "configs"
paths = ["{configs}"]
exclude = ["cache"]

[services.etcd-k3s]
kind = "k3s"
data_dir = "{k3s}"
# no k3s server runs in the sandbox (only its SQLite datastore): nothing to stop or start
stop_command = ["true"]
start_command = ["true"]

[services.etcd-apisix]
kind = "etcd"
endpoint = "{etcd.url}"
data_dir = "{etcd.data}"
name = "{etcd.name}"
peer_url = "{etcd.peer_url}"
stop_command = {q(etcd.stop_command)}
start_command = {q(etcd.start_command)}
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m coderz_backup.sandbox",
                                description="Start a sandbox of real servers (PostgreSQL ×2 databases, Redis, "
                                            "Prometheus, etcd, a k3s SQLite datastore, a configs tree), back it up "
                                            "through flow coderz-backup, stop it.")
    p.add_argument("--dest", default=None, help="snapshot destination (default: a folder under --workdir)")
    p.add_argument("--workdir", default=None, help="where the sandbox lives (default: a new temp dir)")
    p.add_argument("--keep-running", action="store_true",
                   help="leave the servers running afterwards (for a worker, a restore, the UI)")
    p.add_argument("--stop", action="store_true", help="stop the servers of the sandbox in --workdir and exit")
    args = p.parse_args(argv)

    if args.stop:
        if not args.workdir:
            p.error("--stop needs --workdir (the sandbox to stop)")
        stopped = stop_sandbox(Path(args.workdir))
        print(f"stopped: {', '.join(stopped)}" if stopped else f"nothing running in {args.workdir}")
        return 0

    work = Path(args.workdir or tempfile.mkdtemp(prefix="coderz-sandbox-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)  # the postgres OS user must reach its cluster dir
    dest = Path(args.dest) if args.dest else work / "snapshots"
    configs = work / "opt" / "coderz" / "configs"
    os.environ.update(DEMO_PASSWORDS)
    pg = PostgresServer(work / "postgres")
    rd = RedisServer(work / "redis", password=DEMO_PASSWORDS["REDIS_PASSWORD"])
    prom = PrometheusServer(work / "prometheus")
    etcd = EtcdServer(work / "etcd-apisix")
    k3s = work / "rancher" / "k3s"
    print(f"sandbox in {work}: starting PostgreSQL 15 on 127.0.0.1:{pg.port}, Redis on 127.0.0.1:{rd.port}, "
          f"Prometheus on {prom.url}, etcd on {etcd.url}, a k3s SQLite datastore in {k3s}")
    try:
        pg.start()
        rd.start()
        prom.start()
        etcd.start(detached=True)
        _demo_data(pg, rd, configs)
        _demo_cluster(etcd, k3s)
        _wait_scraped(prom)
        cfg = work / "coderz-backup.toml"
        cfg.write_text(_config(work, dest, pg, rd, prom, etcd, configs, k3s))
        print(f"config: {cfg}\n")
        from .cli import main as cli_main

        rc = cli_main(["backup", "--config", str(cfg)])
        print(f"\ncoderz-backup backup exited {rc}; try: coderz-backup list --config {cfg}")
        if args.keep_running:
            env = " ".join(f"{k}={v}" for k, v in DEMO_PASSWORDS.items())
            print(f"""
The servers keep running. A Prefect worker backs this sandbox up (and restores it) with:
  CODERZ_BACKUP_CONFIG={cfg} {env} \\
    prefect worker start --pool coderz-backup
A restore from the CLI: CODERZ_BACKUP_CONFIG={cfg} {env} coderz-backup restore
Stop the servers:      python -m coderz_backup.sandbox --stop --workdir {work}""")
        return rc
    finally:
        if not args.keep_running:
            stop_sandbox(work)
            pg.stop()


if __name__ == "__main__":
    sys.exit(main())
