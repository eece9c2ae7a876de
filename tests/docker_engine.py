"""A private, real Docker Engine and a locally built base image for the test suite.

Nothing here pulls an image or talks to anything but 127.0.0.1 and the local engine socket:

- :class:`Engine` runs one ``dockerd`` of our own (``--data-root /var/lib/coderz-test-docker``, socket
  ``unix:///run/coderz-test-docker/docker.sock``, no bridge, no iptables, own containerd namespace, own
  empty daemon.json) next to any system Docker. It is shared by concurrent pytest sessions: each
  session holds a shared ``flock`` on ``users.lock`` while it uses the engine; the last one to leave
  stops it (SIGTERM, then SIGKILL). An engine left over from a crashed run is reused when healthy,
  restarted otherwise.
- :func:`ensure_image` builds ``coderz-test-base:<hash>`` with ``debootstrap --variant=minbase`` (Debian
  bookworm + PostgreSQL 15, Redis, Prometheus, etcd, sqlite3 …) from the Debian mirror configured in
  ``/etc/apt/sources.list*`` and ``docker import``s it. The tag is a hash of the package list and build
  recipe, so the image is cached in the persistent data root and rebuilt only when the recipe changes.
- :class:`Services` starts service containers the way the Coderz Stack runs them (``--network host``,
  ``--init``, non-root user, named volume) via ``containers.create()`` + ``start()`` — never ``run()``,
  which pulls on a missing image — and removes what it created, by label, at teardown.

Registry switch: with ``CODERZ_TEST_REGISTRY`` set to a reachable registry (e.g. ``docker.io``), the
service starters run the official images instead (postgres:15, redis:7, prom/prometheus:v2.42.0,
quay.io/coreos/etcd:v3.4.23 — see :func:`service_image`), pulled explicitly with ``images.pull`` (the
only pull anywhere, and only with the switch); without it nothing is ever pulled. Off here (no registry is
reachable). Readiness checks and the tests do not depend on uids, which differ between the images.

Pytest fixtures (lazy; only tests that request them start the engine / build the image):
``docker_engine`` (session), ``base_image`` (session), ``docker_services`` (per test).

Command line (also via ``scripts/docker-test-engine.sh``)::

    python tests/docker_engine.py start|stop|status|image|clean

The SDK is used directly rather than testcontainers: testcontainers' ``DockerContainer.start()`` goes
through ``containers.run()`` (which pulls when the image is missing), and its host/port helpers and port
wait strategies do not work with ``network_mode="host"``. ``DOCKER_HOST`` and the
``TESTCONTAINERS_*`` variables are still exported by the ``docker_engine`` fixture, so a test can use
testcontainers with ``coderz-test-base`` if it wants to.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from coderz_backup.waiting import wait_until

DATA_ROOT = Path("/var/lib/coderz-test-docker")
RUN_DIR = Path("/run/coderz-test-docker")
SOCKET = RUN_DIR / "docker.sock"
BASE_URL = f"unix://{SOCKET}"
EXEC_ROOT = RUN_DIR / "exec"
PIDFILE = RUN_DIR / "dockerd.pid"
LOG = RUN_DIR / "dockerd.log"
DAEMON_JSON = RUN_DIR / "daemon.json"
ENGINE_LOCK = RUN_DIR / "engine.lock"
USERS_LOCK = RUN_DIR / "users.lock"
BUILD_LOCK = RUN_DIR / "build.lock"
BUILD_PARENT = Path("/var/tmp")
BUILD_PREFIX = "coderz-test-base-build-"
CONTAINERD_NS = "coderz-test"

LABEL = "coderz.test"                 # on every container/volume the fixtures create
SESSION_LABEL = "coderz.test.scope"   # which Services instance created it

IMAGE_NAME = "coderz-test-base"
SUITE = "bookworm"
PACKAGES = (
    "postgresql-15", "redis-server", "prometheus", "etcd-server", "etcd-client",
    "sqlite3", "procps", "tar", "gzip", "ca-certificates",
    # what the worker image (deployments/worker/Dockerfile) needs besides: a venv-capable Python
    # and the off-site tools, so tests/test_worker_container.py builds FROM this with no network
    "python3", "python3-venv", "rsync", "openssh-client",
)
PG_BIN = "/usr/lib/postgresql/15/bin"
IMAGE_CHANGES = (
    f"ENV PATH={PG_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
)
# Removed from the rootfs before import (apt caches/lists, docs, man pages, locales, the default
# "15/main" cluster that postgresql-common creates — containers initdb into their own volume).
SLIM_PATHS = (
    "var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info",
    "usr/share/locale", "usr/share/lintian", "var/lib/postgresql/15", "etc/postgresql/15",
    "var/log",
)
# Data dirs the service containers mount named volumes on. Created inside the image with the
# image's own uids (``chroot rootfs chown`` — a host chown would use the host's uids), so a fresh
# named volume inherits the right owner and mode.
DATA_DIRS = (
    ("/var/lib/postgresql/data", "postgres:postgres", "0700"),
    ("/data", "redis:redis", "0750"),
    ("/prometheus", "prometheus:prometheus", "0750"),
    ("/var/lib/etcd", "etcd:etcd", "0700"),
    ("/run/postgresql", "postgres:postgres", "2775"),
)
RECIPE_VERSION = 1  # bump when the build steps below change in a way the other fields don't show
RECIPE = {
    "version": RECIPE_VERSION, "suite": SUITE, "variant": "minbase", "packages": sorted(PACKAGES),
    "changes": list(IMAGE_CHANGES), "slim": list(SLIM_PATHS), "data_dirs": [list(d) for d in DATA_DIRS],
}
IMAGE_HASH = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:12]
IMAGE = f"{IMAGE_NAME}:{IMAGE_HASH}"

READY_TIMEOUT = 15.0

#: set to a reachable registry (e.g. ``docker.io``) to start the official images instead of the base image
REGISTRY_ENV = "CODERZ_TEST_REGISTRY"
_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")


def service_image(service: str, registry: str | None = None) -> str:
    """The image the starter of ``service`` (postgres, redis, prometheus, etcd) runs.

    Switch off (``registry`` empty/None): the locally built base image :data:`IMAGE`, never pulled.
    Switch on (``registry`` = the value of ``CODERZ_TEST_REGISTRY``, e.g. ``docker.io`` or
    ``registry.local:5000``): the official image under that registry, which the starters pull
    explicitly — the only pull in the test suite, and only with the switch.
    """
    if not registry:
        return IMAGE
    reg = re.sub(r"^[a-z]+://", "", registry.strip()).rstrip("/")
    images = {
        "postgres": f"{reg}/library/postgres:15",
        "redis": f"{reg}/library/redis:7",
        "prometheus": f"{reg}/prom/prometheus:v2.42.0",
        # etcd publishes its images on quay.io, not Docker Hub
        "etcd": "quay.io/coreos/etcd:v3.4.23" if reg in _HUB else f"{reg}/coreos/etcd:v3.4.23",
    }
    return images[service]


class DockerTestError(RuntimeError):
    """The test engine or image could not be set up; the message says what to look at."""


class _NotReady(Exception):
    """A readiness probe failed; ``__cause__`` is why (kept for the timeout's message)."""


def _say(msg: str) -> None:
    print(f"[docker-test-engine] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 25) -> str:
    try:
        with open(path, errors="replace") as fh:
            return "".join(deque(fh, maxlen=n))
    except OSError as exc:
        return f"(no log: {exc})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _flock(path: Path, mode: int = fcntl.LOCK_EX) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)


def availability() -> str | None:
    """Why the test engine cannot run here (``None`` when it can)."""
    if os.geteuid() != 0:
        return "the test Docker Engine needs root (run the suite as root, as CI does)"
    missing = [b for b in ("dockerd", "containerd", "runc") if not shutil.which(b)]
    if missing:
        return (f"{', '.join(missing)} not installed: run `bash scripts/docker-test-engine.sh install` "
                "(scripts/test.sh does it)")
    return None


# -- engine ----------------------------------------------------------------------------------------


class Engine:
    """The private dockerd. ``up()`` joins (or starts) it, ``down()`` leaves (and stops it if last)."""

    def __init__(self):
        self.client = None
        self.socket = str(SOCKET)
        self.base_url = BASE_URL
        self._users_fd: int | None = None
        self._proc: subprocess.Popen | None = None
        self.started = False  # whether up() had to start dockerd

    # ---- lifecycle
    def up(self, *, join: bool = True) -> "Engine":
        why = availability()
        if why:
            raise DockerTestError(why)
        RUN_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        DATA_ROOT.mkdir(mode=0o710, parents=True, exist_ok=True)
        with _flock(ENGINE_LOCK):
            alone = self._try_exclusive_users()
            if join:
                self._users_fd = os.open(USERS_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self._users_fd, fcntl.LOCK_SH)  # never blocks: LOCK_EX is only taken under ENGINE_LOCK
            try:
                self._up_locked(alone)
            except BaseException:
                if self._users_fd is not None:
                    os.close(self._users_fd)
                    self._users_fd = None
                raise
        return self

    def _up_locked(self, alone: bool) -> None:
        client = self._connect()
        if client is not None and not self._ours(client):
            _say(f"a dockerd on {SOCKET} runs with other settings; restarting it")
            client.close()
            client = None
            self._stop_daemon()
        if client is None:
            self._stop_daemon()  # a crashed/hung one that still holds the pidfile
            self._start_daemon()
            client = self._wait_ready()
            self.started = True
        self.client = client
        if alone:  # no other session uses the engine: clear leftovers of crashed runs
            Services(self, scope="*").cleanup()

    def down(self, *, force: bool = False) -> bool:
        """Leave the engine; stop it when no other session uses it. Returns True if it was stopped."""
        if self.client is not None:
            self.client.close()
            self.client = None
        with _flock(ENGINE_LOCK):
            if self._users_fd is not None:
                os.close(self._users_fd)
                self._users_fd = None
            if not force and not self._try_exclusive_users():
                return False
            self._stop_daemon()
            return True

    @staticmethod
    def _try_exclusive_users() -> bool:
        fd = os.open(USERS_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    def _connect(self):
        import docker

        if not SOCKET.exists():
            return None
        try:
            client = docker.DockerClient(base_url=BASE_URL, timeout=60)
            client.ping()
            return client
        except Exception:  # noqa: BLE001 — any failure means "not usable", we restart it
            return None

    @staticmethod
    def _ours(client) -> bool:
        try:
            info = client.info()
        except Exception:  # noqa: BLE001
            return False
        return info.get("DockerRootDir") == str(DATA_ROOT) and info.get("Driver") == "overlay2"

    def _start_daemon(self) -> None:
        DAEMON_JSON.write_text("{}\n")  # never read /etc/docker/daemon.json of a system Docker
        EXEC_ROOT.mkdir(mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            SOCKET.unlink()
        argv = [
            shutil.which("dockerd"), f"--config-file={DAEMON_JSON}", f"--host={BASE_URL}",
            f"--data-root={DATA_ROOT}", f"--exec-root={EXEC_ROOT}", f"--pidfile={PIDFILE}",
            "--storage-driver=overlay2", "--bridge=none", "--iptables=false", "--ip6tables=false",
            "--ip-masq=false", f"--containerd-namespace={CONTAINERD_NS}",
            f"--containerd-plugins-namespace={CONTAINERD_NS}-plugins", "--log-level=warn",
        ]
        env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "NO_PROXY", "no_proxy")}
        # Safety net for the "never pull" rule: a pull attempt goes to a dead proxy on 127.0.0.1.
        env.update(HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
                   http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
        _say(f"starting dockerd on {SOCKET} (data root {DATA_ROOT}, log {LOG})")
        with contextlib.suppress(OSError):
            if LOG.stat().st_size > 2_000_000:
                LOG.replace(LOG.with_suffix(".log.1"))
        with open(LOG, "ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting dockerd ====\n".encode())
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          env=env, start_new_session=True, close_fds=True)

    def _wait_ready(self, timeout: float = 10.0):
        def answering():
            if self._proc is not None and self._proc.poll() is not None:
                raise DockerTestError(f"dockerd exited with code {self._proc.returncode} before it was ready; "
                                      f"last lines of {LOG}:\n{_tail(LOG)}")
            return self._connect()

        def not_ready(_last):
            self._stop_daemon()
            return DockerTestError(f"dockerd did not answer on {SOCKET} within {timeout:.0f} s; "
                                   f"last lines of {LOG}:\n{_tail(LOG)}")

        return wait_until(answering, timeout=timeout, interval=0.2, error=not_ready)

    def _stop_daemon(self, timeout: float = 20.0) -> None:
        pid = self._proc.pid if self._proc is not None and self._proc.poll() is None else _read_pid(PIDFILE)
        if pid is None or not _pid_alive(pid):
            self._proc = None
            return
        comm = Path(f"/proc/{pid}/comm").read_text().strip() if Path(f"/proc/{pid}/comm").exists() else ""
        if comm != "dockerd":
            return  # a recycled pid: not ours to kill
        _say(f"stopping dockerd (pid {pid})")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            if self._proc is not None:
                self._proc.poll()
            time.sleep(0.1)
        if _pid_alive(pid):
            _say(f"dockerd (pid {pid}) ignored SIGTERM for {timeout:.0f} s; SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            cpid = _read_pid(EXEC_ROOT / "containerd" / "containerd.pid")
            if cpid and _pid_alive(cpid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(cpid, signal.SIGKILL)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            self._proc = None

    # ---- conveniences
    def image_exists(self, tag: str = IMAGE) -> bool:
        import docker

        try:
            self.client.images.get(tag)
            return True
        except docker.errors.ImageNotFound:
            return False


# -- base image ------------------------------------------------------------------------------------


def debian_mirror() -> str:
    """The Debian archive URI from /etc/apt/sources.list* (first ``deb`` source serving bookworm)."""
    files = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*"))
    for f in files:
        if not f.is_file() or not (f.name.endswith(".list") or f.name.endswith(".sources")):
            continue
        text = f.read_text(errors="replace")
        if f.name.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
                if ("deb" in fields.get("types", "").split() and SUITE in fields.get("suites", "").split()
                        and fields.get("enabled", "yes").lower() != "no"):
                    for uri in fields.get("uris", "").split():
                        return uri
        else:
            for line in text.splitlines():
                m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m and m.group(2) == SUITE:
                    return m.group(1)
    raise DockerTestError(f"no `deb … {SUITE}` source in /etc/apt/sources.list*: cannot debootstrap the "
                          "test base image")


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    with open("/proc/self/mounts") as fh:
        points = [line.split()[1].encode().decode("unicode_escape") for line in fh]
    return sorted((p for p in points if p.startswith(prefix) or p == str(path)), key=len, reverse=True)


def _remove_build_dir(path: Path) -> None:
    """Remove a (possibly half-finished) debootstrap dir: unmount its /proc, /sys, … first."""
    for mnt in _mounts_under(path):
        subprocess.run(["umount", "-l", mnt], check=False, capture_output=True)
    if _mounts_under(path):
        raise DockerTestError(f"could not unmount everything under {path}; unmount by hand and remove it")
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def ensure_image(client, log: Callable[[str], None] = _say) -> str:
    """Return the base image tag, building it first when the engine does not have it."""
    import docker

    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.get(IMAGE)
        return IMAGE
    if not shutil.which("debootstrap"):
        raise DockerTestError("debootstrap not installed: run `bash scripts/docker-test-engine.sh install`")
    RUN_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _flock(BUILD_LOCK):  # a concurrent session may be building it right now
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.get(IMAGE)
            return IMAGE
        for stale in BUILD_PARENT.glob(BUILD_PREFIX + "*"):  # we hold the lock: these are dead builds
            log(f"removing a half-finished build: {stale}")
            _remove_build_dir(stale)
        work = Path(tempfile.mkdtemp(prefix=BUILD_PREFIX, dir=BUILD_PARENT))
        try:
            _build(client, work, log)
        finally:
            _remove_build_dir(work)
        _drop_old_images(client, log)
    return IMAGE


def _build(client, work: Path, log: Callable[[str], None]) -> None:
    rootfs = work / "rootfs"
    mirror = debian_mirror()
    t0 = time.monotonic()
    log(f"building {IMAGE}: debootstrap {SUITE} from {mirror} (~1 min the first time)")
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), mirror]
    blog = work / "debootstrap.log"
    with open(blog, "wb") as out:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        last = 0.0
        for line in proc.stdout:
            out.write(line)
            text = line.decode(errors="replace").rstrip()
            # progress: one line per phase, at most every 5 s
            if text.startswith("I: ") and (time.monotonic() - last > 5 or "success" in text):
                log(f"  {text[3:]}")
                last = time.monotonic()
        rc = proc.wait()
    if rc != 0:
        raise DockerTestError(f"debootstrap failed (exit {rc}); last lines of its log:\n{_tail(blog)}\n"
                              f"(debootstrap's own log: {rootfs}/debootstrap/debootstrap.log is removed with "
                              "the build dir)")
    log(f"  debootstrap done in {time.monotonic() - t0:.0f} s; slimming and preparing data dirs")
    for rel in SLIM_PATHS:
        target = rootfs / rel
        if target.is_dir() and not target.is_symlink():
            for child in target.iterdir():
                subprocess.run(["rm", "-rf", "--one-file-system", str(child)], check=True)
    script = "set -e\n" + "".join(
        f"mkdir -p {path}\nchown {owner} {path}\nchmod {mode} {path}\n" for path, owner, mode in DATA_DIRS)
    subprocess.run(["chroot", str(rootfs), "/bin/sh", "-c", script], check=True, capture_output=True)
    for mnt in _mounts_under(rootfs):  # nothing of the host may end up in the image
        raise DockerTestError(f"{mnt} is still mounted inside the build rootfs; refusing to import it")
    log("  importing into the engine")
    tar = subprocess.Popen(["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-c", "."],
                           stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        resp = client.api.import_image(src=tar.stdout, changes=list(IMAGE_CHANGES), stream_src=True)
    finally:
        tar.stdout.close()
        tar_rc = tar.wait()
    image_id = None
    for line in str(resp).splitlines():
        with contextlib.suppress(ValueError):
            data = json.loads(line)
            if "error" in data:
                raise DockerTestError(f"docker import failed: {data['error']}")
            image_id = data.get("status") or image_id
    if tar_rc != 0 or not image_id or not image_id.startswith("sha256:"):
        if image_id and image_id.startswith("sha256:"):
            with contextlib.suppress(Exception):
                client.images.remove(image_id, force=True)
        raise DockerTestError(f"importing the base image failed (tar exit {tar_rc}, engine said {resp!r})")
    client.api.tag(image_id, IMAGE_NAME, IMAGE_HASH)
    size = client.images.get(IMAGE).attrs.get("Size", 0)
    log(f"built {IMAGE} ({size / 1e6:.0f} MB) in {time.monotonic() - t0:.0f} s")


def _drop_old_images(client, log: Callable[[str], None]) -> None:
    """Remove base images of older recipes and untagged leftovers of failed imports (disk space only)."""
    import docker

    with contextlib.suppress(docker.errors.APIError):
        client.images.prune(filters={"dangling": True})

    for img in client.images.list(name=IMAGE_NAME):
        for tag in img.tags:
            if tag.startswith(IMAGE_NAME + ":") and tag != IMAGE:
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(tag)
                    log(f"removed the outdated {tag}")


# -- service containers ----------------------------------------------------------------------------


@dataclass
class ServiceContainer:
    """A running service container started by :class:`Services`."""

    name: str
    container: object
    volume: str | None
    ports: dict[str, int] = field(default_factory=dict)
    user: str | None = None
    password: str | None = None
    database: str | None = None
    host: str = "127.0.0.1"

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reload(self):
        self.container.reload()
        return self.container

    @property
    def running(self) -> bool:
        return self.reload().attrs["State"]["Running"]


class Services:
    """Starts labelled service containers; :meth:`cleanup` removes them and their volumes."""

    def __init__(self, engine: Engine, scope: str | None = None, image: str | Callable[[], str] | None = None):
        self.engine = engine
        self.scope = scope or secrets.token_hex(6)
        self._image = image

    @property
    def client(self):
        return self.engine.client

    @property
    def image(self) -> str:
        img = self._image() if callable(self._image) else self._image
        return img or ensure_image(self.client)

    @property
    def registry(self) -> str | None:
        return os.environ.get(REGISTRY_ENV) or None

    def _image_for(self, service: str) -> tuple[str, bool]:
        """(image, official): the base image, or with the registry switch on the official image, pulled."""
        registry = self.registry
        if not registry:   # switch off: the base image (built locally when missing), never pulled
            return self.image, False
        import docker

        name = service_image(service, registry)
        try:
            self.client.images.get(name)
        except docker.errors.ImageNotFound:
            repo, _, tag = name.rpartition(":")
            try:
                self.client.images.pull(repo, tag=tag)   # the only pull, and only with CODERZ_TEST_REGISTRY set
            except docker.errors.APIError as exc:
                raise DockerTestError(f"{REGISTRY_ENV}={registry}: pulling {name} failed ({exc}); "
                                      f"unset {REGISTRY_ENV} to use the locally built base image") from None
        return name, True

    def _labels(self) -> dict[str, str]:
        return {LABEL: "1", SESSION_LABEL: self.scope}

    @staticmethod
    def _unique(stem: str) -> str:
        return f"{stem}-{secrets.token_hex(4)}"

    def run_service(self, name: str, argv: list[str], *, volumes: dict[str, str] | None = None,
                    user: str = "postgres", env: dict[str, str] | None = None,
                    ready: Callable[[object], bool] | None = None, image: str | None = None,
                    stop_signal: str = "SIGTERM", timeout: float = READY_TIMEOUT,
                    entrypoint: list[str] | None = None, official: bool = False) -> object:
        """Create and start ``name`` like the Coderz Stack does; wait until ``ready(container)`` is true.

        ``volumes`` maps named volumes (created here, labelled) to mount paths. Raises
        :class:`DockerTestError` with the container's log when it exits or is not ready in time.
        """
        import docker

        if user is None and not official:
            raise DockerTestError("only an official image may start as its own user (its entrypoint drops root)")
        if user is not None and (user in ("root", "0") or user.startswith(("root:", "0:"))):
            raise DockerTestError("service containers run as a non-root user, as in the Coderz Stack")
        image = image or self.image
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise DockerTestError(f"image {image} is not in the test engine; it is built locally "
                                  "(ensure_image), never pulled") from None
        binds = {}
        for vol, path in (volumes or {}).items():
            try:
                self.client.volumes.get(vol)
            except docker.errors.NotFound:
                self.client.volumes.create(vol, labels=self._labels())
            binds[vol] = {"bind": path, "mode": "rw"}
        kw: dict = {"entrypoint": entrypoint} if entrypoint is not None else {}
        if user is not None:   # None: an official image's own user (its entrypoint drops privileges)
            kw["user"] = user
        container = self.client.containers.create(
            image, argv, name=name, environment=env or {}, volumes=binds,
            network_mode="host", init=True, labels=self._labels(), detach=True,
            stop_signal=stop_signal, **kw,
        )
        container.start()
        if ready is not None:
            self.wait_ready(container, ready, timeout=timeout)
        return container

    @staticmethod
    def wait_ready(container, ready: Callable[[object], bool], timeout: float = READY_TIMEOUT) -> None:
        def probe() -> bool:
            container.reload()
            if container.status not in ("created", "running"):
                logs = container.logs(tail=30).decode(errors="replace")
                raise DockerTestError(f"container {container.name} exited "
                                      f"({container.attrs['State'].get('ExitCode')}) before it was ready:\n{logs}")
            try:
                return ready(container)
            except Exception as exc:  # noqa: BLE001 - not ready yet: the probe's own failure is the reason
                raise _NotReady(exc) from exc

        def not_ready(last):
            logs = container.logs(tail=30).decode(errors="replace")
            why = f" (last try: {last.__cause__!r})" if last is not None else ""
            return DockerTestError(f"container {container.name} not ready within {timeout:.0f} s{why}:\n{logs}")

        wait_until(probe, timeout=timeout, interval=0.2, retry=_NotReady, error=not_ready)

    # ---- the stack's services
    def postgres(self, *, name: str | None = None, user: str = "coderz", password: str | None = None,
                 database: str = "coderz") -> ServiceContainer:
        """PostgreSQL 15: initdb into a named volume as user postgres; ``user``/``password`` is a
        superuser with scram-sha-256 over 127.0.0.1:<port> (local socket: trust); ``database`` exists."""
        name = name or self._unique("coderz-postgres")
        vol, port = f"{name}-data", free_port()
        password = password or f"pg-{secrets.token_hex(8)}"
        data = "/var/lib/postgresql/data"
        script = (
            'set -e\n'
            f'if [ ! -s {data}/PG_VERSION ]; then\n'
            f'  initdb -D {data} -U "$PG_USER" --pwfile=<(printf %s "$PG_PASSWORD") -E UTF8 --locale=C.UTF-8 '
            '--auth-local=trust --auth-host=scram-sha-256 >/tmp/initdb.log\n'
            f'  postgres -D {data} -c listen_addresses= -k /tmp & pid=$!\n'
            '  for i in $(seq 100); do pg_isready -q -h /tmp -U "$PG_USER" -d postgres && break; sleep 0.1; done\n'
            '  [ "$PG_DB" = postgres ] || createdb -h /tmp -U "$PG_USER" "$PG_DB"\n'
            '  kill $pid; wait $pid || true\n'
            'fi\n'
            f'exec postgres -D {data} -c listen_addresses=127.0.0.1 -p {port} -k /run/postgresql\n'
        )
        image, official = self._image_for("postgres")
        if official:   # the image's entrypoint runs initdb from POSTGRES_* (env, never argv), then drops root
            container = self.run_service(
                name, ["postgres", "-c", "listen_addresses=127.0.0.1", "-p", str(port)], volumes={vol: data},
                user=None, official=True, image=image, stop_signal="SIGINT",
                env={"POSTGRES_USER": user, "POSTGRES_PASSWORD": password, "POSTGRES_DB": database},
                ready=lambda c: _tcp_pg_ready(port, c), timeout=60)
            return ServiceContainer(name, container, vol, {"postgres": port}, user, password, database)
        container = self.run_service(
            name, ["bash", "-c", script], volumes={vol: data}, user="postgres",
            env={"PG_USER": user, "PG_PASSWORD": password, "PG_DB": database},
            stop_signal="SIGINT",  # "fast" shutdown, as the official image (SIGTERM waits for clients)
            ready=lambda c: _tcp_pg_ready(port, c),
        )
        return ServiceContainer(name, container, vol, {"postgres": port}, user, password, database)

    def redis(self, *, name: str | None = None, password: str | None = None) -> ServiceContainer:
        """Redis 7: /data on a named volume, ``requirepass`` (from env, not argv), 127.0.0.1:<port>."""
        name = name or self._unique("coderz-redis")
        vol, port = f"{name}-data", free_port()
        password = password or f"redis-{secrets.token_hex(8)}"
        script = ('set -e\nprintf "requirepass %s\\n" "$REDIS_PASSWORD" > /tmp/redis.conf\n'
                  f'exec redis-server /tmp/redis.conf --bind 127.0.0.1 --port {port} --dir /data '
                  '--save "3600 1" --appendonly no --protected-mode yes\n')
        image, official = self._image_for("redis")   # both images have sh and a `redis` user
        container = self.run_service(name, ["sh", "-c", script], volumes={vol: "/data"}, user="redis",
                                     env={"REDIS_PASSWORD": password}, image=image, official=official,
                                     ready=lambda c: _redis_ping(port, password))
        return ServiceContainer(name, container, vol, {"redis": port}, None, password)

    def prometheus(self, *, name: str | None = None, scrape_interval: str = "1s") -> ServiceContainer:
        """Prometheus: admin API on, scrapes itself, TSDB on a named volume at /prometheus."""
        name = name or self._unique("coderz-prometheus")
        vol, port = f"{name}-data", free_port()
        conf = (f"global:\\n  scrape_interval: {scrape_interval}\\nscrape_configs:\\n"
                f"  - job_name: prometheus\\n    static_configs:\\n      - targets: ['127.0.0.1:{port}']\\n")
        script = (f'set -e\nprintf "{conf}" > /tmp/prometheus.yml\n'
                  'exec prometheus --config.file=/tmp/prometheus.yml --storage.tsdb.path=/prometheus '
                  f'--web.listen-address=127.0.0.1:{port} --web.enable-admin-api\n')
        image, official = self._image_for("prometheus")
        # the official image's entrypoint is the binary and its user `nobody` owns /prometheus
        container = self.run_service(name, ["-c", script] if official else ["sh", "-c", script],
                                     entrypoint=["/bin/sh"] if official else None, volumes={vol: "/prometheus"},
                                     user="nobody" if official else "prometheus", image=image, official=official,
                                     ready=lambda c: _http_ok(f"http://127.0.0.1:{port}/-/ready"))
        return ServiceContainer(name, container, vol, {"http": port})

    def etcd(self, *, name: str | None = None) -> ServiceContainer:
        """etcd 3.4, single member, data dir on a named volume at /var/lib/etcd (no auth)."""
        name = name or self._unique("coderz-etcd")
        vol, cport, pport = f"{name}-data", free_port(), free_port()
        curl, purl = f"http://127.0.0.1:{cport}", f"http://127.0.0.1:{pport}"
        argv = ["etcd", "--name", "s1", "--data-dir", "/var/lib/etcd/data",
                "--listen-client-urls", curl, "--advertise-client-urls", curl,
                "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
                "--initial-cluster", f"s1={purl}", "--initial-cluster-state", "new"]
        image, official = self._image_for("etcd")
        # the official image may have no shell and no etcd user: argv as is (no secrets), its own user
        if official:
            argv[0] = "/usr/local/bin/etcd"
        container = self.run_service(name, argv, volumes={vol: "/var/lib/etcd"}, user=None if official else "etcd",
                                     image=image, official=official, ready=lambda c: _http_ok(f"{curl}/health"))
        return ServiceContainer(name, container, vol, {"client": cport, "peer": pport})

    # ---- teardown
    def cleanup(self) -> list[str]:
        """Remove this scope's containers and volumes (``scope="*"``: every fixture-made one)."""
        import docker

        flt = {"label": LABEL if self.scope == "*" else f"{SESSION_LABEL}={self.scope}"}
        removed, errors = [], []
        for c in self.client.containers.list(all=True, filters=flt):
            try:
                c.remove(force=True)
                removed.append(c.name)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                errors.append(f"container {c.name}: {exc}")
        for v in self.client.volumes.list(filters=flt):
            try:
                v.remove(force=True)
                removed.append(v.name)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                errors.append(f"volume {v.name}: {exc}")
        if errors:
            raise DockerTestError("cleanup left things behind: " + "; ".join(errors))
        return removed


def _tcp_pg_ready(port: int, container) -> bool:
    # ready when the final server (not the init-time one, which has no TCP) accepts on 127.0.0.1
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    return container.exec_run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)]).exit_code == 0


def _redis_ping(port: int, password: str) -> bool:
    import redis

    return redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=1).ping()


def _http_ok(url: str) -> bool:
    import httpx

    return httpx.get(url, timeout=1).status_code == 200


# -- pytest fixtures -------------------------------------------------------------------------------


class DockerEngine:
    """What the ``docker_engine`` fixture gives: the client, the socket, the base image, starters."""

    def __init__(self, engine: Engine, show: Callable[[], contextlib.AbstractContextManager]):
        self._engine = engine
        self._show = show
        self._image: str | None = None
        self.client = engine.client
        self.socket = engine.socket
        self.base_url = engine.base_url
        self.services = Services(engine, scope=f"session-{secrets.token_hex(6)}", image=lambda: self.image)
        self.scopes: list[Services] = []

    @property
    def image(self) -> str:
        """The base image tag (built on first use, then cached in the engine's data root)."""
        if self._image is None:
            with self._show():
                self._image = ensure_image(self.client)
        return self._image

    def scope(self) -> Services:
        svc = Services(self._engine, image=lambda: self.image)
        self.scopes.append(svc)
        return svc

    def run_service(self, *a, **kw):
        return self.services.run_service(*a, **kw)

    def postgres(self, **kw) -> ServiceContainer:
        return self.services.postgres(**kw)

    def redis(self, **kw) -> ServiceContainer:
        return self.services.redis(**kw)

    def prometheus(self, **kw) -> ServiceContainer:
        return self.services.prometheus(**kw)

    def etcd(self, **kw) -> ServiceContainer:
        return self.services.etcd(**kw)


try:
    import pytest
except ImportError:  # used as a script without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def docker_engine(request):
        """The private test Docker Engine (started on first use, stopped at the end of the session)."""
        why = availability()
        if why:
            pytest.skip(why)
        capman = request.config.pluginmanager.getplugin("capturemanager")

        def show():  # let progress lines (engine start, image build) reach the terminal
            return capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()

        engine = Engine()
        with show():
            engine.up()
        saved = {k: os.environ.get(k) for k in
                 ("DOCKER_HOST", "TESTCONTAINERS_RYUK_DISABLED", "TESTCONTAINERS_CONNECTION_MODE")}
        os.environ.update(DOCKER_HOST=BASE_URL, TESTCONTAINERS_RYUK_DISABLED="true",
                          TESTCONTAINERS_CONNECTION_MODE="docker_host")
        de = DockerEngine(engine, show)
        try:
            yield de
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            try:
                for svc in [de.services, *de.scopes]:  # per-test scopes clean up themselves; again here
                    svc.cleanup()
            finally:
                with show():
                    engine.down()

    @pytest.fixture(scope="session")
    def base_image(docker_engine) -> str:
        """Tag of the locally built base image (``coderz-test-base:<hash>``)."""
        return docker_engine.image

    @pytest.fixture
    def docker_services(docker_engine):
        """Service starters whose containers and volumes are removed at the end of the test."""
        svc = docker_engine.scope()
        try:
            yield svc
        finally:
            svc.cleanup()


# -- command line ----------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "status"
    if cmd not in ("start", "stop", "status", "image", "clean"):
        print(__doc__.split("Command line")[1] if "Command line" in __doc__ else __doc__)
        return 2
    if cmd == "status":
        engine = Engine()
        client = engine._connect() if SOCKET.exists() else None
        if client is None:
            print(f"not running (socket {SOCKET})")
            return 1
        v = client.version()
        print(f"running: dockerd {v.get('Version')} API {v.get('ApiVersion')} on {BASE_URL}; "
              f"base image {IMAGE}: {'present' if _has(client, IMAGE) else 'not built'}")
        return 0
    why = availability()
    if why:
        print(why, file=sys.stderr)
        return 1
    engine = Engine()
    try:
        if cmd == "stop":
            engine.down(force=True)
            print("stopped")
            return 0
        engine.up(join=False)
        if cmd == "image":
            print(ensure_image(engine.client))
        elif cmd == "clean":
            removed = Services(engine, scope="*").cleanup()
            print(f"removed {len(removed)} containers/volumes")
        else:
            print(BASE_URL)
            return 0  # `start` leaves it running (stop with `stop`)
        if engine.started:  # `image`/`clean` leave things as they found them
            engine.down()
        return 0
    except DockerTestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _has(client, tag: str) -> bool:
    import docker

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
