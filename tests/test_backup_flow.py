"""End to end: `coderz-backup backup` → flow coderz-backup → snapshot on disk.

Real PostgreSQL and Redis servers, a real Prefect API, the CLI run as a user runs it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import Stack, decoded_subject, pg_table, refused_port, run_cli, with_email

from coderz_backup.snapshot import SNAPSHOT_NAME, SnapshotStore


def _assert_no_secrets(stack: Stack, *texts: str) -> None:
    for secret in stack.secrets:
        for text in texts:
            assert secret not in text


def test_full_backup_prints_the_report_and_writes_a_complete_snapshot(stack):
    res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 0, res.stdout + res.stderr

    out = res.stdout
    assert "║ Coderz Stack — Full Backup" in out and "║ Backup Complete" in out
    assert out.index("── 1/4 PostgreSQL — Prefect DB") < out.index("── 2/4 PostgreSQL — CoderAPI DB") \
        < out.index("── 3/4 Redis") < out.index("── 4/4 Configs + Compose")
    for line in ("✓ postgres-prefect.sql.gz (", "✓ postgres-coderapi.sql.gz (", "✓ redis.rdb (",
                 "✓ configs.tar.gz (", "║ ✓ Passed : 4", "║ ✗ Failed : 0", "║ - Skipped : 0"):
        assert line in out

    [snap] = stack.snapshots()
    assert os.readlink(stack.dest / "latest") == snap.name  # relative link
    assert f"║ Timestamp : {snap.name}" in out
    assert not [p for p in stack.dest.iterdir() if p.name.startswith(".in-progress")]
    assert snap.stat().st_mode & 0o777 == 0o700
    m = stack.manifest()
    assert m["snapshot"] == snap.name and m["status"] == "ok"
    assert (m["passed"], m["failed"], m["skipped"]) == (4, 0, 0)
    for key in ("started_at", "finished_at", "total_bytes", "tool_version", "host", "artifacts"):
        assert key in m
    assert {a["path"] for a in m["artifacts"]} == {"postgres-prefect.sql.gz", "postgres-coderapi.sql.gz",
                                                   "redis.rdb", "configs.tar.gz"}
    for a in m["artifacts"]:
        f = snap / a["path"]
        data = f.read_bytes()
        assert a["status"] == "ok" and a["bytes"] == len(data) and a["sha256"] == hashlib.sha256(data).hexdigest()
        assert f.stat().st_mode & 0o777 == 0o600
        assert a["attempts"] == 1 and a["error"] is None
    assert m["total_bytes"] == sum(a["bytes"] for a in m["artifacts"])

    log = (snap / "backup.log").read_text()
    assert "postgres-prefect" in log and "latest ->" in log
    assert log.splitlines()[0][:20].endswith("Z") or "Z " in log.splitlines()[0]
    _assert_no_secrets(stack, out, res.stderr, log, (snap / "manifest.json").read_text())

    listing = run_cli(["list", "--config", str(stack.config), "--json"], stack.env)
    assert listing.returncode == 0
    rows = json.loads(listing.stdout)
    assert [(r["name"], r["status"], r["latest"]) for r in rows] == [(snap.name, "ok", True)]


def test_postgres_down_marks_snapshot_partial_and_exits_1(stack):
    dead = stack.config.read_text().replace(f"port = {stack.dbs[1].server.port}\nuser = \"{stack.dbs[1].user}\"",
                                            f"port = {refused_port()}\nuser = \"{stack.dbs[1].user}\"")
    stack.config.write_text(dead)
    res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "✗ postgres-coderapi.sql.gz — " in res.stdout and "║ ✗ Failed : 1" in res.stdout
    assert "✓ postgres-prefect.sql.gz" in res.stdout

    [snap] = stack.snapshots()
    assert os.readlink(stack.dest / "latest") == snap.name
    m = stack.manifest()
    assert m["status"] == "partial" and (m["passed"], m["failed"]) == (3, 1)
    failed = next(a for a in m["artifacts"] if a["service"] == "postgres-coderapi")
    assert failed["status"] == "failed" and failed["attempts"] == 2  # 1 try + 1 retry
    assert "pg_dump" in failed["error"] and failed["sha256"] is None
    assert not (snap / "postgres-coderapi.sql.gz").exists()
    assert not list(snap.glob(".*.partial"))
    # an expected failure is told by its message, not buried in Prefect's engine tracebacks
    log = (snap / "backup.log").read_text()
    assert "postgres-coderapi: FAILED after 2 attempt(s)" in log
    assert "Traceback" not in log and "Traceback" not in res.stderr


def test_flow_state_is_failed_with_count_when_an_artifact_fails(stack):
    from coderz_backup.flows.backup import coderz_backup

    stack.config.write_text(stack.config.read_text().replace('password = "env:T_REDIS"', 'password = "wrong"'))
    os.environ.update({k: v for k, v in stack.env.items() if k.startswith("T_")})
    state = coderz_backup(config=str(stack.config), return_state=True)
    assert state.is_failed()
    assert state.message == "1 of 4 artifacts failed"


def test_nothing_usable_exits_2_and_keeps_latest_and_old_snapshots(stack, smtp):
    old = stack.dest / "2020-01-01_03-00-00"
    old.mkdir(parents=True)
    (old / "manifest.json").write_text('{"status": "ok"}')
    os.symlink(old.name, stack.dest / "latest")
    stack.config.write_text(f'dest = "{stack.dest}"\nretries = 0\nkeep_days = 1\n'
                            + f'[services.pg]\nkind = "postgres"\nport = {refused_port()}\nuser = "x"\ndatabase = "x"\n')
    with_email(stack, smtp.port)
    res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Backup FAILED" in res.stdout
    assert os.readlink(stack.dest / "latest") == old.name
    assert old.exists()  # rotation never runs when nothing usable was produced
    # the failed run's folder is kept for its log (README "Snapshots"), and the mail is the 🔴 one
    [failed] = [p for p in stack.snapshots() if p.name != old.name]
    assert json.loads((failed / "manifest.json").read_text())["status"] == "failed"
    assert "pg" in (failed / "backup.log").read_text()
    [(_, msg)] = smtp.messages
    assert decoded_subject(msg).startswith("🔴 Coderz Backup FAILED on ")


def test_second_run_while_locked_exits_2_with_clear_message(stack):
    store = SnapshotStore(stack.dest)
    store.prepare()
    with store.lock():
        res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 2
    assert "another backup run" in res.stderr
    assert stack.snapshots() == []


def test_unwritable_destination_exits_2(stack, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    res = run_cli(["backup", "--config", str(stack.config), "--dest", str(blocker / "snaps")], stack.env)
    assert res.returncode == 2
    assert "destination" in res.stderr and str(blocker / "snaps") in res.stderr


def test_bad_config_exits_2_listing_every_problem(tmp_path, cli_env):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('keep_days = -1\n[services.pg]\nkind = "postgres"\nport = "x"\n[services.q]\nkind = "nosuch"\n')
    for args in (["config", "check", "--config", str(cfg)], ["backup", "--config", str(cfg)]):
        res = run_cli(args, cli_env)
        assert res.returncode == 2
        for needle in ("bad.toml", "keep_days", "services.pg.port", "services.pg.user", "services.pg.database",
                       "services.q"):
            assert needle in res.stderr, (needle, res.stderr)


def test_rotation_with_keep_flag_and_keep_days_env(stack):
    stack.dest.mkdir()
    now = dt.datetime.now(dt.timezone.utc)
    names = [(now - dt.timedelta(days=d)).strftime("%Y-%m-%d_%H-%M-%S") for d in (2, 5, 40)]
    for n in names:
        (stack.dest / n).mkdir()
        (stack.dest / n / "manifest.json").write_text('{"status": "ok"}')
    (stack.dest / "not-a-snapshot").mkdir()

    res = run_cli(["backup", "--config", str(stack.config), "--only", "redis"], dict(stack.env, KEEP_DAYS="30"))
    assert res.returncode == 0, res.stderr
    assert [n for n in names if (stack.dest / n).exists()] == names[:2]
    assert "deleted" in res.stdout and names[2] in res.stdout

    res = run_cli(["backup", "--config", str(stack.config), "--only", "redis", "--keep", "3"],
                  dict(stack.env, KEEP_DAYS="30"))
    assert res.returncode == 0
    assert [n for n in names if (stack.dest / n).exists()] == names[:1]
    assert (stack.dest / "not-a-snapshot").exists()

    res = run_cli(["backup", "--config", str(stack.config), "--only", "redis", "--keep", "0"], stack.env)
    assert res.returncode == 0 and (stack.dest / names[0]).exists()
    assert len(stack.snapshots()) == 4


def test_sigkill_mid_backup_leaves_no_snapshot_and_next_run_cleans_up(stack, make_db):
    big = make_db()
    with big.connect() as c:
        c.execute("CREATE TABLE pad AS SELECT g AS id, repeat(md5(g::text), 8) AS pad "
                  "FROM generate_series(1, 1500000) g")
    stack.config.write_text(stack.config.read_text() + "\n" + pg_table("postgres-big", big, "T_BIG"))
    env = dict(stack.env, T_BIG=big.password)
    proc = subprocess.Popen([sys.executable, "-m", "coderz_backup", "backup", "--config", str(stack.config)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        partials = list(stack.dest.glob(".in-progress-*/.postgres-big.sql.gz.partial")) if stack.dest.exists() else []
        if partials and partials[0].stat().st_size > 0:
            break
        time.sleep(0.02)
    else:
        proc.kill()
        pytest.fail("the backup never started writing")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    assert stack.snapshots() == []
    assert not (stack.dest / "latest").exists()
    listing = run_cli(["list", "--config", str(stack.config), "--json"], env)
    assert json.loads(listing.stdout) == []

    res = run_cli(["backup", "--config", str(stack.config), "--only", "redis"], env)
    assert res.returncode == 0, res.stderr
    assert not list(stack.dest.glob(".in-progress-*"))
    assert len(stack.snapshots()) == 1
    assert "interrupted run" in (stack.dest / "latest" / "backup.log").read_text()


def test_backup_sh_accepts_the_documented_invocations(stack, tmp_path):
    script = Path(__file__).resolve().parent.parent / "scripts" / "backup.sh"
    other = tmp_path / "external-drive"
    env = dict(stack.env, CODERZ_BACKUP_CONFIG=str(stack.config), KEEP_DAYS="30")
    res = subprocess.run(["bash", str(script), "--dest", str(other), "--keep", "0", "--only", "configs"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "✓ configs.tar.gz" in res.stdout
    snaps = [p for p in other.iterdir() if SNAPSHOT_NAME.match(p.name)]
    assert len(snaps) == 1 and json.loads((snaps[0] / "manifest.json").read_text())["keep_days"] == 0


def test_a_hand_edited_manifest_of_an_old_snapshot_does_not_stop_the_nightly_run(stack):
    """A foreign or edited manifest.json (byte counts as strings) must not make every run exit 2."""
    old = stack.dest / "2020-01-01_03-00-00"
    old.mkdir(parents=True)
    (old / "manifest.json").write_text(json.dumps({
        "snapshot": old.name, "status": "ok", "total_bytes": "3.1G",
        "artifacts": [{"path": "redis.rdb", "status": "ok", "bytes": "lots"}, "garbage"]}))
    res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert stack.manifest()["status"] == "ok"


def test_a_partial_run_ends_failed_with_its_summary_and_without_the_engines_traceback():
    """What a worker's engine does with the flow's final state: it turns it back into an exception
    (raised, logged with its traceback as "Engine execution exited with unexpected exception").
    Our Failed state resolves to our own RunFailed (not Prefect's TypeError about a dict), and
    that record is dropped from the run's log; a real surprise keeps its traceback."""
    import logging
    import sys
    import warnings

    from prefect.exceptions import CancelledRun
    from prefect.states import Cancelled, Failed

    from coderz_backup.errors import RunFailed
    from coderz_backup.flows import ENGINE_EXIT

    state = Failed(message="1 of 4 artifacts failed", data=RunFailed("1 of 4 artifacts failed", {"status": "partial"}))
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, RunFailed) and exc.summary == {"status": "partial"}
    assert str(exc) == "1 of 4 artifacts failed"

    run_log = logging.getLogger("prefect.flow_runs")
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record)

    cancelled = Cancelled(message="nothing changed").result(raise_on_failure=False)
    assert isinstance(cancelled, CancelledRun)
    handler = Keep()
    run_log.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Prefect's API handler: no flow run here to send the records to
            for outcome in (exc, cancelled, ValueError("bug")):
                try:
                    raise outcome
                except BaseException:
                    run_log.error(ENGINE_EXIT, exc_info=sys.exc_info())
    finally:
        run_log.removeHandler(handler)
    assert [type(r.exc_info[1]) for r in seen] == [ValueError]


def test_what_is_actually_wrong_is_what_the_message_says(stack, tmp_path):
    """A destination that is a file; an unset secret (found before Prefect starts, listed with
    the schema problems); a `latest` link changed by hand."""
    afile = tmp_path / "not-a-folder"
    afile.write_text("x")
    res = run_cli(["backup", "--dest", str(afile), "--config", str(stack.config)], stack.env)
    assert res.returncode == 2 and f"destination {afile} is a file, not a folder" in res.stderr, res.stderr

    env = {k: v for k, v in stack.env.items() if k != "T_REDIS"}
    res = run_cli(["backup", "--config", str(stack.config)], env)
    assert res.returncode == 2, res.stderr
    assert "services.redis.password: environment variable T_REDIS is not set" in res.stderr
    assert "Beginning flow run" not in res.stderr and not stack.dest.exists()   # Prefect never started
    res = run_cli(["backup", "--only", "configs", "--config", str(stack.config)], env)
    assert res.returncode == 0, res.stderr                   # the secret of a service not backed up is not needed
    broken = stack.config.read_text().replace("retries = 1", "retries = -3")
    (tmp_path / "broken.toml").write_text(broken)
    res = run_cli(["config", "check", "--config", str(tmp_path / "broken.toml")], env)
    assert res.returncode == 2 and "retries" in res.stderr and "T_REDIS is not set" in res.stderr, res.stderr

    (stack.dest / "latest").unlink()
    (stack.dest / "latest").symlink_to("../../etc")
    res = run_cli(["verify", "--config", str(stack.config)], stack.env)
    assert res.returncode == 2 and "points to '../../etc', which is not a snapshot of" in res.stderr, res.stderr
