"""The Prefect API a CLI run talks to, set up before Prefect is imported.

- ``PREFECT_API_URL`` set: one bounded probe of ``/health`` first. An API that refuses the
  connection, answers with errors, or accepts and never answers is an
  :class:`~coderz_backup.errors.OrchestratorError` within seconds (the CLI exits 2 with one
  line naming ``PREFECT_API_URL`` and sends the 🔴 mail itself), never a traceback or a hang.
- unset: the embedded API. The same server Prefect's "ephemeral" mode would start (uvicorn
  with ``prefect.server.api.server:create_app``, its database in ``$PREFECT_HOME``), but
  started here so that it is ours to bound: its output goes to
  ``$PREFECT_HOME/coderz-embedded-server.log`` instead of the caller's stdout/stderr (a
  ``backup | tee`` or cron's capture ends when the CLI ends), it gets SIGTERM when the CLI's
  process dies however it dies (``PR_SET_PDEATHSIG``), and it is stopped when the CLI
  returns or gets SIGTERM/SIGINT. ``PREFECT_API_URL`` then points at it for this process.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx

from .errors import OrchestratorError
from .waiting import wait_until

__all__ = ["prefect_api", "check_api", "EmbeddedServer"]

PROBE_TIMEOUT_S = 10.0   # CODERZ_BACKUP_API_TIMEOUT_S overrides it


def check_api(url: str, timeout: float | None = None) -> None:
    """Raise OrchestratorError unless the Prefect API at ``url`` answers ``/health`` in time."""
    if timeout is None:
        timeout = float(os.environ.get("CODERZ_BACKUP_API_TIMEOUT_S") or PROBE_TIMEOUT_S)
    health = f"{url.rstrip('/')}/health"
    problem = "no answer"
    for attempt in range(2):  # one retry: a server busy for a moment (503) is not down
        try:
            resp = httpx.get(health, timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)))
        except httpx.TimeoutException:
            problem = f"no answer within {timeout:g}s"
        except httpx.HTTPError as exc:
            problem = f"cannot connect ({type(exc).__name__}: {exc})"
        else:
            if resp.status_code == 200:
                return
            problem = f"/health answered HTTP {resp.status_code}"
        if attempt == 0:
            time.sleep(1)
    raise OrchestratorError(f"the Prefect API at PREFECT_API_URL={url} is not usable: {problem}. Start the "
                            "server (prefect server start), fix PREFECT_API_URL, or unset it to run on the "
                            "embedded API")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setpgrp()  # a terminal's Ctrl-C reaches the CLI, which stops the server itself


class _Exited(Exception):
    """The embedded server's process ended while we waited for it."""


class EmbeddedServer:
    """A temporary local Prefect API for one CLI run."""

    def __init__(self, home: Path, timeout: float):
        self.home, self.timeout = home, timeout
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.log_path = home / "coderz-embedded-server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "EmbeddedServer":
        spec = importlib.util.find_spec("prefect")
        if spec is None or not spec.submodule_search_locations:
            raise OrchestratorError("Prefect is not installed in this Python environment")
        app_dir = str(Path(list(spec.submodule_search_locations)[0]).parent)
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1", "PREFECT_HOME": str(self.home)}
        env.pop("PREFECT_API_URL", None)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", app_dir, "--factory",
                 "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                 "--log-level", "error", "--lifespan", "on"],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent, close_fds=True)
        finally:
            log.close()

        def up() -> bool:
            if self.proc.poll() is not None:
                raise _Exited
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200

        with contextlib.suppress(_Exited, TimeoutError):
            wait_until(up, timeout=self.timeout, interval=0.1, retry=httpx.HTTPError)
            return self
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-1500:] if self.log_path.exists() else ""
        raise OrchestratorError(f"the embedded Prefect API did not start within {self.timeout:g}s "
                                f"(log {self.log_path}){': ' + tail.strip() if tail.strip() else ''}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _raise_exit(signum, frame):  # SIGTERM → unwind like Ctrl-C: finally blocks stop the server
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """The Prefect API for this run (see the module docstring); call before importing prefect."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        check_api(url)
        yield url
        return
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") or 120)
    server = EmbeddedServer(home, timeout)
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        server.start()
        os.environ["PREFECT_API_URL"] = server.url
        yield server.url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()
        signal.signal(signal.SIGTERM, previous)
