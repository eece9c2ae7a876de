"""Never silent: the missed-run automation `coderz-backup setup` creates, on the session's real
Prefect server with a real worker and a real SMTP server (aiosmtpd), the window shortened to
seconds; and the MISSED flow against crafted snapshot folders (a forged one never silences it).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from helpers import decoded_subject, mail_parts, run_cli, with_email

from coderz_backup import notify
from coderz_backup.config import load
from coderz_backup.flows.missed import coderz_backup_missed
from coderz_backup.setup import MISSED_AUTOMATION, MISSED_DEPLOYMENT, missed_trigger, parse_duration_h, setup
from coderz_backup.snapshot import SnapshotStore, snapshot_name
from coderz_backup.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "coderz-backup"
DAILY = "coderz-backup/coderz-backup-daily"
WINDOW_S = 50


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _prefect(args: list[str], env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1", COLUMNS="250")
    return subprocess.run([PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _runs_of(deployment: str):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with _client() as c:
        dep = c.read_deployment_by_name(deployment)
        return c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))


def _missed_mails(smtp) -> list:
    return [msg for _, msg in smtp.messages if "MISSED" in decoded_subject(msg)]


@pytest.fixture
def worker(stack):
    """`prefect worker start --pool coderz-backup` in the background with the host's environment."""
    log = open(stack.root / "worker.log", "w")
    env = dict(stack.env, CODERZ_BACKUP_CONFIG=str(stack.config), PREFECT_WORKER_QUERY_SECONDS="1",
               PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([PREFECT, "worker", "start", "--pool", POOL], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_setup_makes_the_automation_and_a_night_without_a_completed_run_mails_missed(stack, smtp, worker):
    with_email(stack, smtp.port)
    with _client() as c:   # a clean slate on the shared server
        for a in c.read_automations_by_name(MISSED_AUTOMATION):
            c.delete_automation(a.id)
    lines = setup(POOL, missed_after_h=parse_duration_h(f"{WINDOW_S}s"))
    created = time.monotonic()
    assert f"✓ deployment {MISSED_DEPLOYMENT} on pool '{POOL}' (runs from the installed package)" in lines
    assert (f"✓ automation '{MISSED_AUTOMATION}' created: no Completed coderz-backup-daily run within "
            f"{WINDOW_S} s → runs {MISSED_DEPLOYMENT} (🔴 MISSED mail)") in lines, lines
    with _client() as c:
        [auto] = c.read_automations_by_name(MISSED_AUTOMATION)
        missed_dep = c.read_deployment_by_name(MISSED_DEPLOYMENT)
    assert auto.enabled and auto.trigger.posture.value == "Proactive"
    assert auto.trigger.within == dt.timedelta(seconds=WINDOW_S)
    assert auto.actions[0].deployment_id == missed_dep.id

    # a daily run that completes inside the first window keeps it quiet
    res = _prefect(["--no-prompt", "deploy", "--all"])
    assert res.returncode == 0, res.stdout + res.stderr
    with _client() as c:
        daily = c.read_deployment_by_name(DAILY)
        for sched in daily.schedules:   # only the run started here
            c.update_deployment_schedule(daily.id, sched.id, active=False)
    res = _prefect(["deployment", "run", DAILY])
    assert res.returncode == 0, res.stdout + res.stderr
    daily_id = re.search(r"UUID: ([0-9a-f-]{36})", res.stdout).group(1)

    def daily_done():
        with _client() as c:
            run = c.read_flow_run(daily_id)
        return run if run.state.is_final() else None

    run = wait_until(daily_done, timeout=WINDOW_S - 5, interval=0.5,
                     error=lambda _l: AssertionError((stack.root / "worker.log").read_text()[-3000:]))
    assert run.state.is_completed(), run.state
    manifest = stack.manifest()
    assert manifest["flow_run_id"] == daily_id

    # the first window ends: it saw a Completed run, so nothing is started and nothing mailed
    time.sleep(max(0.0, created + WINDOW_S + 8 - time.monotonic()))
    assert _runs_of(MISSED_DEPLOYMENT) == [] and _missed_mails(smtp) == []

    # the next window has no Completed run: the automation runs coderz-backup-missed, the worker mails
    def mailed():
        return _missed_mails(smtp)

    [msg] = wait_until(mailed, timeout=WINDOW_S + 60, interval=1, error=lambda _l: AssertionError(
        f"no MISSED mail; missed runs {[r.state for r in _runs_of(MISSED_DEPLOYMENT)]}\n"
        + (stack.root / "worker.log").read_text()[-3000:]))
    started = dt.datetime.strptime(manifest["started_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    assert decoded_subject(msg) == f"🔴 Coderz Backup MISSED — no successful backup since {notify.when_text(started)} UTC"
    text = mail_parts(msg)["text/plain"]
    assert f"Newest ok snapshot: {manifest['snapshot']}" in text
    assert "Last run of the deployment: " in text and "Completed" in text
    [missed_run] = _runs_of(MISSED_DEPLOYMENT)
    assert missed_run.created_by and missed_run.created_by.type == "AUTOMATION"
    assert missed_run.created_by.display_value == MISSED_AUTOMATION

    # setup again with the default window puts the automation back to 26 h (updated, not duplicated)
    lines = setup(POOL)
    assert any(line.startswith(f"✓ automation '{MISSED_AUTOMATION}' updated: no Completed coderz-backup-daily run "
                               "within 26 h") for line in lines), lines
    assert any(line.startswith(f"= automation '{MISSED_AUTOMATION}' already exists, left unchanged")
               for line in setup(POOL))
    with _client() as c:
        [auto] = c.read_automations_by_name(MISSED_AUTOMATION)
    assert auto.trigger.within == dt.timedelta(hours=26)


def _forge_newer(snap_dir: Path, hours: float, *, keep_signature: bool) -> Path:
    """A copy of a real snapshot under a newer name (its signature then no longer fits), or unsigned."""
    name = snapshot_name(dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=hours))
    forged = snap_dir.parent / name
    shutil.copytree(snap_dir, forged, symlinks=True)
    m = json.loads((forged / "manifest.json").read_text())
    m["snapshot"] = name
    (forged / "manifest.json").write_text(json.dumps(m))
    if not keep_signature:
        for sig in forged.glob("manifest.json.sig*"):
            sig.unlink()
    return forged


def test_the_missed_flow_counts_only_authentic_ok_snapshots_and_fails_when_it_cannot_mail(stack, smtp):
    with_email(stack, smtp.port)
    res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 0, res.stdout + res.stderr
    [snap] = stack.snapshots()
    assert [decoded_subject(m).startswith("✅ Coderz Backup — OK") for _, m in smtp.messages] == [True]
    smtp.messages.clear()   # the backup's own mail
    started = SnapshotStore(stack.dest).get(snap.name).when
    # a real ok snapshot within the window: a backup made outside the deployment, no mail
    out = coderz_backup_missed(config=str(stack.config), window_h=1.0)
    assert out.startswith(f"not missed: snapshot {snap.name} (ok, signed) started within 1 h")
    assert smtp.messages == []

    # newer forged folders (a copied signature, none at all) are not backups: once the real one
    # is older than the window (0.003 h = 10.8 s), MISSED, since the real one
    _forge_newer(snap, 0.5, keep_signature=True)
    _forge_newer(snap, 0.7, keep_signature=False)
    time.sleep(max(0.0, started.timestamp() + 12 - time.time()))
    out = coderz_backup_missed(config=str(stack.config), window_h=0.003)
    subject = f"🔴 Coderz Backup MISSED — no successful backup since {notify.when_text(started)} UTC"
    assert out == f"mailed: {subject}"
    [(rcpts, msg)] = smtp.messages
    assert decoded_subject(msg) == subject and "ops@coderz.local" in rcpts

    # no ok snapshot at all
    empty = stack.root / "empty.toml"
    empty.write_text(stack.config.read_text().replace(str(stack.dest), str(stack.root / "none")))
    assert coderz_backup_missed(config=str(empty), window_h=1.0) == \
        "mailed: 🔴 Coderz Backup MISSED — no successful backup at all"

    # no [email]: the run fails (the UI shows it) and says why
    quiet = stack.root / "quiet.toml"
    quiet.write_text(stack.config.read_text().split("\n[email]")[0])
    assert load(quiet).email is None
    state = coderz_backup_missed(config=str(quiet), window_h=1e-4, return_state=True)
    assert state.is_failed()
    assert "no [email]" in state.message and "so no mail was sent" in state.message


def test_the_trigger_expects_a_completed_run_of_the_daily_deployment_of_the_backup_flow():
    from prefect.server.events.schemas.events import ReceivedEvent

    trig = missed_trigger(26)
    assert trig.posture.value == "Proactive" and trig.threshold == 1
    assert trig.within == dt.timedelta(hours=26)

    def event(name: str, flow: str, deployment: str):
        return ReceivedEvent(
            id=uuid.uuid4(), occurred=dt.datetime.now(dt.timezone.utc), received=dt.datetime.now(dt.timezone.utc), event=name,
            resource={"prefect.resource.id": "prefect.flow-run.1", "prefect.resource.name": "a-run"},
            related=[{"prefect.resource.id": "prefect.flow.2", "prefect.resource.role": "flow",
                      "prefect.resource.name": flow},
                     {"prefect.resource.id": "prefect.deployment.3", "prefect.resource.role": "deployment",
                      "prefect.resource.name": deployment}])

    from prefect.server.events.schemas.automations import EventTrigger as ServerTrigger

    server = ServerTrigger.model_validate(trig.model_dump())
    assert server.covers(event("prefect.flow-run.Completed", "coderz-backup", "coderz-backup-daily"))
    assert not server.covers(event("prefect.flow-run.Failed", "coderz-backup", "coderz-backup-daily"))
    assert not server.covers(event("prefect.flow-run.Completed", "coderz-drill", "coderz-backup-daily"))
    assert not server.covers(event("prefect.flow-run.Completed", "coderz-backup", "coderz-restore"))
