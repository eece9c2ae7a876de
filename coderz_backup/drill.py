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

from .access.local import LocalAccess
from .errors import CoderzBackupError
from .reader import SnapshotReader
from .services import REGISTRY

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


@contextlib.contextmanager
def _postgres(root: Path, cfg, expected: dict) -> Iterator[object]:
    from .sandbox import PostgresServer, pg_bin

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
            svc = REGISTRY[kind](name, scratch.config, LocalAccess())
            started = time.monotonic()
            try:
                detail = svc.restore(reader.artifact(entry), **scratch.restore)
                if scratch.started is not None:
                    svc = REGISTRY[kind](name, scratch.started(), LocalAccess())
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
