"""How commands and files of a service are reached.

A service module asks its :class:`Access` to "run pg_dump and give me stdout as a
stream" or "open this file for reading"; it never knows whether that happens on this
host or inside a container. Implementations:

- :class:`LocalAccess` — commands run on this host (they may talk to the service over
  the network, as pg_dump does); files are read from this host's file system.
- Docker (``docker exec`` / ``get_archive``) and command-prefix (``kubectl exec``)
  access plug in here behind the same interface; :func:`access_for` chooses.

This module is also the one place that runs external commands: every subprocess goes
through :class:`CommandStream`, which keeps stderr apart (drained in a thread, bounded),
enforces a timeout by killing the process group, and turns a non-zero exit into a
:class:`~coderz_backup.errors.ProducerError` whose message carries the stderr tail.
Secrets go in ``env``, never in ``argv``.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import signal
import subprocess
import tarfile
import threading
import time
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Mapping, Protocol, Sequence

from isal import isal_zlib

from ..errors import AccessError, ProducerError

__all__ = ["ARCHIVE_ERRORS", "Access", "ChunkReader", "CommandStream", "LocalAccess", "access_for", "check_member", "tar_of_file", "CHUNK"]

CHUNK = 1 << 20  # 1 MiB reads: large enough for throughput, small enough for flat memory
_STDERR_KEEP = 16 * 1024


class CommandStream:
    """A running command whose stdout is read as a stream.

    Use as a context manager; leaving it kills the process if it is still running.
    Call :meth:`finish` after reading stdout to the end: it waits for the exit and
    raises ProducerError on failure.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: int | None = subprocess.DEVNULL,
        label: str | None = None,
    ):
        self.argv = list(argv)
        self.label = label or Path(self.argv[0]).name
        self.timeout = timeout
        self._started = time.monotonic()
        self._timed_out = False
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=full_env,
                start_new_session=True,  # own process group: a timeout kills children too
            )
        except FileNotFoundError:
            raise AccessError(f"{self.label}: command not found ({self.argv[0]}); install it or set its path in the config") from None
        except PermissionError:
            raise AccessError(f"{self.label}: {self.argv[0]} is not executable") from None
        _grow_pipe(self.proc.stdout)
        self._stderr_head = bytearray()
        self._stderr_tail = bytearray()
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()
        self._timer: threading.Timer | None = None
        if timeout:
            self._timer = threading.Timer(timeout, self._on_timeout)
            self._timer.daemon = True
            self._timer.start()

    # -- stderr -----------------------------------------------------------
    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for chunk in iter(lambda: self.proc.stderr.read(8192), b""):
            if len(self._stderr_head) < _STDERR_KEEP:
                self._stderr_head += chunk[: _STDERR_KEEP - len(self._stderr_head)]
            self._stderr_tail += chunk
            if len(self._stderr_tail) > _STDERR_KEEP:
                del self._stderr_tail[: len(self._stderr_tail) - _STDERR_KEEP]

    @property
    def stderr_text(self) -> str:
        """First lines of stderr (where errors usually are), bounded."""
        self._stderr_thread.join(timeout=5)
        text = bytes(self._stderr_head).decode("utf-8", "replace").strip()
        return text

    # -- stdout -----------------------------------------------------------
    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """stdout in full ``size`` chunks (the last one shorter).

        Full reads, not ``read1``: producers such as pg_dump write 4 KiB at a time, and
        a Python round trip per 4 KiB cost ~0.3 CPU-s per 500 MB on a 2-core host where
        the dump itself already uses both cores (bench/bench_postgres.py).
        """
        assert self.proc.stdout is not None
        read = self.proc.stdout.read
        while True:
            chunk = read(size)
            if not chunk:
                return
            yield chunk

    # -- end --------------------------------------------------------------
    def _on_timeout(self) -> None:
        self._timed_out = True
        self.kill(even_if_exited=True)

    def kill(self, *, even_if_exited: bool = False) -> None:
        """SIGKILL the command's process group. After a timeout also when the command itself has
        exited: children it left behind keep the pipes open and would keep the run waiting. (Not on
        a normal exit: a start_command may leave its service running in that group on purpose.)"""
        if self.proc.poll() is None or even_if_exited:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def finish(self) -> None:
        """Wait for the exit; raise ProducerError unless it exited 0."""
        rc = self.proc.wait()
        if self._timer:
            self._timer.cancel()
        err = self.stderr_text
        if self._timed_out:
            raise ProducerError(f"{self.label} did not finish within {self.timeout:.0f}s and was killed")
        if rc != 0:
            how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
            detail = f": {_last_lines(err)}" if err else " (no error output)"
            raise ProducerError(f"{self.label} {how}{detail}")

    def __enter__(self) -> "CommandStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        if self._timer:
            self._timer.cancel()
        for f in (self.proc.stdout, self.proc.stderr, self.proc.stdin):
            if f:
                with contextlib.suppress(OSError):
                    f.close()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)


def _grow_pipe(fh) -> None:
    """Let the producer run ahead while we compress: a 1 MiB pipe (Linux; best effort)."""
    try:
        import fcntl

        fcntl.fcntl(fh.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), CHUNK)
    except (OSError, ValueError, AttributeError):
        pass


def _last_lines(text: str, n: int = 6) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[:n])


class Access(Protocol):
    """Where a service's commands run and its files are read."""

    description: str

    def stream(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
               timeout: float | None = None, label: str | None = None) -> CommandStream:
        """Start ``argv`` and return its stdout as a stream (a context manager)."""

    def feed(self, argv: Sequence[str], chunks: Iterable[bytes], *, env: Mapping[str, str] | None = None,
             timeout: float | None = None, label: str | None = None) -> str:
        """Run ``argv`` with ``chunks`` on stdin; return its stdout text; raise on failure."""

    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
            timeout: float | None = None, label: str | None = None) -> str:
        """Run ``argv`` to completion; return stdout text; raise ProducerError on failure."""

    def open_read(self, path: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """Open a file of the service for reading (binary)."""

    def readable(self, path: str) -> bool:
        """True when the file or folder ``path`` exists and can be read through this access."""

    def tar_dir(self, path: str, out: BinaryIO, *, exclude: Sequence[str] = ()) -> int:
        """Write an uncompressed tar stream of the *contents* of folder ``path`` into ``out``.

        Member names are relative to ``path`` (``meta.json``, ``01H…/index``); modes,
        owners and mtimes are kept. ``exclude`` holds top-level names to leave out.
        Returns the number of entries written. Raises AccessError when ``path`` is missing.
        """

    def untar_into(self, path: str, chunks: Iterable[bytes]) -> int:
        """Extract a tar stream (as written by :meth:`tar_dir`) into the existing folder ``path``.

        Every member is checked first: absolute names, ``..`` and links leaving ``path``
        are refused. Owners are kept (numeric). Returns the number of entries.
        """

    def remove_tree(self, path: str) -> None:
        """Delete file or folder ``path`` (missing is fine)."""

    def stop_service(self, command: Sequence[str] | None, *, timeout: float = 120) -> bool:
        """Stop the service: its container, or run ``command`` here. False when there is no way to."""

    def start_service(self, command: Sequence[str] | None, *, timeout: float = 120) -> bool:
        """Start the service again: its container, or run ``command``. False when there is no way to."""


class LocalAccess:
    """Commands run on this host; files are this host's files."""

    description = "local"
    #: stop_service/start_service work without configured commands (a container)
    manages_lifecycle = False

    def stream(self, argv, *, env=None, timeout=None, label=None) -> CommandStream:
        return CommandStream(argv, env=env, timeout=timeout, label=label)

    def feed(self, argv, chunks, *, env=None, timeout=None, label=None) -> str:
        cmd = CommandStream(argv, env=env, timeout=timeout, label=label, stdin=subprocess.PIPE)
        out = bytearray()

        def _collect() -> None:
            for c in cmd.chunks(65536):
                if len(out) < _STDERR_KEEP:
                    out.extend(c[: _STDERR_KEEP - len(out)])

        with cmd:
            reader = threading.Thread(target=_collect, daemon=True)
            reader.start()
            assert cmd.proc.stdin is not None
            try:
                for chunk in chunks:
                    cmd.proc.stdin.write(chunk)
                cmd.proc.stdin.close()
            except BrokenPipeError:
                pass  # the command quit early; finish() reports why
            reader.join()
            cmd.finish()
        return out.decode("utf-8", "replace")

    def run(self, argv, *, env=None, timeout=None, label=None) -> str:
        with self.stream(argv, env=env, timeout=timeout, label=label) as cmd:
            out = b"".join(cmd.chunks())
            cmd.finish()
        return out.decode("utf-8", "replace")

    @contextlib.contextmanager
    def open_read(self, path: str) -> Iterator[BinaryIO]:
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            raise AccessError(f"{path}: no such file") from None
        except PermissionError:
            raise AccessError(f"{path}: permission denied") from None
        with fh:
            yield fh

    def readable(self, path: str) -> bool:
        if os.path.isdir(path):
            return os.access(path, os.R_OK | os.X_OK)
        return os.path.isfile(path) and os.access(path, os.R_OK)

    def tar_dir(self, path: str, out: BinaryIO, *, exclude: Sequence[str] = ()) -> int:
        if not os.path.isdir(path):
            raise AccessError(f"{path}: no such folder")
        count = 0
        try:
            with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for name in sorted(os.listdir(path)):
                    if name in exclude:
                        continue

                    def _count(info: tarfile.TarInfo) -> tarfile.TarInfo:
                        nonlocal count
                        count += 1
                        return info

                    tar.add(os.path.join(path, name), arcname=name, recursive=True, filter=_count)
        except OSError as exc:
            raise AccessError(f"cannot read {exc.filename or path}: {exc.strerror}") from None
        return count

    def untar_into(self, path: str, chunks: Iterable[bytes]) -> int:
        if not os.path.isdir(path):
            raise AccessError(f"{path}: no such folder to restore into")
        root = os.path.realpath(path)
        count = 0
        links = SeenMembers()

        def _safe(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
            nonlocal count
            check_member(member, dest, links)
            count += 1
            return member

        try:
            with tarfile.open(fileobj=ChunkReader(chunks), mode="r|") as tar:
                tar.extractall(root, numeric_owner=True, filter=_safe)
        except tarfile.FilterError as exc:
            raise AccessError(f"refusing unsafe archive member: {exc}") from None
        except ARCHIVE_ERRORS as exc:
            raise AccessError(f"extracting into {path} failed: {exc}") from None
        return count

    def remove_tree(self, path: str) -> None:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def chown_like_parent(self, path: str) -> None:
        """chown -R ``path`` to the owner of the folder itself (after an extract as root)."""
        st = os.stat(path)
        for base, dirs, files in os.walk(path):
            for n in dirs + files:
                os.lchown(os.path.join(base, n), st.st_uid, st.st_gid)

    def move_contents(self, src: str, dest: str) -> None:
        """Move everything inside ``src`` into a new folder ``dest`` (e.g. to keep the old data)."""
        os.makedirs(dest, exist_ok=True)
        for n in os.listdir(src):
            full = os.path.join(src, n)
            if os.path.abspath(full) != os.path.abspath(dest):
                os.rename(full, os.path.join(dest, n))

    def stop_service(self, command, *, timeout: float = 120) -> bool:
        if not command:
            return False
        self.run(command, timeout=timeout, label="stop_command")
        return True

    def start_service(self, command, *, timeout: float = 120) -> bool:
        if not command:
            return False
        self.run(command, timeout=timeout, label="start_command")
        return True


def tar_of_file(path: str | Path, arcname: str, *, mode: int = 0o600) -> Iterator[bytes]:
    """A one-file tar stream of ``path`` named ``arcname`` (for :meth:`Access.untar_into`), streamed."""
    size = os.path.getsize(path)
    info = tarfile.TarInfo(arcname)
    info.size, info.mode, info.mtime = size, mode, int(time.time())
    yield info.tobuf(format=tarfile.PAX_FORMAT)
    with open(path, "rb") as fh:
        yield from iter(lambda: fh.read(CHUNK), b"")
    yield b"\0" * ((-size) % tarfile.BLOCKSIZE) + b"\0" * (2 * tarfile.BLOCKSIZE)


# Everything reading a damaged gzip/tar can raise. isal's and zlib's errors are not OSErrors:
# a flipped byte inside a deflate block raises IsalError ("invalid lookback distance"),
# one in the trailer a BadGzipFile (OSError), a cut one EOFError.
ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, isal_zlib.error)


class SeenMembers(set):
    """Per-archive state for :func:`check_member`: the archive's symlinks (the set itself) and
    the regular files it held so far (``files``, the only allowed hard-link targets)."""

    def __init__(self) -> None:
        super().__init__()
        self.files: set[str] = set()


def check_member(member: tarfile.TarInfo, root: str, links: set[str] | None = None) -> None:
    """Raise tarfile.FilterError when ``member`` could write outside ``root``.

    Our own archives never hold absolute paths or ``..``; one that does was tampered
    with, so it is refused rather than silently re-rooted. Links out of ``root`` and
    device files are refused too (tarfile's data filter) — and, not relying on that filter
    alone (before Python 3.11.13 its realpath checks can be bypassed with symlink chains
    deeper than PATH_MAX, CVE-2025-4517), link targets are also checked as text. With
    ``links`` (one set per archive) a member may not pass through, replace or hard-link to a
    symlink that came earlier in the same archive. With a :class:`SeenMembers` a hard link must
    point to a regular file that came earlier in the same archive (never to a file that was
    already on disk: writing the member after it would change that file).
    """
    name = member.name.rstrip("/")
    if name.startswith("/"):
        raise tarfile.AbsolutePathError(member)
    parts = name.split("/")
    if ".." in parts:
        raise tarfile.OutsideDestinationError(member, os.path.join(root, name))
    if member.issym():
        target = member.linkname
        where = os.path.normpath(target if target.startswith("/")
                                 else os.path.join(root, os.path.dirname(name), target))
        if not (root == "/" or where == root or where.startswith(root.rstrip("/") + "/")):
            raise tarfile.LinkOutsideDestinationError(member, where)
    elif member.islnk():
        if member.linkname.startswith("/") or ".." in member.linkname.split("/"):
            raise tarfile.LinkOutsideDestinationError(member, member.linkname)
    if links is not None:
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in links:
                raise tarfile.OutsideDestinationError(member, f"{name} (through the symlink {'/'.join(parts[:i])} "
                                                              "of the same archive)")
        if name in links and not member.issym():
            raise tarfile.OutsideDestinationError(member, f"{name} (would write through a symlink of the archive)")
        if member.islnk() and member.linkname.rstrip("/") in links:
            raise tarfile.LinkOutsideDestinationError(member, member.linkname)
        if member.issym():
            links.add(name)
        if isinstance(links, SeenMembers):
            if member.islnk() and os.path.normpath(member.linkname.rstrip("/")) not in links.files:
                raise tarfile.LinkOutsideDestinationError(
                    member, f"{member.linkname} (a hard link must point to a file earlier in the same archive)")
            if member.isfile():
                links.files.add(os.path.normpath(name))
    tarfile.data_filter(member, root)


class ChunkReader(io.RawIOBase):
    """A read-only file object over an iterable of byte chunks (for tarfile stream mode)."""

    def __init__(self, chunks: Iterable[bytes]):
        self._it = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def access_for(service_config) -> Access:
    """Choose the access for a service's config: Docker container/volume, command prefix, or local."""
    container = getattr(service_config, "container", None)
    volume = getattr(service_config, "volume", None)
    prefix = getattr(service_config, "exec_prefix", None)
    if container and prefix:
        raise AccessError("set either container or exec_prefix, not both")
    if container or volume:
        from .docker import DockerAccess

        return DockerAccess(container, volume=volume, helper_image=getattr(service_config, "helper_image", None),
                            volume_path=getattr(service_config, "volume_path", None)
                            or getattr(service_config, "data_dir", None))
    if prefix:
        from .docker import PrefixAccess

        return PrefixAccess(prefix)
    return LocalAccess()


def describe_argv(argv: Sequence[str]) -> str:
    """argv as a shell-quoted string for logs (argv never holds secrets)."""
    return shlex.join(argv)
