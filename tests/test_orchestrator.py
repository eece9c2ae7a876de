"""The CLI and its Prefect API: the embedded server (the README's main job) and an API that is
down, failing or silent. Nothing may hang, and nothing may be left running."""

from __future__ import annotations

import http.server
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from helpers import decoded_subject, embedded_servers, refused_port, run_cli, with_email



@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One PREFECT_HOME for the embedded-API tests (its database is built once, ~20 s)."""
    return tmp_path_factory.mktemp("embedded") / "prefect-home"


def _embedded_env(stack, home) -> dict:
    env = {k: v for k, v in stack.env.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(home)
    return env


def test_backup_on_the_embedded_api_leaves_nothing_running(stack, home):
    env = _embedded_env(stack, home)
    # as `coderz-backup backup | tee backup.txt` would: the pipe must end when the CLI ends
    proc = subprocess.Popen([sys.executable, "-m", "coderz_backup", "backup", "--config", str(stack.config)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert "║ ✓ Passed : 4" in out
    assert "Error logging to API" not in err and "Traceback" not in err, err   # logs shipped before it stopped
    assert stack.manifest()["flow_run_id"]
    assert (home / "prefect.db").exists()          # the run went to the embedded API
    assert embedded_servers(home) == []


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_a_killed_cli_stops_its_embedded_server_and_releases_the_callers_pipe(stack, home, how):
    env = _embedded_env(stack, home)
    proc = subprocess.Popen([sys.executable, "-m", "coderz_backup", "backup", "--config", str(stack.config)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not embedded_servers(home) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert embedded_servers(home), "the embedded server never started"
    proc.send_signal(how)
    eof = threading.Event()
    threading.Thread(target=lambda: (proc.stdout.read(), eof.set()), daemon=True).start()
    # EOF: no process left behind holds the caller's pipe (a `| tee`, cron's capture would hang)
    released = eof.wait(60)
    proc.wait(timeout=60)
    leftover = embedded_servers(home)
    for p in leftover:   # never leave one behind for the rest of the suite
        p.kill()
    assert released, f"the caller's pipe is still held open by {leftover}"
    if how == signal.SIGTERM:
        assert proc.returncode != 0
    deadline = time.monotonic() + 20
    while embedded_servers(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert embedded_servers(home) == []


class _Silent:
    """Accepts connections and never answers (a black-holed API)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return


class _Erroring(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(500)
        self.end_headers()
        self.wfile.write(b"Internal Server Error")

    def log_message(self, *a):
        pass


@pytest.mark.parametrize("api", ["dead", "erroring", "silent"])
def test_an_unusable_api_is_exit_2_with_one_clear_line_and_the_red_mail(stack, smtp, api):

    with_email(stack, smtp.port)
    keep = None
    if api == "dead":
        port = refused_port()
    elif api == "silent":
        keep = _Silent()
        port = keep.port
    else:
        keep = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Erroring)
        threading.Thread(target=keep.serve_forever, daemon=True).start()
        port = keep.server_address[1]
    url = f"http://127.0.0.1:{port}/api"
    env = dict(stack.env, PREFECT_API_URL=url, CODERZ_BACKUP_API_TIMEOUT_S="2")
    start = time.monotonic()
    res = run_cli(["backup", "--config", str(stack.config)], env, timeout=120)
    assert time.monotonic() - start < 60
    assert res.returncode == 2, res.stdout + res.stderr
    [line] = [ln for ln in res.stderr.splitlines() if ln.startswith("✗")]
    assert line.startswith(f"✗ backup did not run: the Prefect API at PREFECT_API_URL={url} is not usable: ")
    assert {"dead": "cannot connect", "erroring": "/health answered HTTP 500",
            "silent": "no answer within 2s"}[api] in line
    assert "Traceback" not in res.stderr
    [(rcpts, msg)] = smtp.messages
    assert decoded_subject(msg).startswith("🔴 Coderz Backup FAILED on ")
    assert "PREFECT_API_URL" in msg.get_body(("plain",)).get_content()
    assert not stack.dest.exists()


def _run_on(prefect_api: str, manifest: dict) -> int:
    import httpx

    return httpx.get(f"{prefect_api}/flow_runs/{manifest['flow_run_id']}", timeout=10).status_code


def test_the_api_of_the_active_prefect_profile_is_used(stack, tmp_path):
    """`prefect config set PREFECT_API_URL=…` (the profile, not the environment) is honoured: the
    run goes to that server, no embedded one is started."""
    api = stack.env["PREFECT_API_URL"]
    home = tmp_path / "profile-home"
    home.mkdir()
    (home / "profiles.toml").write_text(f'active = "coderz"\n\n[profiles.coderz]\nPREFECT_API_URL = "{api}"\n'
                                        '\n[profiles.ephemeral]\nPREFECT_SERVER_ALLOW_EPHEMERAL_MODE = "true"\n')
    env = _embedded_env(stack, home)
    res = run_cli(["backup", "--config", str(stack.config)], env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert _run_on(api, stack.manifest()) == 200
    assert not (home / "prefect.db").exists() and embedded_servers(home) == []


def test_a_prefect_server_answering_on_this_host_is_used_when_none_is_configured(stack, tmp_path):
    """No PREFECT_API_URL anywhere, but the stack's Prefect server answers (127.0.0.1:4200 on a
    Coderz host; the session's server here): the run shows in its UI instead of an embedded API."""
    api = stack.env["PREFECT_API_URL"]
    home = tmp_path / "bare-home"
    env = dict(_embedded_env(stack, home), CODERZ_BACKUP_LOCAL_API=api)
    res = run_cli(["backup", "--config", str(stack.config)], env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert _run_on(api, stack.manifest()) == 200
    assert not (home / "prefect.db").exists() and embedded_servers(home) == []
    # nothing answers there: the embedded API after all (the run is in its database, not the server's)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        env["CODERZ_BACKUP_LOCAL_API"] = f"http://127.0.0.1:{held.getsockname()[1]}/api"
        res = run_cli(["backup", "--config", str(stack.config)], env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert _run_on(api, stack.manifest()) == 404
    assert (home / "prefect.db").exists() and embedded_servers(home) == []
