"""README promises of *Verifying and restoring* and *In the Prefect UI* (restore side) that
tests/test_restore.py does not hold: the plan/report artifacts on the Prefect API, the plan of a
partial snapshot, a failed safety backup aborting the restore, the lock held while a restore
waits for its approval, the safety backup restorable through the undo command the report
prints, and the ⚠️ restore mail. Real servers throughout (PostgreSQL, Redis, Prefect API, SMTP).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import threading

import pytest

from helpers import decoded_subject, mail_parts, prefect_api, run_cli, task_runs, with_email
from test_restore import _state, backed_up  # noqa: F401  (the fixture: one snapshot, then a "disaster")

from coderz_backup.snapshot import SNAPSHOT_NAME
from coderz_backup.waiting import wait_until


def _restore_run_id(snapshot_dir) -> str:
    """The flow run id of the newest restore of this snapshot (restore.log names it)."""
    ids = re.findall(r"requested \(flow run ([0-9a-f-]{36})\)", (snapshot_dir / "restore.log").read_text())
    assert ids, "restore.log names no flow run"
    return ids[-1]


def _artifacts(flow_run_id: str, key: str) -> list[dict]:
    body = {"artifacts": {"key": {"any_": [key]}, "flow_run_id": {"any_": [flow_run_id]}}}
    resp = prefect_api("POST", "/artifacts/filter", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _one_artifact(flow_run_id: str, key: str) -> dict:
    # the artifact is written by the flow before it ends; the API has it once the CLI exited,
    # but read with a deadline all the same (Prefect's client may still be flushing)
    found = wait_until(lambda: _artifacts(flow_run_id, key) or None, timeout=30, interval=0.3)
    assert len(found) == 1, found
    return found[0]


def _with_start_command(stack, redis_server):
    stack.config.write_text(stack.config.read_text().replace(
        f'data_dir = "{redis_server.data}"\n',
        f'data_dir = "{redis_server.data}"\nstart_command = {json.dumps(redis_server.start_command)}\n'))
    stack.redis = redis_server


# -- coderz-restore-plan / coderz-restore-report on the Prefect API --------------------------


def test_plan_and_report_artifacts_are_on_the_prefect_api_with_the_promised_content(backed_up):
    s = backed_up
    res = run_cli(["restore", s.snapshot, "--config", str(s.config), "--yes"], s.env)
    assert res.returncode == 0, res.stdout + res.stderr
    run_id = _restore_run_id(s.dest / s.snapshot)

    plan = _one_artifact(run_id, "coderz-restore-plan")
    assert plan["type"] == "markdown"
    md = plan["data"]
    assert md.startswith(f"# Restore plan: snapshot `{s.snapshot}`")
    assert "Snapshot status: **ok**" in md and re.search(r"taken \d+ day\(s\) \d+ hour\(s\) ago", md)
    manifest = s.manifest(s.dest / s.snapshot)
    for a in manifest["artifacts"]:   # per service what is overwritten, with its artifact and size
        assert re.search(rf"\*\*{re.escape(a['service'])}\*\* — `{re.escape(a['path'])}` \(\S+\): ", md), a
    a_db, b_db = s.dbs
    assert f"database {a_db.name} on 127.0.0.1:{a_db.server.port} is replaced" in md
    assert "every key of" in md and "is replaced" in md
    assert f"Safety backup first: yes, into {s.dest / 'safety-backups'}" in md
    assert "Not in this snapshot" not in md   # an ok snapshot lacks nothing

    report = _one_artifact(run_id, "coderz-restore-report")
    assert report["type"] == "markdown"
    rmd = report["data"]
    assert rmd.startswith(f"# Restore of snapshot `{s.snapshot}`")
    for name in ("postgres-prefect", "postgres-coderapi", "redis", "configs"):
        assert re.search(rf"^\| {name} \| ok \| [^|]+ \| [^|—]+ \|$", rmd, re.M), (name, rmd)
    [safety] = [p.name for p in (s.dest / "safety-backups").iterdir() if SNAPSHOT_NAME.match(p.name)]
    assert f"Safety backup of the state before this restore: `{safety}`" in rmd
    # the report the CLI printed is the one published
    assert rmd in res.stdout
    # the task runs under the README's names ("In the Prefect UI"): one verify, one per service
    services = {"postgres-prefect", "postgres-coderapi", "redis", "configs"}
    runs = task_runs(run_id, {"verify-snapshot"} | {f"restore-{n}" for n in services})
    assert {r["state_type"] for name, r in runs.items() if name.startswith(("verify-", "restore-"))} == {"COMPLETED"}

    # the safety backup publishes under its own keys, so the latest coderz-backup-report stays the nightly one
    safety_run = json.loads((s.dest / "safety-backups" / safety / "manifest.json").read_text())["flow_run_id"]
    assert _one_artifact(safety_run, "coderz-safety-backup-report")["type"] == "markdown"
    assert _one_artifact(safety_run, "coderz-safety-backup-artifacts")["type"] == "table"
    assert _artifacts(safety_run, "coderz-backup-report") == []
    latest = prefect_api("GET", "/artifacts/coderz-backup-report/latest")
    assert latest.status_code == 200, latest.text
    assert latest.json()["flow_run_id"] == manifest["flow_run_id"]


def test_the_plan_of_a_partial_snapshot_names_what_it_lacks(stack, redis_server):
    s = stack
    _with_start_command(s, redis_server)
    good_b = s.env["T_PG_B"]
    broken = dict(s.env, T_PG_B="wrong-password")   # the CoderAPI dump fails: a partial snapshot
    res = run_cli(["backup", "--config", str(s.config)], broken)
    assert res.returncode == 1, res.stdout + res.stderr
    snap = os.readlink(s.dest / "latest")
    assert s.manifest()["status"] == "partial"
    s.env["T_PG_B"] = good_b
    a_db, b_db = s.dbs
    with a_db.connect() as c:
        c.execute("DELETE FROM flow_run WHERE id > 5")
    with b_db.connect() as c:
        c.execute("DELETE FROM users WHERE id > 5")

    res = run_cli(["restore", snap, "--config", str(s.config), "--yes", "--no-safety-backup"], s.env)
    assert res.returncode == 0, res.stdout + res.stderr
    md = _one_artifact(_restore_run_id(s.dest / snap), "coderz-restore-plan")["data"]
    assert "Snapshot status: **partial**" in md
    assert "- Not in this snapshot (left as they are): postgres-coderapi\n" in md
    assert "**postgres-coderapi**" not in md and "**postgres-prefect**" in md
    assert "Safety backup first: **no**" in md
    with a_db.connect() as c:
        assert c.execute("SELECT count(*) FROM flow_run").fetchone()[0] == 3000   # restored
    with b_db.connect() as c:
        assert c.execute("SELECT count(*) FROM users").fetchone()[0] == 5          # left as it was


# -- a failed safety backup aborts the restore ---------------------------------------------


@pytest.mark.parametrize("how", ["destination-unusable", "dump-fails"])
def test_a_failed_safety_backup_aborts_the_restore_and_changes_nothing(backed_up, how):
    s = backed_up
    env = dict(s.env)
    if how == "destination-unusable":
        (s.dest / "safety-backups").write_text("a file where the safety-backups folder should be\n")
    else:
        # the PostgreSQL server now refuses the stored password: pg_dump of the safety backup fails
        with s.dbs[0].server.connect() as c:
            c.execute(f"ALTER ROLE {s.dbs[0].user} PASSWORD 'rotated-meanwhile'")
    try:
        res = run_cli(["restore", s.snapshot, "--config", str(s.config), "--yes"], env)
    finally:
        if how == "dump-fails":   # the role's password back, so _state can read the database
            with s.dbs[0].server.connect() as c:
                c.execute(f"ALTER ROLE {s.dbs[0].user} PASSWORD '{s.dbs[0].password}'")
    assert res.returncode == 2, res.stdout + res.stderr
    if how == "destination-unusable":   # the safety backup cannot even start: the store says why
        assert re.search(r"✗ restore did not run: destination \S+/safety-backups is a file, not a folder",
                         res.stderr), res.stderr
    else:
        assert "✗ restore did not run: the safety backup of the current state failed, so nothing was restored" \
            in res.stderr, res.stderr
    assert _state(s) == s.changed   # not one service restored
    log = (s.dest / s.snapshot / "restore.log").read_text()
    assert "approved" in log and "restore FAILED" not in log


# -- the lock is held for the whole restore -------------------------------------------------


def test_the_lock_is_held_while_a_restore_waits_for_its_approval(backed_up, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    from coderz_backup.flows.backup import add_listener, remove_listener
    from coderz_backup.flows.restore import coderz_restore

    s = backed_up
    for k, v in s.env.items():   # the in-process flow reads the env: secrets (undone after the test)
        if k.startswith("T_"):
            monkeypatch.setenv(k, v)
    seen: dict = {}
    listener = lambda event, data: seen.setdefault(event, data)  # noqa: E731
    add_listener(listener)
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("state", coderz_restore(
        snapshot=s.snapshot, config=str(s.config), approval_timeout_s=300, return_state=True)))
    t.start()
    try:
        plan = wait_until(lambda: seen.get("restore-plan"), timeout=120, interval=0.1)
        with get_client(sync_client=True) as c:
            wait_until(lambda: c.read_flow_run(plan["flow_run_id"]).state.is_paused(), timeout=60, interval=0.2)
        snapshots_before = s.snapshots()

        backup = run_cli(["backup", "--config", str(s.config)], s.env)
        assert backup.returncode == 2, backup.stdout + backup.stderr
        assert f"another backup run is using {s.dest}" in backup.stderr
        other = run_cli(["restore", s.snapshot, "--config", str(s.config), "--yes"], s.env)
        assert other.returncode == 2, other.stdout + other.stderr
        assert f"another backup run is using {s.dest}" in other.stderr
        assert s.snapshots() == snapshots_before and _state(s) == s.changed

        resume_flow_run(plan["flow_run_id"], run_input={"approve": False, "snapshot": ""})
        t.join(timeout=120)
        assert not t.is_alive()
    finally:
        remove_listener(listener)
    assert box["state"].is_cancelled()
    # released with the run: a backup now runs
    after = run_cli(["backup", "--config", str(s.config)], s.env)
    assert after.returncode == 0, after.stdout + after.stderr


# -- the safety backup is itself restorable --------------------------------------------------


def test_the_safety_backup_restores_the_state_before_the_restore_with_the_printed_undo_command(backed_up):
    s = backed_up
    # a failing service makes the report print the undo command (and the safety backup is taken first)
    good_start = json.dumps(s.redis.start_command)
    s.config.write_text(s.config.read_text().replace(good_start, '["false"]'))
    res = run_cli(["restore", s.snapshot, "--config", str(s.config), "--yes"], s.env)
    assert res.returncode == 1, res.stdout + res.stderr
    s.redis.start()   # the failed start left Redis down, as the operator would find it
    s.config.write_text(s.config.read_text().replace('["false"]', good_start))
    assert _state(s)["pg0"] == s.original["pg0"]
    undo = re.search(r"Undo with `(coderz-backup restore [^`]+)`", res.stdout)
    assert undo, res.stdout
    argv = shlex.split(undo.group(1))
    assert argv[:2] == ["coderz-backup", "restore"]

    back = run_cli([*argv[1:], "--yes", "--no-safety-backup"], s.env)
    assert back.returncode == 0, back.stdout + back.stderr
    assert _state(s) == s.changed   # every service as it was just before the restore


# -- the ⚠️ restore mail ----------------------------------------------------------------------


def test_a_restore_with_a_failure_mails_the_warning_subject_and_the_report(backed_up, smtp):
    s = backed_up
    with_email(s, smtp.port)
    s.config.write_text(s.config.read_text().replace(json.dumps(s.redis.start_command), '["false"]'))
    res = run_cli(["restore", s.snapshot, "--config", str(s.config), "--yes", "--no-safety-backup"], s.env)
    s.redis.start()
    assert res.returncode == 1, res.stdout + res.stderr
    wait_until(lambda: smtp.messages or None, timeout=30, interval=0.2)
    [(rcpts, msg)] = smtp.messages
    assert rcpts == ["ops@coderz.local", "oncall@coderz.local"]
    subject = decoded_subject(msg)
    assert re.fullmatch(rf"⚠️ Coderz Restore — 1 failure\(s\) from {s.snapshot} on \d{{4}}-\d\d-\d\d \d\d:\d\d",
                        subject), subject
    parts = mail_parts(msg)
    assert "text/plain" in parts and "text/html" in parts
    assert re.search(r"redis\W+failed", parts["text/plain"]), parts["text/plain"]
