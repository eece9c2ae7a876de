"""The Prefect API a CLI run talks to, set up before Prefect is imported.

Which API, in this order:

1. ``PREFECT_API_URL`` in the environment, else the one in the active Prefect profile
   (``prefect config set PREFECT_API_URL=…``, in ``$PREFECT_HOME/profiles.toml``);
2. else a Prefect 3 server that answers on this host at ``http://127.0.0.1:4200/api`` (the
   product document's Prefect UI; ``CODERZ_BACKUP_LOCAL_API`` names another URL, ``off`` skips
   this): the run shows in its UI;
3. else the embedded API (below).

- a configured API: one bounded probe of ``/health`` first. An API that refuses the
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

__all__ = ["prefect_api", "check_api", "choose_api", "EmbeddedServer", "start_early", "stop_early"]

PROBE_TIMEOUT_S = 10.0   # CODERZ_BACKUP_API_TIMEOUT_S overrides it
LOCAL_API = "http://127.0.0.1:4200/api"   # the product document's Prefect server (UI on port 4200)


def _prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def profile_api_url() -> tuple[str | None, str]:
    """``PREFECT_API_URL`` of the active Prefect profile (read from its file; Prefect is not imported)."""
    import tomllib

    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or _prefect_home() / "profiles.toml").expanduser()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return None, ""
    name = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    profiles = data.get("profiles")
    profile = profiles.get(str(name)) if isinstance(profiles, dict) else None
    url = profile.get("PREFECT_API_URL") if isinstance(profile, dict) else None
    return (str(url), f"Prefect profile {name}") if url else (None, "")


def _local_server() -> str | None:
    """The URL of a Prefect 3 server answering on this host (see the module docstring), or None."""
    url = os.environ.get("CODERZ_BACKUP_LOCAL_API", LOCAL_API).strip()
    if not url or url.lower() in ("off", "none", "0", "false"):
        return None
    url = url.rstrip("/")
    try:
        timeout = httpx.Timeout(3.0, connect=0.5)   # nothing listening: refused at once
        if httpx.get(f"{url}/health", timeout=timeout).status_code != 200:
            return None
        version = httpx.get(f"{url}/admin/version", timeout=timeout).json()
    except (httpx.HTTPError, ValueError):
        return None
    return url if isinstance(version, str) and version.startswith("3.") else None


def choose_api() -> tuple[str | None, str]:
    """(url, where it came from); ``(None, "embedded")`` when the run needs the embedded API."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url, "PREFECT_API_URL"
    url, where = profile_api_url()
    if url:
        return url, where
    url = _local_server()
    if url:
        return url, "the Prefect server on this host"
    return None, "embedded"


#: the embedded server started at process start (``start_early``), before the CLI's imports
_EARLY: dict = {}


def start_early() -> None:
    """Decide the API now and, when it is the embedded one, start its server right away, so that
    it boots (~4 s: Prefect's server imports) while the CLI imports Prefect and checks the config.
    The chosen URL is put in ``PREFECT_API_URL`` at once (Prefect reads it when it is imported);
    :func:`prefect_api` then takes over, and :func:`stop_early` stops a server nobody used."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    url, where = choose_api()
    _EARLY["choice"] = (url, where)
    if url is None:
        timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") or 120)
        server = EmbeddedServer(_prefect_home(), timeout)
        try:
            server.launch()
        except OrchestratorError:
            return   # prefect_api() tries again and reports it
        _EARLY["server"] = server
        url = server.url
    if "PREFECT_API_URL" not in os.environ:
        os.environ["PREFECT_API_URL"] = url
        _EARLY["set_env"] = url


def _unset_early_env() -> None:
    url = _EARLY.pop("set_env", None)
    if url and os.environ.get("PREFECT_API_URL") == url:
        os.environ.pop("PREFECT_API_URL", None)


def stop_early() -> None:
    _unset_early_env()
    server = _EARLY.pop("server", None)
    _EARLY.clear()
    if server is not None:
        server.stop()


def check_api(url: str, timeout: float | None = None, where: str = "PREFECT_API_URL") -> None:
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
    named = f"PREFECT_API_URL={url}" if where == "PREFECT_API_URL" else f"{url} ({where})"
    raise OrchestratorError(f"the Prefect API at {named} is not usable: {problem}. Start the "
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
        if self.proc is None:
            self.launch()
        return self.wait_ready()

    def launch(self) -> None:
        """Start the server process (does not wait for it)."""
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

    def wait_ready(self) -> "EmbeddedServer":
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
    choice = _EARLY.pop("choice", None)
    _unset_early_env()   # set by start_early for the imports; set again below for this run
    url, where = choice or choose_api()
    if url:
        check_api(url, where=where)
        set_here = "PREFECT_API_URL" not in os.environ
        if set_here:   # the profile's (Prefect reads it too) or the local server's: for this process
            os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            if set_here:
                os.environ.pop("PREFECT_API_URL", None)
        return
    server = _EARLY.pop("server", None)
    if server is None:
        timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") or 120)
        server = EmbeddedServer(_prefect_home(), timeout)
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        server.start()
        os.environ["PREFECT_API_URL"] = server.url
        yield server.url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()
        signal.signal(signal.SIGTERM, previous)
