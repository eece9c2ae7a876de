"""README promises that had no test (issue 18): each test fails when its promise breaks.

- *Quick start* / *Running a backup*: the main job on the embedded Prefect API — the real
  console script in a clean environment (no ``PREFECT_API_URL``, no local server, a fresh
  ``$PREFECT_HOME``), and ``scripts/demo.sh`` exactly as the README runs it.
- *Scheduled backups* / *In the Prefect UI*: the task runs' names, their run times overlapping
  (each service is its own task, run concurrently), the ``coderz-backup-artifacts`` table's
  sha256 column; *Running a backup*: live progress on stderr on a terminal, ``-v``.
- *Alert mails*: the per-artifact table of the mail; the 🔴 mail of a crashed run (SIGTERM, Ctrl-C);
  SMTP AUTH over implicit TLS (``SSL``) and ``STARTTLS`` with a certificate that is verified.
- *Size check*: ``margin``.

Prefect records task-run states asynchronously (the API may still be writing them when the
CLI exits): they are read with a bounded retry (:func:`coderz_backup.waiting.wait_until`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil
import pytest

from helpers import Inbox, decoded_subject, embedded_servers, mail_parts, pg_table, prefect_api, run_cli, task_runs, with_email

from coderz_backup.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
CONSOLE = Path(sys.executable).with_name("coderz-backup")   # the console script the README uses


# -- helpers ----------------------------------------------------------------------------
def _clean_env(tmp_path: Path, **extra: str) -> dict:
    """What a new user's shell has: no PREFECT_API_URL, nothing of the test session's Prefect."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1",
           "PREFECT_HOME": str(tmp_path / "prefect-home"),
           # never the Prefect server a developer may run on 127.0.0.1:4200: the embedded API
           "CODERZ_BACKUP_LOCAL_API": "off"}
    env.update(extra)
    assert "PREFECT_API_URL" not in env
    return env



def _embedded_db_run(home: Path, flow_run_id: str) -> tuple[str, list[tuple[str, str]]]:
    """(flow run state, [(task run name, state)]) from the embedded API's own database."""
    with sqlite3.connect(f"file:{home / 'prefect.db'}?mode=ro", uri=True) as db:
        row = db.execute("SELECT state_type FROM flow_run WHERE id = ?", (flow_run_id,)).fetchone()
        tasks = db.execute("SELECT name, state_type FROM task_run WHERE flow_run_id = ?", (flow_run_id,)).fetchall()
    assert row, f"flow run {flow_run_id} is not in {home / 'prefect.db'}"
    return row[0], sorted(tasks)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _assert_snapshot_complete(snap: Path, expected: set[str]) -> dict:
    manifest = json.loads((snap / "manifest.json").read_text())
    assert manifest["status"] == "ok", manifest
    assert {a["path"] for a in manifest["artifacts"]} == expected
    for a in manifest["artifacts"]:
        assert a["status"] == "ok", a
        assert (snap / a["path"]).stat().st_size == a["bytes"], a
        assert _sha256(snap / a["path"]) == a["sha256"], a
    return manifest


def _when(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _flow_run_state(flow_run_id: str, want: str, timeout: float = 60) -> dict:
    def probe():
        resp = prefect_api("GET", f"/flow_runs/{flow_run_id}")
        return resp.json() if resp.status_code == 200 and resp.json()["state_type"] == want else None

    return wait_until(probe, timeout=timeout, interval=0.3,
                      error=lambda last: AssertionError(f"flow run {flow_run_id} never reached {want}: "
                                                        + prefect_api("GET", f"/flow_runs/{flow_run_id}").text))


def _configs_stack(tmp_path: Path, cli_env: dict, extra: str = "") -> tuple[Path, Path, dict]:
    """(config, dest, env) of a one-service stack (a configs tree): the quickest real backup."""
    conf = tmp_path / "opt" / "coderz" / "configs"
    conf.mkdir(parents=True)
    (conf / "docker-compose.yml").write_text("services:\n  app: {image: coderz/app}\n" * 20)
    dest = tmp_path / "snapshots"
    config = tmp_path / "coderz-backup.toml"
    config.write_text(f'dest = "{dest}"\nretries = 0\n\n[services.configs]\nkind = "configs"\n'
                      f'paths = ["{conf}"]\n{extra}')
    return config, dest, dict(cli_env)


# -- the main job on the embedded API --------------------------------------------------
def test_backup_in_a_clean_environment_runs_on_the_embedded_api_and_its_snapshot_verifies(stack, tmp_path):
    home = tmp_path / "prefect-home"
    env = _clean_env(tmp_path, CODERZ_BACKUP_SIGNING_KEY=str(tmp_path / "keys" / "signing.key"),
                     **{k: v for k, v in stack.env.items() if k.startswith("T_")})
    res = subprocess.run([str(CONSOLE), "backup", "--config", str(stack.config)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "║ ✓ Passed : 4" in res.stdout and "║ ✗ Failed : 0" in res.stdout, res.stdout
    assert "Traceback" not in res.stderr, res.stderr

    latest = (stack.dest / "latest").resolve()
    manifest = _assert_snapshot_complete(latest, {"postgres-prefect.sql.gz", "postgres-coderapi.sql.gz",
                                                  "redis.rdb", "configs.tar.gz"})
    verify = subprocess.run([str(CONSOLE), "verify", "--config", str(stack.config)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # the run went to the embedded API (its database in $PREFECT_HOME), complete with its task runs
    assert (home / "coderz-embedded-server.log").exists()
    state, tasks = _embedded_db_run(home, manifest["flow_run_id"])
    assert state == "COMPLETED"
    assert {"backup-postgres-prefect", "backup-postgres-coderapi", "backup-redis", "backup-configs",
            "size-check", "publish-report"} <= {name for name, _ in tasks}, tasks
    # and the session's API never saw it
    assert prefect_api("GET", f"/flow_runs/{manifest['flow_run_id']}").status_code == 404
    assert embedded_servers(home) == []


def _setup_is_current() -> bool:
    """scripts/setup.sh would install nothing (its stamp in .venv matches this checkout)."""
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + (ROOT / "constraints.txt").read_bytes())
    stamp = ROOT / ".venv" / ".coderz-installed"
    return stamp.exists() and stamp.read_text().strip() == f"{want.hexdigest()[:16]}-test"


def test_demo_sh_backs_up_the_sandbox_on_the_embedded_api(tmp_path):
    if not _setup_is_current():
        # demo.sh runs scripts/setup.sh first; with a stale .venv it would pip-install into it
        # during the test (scripts/test.sh runs setup.sh before the suite, so it is current there)
        pytest.fail("scripts/setup.sh has not been run for this checkout's pyproject.toml/constraints.txt "
                    "(run it, or scripts/test.sh, first)")
    # not under tmp_path: its parents are 0700 and the postgres OS user must reach the cluster
    work = Path(tempfile.mkdtemp(prefix="coderz-demo-test-"))
    home = tmp_path / "prefect-home"
    env = _clean_env(tmp_path)
    try:
        res = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), "--workdir", str(work)], env=env,
                             capture_output=True, text=True, timeout=900, cwd=tmp_path)
        out = res.stdout
        assert res.returncode == 0, out[-3000:] + res.stderr[-3000:]
        for line in ("║ Coderz Stack — Full Backup", "── 1/6 PostgreSQL — Prefect DB", "── 6/6 etcd Snapshots",
                     "║ Backup Complete", "║ ✓ Passed : 7", "║ ✗ Failed : 0", "coderz-backup backup exited 0"):
            assert line in out, (line, out)
        for artifact in ("postgres-prefect.sql.gz", "postgres-coderapi.sql.gz", "redis.rdb",
                         "prometheus-snapshot.tar.gz", "configs.tar.gz", "k3s-server-db.tar.gz",
                         "etcd-apisix.snapshot"):
            assert re.search(rf"✓ {re.escape(artifact)} \(\d", out), (artifact, out)

        cfg = work / "coderz-backup.toml"
        latest = (work / "snapshots" / "latest").resolve()
        manifest = json.loads((latest / "manifest.json").read_text())
        assert manifest["status"] == "ok" and manifest["passed"] == 7, manifest
        verify = subprocess.run([str(CONSOLE), "verify", "--config", str(cfg)], env=env,
                                capture_output=True, text=True, timeout=300)
        assert verify.returncode == 0, verify.stdout + verify.stderr

        state, tasks = _embedded_db_run(home, manifest["flow_run_id"])
        assert state == "COMPLETED", tasks
        assert prefect_api("GET", f"/flow_runs/{manifest['flow_run_id']}").status_code == 404
        assert embedded_servers(home) == []
        left = [p for p in psutil.process_iter(["cmdline"]) if str(work) in " ".join(p.info["cmdline"] or [])]
        assert left == [], f"demo.sh left servers running: {[p.info['cmdline'] for p in left]}"
    finally:
        subprocess.run([sys.executable, "-m", "coderz_backup.sandbox", "--stop", "--workdir", str(work)],
                       env=env, capture_output=True, timeout=120)
        shutil.rmtree(work, ignore_errors=True)


# -- the flow's task runs, progress, the report artifacts and the mail's table -----------------
def _pad(db, rows: int) -> None:
    with db.connect() as c:
        c.execute(f"CREATE TABLE pad AS SELECT g AS id, repeat(md5(g::text), 4) AS pad "
                  f"FROM generate_series(1, {rows}) g")


def _run_on_a_tty(args: list[str], env: dict, timeout: float = 600) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal (stdout a pipe): (exit code, stdout, stderr)."""
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "coderz_backup", *args], env=env, stdout=subprocess.PIPE,
                            stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks: list[bytes] = []

    def _read():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:   # EIO: the last writer closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=_read, daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
        reader.join(10)
        os.close(master)
    err = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    return proc.returncode, out.decode(), re.sub(r"\x1b\[[0-9;]*m", "", err)   # without a terminal's colours


def test_services_run_concurrently_as_named_task_runs_with_live_progress_and_mailed_table(stack, smtp):
    a, b = stack.dbs
    _pad(a, 400_000)   # dumps that take a while: their task runs must overlap in time
    _pad(b, 400_000)
    with_email(stack, smtp.port)
    code, out, err = _run_on_a_tty(["backup", "--config", str(stack.config)], stack.env)
    assert code == 0, out[-3000:] + err[-3000:]

    # live progress on the terminal (stderr): the start line and one line per finished service
    snap = (stack.dest / "latest").resolve()
    assert f"backing up 4 service(s) into {snap.name} …" in err, err
    done = re.findall(r"\[(\d)/4\] ✓ (\S+) \S+ in \d+\.\ds", err)
    assert [n for n, _ in done] == ["1", "2", "3", "4"], err
    assert {p for _, p in done} == {"postgres-prefect.sql.gz", "postgres-coderapi.sql.gz", "redis.rdb",
                                    "configs.tar.gz"}, err
    assert "backing up" not in out and "[1/4]" not in out   # progress is on stderr, the report on stdout
    assert "║ Backup Complete" in out

    manifest = _assert_snapshot_complete(snap, {"postgres-prefect.sql.gz", "postgres-coderapi.sql.gz",
                                                "redis.rdb", "configs.tar.gz"})
    run_id = manifest["flow_run_id"]
    names = {"backup-postgres-prefect", "backup-postgres-coderapi", "backup-redis", "backup-configs",
             "size-check", "publish-report", "send-mail"}
    runs = task_runs(run_id, names)
    assert set(runs) == names, sorted(runs)   # "named exactly"
    assert all(r["state_type"] == "COMPLETED" for r in runs.values()), {n: r["state_type"] for n, r in runs.items()}

    # concurrently: the two dumps ran at the same time (each started before the other ended)
    pa, pb = runs["backup-postgres-prefect"], runs["backup-postgres-coderapi"]
    assert _when(pa["start_time"]) < _when(pb["end_time"]) and _when(pb["start_time"]) < _when(pa["end_time"]), \
        (pa["start_time"], pa["end_time"], pb["start_time"], pb["end_time"])
    # and the size check only after every service task
    last_backup_end = max(_when(r["end_time"]) for n, r in runs.items() if n.startswith("backup-"))
    assert _when(runs["size-check"]["start_time"]) >= last_backup_end

    # the UI's table artifact: one row per artifact, its sha256 that of the manifest (and of the file)
    resp = prefect_api("POST", "/artifacts/filter",
                       json={"artifacts": {"key": {"any_": ["coderz-backup-artifacts"]},
                                           "flow_run_id": {"any_": [run_id]}}})
    resp.raise_for_status()
    [artifact] = resp.json()
    table = json.loads(artifact["data"]) if isinstance(artifact["data"], str) else artifact["data"]
    assert {row["artifact"]: row["sha256"] for row in table} == \
        {a["path"]: a["sha256"] for a in manifest["artifacts"]}
    assert all(len(row["sha256"]) == 64 and row["status"] == "ok" for row in table), table

    # the ✅ mail: a table per artifact (status, size, duration, attempts) in both bodies
    [(rcpts, msg)] = smtp.messages
    assert decoded_subject(msg).startswith("✅ Coderz Backup — OK (")
    parts = mail_parts(msg)
    for a in manifest["artifacts"]:
        row = re.search(rf"^{re.escape(a['path'])}\s+ok\s+\S+\s+\d+\.\ds\s+1\s*$", parts["text/plain"], re.M)
        assert row, (a["path"], parts["text/plain"])
        assert re.search(rf'<tr><td[^>]*>{re.escape(a["path"])}</td><td[^>]*>ok</td><td[^>]*>[^<]+</td>'
                         rf'<td[^>]*>\d+\.\ds</td><td[^>]*>1</td>', parts["text/html"]), parts["text/html"]
    assert parts["text/html"].count("<tr>") >= len(manifest["artifacts"]) + 1   # a header and a row each


def test_progress_only_on_a_terminal_and_v_adds_prefects_own_log_lines(tmp_path, cli_env):
    config, dest, env = _configs_stack(tmp_path, cli_env)
    quiet = run_cli(["backup", "--config", str(config)], env)
    assert quiet.returncode == 0, quiet.stderr
    assert "backing up" not in quiet.stderr and "[1/1]" not in quiet.stderr   # not a terminal: no progress
    assert "Beginning flow run" not in quiet.stdout + quiet.stderr
    assert "Finished in state" not in quiet.stdout + quiet.stderr

    code, out, err = _run_on_a_tty(["backup", "-v", "--config", str(config)], env)
    assert code == 0, out + err
    assert re.search(r"\[1/1\] ✓ configs\.tar\.gz \S+ in \d+\.\ds", err), err
    both = out + err
    assert re.search(r"Beginning flow run '[^']+' for flow 'coderz-backup'", both), both   # Prefect's logger
    assert re.search(r"Finished in state Completed\(", both), both


# -- alert mails -----------------------------------------------------------------------
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_a_crashed_run_sends_the_red_mail_from_on_crashed_and_keeps_nothing(stack, make_db, smtp, how):
    big = make_db()
    _pad(big, 1_500_000)
    stack.config.write_text(stack.config.read_text() + "\n" + pg_table("postgres-big", big, "T_BIG"))
    with_email(stack, smtp.port)
    env = dict(stack.env, T_BIG=big.password)
    proc = subprocess.Popen([sys.executable, "-m", "coderz_backup", "backup", "--config", str(stack.config)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def writing():
        assert proc.poll() is None, "the backup ended before it was interrupted"
        return [p for p in stack.dest.glob(".in-progress-*/.postgres-big.sql.gz.partial") if p.stat().st_size]

    wait_until(writing, timeout=120, interval=0.05, retry=FileNotFoundError)
    proc.send_signal(how)   # to the CLI only, as a `kill PID` or a terminal's Ctrl-C would
    out, err = proc.communicate(timeout=180)

    # The CLI ends by the signal it got (a shell shows 128+n): Prefect re-delivers it to the
    # default handler once the run is marked Crashed and its on_crashed hook has run. (The
    # README's exit-code list says 2 for "crash": see the report of issue 18.)
    assert proc.returncode == -how, (proc.returncode, out[-2000:], err[-3000:])
    assert "Crash detected! Execution was aborted by " in err, err
    red = [m for _, m in smtp.messages if decoded_subject(m).startswith("🔴 Coderz Backup FAILED on ")]
    assert len(red) == 1, [decoded_subject(m) for _, m in smtp.messages]
    text = mail_parts(red[0])["text/plain"]
    assert "The backup run ended before a snapshot could be finished" in text, text
    assert f"Destination: {stack.dest}" in text
    assert stack.snapshots() == [] and not (stack.dest / "latest").exists()

    # the run is Crashed in Prefect (the state is written asynchronously: bounded read)
    [run] = prefect_api("POST", "/flow_runs/filter", json={
        "flow_runs": {"name": {"any_": [re.search(r"Flow run: (\S+)", text).group(1)]}}}).json()
    _flow_run_state(run["id"], "CRASHED")


def test_size_check_margin_decides_whether_the_run_starts(tmp_path, cli_env):
    config, dest, env = _configs_stack(tmp_path, cli_env)
    first = run_cli(["backup", "--config", str(config)], env)
    assert first.returncode == 0, first.stderr
    prev = json.loads((dest / "latest" / "manifest.json").read_text())["total_bytes"]
    base = config.read_text()

    free = shutil.disk_usage(dest).free
    config.write_text(base + f"\n[size_check]\nmargin = {free * 4 / prev:.1f}\n")   # needs 4× the free space
    refused = run_cli(["backup", "--config", str(config)], env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert re.search(rf"not enough space in {re.escape(str(dest))}: \S+ free, about \S+ needed \(the previous "
                     rf"snapshot \S+ took \S+, ×[\d.e+]+ margin\); nothing was written", refused.stderr), refused.stderr
    assert len([p for p in dest.iterdir() if p.name[0].isdigit()]) == 1
    assert not list(dest.glob(".in-progress-*"))

    free = shutil.disk_usage(dest).free
    config.write_text(base + f"\n[size_check]\nmargin = {free / 4 / prev:.1f}\n")   # needs a quarter of it
    ran = run_cli(["backup", "--config", str(config)], env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert len([p for p in dest.iterdir() if p.name[0].isdigit()]) == 2


# -- SMTP AUTH over TLS ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1/localhost: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    d = tmp_path_factory.mktemp("smtp-tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "coderz test smtp")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    cert_pem, key_pem = d / "cert.pem", d / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert_pem, key_pem


class _AuthInbox(Inbox):
    """An Inbox that accepts one login and records, per message, whether the session was TLS."""

    def __init__(self, user: str, password: str):
        super().__init__()
        self.user, self.password = user.encode(), password.encode()
        self.logins: list[tuple[bytes, bool]] = []
        self.tls: list[bool] = []

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult, LoginPassword

        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == \
            (self.user, self.password)
        self.logins.append((auth_data.login if isinstance(auth_data, LoginPassword) else b"", ok))
        return AuthResult(success=ok)

    async def handle_DATA(self, server, session, envelope):
        self.tls.append(server.transport.get_extra_info("ssl_object") is not None)
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def tls_smtp(request, tls_cert):
    """aiosmtpd with AUTH (only over TLS) in mode ``request.param``: SSL (implicit TLS) or STARTTLS."""
    from helpers import start_smtp

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*tls_cert)
    inbox = _AuthInbox("backup", "smtp-" + os.urandom(6).hex())
    if request.param == "SSL":
        # implicit TLS: every connection is TLS from its first byte (aiosmtpd's auth_require_tls only
        # knows STARTTLS, so it is off here; handle_DATA checks that the session is TLS and logged in)
        ctl, port = start_smtp(inbox, ssl_context=ctx, authenticator=inbox.authenticate, auth_require_tls=False)
    else:
        ctl, port = start_smtp(inbox, tls_context=ctx, require_starttls=True, authenticator=inbox.authenticate,
                               auth_require_tls=True)
    inbox.port, inbox.mode = port, request.param
    yield inbox
    ctl.stop()


def _tls_mail_config(config: Path, server) -> None:
    config.write_text(config.read_text() + (
        f'\n[email]\nsmtp_host = "127.0.0.1"\nsmtp_port = {server.port}\nsmtp_type = "{server.mode}"\n'
        'username = "backup"\npassword = "env:T_SMTP_PASSWORD"\nfrom = "backup@coderz.local"\n'
        'to = ["ops@coderz.local"]\nretries = 0\ntimeout_s = 30\n'))


@pytest.mark.parametrize("tls_smtp", ["SSL", "STARTTLS"], indirect=True)
def test_mail_over_tls_with_smtp_auth_against_a_trusted_certificate(tmp_path, cli_env, tls_smtp, tls_cert):
    config, dest, env = _configs_stack(tmp_path, cli_env)
    _tls_mail_config(config, tls_smtp)
    # the server's certificate is trusted the way OpenSSL is told (SSL_CERT_FILE): it is verified
    env = dict(env, T_SMTP_PASSWORD=tls_smtp.password.decode(), SSL_CERT_FILE=str(tls_cert[0]))
    res = run_cli(["backup", "--config", str(config)], env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"^Mail: sent: ✅ Coderz Backup — OK", res.stdout, re.M), res.stdout + res.stderr
    [(rcpts, msg)] = tls_smtp.messages
    assert rcpts == ["ops@coderz.local"] and decoded_subject(msg).startswith("✅ Coderz Backup — OK (")
    assert tls_smtp.logins == [(b"backup", True)]
    assert tls_smtp.tls == [True]
    log = (dest / "latest" / "backup.log").read_text()
    for text in (res.stdout, res.stderr, log):
        assert tls_smtp.password.decode() not in text


@pytest.mark.parametrize("tls_smtp", ["SSL", "STARTTLS"], indirect=True)
def test_mail_over_tls_refuses_an_untrusted_certificate_and_the_backup_still_succeeds(tmp_path, cli_env,
                                                                                     tls_smtp):
    config, dest, env = _configs_stack(tmp_path, cli_env)
    _tls_mail_config(config, tls_smtp)
    env = dict(env, T_SMTP_PASSWORD=tls_smtp.password.decode())
    env.pop("SSL_CERT_FILE", None)
    res = run_cli(["backup", "--config", str(config)], env)
    assert res.returncode == 0, res.stdout + res.stderr   # a mail failure never changes the outcome
    assert re.search(r"^Mail: failed: .*CERTIFICATE_VERIFY_FAILED", res.stdout, re.M), res.stdout + res.stderr
    assert tls_smtp.messages == [] and tls_smtp.logins == []   # the password never went to that server
    assert tls_smtp.password.decode() not in res.stdout + res.stderr
