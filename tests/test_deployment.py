"""The Prefect deployment, end to end on the session's real Prefect server.

`coderz-backup setup` (work pool) → `prefect deploy --all` with the repository's prefect.yaml →
`prefect deployment run` → `prefect worker start --run-once` → snapshot on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import chromium, decoded_subject, mail_parts, prefect_api, refused_port, task_runs, with_email

from coderz_backup.errors import AccessError, ConfigError
from coderz_backup.setup import TEMPLATES_DIR, register_cli, run_cli, setup
from coderz_backup.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
POOL = "coderz-backup"
DEPLOYMENT = "coderz-backup/coderz-backup-daily"
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _prefect(args: list[str], env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1", COLUMNS="250")
    return subprocess.run([PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _forget(pool: str, deployment: str | None = None) -> None:
    """Remove a work pool (and a deployment) left by an earlier test on the session server."""
    from prefect.exceptions import ObjectNotFound

    with _client() as c:
        if deployment:
            try:
                c.delete_deployment(c.read_deployment_by_name(deployment).id)
            except ObjectNotFound:
                pass
        try:
            c.delete_work_pool(pool)
        except ObjectNotFound:
            pass


def _worker_run_once(stack) -> str:
    """`prefect worker start --pool coderz-backup --run-once` with the host's environment (config
    path + the secrets the config refers to); its log, also in worker.log."""
    worker_env = dict(stack.env, CODERZ_BACKUP_CONFIG=str(stack.config))
    worker = _prefect(["worker", "start", "--pool", POOL, "--run-once"], env=worker_env, timeout=400)
    log = worker.stdout + worker.stderr
    (stack.root / "worker.log").write_text(log)
    assert worker.returncode == 0, log[-3000:]
    return log


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="coderz-backup")
    register_cli(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


# -- setup --------------------------------------------------------------------------------


def test_setup_creates_the_work_pool_from_the_template_once_and_then_leaves_it(capsys):
    pool = "coderz-backup-setup-test"
    _forget(pool)
    first = setup(pool)
    assert any(line.startswith(f"✓ work pool '{pool}' (process) created from deployments/process-pool.json")
               for line in first), first
    second = setup(pool)
    assert f"= work pool '{pool}' (process) already exists, left unchanged" in second
    assert not any("created" in line for line in second)

    with _client() as c:
        wp = c.read_work_pool(pool)
    assert wp.type == "process"
    assert wp.base_job_template == json.loads((TEMPLATES_DIR / "process-pool.json").read_text())

    assert run_cli(_parse(["setup", "--pool", pool])) == 0
    assert "already exists" in capsys.readouterr().out
    _forget(pool)


def test_setup_docker_pool_has_the_coderz_host_defaults():
    pool = "coderz-backup-docker-test"
    _forget(pool)
    assert any("(docker) created" in line for line in setup(pool, "docker"))
    with _client() as c:
        props = c.read_work_pool(pool).base_job_template["variables"]["properties"]
    assert props["volumes"]["default"] == ["/opt/coderz/backup:/opt/coderz/backup",
                                           "/var/run/docker.sock:/var/run/docker.sock",
                                           "/opt/coderz/configs:/opt/coderz/configs:ro"]
    assert props["network_mode"]["default"] == "host"
    assert props["image_pull_policy"]["default"] == "Never"
    assert props["auto_remove"]["default"] is True
    # an existing pool of another type is left alone, with a hint
    lines = setup(pool, "process")
    assert any(line.startswith(f"! work pool '{pool}' is a docker pool, not process") for line in lines)
    _forget(pool)


def test_setup_errors_are_clear_and_exit_2(tmp_path, capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with pytest.raises(ConfigError, match="unknown work pool type 'k8s'"):
        setup("x", "k8s")
    with pytest.raises(ConfigError, match="base job template not found"):
        setup("x", template=tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"variables": {}}')
    with pytest.raises(ConfigError, match="job_configuration"):
        setup("x", template=tmp_path / "bad.json")

    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{refused_port()}/api"}):
        with pytest.raises(AccessError, match="cannot reach the Prefect API"):
            setup("x")
        assert run_cli(_parse(["setup"])) == 2
    err = capsys.readouterr().err
    assert err.startswith("✗ setup failed: cannot reach the Prefect API") and "PREFECT_API_URL" in err

    with temporary_settings(restore_defaults={PREFECT_API_URL}), \
            pytest.raises(AccessError, match="PREFECT_API_URL is not set.*prefect server start"):
        setup("x")


def test_setup_saves_the_email_block_from_the_config_once(tmp_path, monkeypatch):
    from prefect_email import EmailServerCredentials

    pool, block = "coderz-backup-mail-test", "coderz-smtp-test"
    cfg = tmp_path / "c.toml"
    cfg.write_text('[email]\nsmtp_host = "mail.example"\nsmtp_port = 2525\nsmtp_type = "STARTTLS"\n'
                   'username = "backup"\npassword = "env:T_SMTP_PW"\nto = ["ops@example"]\n')
    monkeypatch.setenv("T_SMTP_PW", "s3cret-smtp")
    lines = setup(pool, email_block=block, config=cfg)
    assert f"✓ e-mail block '{block}' (email-server-credentials) saved from {cfg} [email]" in lines
    creds = EmailServerCredentials.load(block)
    assert (creds.smtp_server, creds.smtp_port, creds.username) == ("mail.example", 2525, "backup")
    assert getattr(creds.smtp_type, "name", creds.smtp_type) == "STARTTLS"
    assert creds.password.get_secret_value() == "s3cret-smtp"
    assert not any("s3cret-smtp" in line for line in lines)

    monkeypatch.delenv("T_SMTP_PW")
    cfg.write_text('[email]\nsmtp_host = "other.example"\n')
    assert f"= e-mail block '{block}' (email-server-credentials) already exists, left unchanged" \
        in setup(pool, email_block=block, config=cfg)
    assert EmailServerCredentials.load(block).smtp_server == "mail.example"

    cfg.write_text("keep_days = 3\n")
    with pytest.raises(ConfigError, match=r"no \[email\] table"):
        setup(pool, email_block=block, config=cfg)
    _forget(pool)


# -- prefect deploy + worker --------------------------------------------------------------


def test_deploy_needs_the_pool_then_a_worker_runs_the_daily_backup(stack, smtp):
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound

    _forget(POOL, DEPLOYMENT)

    # 1. without the work pool, deploy fails and says why
    res = _prefect(["--no-prompt", "deploy", "--all"])
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert f"references work pool '{POOL}' which does not exist" in " ".join(out.split()), out
    with _client() as c, pytest.raises(ObjectNotFound):
        c.read_deployment_by_name(DEPLOYMENT)

    # 2. setup creates it; deploy then succeeds. A stale $PWD must not move the code location.
    assert any("created" in line for line in setup())
    res = _prefect(["--no-prompt", "deploy", "--all"], env=dict(os.environ, PWD="/nonexistent/stale-pwd"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert DEPLOYMENT in res.stdout

    with _client() as c:
        dep = c.read_deployment_by_name(DEPLOYMENT)
    assert dep.name == "coderz-backup-daily"
    assert dep.entrypoint == "coderz_backup.flows.backup:coderz_backup"
    assert dep.work_pool_name == POOL
    assert dep.parameters == {"dest": None, "keep": None}
    assert dep.paused is False
    assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT.resolve())}}]
    [sched] = dep.schedules
    assert sched.active is True
    assert (sched.schedule.cron, sched.schedule.timezone) == ("0 3 * * *", "UTC")
    assert set(dep.parameter_openapi_schema["properties"]) >= {"dest", "keep", "only", "config"}

    # Keep the 03:00 runs out of this test: deactivating the schedule also deletes its
    # auto-scheduled runs, so the worker below can only pick up the run created here.
    with _client() as c:
        c.update_deployment_schedule(dep.id, sched.id, active=False)

    with_email(stack, smtp.port)

    # 3. a manual run with a parameter, started twice: dest stays null → the config (via the
    #    worker's env) decides; the deployment's concurrency limit (1, CANCEL_NEW) lets only one run
    run_ids = []
    for _ in range(2):
        res = _prefect(["deployment", "run", DEPLOYMENT, "--param", "keep=5"])
        assert res.returncode == 0, res.stdout + res.stderr
        run_ids.append(re.search(r"UUID: ([0-9a-f-]{36})", res.stdout).group(1))
    assert dep.global_concurrency_limit.limit == 1
    assert dep.concurrency_options.collision_strategy.value == "CANCEL_NEW"

    # 4. a worker with the host's environment: config path + the secrets the config refers to
    log = _worker_run_once(stack)

    with _client() as c:
        runs = {rid: c.read_flow_run(rid) for rid in run_ids}
    by_state = {r.state.type: r for r in runs.values()}
    assert set(by_state) == {StateType.COMPLETED, StateType.CANCELLED}, \
        f"{[r.state for r in runs.values()]!r}; worker log {stack.root / 'worker.log'}:\n{log[-3000:]}"
    run, cancelled = by_state[StateType.COMPLETED], by_state[StateType.CANCELLED]
    run_id = str(run.id)
    assert cancelled.state.message == "Deployment concurrency limit reached."
    assert run.parameters == {"dest": None, "keep": 5}

    [snap] = stack.snapshots()   # the cancelled run wrote nothing
    m = stack.manifest()
    assert m["snapshot"] == snap.name and m["status"] == "ok"
    assert (m["passed"], m["failed"]) == (4, 0)
    assert m["keep_days"] == 5 and m["flow_run_id"] == run_id
    for secret in stack.secrets:
        assert secret not in log
        assert secret not in (snap / "backup.log").read_text()

    # the mail and the report artifacts of that run; the cancelled one sent nothing (no 🔴)
    [(rcpts, msg)] = smtp.messages
    assert decoded_subject(msg).startswith("✅ Coderz Backup — OK (") and "ops@coderz.local" in rcpts
    assert set(mail_parts(msg)) == {"text/plain", "text/html"}
    assert {a["key"] for a in _artifacts(run_id)} >= {"coderz-backup-report", "coderz-backup-artifacts"}
    # the task runs under the names the README gives (no suffix added by Prefect); the server
    # records task-run states from events, a moment after the run: read until all are final
    import datetime as dt

    names = {"backup-postgres-prefect", "backup-postgres-coderapi", "backup-redis", "backup-configs", "size-check",
             "publish-report", "send-mail"}
    tasks = list(task_runs(run_id, names).values())
    assert sorted(t["name"] for t in tasks) == sorted(names)
    # the service tasks ran concurrently: together they took longer than the span they ran in
    spans = [(dt.datetime.fromisoformat(t["start_time"]), dt.datetime.fromisoformat(t["end_time"]))
             for t in tasks if t["name"].startswith("backup-")]
    wall = max(e for _, e in spans) - min(b for b, _ in spans)
    assert sum(((e - b) for b, e in spans), dt.timedelta()) > wall, spans


def test_restore_deployment_pauses_and_an_operator_approves_it_in_the_prefect_ui(stack, redis_server):
    """`coderz-restore` through a real server and worker, approved the way an operator does it:
    the paused run opened in the Prefect UI in a real browser (Debian's chromium), Resume, the
    form read (labels, help text, a one-line name field), the name typed, submitted."""
    stack.config.write_text(stack.config.read_text().replace(
        f'data_dir = "{redis_server.data}"\n',
        f'data_dir = "{redis_server.data}"\nstart_command = {json.dumps(redis_server.start_command)}\n'))
    worker_env = dict(stack.env, CODERZ_BACKUP_CONFIG=str(stack.config))
    assert subprocess.run([sys.executable, "-m", "coderz_backup", "backup"], env=worker_env,
                          capture_output=True, timeout=300).returncode == 0
    snapshot = os.readlink(stack.dest / "latest")
    redis_server.client().set("after-backup", "x")

    _forget(POOL, DEPLOYMENT)
    setup()
    res = _prefect(["--no-prompt", "deploy", "--all"])
    assert res.returncode == 0, res.stdout + res.stderr
    with _client() as c:
        dep = c.read_deployment_by_name("coderz-restore/coderz-restore")
        assert dep.schedules == []
        backup_dep = c.read_deployment_by_name(DEPLOYMENT)
        for sched in backup_dep.schedules:
            c.update_deployment_schedule(backup_dep.id, sched.id, active=False)
    res = _prefect(["deployment", "run", "coderz-restore/coderz-restore", "--param", f"snapshot={snapshot}"])
    assert res.returncode == 0, res.stdout + res.stderr
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", res.stdout).group(1)

    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", POOL, "--run-once"], cwd=ROOT,
                              env=dict(worker_env, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        state = _wait_state(run_id, "PAUSED")
        assert redis_server.client().get("after-backup") == b"x"  # paused: nothing changed yet

        # what the UI renders the form from: the schema the server stores for the paused run
        keys = state["state_details"]["run_input_keyset"]
        schema = prefect_api("GET", f"flow_runs/{run_id}/input/{keys['schema']}").json()
        assert schema["required"] == ["approve", "snapshot"]
        assert schema["properties"]["approve"] == {
            "title": "Approve", "type": "boolean",
            "description": "Yes, overwrite the current data with this snapshot"}
        assert schema["properties"]["snapshot"] == {
            "title": "Snapshot", "type": "string",
            "description": "Type the snapshot name (YYYY-MM-DD_HH-MM-SS) to confirm"}
        plan = prefect_api("GET", f"flow_runs/{run_id}/input/{keys['description']}").json()
        assert f"Restore plan: snapshot `{snapshot}`" in plan and "**redis** — `redis.rdb`" in plan
        assert "- Authenticity: signature ok (this host ed25519:" in plan

        with chromium() as page:
            ui = os.environ["PREFECT_API_URL"].removesuffix("/api")
            # the V1 UI (where the flow-run links Prefect prints lead): labels and help text
            page.goto(f"{ui}/runs/flow-run/{run_id}")
            page.get_by_role("button", name="Resume").click()
            dialog = page.get_by_role("dialog")
            dialog.get_by_text("Type the snapshot name (YYYY-MM-DD_HH-MM-SS) to confirm").wait_for()
            assert dialog.locator(".schema-form-property__label").all_inner_texts() == ["Approve", "Snapshot"]
            assert dialog.get_by_text("Yes, overwrite the current data with this snapshot").is_visible()
            page.keyboard.press("Escape")

            # the V2 UI (the default from the UI's front page): approve it there
            page.goto(f"{ui}/v2/runs/flow-run/{run_id}")
            page.get_by_role("button", name="Open menu").click()
            page.get_by_role("menuitem", name="Resume").click()
            dialog = page.get_by_role("dialog")
            dialog.get_by_text("Restore plan: snapshot").wait_for()
            for text in ("What is overwritten", "Yes, overwrite the current data with this snapshot",
                         "Type the snapshot name (YYYY-MM-DD_HH-MM-SS) to confirm"):
                dialog.get_by_text(text).scroll_into_view_if_needed()
                assert dialog.get_by_text(text).is_visible(), text
            labels = dialog.locator("label").all_inner_texts()
            assert labels == ["Approve", "Snapshot"], labels  # required: no "(Optional)"
            # the plan fits the dialog: nothing in it scrolls or is cut off sideways
            assert dialog.evaluate("d => [...d.querySelectorAll('*')].filter(e => e.scrollWidth > e.clientWidth + 1"
                                   " && !e.classList.contains('sr-only')).map(e => e.tagName)") == []
            box = dialog.get_by_role("textbox")
            line = float(box.evaluate("e => parseFloat(getComputedStyle(e).lineHeight)"))
            assert box.evaluate("e => e.clientHeight") < 2 * line + 20  # one line, not a multi-line box
            box.fill(snapshot)
            dialog.get_by_role("switch").click()
            dialog.get_by_role("button", name="Resume").click()
            out, _ = worker.communicate(timeout=300)
    finally:
        if worker.poll() is None:
            worker.kill()
    final = prefect_api("GET", f"flow_runs/{run_id}").json()["state"]
    assert final["type"] == "COMPLETED", (final, out[-3000:])
    assert redis_server.client().get("after-backup") is None  # back to the snapshot
    [safety] = [p.name for p in (stack.dest / "safety-backups").iterdir() if p.name[0].isdigit()]

    # the run's log in the UI: the safety backup's lines once each, no alarming traceback
    messages = _run_log(run_id)
    assert messages.count(f"safety backup {safety} done") == 1, messages
    assert messages.count(f"latest -> {safety}") == 1, messages          # logged inside the safety backup
    assert sum(m.startswith("redis: redis.rdb ok (") for m in messages) == 1, messages
    assert not [m for m in messages if "Traceback" in m or "unexpected exception" in m], messages
    # the safety backup's report has keys of its own: the nightly report stays the nightly one
    keys = {a["key"] for a in _artifacts(run_id)}
    assert {"coderz-restore-plan", "coderz-restore-report", "coderz-safety-backup-report",
            "coderz-safety-backup-artifacts"} <= keys and not keys & {"coderz-backup-report",
                                                                      "coderz-backup-artifacts"}, keys

    # a rejected restore ends Cancelled, nothing changed, and its log has no engine traceback
    redis_server.client().set("after-restore", "y")
    res = _prefect(["deployment", "run", "coderz-restore/coderz-restore", "--param", f"snapshot={snapshot}"])
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", res.stdout).group(1)
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", POOL, "--run-once"], cwd=ROOT,
                              env=dict(worker_env, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        _wait_state(run_id, "PAUSED")
        resp = prefect_api("POST", f"flow_runs/{run_id}/resume",
                           json={"run_input": {"approve": False, "snapshot": snapshot}})
        assert resp.status_code == 201 and resp.json()["status"] == "ACCEPT", resp.text
        out, _ = worker.communicate(timeout=300)
    finally:
        if worker.poll() is None:
            worker.kill()
    final = prefect_api("GET", f"flow_runs/{run_id}").json()["state"]
    assert final["type"] == "CANCELLED", (final, out[-3000:])
    assert final["message"] == "restore rejected by the operator; nothing was changed"
    assert redis_server.client().get("after-restore") == b"y"
    messages = _run_log(run_id)
    assert not [m for m in messages if "Traceback" in m or "unexpected exception" in m], messages
    assert "CancelledRun" not in out and "Traceback" not in out, out[-3000:]


def _wait_state(run_id: str, state_type: str, timeout: float = 240) -> dict:
    def probe():
        state = prefect_api("GET", f"flow_runs/{run_id}").json()["state"]
        return state if state and state["type"] == state_type else None

    return wait_until(probe, timeout=timeout, interval=0.5,
                      error=lambda _: AssertionError(f"flow run {run_id} never reached {state_type}"))


def _run_log(run_id: str, until=lambda m: m.startswith("Finished in state "), timeout: float = 30) -> list[str]:
    """The messages of a flow run's log, as the UI shows them (oldest first), once one of them
    satisfies ``until`` — by default the engine's own last line, "Finished in state …"."""

    def read() -> list[str] | None:
        resp = prefect_api("POST", "logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}},
                                                        "sort": "TIMESTAMP_ASC", "limit": 200, "offset": 0})
        resp.raise_for_status()
        messages = [entry["message"] for entry in resp.json()]
        return messages if any(until(m) for m in messages) else None

    return wait_until(read, timeout=timeout, interval=0.5,
                      error=lambda _: AssertionError(f"the log of flow run {run_id} never had the line awaited"))


def _artifacts(run_id: str) -> list[dict]:
    resp = prefect_api("POST", "artifacts/filter",
                       json={"artifacts": {"flow_run_id": {"any_": [run_id]}}, "limit": 50, "offset": 0,
                             "sort": "ID_DESC"})
    resp.raise_for_status()
    return resp.json()


# -- the 03:00 UTC schedule, as the real scheduler runs it ----------------------------------


def _next_0300_utc(after):
    import datetime as dt

    first = after.replace(hour=3, minute=0, second=0, microsecond=0)
    return first if first > after else first + dt.timedelta(days=1)


def _runs_of(deployment_id: str, *, states: list[str] | None = None) -> list[dict]:
    body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "sort": "EXPECTED_START_TIME_ASC",
            "limit": 50, "offset": 0}
    if states:
        body["flow_runs"]["state"] = {"type": {"any_": states}}
    resp = prefect_api("POST", "flow_runs/filter", json=body)
    resp.raise_for_status()
    return resp.json()


def test_the_scheduler_creates_the_0300_utc_runs_and_a_worker_executes_a_scheduled_one(stack):
    """The whole promise of the product: nobody acts, and a backup runs at 03:00 UTC.

    Nothing here creates a run: the session server's own scheduler service (loop 2 s) has to,
    from the schedule in the project's prefect.yaml. One of those runs is then moved to now
    (only its scheduled time changes: it stays the scheduler's run) and a worker executes it.
    """
    import datetime as dt

    from prefect.client.schemas.objects import StateType

    _forget(POOL, DEPLOYMENT)
    setup()
    deployed_at = dt.datetime.now(dt.timezone.utc)
    res = _prefect(["--no-prompt", "deploy", "--all"])
    assert res.returncode == 0, res.stdout + res.stderr
    with _client() as c:
        dep = c.read_deployment_by_name(DEPLOYMENT)

    runs = wait_until(lambda: _runs_of(str(dep.id), states=["SCHEDULED"]), timeout=90, interval=1, error=lambda _: (
        AssertionError("the Prefect scheduler created no run of coderz-backup-daily within 90 s; server log:\n"
                       + Path(os.environ["CODERZ_TEST_PREFECT_LOG"]).read_text(errors="replace")[-4000:])))
    assert len(runs) >= 3, runs  # the scheduler keeps at least 3 runs ahead (min_runs)
    starts = [dt.datetime.fromisoformat(r["expected_start_time"].replace("Z", "+00:00")) for r in runs]
    first = _next_0300_utc(deployed_at - dt.timedelta(seconds=5))
    assert starts == [first + dt.timedelta(days=i) for i in range(len(runs))], starts
    assert all(r["auto_scheduled"] for r in runs)
    assert all(r["parameters"] == {"dest": None, "keep": None} for r in runs)

    # move the first scheduled run to now: the same run (same id, still auto-scheduled)
    run = runs[0]
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    resp = prefect_api("POST", f"flow_runs/{run['id']}/set_state", json={
        "state": {"type": "SCHEDULED", "name": "Scheduled", "state_details": {"scheduled_time": now}},
        "force": True})
    assert resp.status_code in (200, 201) and resp.json()["status"] == "ACCEPT", resp.text

    log = _worker_run_once(stack)

    with _client() as c:
        done = c.read_flow_run(run["id"])
        for sched in dep.schedules:  # the other 03:00 runs stay out of later tests
            c.update_deployment_schedule(dep.id, sched.id, active=False)
    assert done.state.type == StateType.COMPLETED, f"{done.state!r}\n{log[-3000:]}"
    assert done.auto_scheduled and done.deployment_id == dep.id
    m = stack.manifest()
    assert m["status"] == "ok" and m["flow_run_id"] == run["id"]
    assert (m["passed"], m["failed"]) == (4, 0)


# -- off-site copies through the deployment ---------------------------------------------------


def test_a_worker_run_copies_off_site_as_its_own_task_and_a_run_parameter_skips_it(stack, tmp_path):
    drive = tmp_path / "drive"
    drive.mkdir()
    stack.config.write_text(stack.config.read_text() + f'\n[offsite.usb]\nkind = "dir"\npath = "{drive}"\n')
    _forget(POOL, DEPLOYMENT)
    setup()
    res = _prefect(["--no-prompt", "deploy", "--all"])
    assert res.returncode == 0, res.stdout + res.stderr
    with _client() as c:
        dep = c.read_deployment_by_name(DEPLOYMENT)
        for sched in dep.schedules:
            c.update_deployment_schedule(dep.id, sched.id, active=False)
    assert "offsite" in dep.parameter_openapi_schema["properties"]

    res = _prefect(["deployment", "run", DEPLOYMENT])
    assert res.returncode == 0, res.stdout + res.stderr
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", res.stdout).group(1)
    _worker_run_once(stack)
    assert _wait_state(run_id, "COMPLETED")
    [snap] = stack.snapshots()
    assert sorted(p.name for p in drive.iterdir()) == [snap.name]
    backups = {"backup-postgres-prefect", "backup-postgres-coderapi", "backup-redis", "backup-configs"}
    tasks = task_runs(run_id, backups | {"offsite-usb", "publish-report", "size-check"})   # no [email]: no send-mail
    assert tasks["offsite-usb"]["state_type"] == "COMPLETED"
    [table] = [a for a in _artifacts(run_id) if a["key"] == "coderz-backup-offsite"]
    [row] = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert (row["target"], row["status"], row["snapshots"], row["attempts"]) == ("usb", "ok", snap.name, 1)
    assert row["bytes"] > 0
    assert _run_log(run_id, until=lambda m: m.startswith("offsite-usb: ") and "files" in m)

    res = _prefect(["deployment", "run", DEPLOYMENT, "--param", "offsite=false"])
    assert res.returncode == 0, res.stdout + res.stderr
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", res.stdout).group(1)
    _worker_run_once(stack)
    assert _wait_state(run_id, "COMPLETED")
    assert len(stack.snapshots()) == 2
    assert sorted(p.name for p in drive.iterdir()) == [snap.name]   # this run's snapshot stayed here
    assert set(task_runs(run_id, backups | {"publish-report", "size-check"})) == backups | {"publish-report", "size-check"}


# -- the weekly restore drill ---------------------------------------------------------------


def test_the_scheduler_creates_the_sunday_0500_utc_drills_and_a_worker_runs_one_to_a_matched_drill(stack):
    import datetime as dt

    from helpers import run_cli as cli

    res = cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 0, res.stdout + res.stderr
    [snap] = stack.snapshots()
    _forget(POOL, DEPLOYMENT)
    setup()
    deployed_at = dt.datetime.now(dt.timezone.utc)
    res = _prefect(["--no-prompt", "deploy", "--all"])
    assert res.returncode == 0, res.stdout + res.stderr
    with _client() as c:
        backup = c.read_deployment_by_name(DEPLOYMENT)
        for sched in backup.schedules:
            c.update_deployment_schedule(backup.id, sched.id, active=False)
        dep = c.read_deployment_by_name("coderz-drill/coderz-drill-weekly")
    [sched] = dep.schedules
    assert (sched.schedule.cron, sched.schedule.timezone, sched.active) == ("0 5 * * 0", "UTC", True)
    runs = wait_until(lambda: _runs_of(str(dep.id), states=["SCHEDULED"]), timeout=90, interval=1, error=lambda _: (
        AssertionError("the Prefect scheduler created no run of coderz-drill-weekly within 90 s")))
    starts = [dt.datetime.fromisoformat(r["expected_start_time"].replace("Z", "+00:00")) for r in runs]
    assert all((s.weekday(), s.hour, s.minute) == (6, 5, 0) for s in starts), starts   # Sundays 05:00 UTC
    assert starts[0] > deployed_at and starts[0] - deployed_at <= dt.timedelta(days=7)
    run = runs[0]
    resp = prefect_api("POST", f"flow_runs/{run['id']}/set_state", json={
        "state": {"type": "SCHEDULED", "name": "Scheduled",
                  "state_details": {"scheduled_time": dt.datetime.now(dt.timezone.utc).isoformat()}},
        "force": True})
    assert resp.status_code in (200, 201) and resp.json()["status"] == "ACCEPT", resp.text
    log = _worker_run_once(stack)
    with _client() as c:
        done = c.read_flow_run(run["id"])
        c.update_deployment_schedule(dep.id, sched.id, active=False)
    assert done.state.type.value == "COMPLETED", f"{done.state!r}\n{log[-3000:]}"
    record = json.loads((snap / "drill.json").read_text())
    assert record["ok"] and record["matched"] == 4
    assert {a["key"] for a in _artifacts(run["id"])} >= {"coderz-drill-report", "coderz-drill-results"}
    task_runs(run["id"], {"drill-postgres-prefect", "drill-postgres-coderapi", "drill-redis", "drill-configs"})
