"""The one command runner: every subprocess coderz-backup starts goes through :class:`CommandStream`.

It keeps stderr apart (drained in a thread, bounded), enforces a timeout by killing the
process group, and turns a non-zero exit into a :class:`~coderz_backup.errors.ProducerError`
whose message carries the stderr tail. Secrets go in ``env``, never in ``argv``.
:class:`~coderz_backup.access.local.LocalAccess` and
:class:`~coderz_backup.access.prefix.PrefixAccess` run their commands with it; Docker's exec
streams (:class:`~coderz_backup.access.docker.ExecStream`) have the same interface.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from ..errors import AccessError, ProducerError

__all__ = ["CHUNK", "CommandStream", "feed_command", "lifecycle_command", "read_all"]

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



def read_all(cmd) -> str:
    """Read a started command (:class:`CommandStream` or an exec stream) to the end, check its exit
    and return its stdout as text — what every access's ``run`` does."""
    with cmd:
        out = b"".join(cmd.chunks())
        cmd.finish()
    return out.decode("utf-8", "replace")


def feed_command(argv: Sequence[str], chunks: Iterable[bytes], *, env: Mapping[str, str] | None = None,
                 timeout: float | None = None, label: str | None = None) -> str:
    """Run ``argv`` on this host with ``chunks`` on its stdin; return (the start of) its stdout text."""
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


def lifecycle_command(run, command: Sequence[str] | None, *, timeout: float, label: str) -> bool:
    """``stop_command`` / ``start_command`` through ``run`` (an access's run); False when none is set."""
    if not command:
        return False
    run(command, timeout=timeout, label=label)
    return True
