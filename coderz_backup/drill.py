"""Restore drills: every artifact of a snapshot restored into a throwaway instance of its kind,
its content fingerprint read back and compared with the one the signed manifest recorded.

Per artifact the result is one of

- ``matched``: restored with the service's normal restore code and the fingerprint read back
  equals the manifest's (tables and rows, keys per database, files and bytes, …);
- ``mismatched``: restored, but the content differs — the differences are listed;
- ``failed``: the restore itself failed (the dump does not load, the RDB is refused, …): why;
- ``not-drillable``: this host cannot build a scratch instance of that kind (no server binary,
  no image, a kind without a drill yet) or the snapshot recorded no fingerprint: why.

Nothing is ever skipped silently. Scratch instances run from this host's own binaries
(:mod:`coderz_backup.sandbox`), on free 127.0.0.1 ports, in one private folder; nothing of
production is in reach: the scratch service config keeps only what the restore code needs
(database name and role, data dir layout) and points at the scratch instance.

**Cleanup, also when killed.** A small reaper process is started first, holding a pipe from
the drill: when the pipe closes — the drill finished, raised, or was killed with SIGKILL — it
kills every process whose command line names the scratch folder and removes the folder.

The time each restore took is recorded: the measured recovery time of that snapshot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from pydantic import SecretStr

from .access.choose import access_for
from .errors import CoderzBackupError
from .reader import SnapshotReader
from .services import REGISTRY
from .waiting import wait_until

__all__ = ["DrillResult", "DRILLS", "drill_artifact", "Reaper", "RECORD", "read_record", "summary", "write_record"]

log = logging.getLogger("coderz_backup")

#: the drill's record beside the manifest (the signed manifest never changes)
RECORD = "drill.json"


@dataclasses.dataclass
class DrillResult:
    service: str
    kind: str
    artifact: str
    status: str                 # matched | mismatched | failed | not-drillable
    detail: str = ""
    differences: list[str] = dataclasses.field(default_factory=list)
    duration_s: float = 0.0     # the restore into the scratch instance (time to restore)
    expected: dict | None = None
    got: dict | None = None

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["duration_s"] = round(self.duration_s, 3)
        return d


from .fingerprint import NotDrillable  # noqa: E402 - one exception for "cannot be drilled here" (why)


# -- cleanup that survives a kill --------------------------------------------------------------

_REAPER = r"""
import os, shutil, signal, sys, time
root = sys.argv[1]
sys.stdin.buffer.read()          # returns when the drill closes the pipe or dies
def ours():
    # processes whose command line names the scratch folder, and all their descendants
    # (a server's workers do not name it)
    me = os.getpid()
    parents, found = {}, set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ")
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if fields[0] == b"Z":
            continue
        parents[int(pid)] = int(fields[1])
        if root.encode() in cmd:
            found.add(int(pid))
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return found
def containers():
    # scratch containers and their volumes, labelled with this folder (Docker-mode drills)
    try:
        import docker
        client = docker.from_env(timeout=60)
        flt = {"label": f"io.coderz.backup.drill={root}"}
        for c in client.containers.list(all=True, filters=flt):
            try:
                c.remove(force=True, v=True)
            except Exception:
                pass
        for v in client.volumes.list(filters=flt):
            try:
                v.remove(force=True)
            except Exception:
                pass
    except Exception:
        pass
if os.path.exists(os.path.join(root, ".docker")):
    containers()
for sig in (signal.SIGTERM, signal.SIGKILL):
    for pid in list(ours()):
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and list(ours()):
        time.sleep(0.1)
shutil.rmtree(root, ignore_errors=True)
"""


class Reaper:
    """The scratch folder and a watcher process that removes it (and kills what runs from it)
    as soon as this process lets go of it — by :meth:`close`, or by dying."""

    def __init__(self, parent: Path | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="coderz-drill-", dir=parent))
        os.chmod(self.root, 0o755)   # a scratch PostgreSQL runs as the postgres OS user
        self._proc = subprocess.Popen([sys.executable, "-c", _REAPER, str(self.root)], stdin=subprocess.PIPE,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True, close_fds=True)

    def close(self, wait: float = 30) -> None:
        if self._proc.stdin and not self._proc.stdin.closed:
            self._proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(wait)

    def __enter__(self) -> "Reaper":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- one scratch instance per kind --------------------------------------------------------------

@dataclasses.dataclass
class Scratch:
    """What a kind's scratch context yields: the service config the restore runs with, extra
    restore options, and (when the instance starts only after the restore, as etcd's does) a
    call that starts it and returns the config to read the fingerprint with; ``live`` are the
    options of ``fingerprint_live``."""

    config: object
    restore: dict = dataclasses.field(default_factory=dict)
    started: Callable[[], object] | None = None
    live: dict = dataclasses.field(default_factory=dict)


ScratchFactory = Callable[[Path, object, dict], contextlib.AbstractContextManager]


def _no_container(cfg, **update):
    """The production config with everything that reaches production removed."""
    fields = type(cfg).model_fields
    clear = {k: None for k in ("container", "volume", "volume_path", "helper_image", "exec_prefix") if k in fields}
    if "stop_containers" in fields:
        clear["stop_containers"] = []
    if "docker" in fields:
        clear["docker"] = False
    return cfg.model_copy(update={**clear, **update})


def _pg_major(text: str) -> str:
    """"15" of "15.18 (Debian …)" or of "postgres (PostgreSQL) 15.18 …"."""
    m = re.search(r"(\d+)\.\d+", str(text))
    return m.group(1) if m else str(text).strip()


# -- Docker mode: a scratch container from the production container's own image ------------------

#: label of every scratch container and volume: the drill's folder (the reaper removes them by it)
DRILL_LABEL = "io.coderz.backup.drill"
_MOUNT = "/coderz-drill"


def _docker_mode(cfg) -> bool:
    return bool(getattr(cfg, "container", None))


@contextlib.contextmanager
def _scratch_container(root: Path, cfg, *, script: str, user: str, env: dict[str, str],
                       ready: Callable[[], bool], stop_signal: str = "SIGTERM", timeout: float = 120) -> Iterator[str]:
    """Run ``script`` (sh) in a new container from the image of production container
    ``cfg.container``, with ``--network none``: nothing of production in reach, no port on the host.
    Its data is on a new volume at ``/coderz-drill``; ``root/sock`` is bind-mounted at the same path,
    for the server's Unix socket (the only way in). Yields the container's name once ``ready()``;
    container and volume are removed afterwards (and by the reaper when the drill is killed)."""
    from .access.docker import docker_client
    from .errors import AccessError

    try:
        client = docker_client()
    except AccessError as exc:
        raise NotDrillable(f"Docker mode, but {exc}") from None
    import docker.errors

    try:
        production = client.containers.get(cfg.container)
    except docker.errors.NotFound:
        raise NotDrillable(f"container {cfg.container!r} does not exist on this Docker host; a drill runs a scratch "
                           "container from its image") from None
    image = production.attrs["Image"]            # the very image production runs: an id, nothing is pulled
    own = (production.attrs.get("Config") or {}).get("User") or ""
    if own and own.split(":")[0] not in ("root", "0"):
        user = own
    (root.parent / ".docker").touch()            # tells the reaper to look for labelled containers
    sock = root / "sock"
    sock.mkdir()
    os.chmod(sock, 0o777)                        # the server in the container runs as its own user
    label = {DRILL_LABEL: str(root.parent)}
    name = f"coderz-drill-{re.sub(r'[^a-zA-Z0-9_.-]', '-', root.name)}-{secrets.token_hex(4)}"
    volume = client.volumes.create(f"{name}-data", labels=label)
    mounts = {volume.name: {"bind": _MOUNT, "mode": "rw"}, str(sock): {"bind": str(sock), "mode": "rw"}}
    container = None
    try:
        # the volume belongs to the server's user (a one-off root container, same image, no network)
        prep = client.containers.create(image, ["-c", f'mkdir -p {_MOUNT}/data && chown -R "$1" {_MOUNT}', "sh",
                                                user.split(":")[0]],
                                        entrypoint=["sh"], user="0", network_mode="none", volumes=mounts, labels=label,
                                        name=f"{name}-prep")
        try:
            prep.start()
            code = prep.wait(timeout=60).get("StatusCode")
            if code != 0:
                raise CoderzBackupError(f"preparing the scratch volume failed ({code}): "
                                        f"{prep.logs(tail=5).decode(errors='replace').strip()}")
        finally:
            with contextlib.suppress(Exception):
                prep.remove(force=True)
        container = client.containers.create(image, ["-c", script], entrypoint=["sh"], name=name, user=user,
                                             environment=env, network_mode="none", volumes=mounts, labels=label,
                                             stop_signal=stop_signal, working_dir=_MOUNT)
        container.start()
        log.info("drill: scratch container %s from %s's image %s (--network none)", name, cfg.container, image[:19])
        def logs() -> str:
            return container.logs(tail=8).decode(errors="replace").strip()

        def up() -> bool:
            container.reload()
            if container.status not in ("created", "running"):
                raise CoderzBackupError(f"the scratch container exited before it was ready: {logs()}")
            try:
                return ready()
            except Exception:  # noqa: BLE001 - not listening yet: try again
                return False

        wait_until(up, timeout=timeout, interval=0.2,
                   error=lambda _: CoderzBackupError(f"the scratch container was not ready within {timeout:.0f}s: "
                                                     f"{logs()}"))
        yield name
    finally:
        if container is not None:
            with contextlib.suppress(Exception):
                container.remove(force=True, v=True)
        with contextlib.suppress(Exception):
            volume.remove(force=True)


_PG_SCRIPT = """set -e
for d in /usr/lib/postgresql/*/bin; do [ -d "$d" ] && PATH="$PATH:$d"; done
D={mount}/data/pg
if [ ! -s "$D/PG_VERSION" ]; then
  printf %s "$CODERZ_DRILL_PASSWORD" > {mount}/pw
  initdb -D "$D" -U "$CODERZ_DRILL_USER" --pwfile={mount}/pw -E UTF8 --locale=C --auth-local=scram-sha-256 \
    --auth-host=scram-sha-256 > {mount}/initdb.log 2>&1 || {{ rm -f {mount}/pw; cat {mount}/initdb.log >&2; exit 1; }}
  rm -f {mount}/pw
fi
exec postgres -D "$D" -c listen_addresses= -k {sock} -p 5432
"""


@contextlib.contextmanager
def _postgres_container(root: Path, cfg, expected: dict) -> Iterator[Scratch]:
    """A scratch cluster in a container of the production image (so the same server version)."""
    import psycopg

    password, sock = secrets.token_urlsafe(18), root / "sock"

    def connect(dbname: str):
        return psycopg.connect(host=str(sock), port=5432, user=cfg.user, password=password, dbname=dbname,
                               connect_timeout=5, autocommit=True)

    def ready() -> bool:
        with connect("postgres"):
            return True

    script = _PG_SCRIPT.format(mount=_MOUNT, sock=sock)
    with _scratch_container(root, cfg, script=script, user="postgres", stop_signal="SIGINT", ready=ready,
                            env={"CODERZ_DRILL_USER": cfg.user, "CODERZ_DRILL_PASSWORD": password}) as name:
        if cfg.database != "postgres":
            from psycopg import sql

            with connect("postgres") as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(cfg.database)))
        yield Scratch(_no_container(cfg, container=name, host=str(sock), port=5432, password=SecretStr(password)))


_REDIS_SCRIPT = """set -e
printf 'requirepass %s\n' "$CODERZ_DRILL_PASSWORD" > {mount}/redis.conf
exec redis-server {mount}/redis.conf --port 0 --unixsocket {sock}/redis.sock --unixsocketperm 777 \
  --dir {mount}/data --dbfilename dump.rdb --appendonly no --save ''
"""


@contextlib.contextmanager
def _redis_container(root: Path, cfg, expected: dict) -> Iterator[Scratch]:
    """A scratch Redis in a container of the production image, reached through its Unix socket."""
    import redis

    password, sock = secrets.token_urlsafe(18), root / "sock"

    def ready() -> bool:
        client = redis.Redis(unix_socket_path=str(sock / "redis.sock"), password=password, socket_timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()

    script = _REDIS_SCRIPT.format(mount=_MOUNT, sock=sock)
    with _scratch_container(root, cfg, script=script, user="redis", ready=ready,
                            env={"CODERZ_DRILL_PASSWORD": password}) as name:
        yield Scratch(_no_container(cfg, container=name, socket=str(sock / "redis.sock"), username=None,
                                    password=SecretStr(password), data_dir=f"{_MOUNT}/data", start_command=None))


# -- this host's binaries ------------------------------------------------------------------------

@contextlib.contextmanager
def _postgres(root: Path, cfg, expected: dict) -> Iterator[object]:
    from .sandbox import PostgresServer, pg_bin

    if _docker_mode(cfg):
        with _postgres_container(root, cfg, expected) as scratch:
            yield scratch
        return

    try:
        postgres = pg_bin("postgres")
        here = subprocess.run([postgres, "--version"], capture_output=True, text=True, timeout=30).stdout
    except Exception as exc:  # noqa: BLE001
        raise NotDrillable(f"no PostgreSQL server binaries on this host ({exc})") from None
    if expected.get("server_version") and _pg_major(expected["server_version"]) != _pg_major(here):
        raise NotDrillable(f"the dump is from PostgreSQL {expected['server_version']}, this host's scratch server "
                           f"is {_pg_major(here)} (a scratch container from the service's own image is not built "
                           "yet)")
    server = PostgresServer(root / "postgres", password=secrets.token_urlsafe(18))
    try:
        server.start()
        password = secrets.token_urlsafe(18)
        server.create_role_db(cfg.user, password, cfg.database)
        yield Scratch(_no_container(cfg, host="127.0.0.1", port=server.port, password=SecretStr(password)))
    finally:
        server.stop()


@contextlib.contextmanager
def _redis(root: Path, cfg, expected: dict) -> Iterator[object]:
    from .sandbox import RedisServer

    if _docker_mode(cfg):
        with _redis_container(root, cfg, expected) as scratch:
            yield scratch
        return
    if shutil.which("redis-server") is None:
        raise NotDrillable("no redis-server on this host")
    password = secrets.token_urlsafe(18)
    server = RedisServer(root / "redis", password=password)
    try:
        server.start()
        yield Scratch(_no_container(cfg, host="127.0.0.1", port=server.port, username=None,
                                    password=SecretStr(password), data_dir=str(server.data),
                                    start_command=server.start_command))
    finally:
        server.stop()


@contextlib.contextmanager
def _files(root: Path, cfg, expected: dict) -> Iterator[object]:
    """configs: the archive is restored under a scratch root instead of ``/`` (restore_root)."""
    target = root / "root"
    target.mkdir(mode=0o700)
    yield Scratch(_no_container(cfg, restore_root=str(target)))


@contextlib.contextmanager
def _etcd(root: Path, cfg, expected: dict) -> Iterator[Scratch]:
    """etcd: the snapshot restored into a new data dir (etcdutl snapshot restore), then a scratch
    member started on it; the fingerprint is read through its gateway."""
    from .sandbox import EtcdServer

    if shutil.which("etcd") is None:
        raise NotDrillable("no etcd server binary on this host")
    server = EtcdServer(root / "etcd", name=cfg.name or "m1")
    local = _no_container(cfg, data_dir=None, stop_command=None, start_command=None, endpoint=server.url,
                          method="gateway", cacert=None, cert=None, key=None)

    def started():
        server.start()
        return local

    try:
        yield Scratch(local, {"data_dir": str(server.data), "name": server.name, "peer_url": server.peer_url},
                      started)
    finally:
        server.stop()


@contextlib.contextmanager
def _prometheus(root: Path, cfg, expected: dict) -> Iterator[Scratch]:
    """Prometheus: a scratch server on an empty TSDB; the restore swaps the snapshot's blocks in and
    restarts it (the service's own stop/start path), then the blocks on disk are read back."""
    from .sandbox import PrometheusServer

    if shutil.which("prometheus") is None:
        raise NotDrillable("no prometheus binary on this host")
    server = PrometheusServer(root / "prometheus", admin_api=False, self_scrape=False)
    try:
        server.start()
        yield Scratch(_no_container(cfg, url=server.url, data_dir=str(server.data), stop_command=server.stop_command,
                                    start_command=server.start_command),
                      live={"data_dir": str(server.data)})
    finally:
        server.stop()


#: kinds this version can drill: a scratch instance and the service config that points at it
DRILLS: dict[str, ScratchFactory] = {"postgres": _postgres, "redis": _redis, "configs": _files, "etcd": _etcd,
                                     "prometheus": _prometheus}


# -- the drill ---------------------------------------------------------------------------------

def drill_artifact(name: str, cfg, entry: dict, reader: SnapshotReader, root: Path) -> DrillResult:
    """Drill one artifact of ``reader``'s snapshot (see the module docstring)."""
    from .fingerprint import compare

    kind = entry.get("kind") or cfg.kind
    result = DrillResult(name, kind, entry["path"], "not-drillable", expected=entry.get("fingerprint"))
    if kind not in DRILLS:
        result.detail = f"no drill for kind {kind} yet"
        return result
    if not result.expected:
        result.detail = "the manifest records no fingerprint for it (a snapshot made before fingerprints)"
        return result
    folder = root / f"scratch-{name}"
    folder.mkdir(mode=0o755)
    try:
        with DRILLS[kind](folder, cfg, result.expected) as scratch:
            svc = REGISTRY[kind](name, scratch.config, access_for(scratch.config))
            started = time.monotonic()
            try:
                detail = svc.restore(reader.artifact(entry), **scratch.restore)
                if scratch.started is not None:
                    later = scratch.started()
                    svc = REGISTRY[kind](name, later, access_for(later))
            except CoderzBackupError as exc:
                result.status, result.detail = "failed", f"the restore failed: {exc}"
                result.duration_s = time.monotonic() - started
                return result
            result.duration_s = time.monotonic() - started
            result.got = svc.fingerprint_live(**scratch.live)
    except NotDrillable as exc:
        result.detail = str(exc)
        return result
    except CoderzBackupError as exc:
        result.status, result.detail = "failed", str(exc)
        return result
    except Exception as exc:  # noqa: BLE001 - a scratch server that does not start, …: reported, never raised
        log.exception("drill of %s failed unexpectedly", name)
        result.status, result.detail = "failed", f"{type(exc).__name__}: {exc}"
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result.differences = compare(result.expected, result.got)
    if result.differences:
        result.status = "mismatched"
        result.detail = f"restored in {result.duration_s:.1f}s, but " + "; ".join(result.differences)
    else:
        result.status = "matched"
        result.detail = f"restored in {result.duration_s:.1f}s ({detail}); content matches the manifest"
    return result


def summary(results: list[DrillResult]) -> dict:
    counts = {s: sum(r.status == s for r in results) for s in ("matched", "mismatched", "failed", "not-drillable")}
    drilled = [r for r in results if r.status in ("matched", "mismatched")]
    ok = counts["mismatched"] == 0 and counts["failed"] == 0 and counts["matched"] > 0
    return {"ok": ok, **counts, "restore_s": round(sum(r.duration_s for r in drilled), 3)}


def write_record(folder: Path, results: list[DrillResult], *, when: str) -> None:
    """``drill.json`` beside the manifest, bound to it (like ``post-snapshot.json``)."""
    from .snapshot import write_bound_record

    write_bound_record(folder, RECORD, {"drilled_at": when, **summary(results),
                                        "results": [r.as_dict() for r in results]})


def read_record(folder: Path) -> dict | None:
    """The last drill of this snapshot, when its record belongs to this manifest."""
    from .snapshot import read_bound_record

    return read_bound_record(folder, RECORD, 4 << 20)
