"""Helpers shared by the tests."""

from __future__ import annotations

import email
import email.header
import email.policy
import json
import contextlib
import os
import threading
import subprocess
import sys
from pathlib import Path


def run_cli(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coderz_backup", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


class Stack:
    """A Coderz Stack in miniature (see the ``stack`` fixture): its config file, env and dest."""

    def __init__(self, root: Path, env: dict, services: str, dest: Path):
        self.root, self.env, self.dest = root, env, dest
        self.config = root / "coderz-backup.toml"
        self.config.write_text(f'dest = "{dest}"\nretries = 1\nretry_delay_s = [0.2]\n\n{services}')
        self.secrets = [v for k, v in env.items() if k.startswith("T_")]

    def snapshots(self) -> list[Path]:
        from coderz_backup.snapshot import SNAPSHOT_NAME

        return sorted(p for p in self.dest.iterdir() if SNAPSHOT_NAME.match(p.name)) if self.dest.exists() else []

    def manifest(self, snap: Path | None = None) -> dict:
        snap = snap or self.dest / "latest"
        return json.loads((snap / "manifest.json").read_text())


def pg_table(name, db, var):
    """A ``[services.NAME]`` postgres table for ``db`` whose password comes from env ``var``."""
    return (f'[services.{name}]\nkind = "postgres"\nport = {db.server.port}\nuser = "{db.user}"\n'
            f'password = "env:{var}"\ndatabase = "{db.name}"\n\n')


class Inbox:
    """aiosmtpd handler keeping every message it receives."""

    def __init__(self):
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), msg))
        return "250 OK"


def start_smtp(handler, attempts: int = 5, **controller_kwargs):
    """An aiosmtpd ``Controller`` for ``handler`` started on a free 127.0.0.1 port: ``(controller, port)``.

    The port is free when it is picked, not necessarily when the server binds it (another
    process on the machine may take it in between): a port found taken is replaced by another.
    """
    import errno

    from aiosmtpd.controller import Controller

    from coderz_backup.sandbox import free_port

    for attempt in range(attempts):
        port = free_port()
        ctl = Controller(handler, hostname="127.0.0.1", port=port, **controller_kwargs)
        try:
            ctl.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or attempt == attempts - 1:
                raise
            continue
        return ctl, port
    raise AssertionError("unreachable")  # pragma: no cover


def with_email(stack, port: int) -> None:
    stack.config.write_text(stack.config.read_text() + (
        "\n[email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = %d\nfrom = \"backup@coderz.local\"\n"
        "to = [\"ops@coderz.local\", \"oncall@coderz.local\"]\nretries = 1\nretry_delay_s = [0.1]\n" % port))


def decoded_subject(msg) -> str:
    return str(email.header.make_header(email.header.decode_header(msg["Subject"])))


def mail_parts(msg) -> dict[str, str]:
    return {p.get_content_type(): p.get_content() for p in msg.walk() if p.get_content_maintype() == "text"}


@contextlib.contextmanager
def watch_argv():
    """Collect the command lines of every process seen while the block runs (to prove no secret is in argv)."""
    seen: list[bytes] = []
    stop = threading.Event()

    def _watch():
        while not stop.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as fh:
                            seen.append(fh.read())
                    except OSError:
                        pass

    t = threading.Thread(target=_watch, daemon=True)
    t.start()
    try:
        yield seen
    finally:
        stop.set()
        t.join()


def prefect_api(method: str, path: str, api: str | None = None, **kwargs):
    """One call to the Prefect REST API the way the UI (and Prefect's own client) makes it.

    The server answers 503 "Service Unavailable" while its SQLite database is locked by a
    concurrent writer (a worker, another run); Prefect's client retries those, so do we —
    a 503 is not an answer about the thing under test.
    """
    import time

    import httpx

    url = f"{(api or os.environ['PREFECT_API_URL']).rstrip('/')}/{path.lstrip('/')}"
    for attempt in range(8):
        resp = httpx.request(method, url, timeout=30, **kwargs)
        if resp.status_code != 503:
            return resp
        time.sleep(min(0.25 * 2 ** attempt, 4))
    return resp


FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def task_runs(flow_run_id: str, names: set[str], timeout: float = 60) -> dict[str, dict]:
    """The task runs of a flow run by name (REST JSON), once each of ``names`` is there and every
    one is final with its start and end times.

    The server records task-run states from the events the run sends, a moment after the run
    (the CLI may have exited already): read with a bounded retry, never just once.
    """
    from coderz_backup.waiting import wait_until

    seen: dict[str, str] = {}

    def probe():
        resp = prefect_api("POST", "/task_runs/filter",
                           json={"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200})
        resp.raise_for_status()
        runs = {r["name"]: r for r in resp.json()}
        seen.clear()
        seen.update({name: r["state_type"] for name, r in runs.items()})
        final = all(r["state_type"] in FINAL_STATES and r["start_time"] and r["end_time"] for r in runs.values())
        return runs if names <= set(runs) and final else None

    return wait_until(probe, timeout=timeout, interval=0.3,
                      error=lambda last: AssertionError(f"the task runs of flow run {flow_run_id} were not all "
                                                        f"final within {timeout:g}s (wanted {sorted(names)}; "
                                                        f"there: {seen})"))


def tar_bytes(members: list[tuple[str, str, str]]) -> bytes:
    """(type, name, data-or-linkname) → an uncompressed tar."""
    import io
    from coderz_backup.tarfile_compat import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data.encode())
                tar.addfile(info, io.BytesIO(data.encode()))
                continue
            info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE if kind == "hard" else tarfile.DIRTYPE
            info.linkname = data
            tar.addfile(info)
    return buf.getvalue()


CHROMIUM = "/usr/bin/chromium"   # Debian's package (scripts/test.sh installs it); never `playwright install`
# As root, in a sandbox with no network: no sandboxing, no GPU, and none of Chromium's own
# background connections (they are refused here, many at a time).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900):
    """A page in a real headless Chromium driven by Playwright (a fresh profile each time)."""
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError(f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium package")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


def embedded_servers(home) -> list:
    """Prefect API processes (the embedded server) started for PREFECT_HOME ``home``."""
    import psutil

    out = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "prefect.server.api.server:create_app" in " ".join(proc.info["cmdline"] or []) and \
                    proc.environ().get("PREFECT_HOME") == str(home):
                out.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


_HELD: list = []


def refused_port() -> int:
    """A 127.0.0.1 port where a connection is refused for the rest of the test session: a socket
    is bound there and never listens, so no other process can take the port in the meantime
    (a port that is merely free could be taken by the time the test connects)."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _HELD.append(sock)
    return sock.getsockname()[1]

