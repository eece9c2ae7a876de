"""Docker access: the service runs in a container, or its data is in a named volume.

:class:`DockerAccess` implements the :class:`~coderz_backup.access.Access` interface with
the Docker Engine API (docker SDK, low-level calls):

- commands run in the named container through the exec API — stdout streamed and
  demultiplexed from stderr (stderr is kept apart, bounded, and only shown in errors:
  it never lands in an artifact), the exit code read back with ``exec_inspect``,
  secrets passed in the exec *environment*, never in argv;
- files come out with ``get_archive`` and go in with ``put_archive`` (both also work on a
  stopped container); shell work on the data (``rm``, ``chown``) runs in the container
  when it is running, else in a throwaway helper container made from the *same image*
  with ``volumes_from`` the service container, ``network_mode="none"`` — so no other
  image is needed and nothing is ever pulled;
- a named volume (``volume = "…"``, no container needed) is read through a helper
  container that is created with the volume mounted and **never started**;
- stop and start are container stop/start with timeouts.

Command-prefix access (``kubectl exec …``) is :mod:`coderz_backup.access.prefix`.

Images are never pulled: every image we create a container from is looked up with
``images.get`` first, and a missing one is a clear :class:`AccessError` naming it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import socket
import struct
from ..tarfile_compat import tarfile
import threading
import time
import uuid
from typing import BinaryIO, Iterable, Iterator, Mapping, Sequence

from ..errors import AccessError, ProducerError
from .archive import ChunkReader, copy_checked, tar_writer
from .capabilities import (Archives, Commands, ContainerControl, DataDirOps, Files, Freezable, Lifecycle,
                           ManagedLifecycle, Precheck, ReplaceCheck, Shell)
from .commands import CHUNK, _last_lines, read_all
from .shellops import ShellFileOps

__all__ = ["DockerAccess", "ExecStream", "docker_client"]

log = logging.getLogger(__name__)

_STDERR_KEEP = 16 * 1024
_COALESCE = 256 * 1024
HELPER_LABEL = "io.coderz.backup.helper"


def docker_client():
    """A docker SDK client from the environment (``DOCKER_HOST`` or the default socket)."""
    try:
        import docker
    except ImportError:  # pragma: no cover - a dependency
        raise AccessError("the docker Python package is not installed") from None
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - mapped into our tree
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise AccessError(f"cannot reach the Docker Engine at {where} ({type(exc).__name__}); "
                          "is dockerd running and is DOCKER_HOST right?") from None
    return client


def _errors():
    import docker.errors

    return docker.errors


class ExecStream:
    """A command running in a container (exec API) whose stdout is read as a stream.

    Same interface as :class:`~coderz_backup.access.CommandStream`: a context manager,
    :meth:`chunks`, :meth:`finish`, :attr:`stderr_text`, :meth:`kill`.
    """

    def __init__(self, access: "DockerAccess", argv: Sequence[str], *, env: Mapping[str, str] | None,
                 timeout: float | None, label: str | None, stdin: bool = False, user: str = ""):
        self.access = access
        self.api = access.client.api
        self.argv = list(argv)
        self.label = label or os.path.basename(self.argv[0])
        self.timeout = timeout
        self._timed_out = False
        self._stderr_head = bytearray()
        self._stderr_tail = bytearray()
        self._closed = False
        self._exit: int | None = None
        try:
            self.eid = self.api.exec_create(access.container_id(running=True), self.argv, stdout=True, stderr=True,
                                            stdin=stdin, environment=dict(env or {}), user=user)["Id"]
            self.sock = self.api.exec_start(self.eid, socket=True)
        except AccessError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise AccessError(f"{self.label}: cannot run in container {access.container!r}: {_api_msg(exc)}") from None
        raw = getattr(self.sock, "_sock", self.sock)
        self._raw_sock: socket.socket | None = raw if isinstance(raw, socket.socket) else None
        if self._raw_sock is not None:
            # docker-py leaves the client's 120 s read timeout on an exec socket: a command that is
            # silent for two minutes (psql building an index) would fail. Our timer is the deadline.
            self._raw_sock.settimeout(None)
        self._reader = io.BufferedReader(self.sock, CHUNK) if hasattr(self.sock, "readinto") else None
        self._timer: threading.Timer | None = None
        if timeout:
            self._timer = threading.Timer(timeout, self._on_timeout)
            self._timer.daemon = True
            self._timer.start()

    # -- frames -----------------------------------------------------------
    def _read(self, n: int) -> bytes:
        if self._reader is not None:
            return self._reader.read(n)
        out = bytearray()
        while len(out) < n:
            part = self.sock.recv(n - len(out))
            if not part:
                break
            out += part
        return bytes(out)

    def _frames(self) -> Iterator[tuple[int, bytes]]:
        while True:
            try:
                hdr = self._read(8)
            except (OSError, ValueError):
                if self._timed_out or self._closed:
                    return
                raise
            if len(hdr) < 8:
                return
            stream, n = struct.unpack(">BxxxL", hdr)
            data = self._read(n) if n else b""
            if len(data) < n:
                return
            yield stream, data

    def _keep_stderr(self, data: bytes) -> None:
        if len(self._stderr_head) < _STDERR_KEEP:
            self._stderr_head += data[: _STDERR_KEEP - len(self._stderr_head)]
        self._stderr_tail += data
        if len(self._stderr_tail) > _STDERR_KEEP:
            del self._stderr_tail[: len(self._stderr_tail) - _STDERR_KEEP]

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """stdout in chunks of up to ``size`` bytes; stderr frames are kept apart."""
        size = min(size, _COALESCE) if size > _COALESCE else size
        buf = bytearray()
        for stream, data in self._frames():
            if stream == 2:
                self._keep_stderr(data)
                continue
            buf += data
            if len(buf) >= size:
                yield bytes(buf)
                buf.clear()
        if buf:
            yield bytes(buf)

    @property
    def stderr_text(self) -> str:
        return bytes(self._stderr_head).decode("utf-8", "replace").strip()

    # -- stdin (feed) -------------------------------------------------------
    def send(self, data: bytes) -> None:
        if self._raw_sock is None:
            raise AccessError("this Docker connection cannot send stdin")
        self._raw_sock.sendall(data)

    def close_stdin(self) -> None:
        if self._raw_sock is not None:
            with contextlib.suppress(OSError):
                self._raw_sock.shutdown(socket.SHUT_WR)

    # -- end ----------------------------------------------------------------
    def _on_timeout(self) -> None:
        self._timed_out = True
        self.kill()

    def kill(self) -> None:
        """Kill the exec'd process (its host pid; best effort) and drop the connection."""
        with contextlib.suppress(Exception):
            info = self.api.exec_inspect(self.eid)
            if info.get("Running") and info.get("Pid"):
                os.kill(int(info["Pid"]), signal.SIGKILL)
        self._close_sock()

    def _close_sock(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            if self._raw_sock is not None:
                self._raw_sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self.sock.close()

    def exit_code(self, wait: float = 30) -> int | None:
        deadline = time.monotonic() + wait
        while True:
            info = self.api.exec_inspect(self.eid)
            if not info.get("Running"):
                return info.get("ExitCode")
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def finish(self) -> None:
        """Wait for the exit; raise ProducerError unless it exited 0."""
        # drain what is left (stderr after the last stdout, or unread stdout)
        for _ in self._frames():
            pass
        if self._timer:
            self._timer.cancel()
        if self._timed_out:
            raise ProducerError(f"{self.label} did not finish within {self.timeout:.0f}s and was killed")
        rc = self.exit_code()
        err = self.stderr_text
        where = f" in container {self.access.container}"
        if rc is None:
            raise ProducerError(f"{self.label}{where} did not exit after its output ended")
        if rc != 0:
            detail = f": {_last_lines(err)}" if err else " (no error output)"
            how = f"was killed by signal {rc - 128}" if rc > 128 else f"exited with status {rc}"
            raise ProducerError(f"{self.label}{where} {how}{detail}")

    def __enter__(self) -> "ExecStream":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer:
            self._timer.cancel()
        if self._exit is None:
            with contextlib.suppress(Exception):
                info = self.api.exec_inspect(self.eid)
                if info.get("Running"):
                    self.kill()
        self._close_sock()


def _api_msg(exc: Exception) -> str:
    expl = getattr(exc, "explanation", None)
    if expl:
        return str(expl)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class DockerAccess(ShellFileOps):
    """Commands and files of a service that runs in a Docker container (see module docstring)."""

    settle_s = 3.0   # a started container without a health check must stay running this long

    #: what a named volume alone offers (files through a helper container that is never started)
    VOLUME_CAPABILITIES: frozenset[type] = frozenset({Commands, Files, Archives, Lifecycle, Freezable, DataDirOps,
                                                      ReplaceCheck, Precheck, Shell})
    #: added with a container: it is stopped, started and watched as such
    CONTAINER_CAPABILITIES: frozenset[type] = frozenset({ManagedLifecycle, ContainerControl})

    def __init__(self, container: str | None, *, volume: str | None = None, helper_image: str | None = None,
                 volume_path: str | None = None, client=None):
        if not container and not volume:
            raise AccessError("Docker access needs a container or a volume")
        self.container = container
        self.volume = volume
        self.volume_path = volume_path   # where the volume is mounted in the service container
        self.helper_image = helper_image
        self._client = client
        self.description = f"docker container {container}" if container else f"docker volume {volume}"
        # a container is stopped, started and checked as such; a volume alone has no lifecycle of its own
        self.capabilities = self.VOLUME_CAPABILITIES | (self.CONTAINER_CAPABILITIES if container else frozenset())

    #: stop_service/start_service work without configured commands: with a container

    # -- engine objects -----------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            self._client = docker_client()
        return self._client

    def _container(self):
        errors = _errors()
        if not self.container:
            raise AccessError(f"volume {self.volume!r}: no container configured for this operation")
        try:
            return self.client.containers.get(self.container)
        except errors.NotFound:
            raise AccessError(f"container {self.container!r} does not exist on this Docker host "
                              "(check `container` in the config and `docker ps -a`)") from None
        except errors.APIError as exc:
            raise AccessError(f"container {self.container!r}: {_api_msg(exc)}") from None

    def status(self) -> str:
        """The container's state: running, exited, created, paused, …"""
        c = self._container()
        c.reload()
        return c.status

    def is_running(self) -> bool:
        return self.status() == "running"

    def precheck(self) -> None:
        """Before a backup: the engine answers and the container exists and runs (or the volume exists)."""
        if self.container:
            self.container_id(running=True)
            return
        try:
            self.client.volumes.get(self.volume)
        except _errors().NotFound:
            raise AccessError(f"volume {self.volume!r} does not exist on this Docker host (`docker volume ls`)") from None

    def container_id(self, *, running: bool = False) -> str:
        c = self._container()
        if running and c.status != "running":
            raise AccessError(f"container {self.container!r} is not running (status: {c.status}); "
                              f"start it with `docker start {self.container}`")
        return c.id

    def _image(self, name: str | None) -> str:
        """An image present on the host (never pulled): ``name`` or the service container's own."""
        errors = _errors()
        if not name:
            if not self.container:
                raise AccessError(f"volume {self.volume!r}: set helper_image to an image that is already on "
                                  "this host (it is never pulled)")
            return self._container().attrs["Image"]
        try:
            return self.client.images.get(name).id
        except errors.ImageNotFound:
            raise AccessError(f"image {name!r} is not on this Docker host and is never pulled; load or build it "
                              "first, or set helper_image to an image that is present") from None

    @contextlib.contextmanager
    def _helper(self, command: Sequence[str] | None = None, *, rw: bool = False):
        """A helper container: the volume mounted at /vol (volume mode) or volumes_from the service.

        Created, not started, unless a command is given by the caller via ``_helper_run``.
        """
        image = self._image(self.helper_image)
        kw: dict = dict(network_mode="none", labels={HELPER_LABEL: "1"}, user="0",
                        name=f"coderz-backup-helper-{uuid.uuid4().hex[:12]}")
        if self.volume and not self.container:
            kw["volumes"] = {self.volume: {"bind": "/vol", "mode": "rw" if rw else "ro"}}
        else:
            kw["volumes_from"] = [f"{self.container}:{'rw' if rw else 'ro'}"]
        try:
            helper = self.client.containers.create(image, list(command or ["true"]), entrypoint=[], **kw)
        except _errors().APIError as exc:
            raise AccessError(f"cannot create a helper container from {image[:19]}: {_api_msg(exc)}") from None
        try:
            yield helper
        finally:
            with contextlib.suppress(Exception):
                helper.remove(force=True)

    def check_replaceable(self, data_dir: str) -> None:
        """Before a data dir is replaced (nothing stopped yet): it must live on a volume or bind mount
        of the container. Otherwise it is in the container's writable layer, which the helper
        containers (volumes_from) cannot see: keeping the old data aside would silently do nothing."""
        if not self.container:
            return   # a named volume: mounted by definition
        mounts = [m.get("Destination", "").rstrip("/") for m in self._container().attrs.get("Mounts", [])]
        d = data_dir.rstrip("/")
        if not any(d == m or d.startswith(m + "/") for m in mounts if m):
            raise AccessError(f"{data_dir} is not on a volume or bind mount of container {self.container!r} "
                              f"(mounts: {', '.join(sorted(mounts)) or 'none'}); its data lives in the container's "
                              "own layer — put it on a volume (as the Coderz compose file does) to restore it here")

    def _path(self, path: str) -> str:
        """Path inside the helper (volume mode maps volume_path → /vol)."""
        if self.volume and not self.container:
            base = (self.volume_path or "/").rstrip("/")
            if path == base or path.startswith(base + "/") or base == "":
                return "/vol" + path[len(base):]
            raise AccessError(f"{path}: not inside volume {self.volume!r} (mounted at {self.volume_path})")
        return path

    def _archive_target(self, *, rw: bool = False):
        """(container object, path mapper, context) for archive calls."""
        if self.container:
            return contextlib.nullcontext(self._container())
        return self._helper(rw=rw)

    # -- commands -------------------------------------------------------------
    def stream(self, argv, *, env=None, timeout=None, label=None) -> ExecStream:
        return ExecStream(self, argv, env=env, timeout=timeout, label=label)

    def feed(self, argv, chunks, *, env=None, timeout=None, label=None) -> str:
        cmd = ExecStream(self, argv, env=env, timeout=timeout, label=label, stdin=True)
        out = bytearray()
        failure: list[BaseException] = []

        def _collect() -> None:
            try:
                for c in cmd.chunks(65536):
                    if len(out) < _STDERR_KEEP:
                        out.extend(c[: _STDERR_KEEP - len(out)])
            except BaseException as exc:  # noqa: BLE001 - reported below
                failure.append(exc)

        with cmd:
            reader = threading.Thread(target=_collect, daemon=True)
            reader.start()
            try:
                for chunk in chunks:
                    cmd.send(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the command quit early; finish() says why
            cmd.close_stdin()
            reader.join()
            cmd.finish()
        return out.decode("utf-8", "replace")

    def run(self, argv, *, env=None, timeout=None, label=None) -> str:
        return read_all(self.stream(argv, env=env, timeout=timeout, label=label))

    def shell(self, script: str, *args: str, timeout: float = 600, label: str = "sh") -> None:
        """Run ``sh -c script`` as root on the service's files: in the container, or a helper when it is stopped."""
        if self.container and self.is_running():
            with ExecStream(self, ["sh", "-c", script, "sh", *args], env=None, timeout=timeout, label=label,
                            user="0") as cmd:
                for _ in cmd.chunks():
                    pass
                cmd.finish()
            return
        if self.volume and not self.container:
            args = tuple(self._path(a) if a.startswith("/") else a for a in args)
        with self._helper(["sh", "-c", script, "sh", *args], rw=True) as helper:
            helper.start()
            result = helper.wait(timeout=timeout)
            code = result.get("StatusCode", 1)
            if code != 0:
                logs = helper.logs(stdout=False, stderr=True).decode("utf-8", "replace")
                raise ProducerError(f"{label} in a helper container exited with status {code}: {_last_lines(logs)}")

    # -- files ------------------------------------------------------------------
    def _get_archive(self, path: str):
        """(chunk iterator, stat) of ``path`` and the context that owns the container."""
        errors = _errors()
        ctx = self._archive_target()
        target = ctx.__enter__()
        try:
            bits, stat = target.get_archive(self._path(path), chunk_size=CHUNK)
        except errors.NotFound:
            ctx.__exit__(None, None, None)
            raise AccessError(f"{path}: no such file or folder in {self.description}") from None
        except errors.APIError as exc:
            ctx.__exit__(None, None, None)
            raise AccessError(f"{path} in {self.description}: {_api_msg(exc)}") from None
        return bits, stat, ctx

    @contextlib.contextmanager
    def open_read(self, path: str) -> Iterator[BinaryIO]:
        bits, stat, ctx = self._get_archive(path)
        try:
            with tarfile.open(fileobj=ChunkReader(bits), mode="r|") as tar:
                for member in tar:
                    if member.isfile():
                        fh = tar.extractfile(member)
                        assert fh is not None
                        yield fh
                        return
            raise AccessError(f"{path} in {self.description} is not a regular file")
        finally:
            ctx.__exit__(None, None, None)

    def readable(self, path: str) -> bool:
        try:
            bits, _, ctx = self._get_archive(path)
        except AccessError:
            return False
        with contextlib.suppress(Exception):
            bits.close()
        ctx.__exit__(None, None, None)
        return True

    def tar_dir(self, path: str, out: BinaryIO, *, exclude: Sequence[str] = ()) -> int:
        """Re-tar ``get_archive(path)`` with member names relative to ``path`` (streamed)."""
        bits, stat, ctx = self._get_archive(path.rstrip("/") or "/")
        top = stat.get("name") or os.path.basename(path.rstrip("/"))
        count = 0
        try:
            with tarfile.open(fileobj=ChunkReader(bits), mode="r|") as src, \
                    tar_writer(out) as dst:
                for member in src:
                    name = member.name
                    if name == top or name in (".", "./"):
                        continue
                    if name.startswith(top + "/"):
                        name = name[len(top) + 1:]
                    if not name or name.split("/")[0] in exclude:
                        continue
                    member.name = name
                    dst.addfile(member, src.extractfile(member) if member.isfile() else None)
                    count += 1
        except tarfile.TarError as exc:
            raise AccessError(f"reading {path} from {self.description} failed: {exc}") from None
        finally:
            ctx.__exit__(None, None, None)
        return count

    def untar_into(self, path: str, chunks: Iterable[bytes]) -> int:
        """Stream the archive into ``path`` with put_archive, checking each member on the way: an
        unsafe one stops the stream (members before it may have landed — callers verify a whole
        archive with the same rules first, see services.datadir)."""
        errors = _errors()
        r, w = os.pipe()
        count = 0
        problem: list[BaseException] = []

        def _pump() -> None:
            nonlocal count
            try:
                with os.fdopen(w, "wb", buffering=CHUNK) as wf:
                    count = copy_checked(chunks, wf)
            except BaseException as exc:  # noqa: BLE001 - reported below
                problem.append(exc)

        pump = threading.Thread(target=_pump, daemon=True)
        pump.start()

        read_end = os.fdopen(r, "rb", buffering=0)

        def _body() -> Iterator[bytes]:
            for chunk in iter(lambda: read_end.read(CHUNK), b""):
                yield chunk

        ctx = self._archive_target(rw=True)
        try:
            with ctx as target:
                ok = target.put_archive(self._path(path), _body())
        except errors.NotFound:
            raise AccessError(f"{path}: no such folder in {self.description}") from None
        except errors.APIError as exc:
            raise AccessError(f"writing into {path} in {self.description} failed: {_api_msg(exc)}") from None
        finally:
            # the engine may stop reading early (disk full, 500): close our end of the pipe so the
            # pump's next write fails instead of blocking forever on a full pipe
            read_end.close()
            pump.join()
        if problem:
            exc = problem[0]
            if isinstance(exc, tarfile.FilterError):
                raise AccessError(f"refusing unsafe archive member: {exc}")
            raise AccessError(f"archive for {path} is damaged: {exc}")
        if not ok:
            raise AccessError(f"writing into {path} in {self.description} failed")
        return count

    @contextlib.contextmanager
    def frozen(self):
        """Pause the container (when it runs) so its files can be copied at one instant; always unpause."""
        c = self._container() if self.container else None
        if c is None or c.status != "running":
            yield
            return
        try:
            c.pause()
        except _errors().APIError as exc:
            raise AccessError(f"cannot pause container {self.container!r}: {_api_msg(exc)}") from None
        try:
            yield
        finally:
            try:
                c.unpause()
            except _errors().APIError as exc:
                log.error("container %s could not be unpaused: %s", self.container, _api_msg(exc))
                raise AccessError(f"container {self.container!r} is still paused ({_api_msg(exc)}); run "
                                  f"`docker unpause {self.container}`") from None

    # -- lifecycle ----------------------------------------------------------------
    def stop_service(self, command=None, *, timeout: float = 120) -> bool:
        if not self.container:
            return False
        c = self._container()
        # not only "running": a paused container, or one its restart policy is bringing back
        # ("restarting", the usual state of a service that needs a restore) must be down too
        if c.status not in ("exited", "created", "dead"):
            log.info("stopping container %s (%s)", self.container, c.status)
            try:
                if c.status == "paused":
                    c.unpause()
                c.stop(timeout=int(min(timeout, 300)))
            except _errors().APIError as exc:
                raise AccessError(f"cannot stop container {self.container!r}: {_api_msg(exc)}") from None
        return True

    def start_service(self, command=None, *, timeout: float = 120) -> bool:
        if not self.container:
            return False
        c = self._container()
        if c.status != "running":
            log.info("starting container %s", self.container)
            try:
                c.start()
            except _errors().APIError as exc:
                raise AccessError(f"cannot start container {self.container!r}: {_api_msg(exc)}") from None
        deadline = time.monotonic() + timeout
        running_since: float | None = None
        while True:
            c.reload()
            if c.status == "running":
                health = (c.attrs.get("State", {}).get("Health") or {}).get("Status")
                if health == "healthy":
                    return True
                if health is None:
                    # no health check: "running" right after start says little (a process that
                    # fails on start is running for a moment) — it must stay up for a while
                    running_since = running_since or time.monotonic()
                    if time.monotonic() - running_since >= self.settle_s:
                        return True
            elif c.status in ("exited", "dead"):
                raise AccessError(f"container {self.container!r} exited right after start "
                                  f"(exit code {c.attrs.get('State', {}).get('ExitCode')}); see `docker logs {self.container}`")
            if time.monotonic() > deadline:
                raise AccessError(f"container {self.container!r} not running/healthy {timeout:.0f}s after start")
            time.sleep(0.2)
