"""Size check, alert mails (real SMTP server: aiosmtpd) and the run report in Prefect."""

from __future__ import annotations

import datetime as dt
import json

from helpers import decoded_subject as _decoded_subject, refused_port
from helpers import mail_parts as _parts
from helpers import prefect_api, run_cli
from helpers import with_email as _with_email

from coderz_backup.report import human_size
from coderz_backup.snapshot import SnapshotStore


def _when(manifest: dict) -> str:
    t = dt.datetime.strptime(manifest["started_at"], "%Y-%m-%dT%H:%M:%SZ")
    return t.strftime("%Y-%m-%d %H:%M")


def test_ok_run_mails_the_exact_success_subject_with_both_bodies(stack, smtp):
    _with_email(stack, smtp.port)
    res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 0, res.stdout + res.stderr
    m = stack.manifest()
    [(rcpts, msg)] = smtp.messages
    assert _decoded_subject(msg) == f"✅ Coderz Backup — OK ({human_size(m['total_bytes'])}) on {_when(m)}"
    assert sorted(rcpts) == ["oncall@coderz.local", "ops@coderz.local"]
    assert msg["From"] == "backup@coderz.local"
    parts = _parts(msg)
    assert set(parts) == {"text/plain", "text/html"}
    for body in parts.values():
        assert "postgres-prefect.sql.gz" in body and "redis.rdb" in body and m["snapshot"] in body
    assert "Mail: sent" in res.stdout
    for secret in stack.secrets:
        assert secret not in msg.as_string()


def test_partial_run_mails_the_failure_count_and_instructions(stack, smtp):
    _with_email(stack, smtp.port)
    stack.config.write_text(stack.config.read_text().replace('password = "env:T_REDIS"', 'password = "wrong"'))
    res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 1
    m = stack.manifest()
    [(_, msg)] = smtp.messages
    assert _decoded_subject(msg) == f"⚠️ Coderz Backup — 1 failure(s) on {_when(m)}"
    text = _parts(msg)["text/plain"]
    assert "authentication failed" in text
    assert "prefect deployment run coderz-backup/coderz-backup-daily" in text and "backup.sh" in text
    assert "backup.log" in text


def test_run_that_fails_before_a_snapshot_sends_the_red_alert(stack, smtp):
    _with_email(stack, smtp.port)
    store = SnapshotStore(stack.dest)
    store.prepare()
    with store.lock():
        res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 2
    [(_, msg)] = smtp.messages
    subject = _decoded_subject(msg)
    assert subject.startswith("🔴 Coderz Backup FAILED on ") and len(subject) == len("🔴 Coderz Backup FAILED on 2026-03-06 03:00")
    sent = dt.datetime.strptime(subject.rsplit(" on ", 1)[1], "%Y-%m-%d %H:%M").replace(tzinfo=dt.timezone.utc)
    assert abs((dt.datetime.now(dt.timezone.utc) - sent).total_seconds()) < 300  # UTC, not local time
    text = _parts(msg)["text/plain"]
    assert "another backup run" in text and "prefect deployment run coderz-backup/coderz-backup-daily" in text


def test_smtp_down_backup_still_completes_and_the_run_shows_it(stack):
    _with_email(stack, refused_port())  # connections refused there
    res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert stack.manifest()["status"] == "ok"
    assert "Mail: failed" in res.stdout
    from helpers import prefect_api, task_runs

    run_id = stack.manifest()["flow_run_id"]
    # task-run states are recorded a moment after the run: a bounded read (helpers.task_runs)
    mail = task_runs(run_id, {"send-mail"})["send-mail"]
    assert mail["state_type"] == "FAILED", mail["state"]
    assert mail["run_count"] == 2  # first try + 1 retry
    assert prefect_api("GET", f"/flow_runs/{run_id}").json()["state_type"] == "COMPLETED"
    assert "mail NOT sent" in (stack.dest / "latest" / "backup.log").read_text()


def test_smtp_server_that_never_answers_cannot_hang_the_run(stack):
    """A server that accepts the connection and then says nothing (no greeting): each attempt is
    abandoned after email.timeout_s, the backup completes and the run says the mail failed."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def _accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])   # held open, never written to
            except OSError:
                pass

    threading.Thread(target=_accept, daemon=True).start()
    try:
        _with_email(stack, listener.getsockname()[1])
        stack.config.write_text(stack.config.read_text().replace("retry_delay_s = [0.1]\n", "retry_delay_s = [0.1]\ntimeout_s = 2\n"))
        res = run_cli(["backup", "--config", str(stack.config)], stack.env, timeout=240)
    finally:
        stop.set()
        listener.close()
        for conn in accepted:
            conn.close()
    assert res.returncode == 0, res.stdout + res.stderr
    assert stack.manifest()["status"] == "ok"
    assert "Mail: failed" in res.stdout and "did not finish within 2s" in res.stdout + res.stderr
    assert len(accepted) == 2   # first try + 1 retry, each given up on
    assert "mail NOT sent" in (stack.dest / "latest" / "backup.log").read_text()


def test_report_is_published_as_prefect_artifacts(stack):
    res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 0
    run_id = stack.manifest()["flow_run_id"]
    resp = prefect_api("POST", "artifacts/filter", stack.env["PREFECT_API_URL"],
                       json={"artifacts": {"flow_run_id": {"any_": [run_id]}},
                             "limit": 50, "offset": 0, "sort": "ID_DESC"})
    resp.raise_for_status()
    arts = [type("A", (), a) for a in resp.json()]
    by_key = {a.key: a for a in arts}
    assert by_key["coderz-backup-report"].type == "markdown"
    assert "Coderz Stack — Full Backup" in by_key["coderz-backup-report"].data
    table = by_key["coderz-backup-artifacts"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert {r["artifact"] for r in rows} == {a["path"] for a in stack.manifest()["artifacts"]}


def test_shrunken_dump_is_flagged_in_manifest_report_and_mail(stack, smtp):
    _with_email(stack, smtp.port)
    stack.config.write_text(stack.config.read_text() + "\n[size_check]\nshrink_floor_bytes = 0\nmax_shrink = 0.5\n")
    with stack.dbs[1].connect() as c:
        c.execute("CREATE TABLE history AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 50000) g")
    assert run_cli(["backup", "--config", str(stack.config)], stack.env).returncode == 0
    with stack.dbs[1].connect() as c:
        c.execute("DELETE FROM history")  # silent data loss
    res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 0
    [finding] = stack.manifest()["size_check"]["findings"]
    assert finding["level"] == "warning" and finding["artifact"] == "postgres-coderapi.sql.gz"
    assert "smaller than in" in finding["message"]
    assert "⚠ size check: postgres-coderapi.sql.gz is" in res.stdout
    assert "postgres-coderapi.sql.gz is" in _parts(smtp.messages[-1][1])["text/plain"]


def test_artifact_below_minimum_size_fails(stack):
    stack.config.write_text(stack.config.read_text().replace(
        '[services.redis]\nkind = "redis"\n', '[services.redis]\nkind = "redis"\nmin_bytes = 100000000\n'))
    res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 1, res.stdout + res.stderr
    redis = next(a for a in stack.manifest()["artifacts"] if a["service"] == "redis")
    assert redis["status"] == "failed" and "below its minimum" in redis["error"]


def test_not_enough_space_fails_early_with_the_numbers(stack):
    stack.config.write_text(stack.config.read_text() + "\n[size_check]\nmin_free_bytes = 1000000000000000\n")
    res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 2
    assert "not enough space" in res.stderr and "free" in res.stderr and "needed" in res.stderr
    assert not [p for p in stack.dest.iterdir() if not p.name.startswith(".coderz-backup.lock")]


def test_mail_through_a_saved_email_server_credentials_block(stack, smtp):
    import secrets

    from prefect_email import EmailServerCredentials

    name = f"coderz-smtp-{secrets.token_hex(3)}"
    EmailServerCredentials(smtp_server="127.0.0.1", smtp_port=smtp.port, smtp_type="INSECURE").save(name)
    stack.config.write_text(stack.config.read_text()
                            + f'\n[email]\nblock = "{name}"\nto = ["ops@coderz.local"]\nretry_delay_s = [0.1]\n')
    res = run_cli(["backup", "--config", str(stack.config), "--only", "redis"], stack.env)
    assert res.returncode == 0, res.stdout + res.stderr
    [(rcpts, msg)] = smtp.messages
    assert rcpts == ["ops@coderz.local"] and _decoded_subject(msg).startswith("✅ Coderz Backup — OK (")
