"""Flow ``coderz-restore``: verify, plan, wait for a typed approval, safety backup, restore.

Sequence (nothing changes before the approval)::

    resolve snapshot (name must be a snapshot name; `latest` allowed) ─ lock the destination
      └─ verify every artifact to restore (sha256 from the manifest + format checks)
      └─ plan (markdown artifact `coderz-restore-plan`): what is overwritten, sizes, age, status
      └─ pause for RestoreApproval (approve + the snapshot name typed back), timeout 1 h
           rejected / wrong name / timed out → Cancelled, nothing changed (CLI exit 3)
      └─ safety backup of the services about to be overwritten → <dest>/safety-backups/
      └─ restore each service (concurrently), health check each
      └─ restore.log in the snapshot folder, markdown artifact `coderz-restore-report`

The safety backup is taken *after* the approval, not before: a rejected restore then
leaves no trace at all, and the undo point is as fresh as it can be.
"""

from __future__ import annotations

import datetime as dt
import logging
import shlex
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.input import RunInput
from prefect.runtime import flow_run as rt_flow_run
from prefect.states import Cancelled, Failed
from pydantic import Field

from ..config import load
from ..dependents import start_again, stop_running
from ..errors import ConfigError, CoderzBackupError, RestoreError, RunFailed, VerifyError
from ..reader import SnapshotReader
from ..report import human_size
from ..runlog import run_log
from ..services import REGISTRY, create
from ..snapshot import SAFETY_DIR, SnapshotStore
from ..verify import authenticate_snapshot, verify_snapshot
from .. import notify
from ..progress import emit as _emit
from . import api_log_handlers
from .backup import run_backup, send_mail

__all__ = ["coderz_restore", "RestoreApproval", "approval_form", "SAFETY_DIR"]

log = logging.getLogger("coderz_backup.restore")

SAFETY_REPORT_KEY = "coderz-safety-backup"   # its report artifacts: never mistaken for the nightly one


class RestoreApproval(RunInput):
    """The approval form (Prefect UI) / the CLI's confirmation.

    Both fields are required (no defaults), so the UI labels them without "(Optional)", and
    their titles and descriptions are what the form shows. The plan reaches the form through
    :func:`approval_form`, which keeps these fields as they are: ``with_initial_data(field=…)``
    would rebuild a field from its value alone and drop its description and requiredness.
    """

    approve: bool = Field(title="Approve", description="Yes, overwrite the current data with this snapshot")
    snapshot: str = Field(title="Snapshot",
                          description="Type the snapshot name (YYYY-MM-DD_HH-MM-SS) to confirm")


def approval_form(plan: str) -> type[RestoreApproval]:
    """The form the paused run waits for, with the plan shown above its fields."""
    return RestoreApproval.with_initial_data(description=plan)


@task(name="verify-snapshot", task_run_name="verify-snapshot", cache_policy=NO_CACHE)
def verify_task(snap, cfg, services: list[str], authenticity) -> list[dict]:
    checks = verify_snapshot(snap, cfg, only=services, authenticity=authenticity)
    for c in checks:
        (log.info if c.ok else log.error)("verify %s: %s", c.path, c.detail)
    bad = [c for c in checks if not c.ok]
    if bad:
        raise VerifyError("verification failed, nothing was changed: " + "; ".join(c.detail for c in bad))
    return [c.as_dict() for c in checks]


@task(name="restore-service", cache_policy=NO_CACHE)
def restore_service(name: str, service_config: Any, snapshot_dir: str, entries: list[dict]) -> dict:
    """Restore one service from its artifacts (manifest entries, in manifest order), then check its health.

    The artifacts are read through the reader: every byte is checked against the (authenticated)
    manifest the entries come from, also if the folder changed since the verify."""
    svc = create(name, service_config)
    reader = SnapshotReader(snapshot_dir, {"artifacts": entries})
    details = []
    for entry in entries:
        artifact = reader.artifact(entry)
        detail = svc.restore(artifact)
        log.info("%s: %s: %s", name, artifact.name, detail)
        details.append(detail)
    health = svc.health()
    log.info("%s: health: %s", name, health)
    return {"service": name, "status": "ok", "detail": "; ".join(details), "health": health}


def _dependents(cfg, services: list[str]) -> list[str]:
    """Containers to stop while these services are restored (their ``stop_containers``), in order."""
    out: list[str] = []
    for name in services:
        for c in cfg.services[name].stop_containers:
            if c not in out:
                out.append(c)
    return out


def _plan(snap, entries, cfg, lacking, safety: bool, auth=None) -> str:
    """The restore plan (markdown). One paragraph per artifact rather than a table: the plan
    is shown above the approval form in the UI's Resume dialog (~30 em wide), where a table's
    last column — what is overwritten — was cut off."""
    age = dt.datetime.now(dt.timezone.utc) - snap.when
    lines = [f"# Restore plan: snapshot `{snap.name}`", "",
             f"- Snapshot status: **{snap.status}**, taken {age.days} day(s) "
             f"{age.seconds // 3600} hour(s) ago, folder `{snap.path}`"]
    if auth is not None:
        lines.append(f"- Authenticity: {auth.describe(short=True)}" if auth.signed else f"- ⚠ **{auth.describe()}**")
    if lacking:
        lines.append(f"- Not in this snapshot (left as they are): {', '.join(lacking)}")
    lines.append(f"- Safety backup first: {'yes, into ' + str(cfg.dest / SAFETY_DIR) if safety else '**no**'}")
    lines += ["", "## What is overwritten"]
    for e in entries:
        svc = create(e["service"], cfg.services[e["service"]])
        lines += ["", f"**{e['service']}** — `{e['path']}` ({human_size(e['bytes'])}): {svc.restore_target()}"]
    dependents = _dependents(cfg, list(dict.fromkeys(e["service"] for e in entries)))
    own = [c.container for c in (cfg.services[e["service"]] for e in entries) if c.container]
    if dependents or own:
        lines += ["", "Containers stopped during the restore and started again afterwards: "
                      + ", ".join(dict.fromkeys(dependents + [f"{c} (when its data is replaced)" for c in own]))]
    lines += ["", "Restore overwrites current data. Approve by typing the snapshot name."]
    return "\n".join(lines)


@flow(name="coderz-restore", log_prints=False, validate_parameters=True)
def coderz_restore(
    snapshot: str = "latest",
    only: list[str] | None = None,
    config: str | None = None,
    dest: str | None = None,
    safety_backup: bool = True,
    approval_timeout_s: int = 3600,
    auto_approve: bool = False,
    allow_unsigned: bool = False,
):
    """Restore services from a snapshot after a typed approval.

    Args:
        snapshot: snapshot name (YYYY-MM-DD_HH-MM-SS) or `latest`.
        only: restore just these services (config table names).
        config: path of the TOML config file.
        dest: snapshot destination.
        safety_backup: back up the current state of the affected services first.
        approval_timeout_s: how long to wait for the approval before giving up (nothing changed).
        auto_approve: skip the approval (the CLI's --yes).
        allow_unsigned: accept a snapshot without a signature (older than signed manifests), warned about.
    """
    cfg = load(config, dest=dest)
    store = SnapshotStore(cfg.dest)
    snap = store.get(snapshot)  # refuses anything that is not a snapshot name
    auth = authenticate_snapshot(snap, cfg, allow_unsigned=allow_unsigned)  # before anything in it is used
    entries, lacking = select_entries(cfg, snap, only)

    with store.lock():
        with run_log(snap.path / "restore.log", extra_handlers=api_log_handlers()):
            log.info("restore of snapshot %s requested (flow run %s): %s", snap.name, rt_flow_run.id,
                     ", ".join(a["service"] for a in entries))
            if not auth.signed:
                log.warning("snapshot %s is UNSIGNED: accepted only because allow_unsigned is set", snap.name)
            verify_task(snap, cfg, [a["service"] for a in entries], auth)
            plan = _plan(snap, entries, cfg, lacking, safety_backup, auth)
            _publish("coderz-restore-plan", plan, f"Restore plan for {snap.name}")
            _emit("restore-plan", plan=plan, snapshot=snap.name, flow_run_id=str(rt_flow_run.id))

            if not auto_approve:
                refusal = _wait_for_approval(snap.name, plan, approval_timeout_s)
                if refusal:
                    log.warning("restore not done: %s; nothing was changed", refusal)
                    _emit("restore-refused", reason=f"{refusal}; nothing was changed")
                    # (after a timeout the API has already failed the run: "never resumed")
                    return Cancelled(message=f"{refusal}; nothing was changed")
            log.info("restore of %s approved", snap.name)

            safety = None
            if safety_backup:
                safety = _safety_backup(cfg, [a["service"] for a in entries])

            services = list(dict.fromkeys(a["service"] for a in entries))
            stopped: list[str] = []
            try:
                stop_running(_dependents(cfg, services), stopped)
                results = _restore_all(cfg, snap, entries)
            except CoderzBackupError as exc:   # a dependent container would not stop: nothing restored
                log.error("restore not started: %s", exc)
                results = [{"service": s, "status": "failed", "health": None,
                            "detail": f"not restored (nothing of it changed): {exc}"} for s in services]
            finally:
                restart_problems = start_again(stopped)   # whatever was stopped runs again
            report = _report(snap, results, safety, cfg, stopped, restart_problems, config, auth)
            _publish("coderz-restore-report", report, f"Restore report for {snap.name}")
            if cfg.email is not None:
                _mail(cfg, snap.name, results, report)
    failed = [r for r in results if r["status"] != "ok"]
    summary = {"snapshot": snap.name, "results": results, "safety_backup": safety, "report": report}
    _emit("restore-finished", summary=summary)
    if failed or restart_problems:
        problems = [f"{len(failed)} of {len(results)} services failed to restore"] if failed else []
        if restart_problems:
            problems.append(f"container(s) not running again: {'; '.join(restart_problems)}")
        undo = (f"; undo with: {_undo_command(config, cfg, safety)}" if safety and failed else "")
        message = "; ".join(problems) + undo
        return Failed(message=message, data=RunFailed(message, summary))
    return summary


def _undo_command(config: str | None, cfg, safety: str) -> str:
    """The command that restores the safety backup (with the same config file)."""
    cmd = ["coderz-backup", "restore", safety, "--dest", str(cfg.dest / SAFETY_DIR)]
    if config:
        cmd += ["--config", str(config)]
    return shlex.join(cmd)


def select_entries(cfg, snap, only: list[str] | None) -> tuple[list[dict], list[str]]:
    """The manifest entries to restore and the wanted services the snapshot lacks.

    Plain checks (no Prefect): the CLI runs them before it asks anything, so bad input is
    exit 2 even without a terminal. ConfigError / RestoreError when there is nothing to do.
    """
    if snap.manifest is None:
        raise RestoreError(f"{snap.path} has no readable manifest.json; it cannot be restored safely")
    ok_entries = [a for a in snap.manifest.get("artifacts", []) if a.get("status") == "ok"]
    if only:
        unknown = [n for n in only if n not in cfg.services]
        if unknown:
            raise ConfigError("--only", [f"unknown service {n!r}; configured: {', '.join(cfg.services)}"
                                         for n in unknown])
    wanted = [n for n, c in cfg.services.items() if (n in only if only else c.enabled) and c.kind in REGISTRY]
    entries = [a for a in ok_entries if a["service"] in wanted]
    lacking = [n for n in wanted if n not in {a["service"] for a in entries}]
    if not entries:
        raise RestoreError(f"snapshot {snap.name} holds nothing to restore for {', '.join(wanted) or 'the selection'}")
    return entries, lacking


def _wait_for_approval(name: str, plan: str, timeout_s: int) -> str | None:
    """Pause for the typed approval; the refusal reason, or None when approved."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    try:
        answer = pause_flow_run(wait_for_input=approval_form(plan), timeout=timeout_s, poll_interval=1)
    except FlowPauseTimeout:
        return f"approval timed out after {timeout_s}s"
    if not answer.approve:
        return "restore rejected by the operator"
    if answer.snapshot.strip() != name:
        return f"typed snapshot name {answer.snapshot.strip()!r} does not match {name}"
    return None


def _safety_backup(cfg, services: list[str]) -> str:
    safety_cfg = cfg.model_copy(update={"dest": cfg.dest / SAFETY_DIR, "email": None})
    log.info("safety backup of %s into %s", ", ".join(services), safety_cfg.dest)
    outcome = run_backup(safety_cfg, only=services, report_key=SAFETY_REPORT_KEY, offsite=False)
    summary = outcome if isinstance(outcome, dict) else getattr(getattr(outcome, "data", None), "summary", None)
    if not isinstance(summary, dict) or summary.get("status") != "ok":
        raise RestoreError("the safety backup of the current state failed, so nothing was restored "
                           f"({getattr(outcome, 'message', '')}); fix it or restore with --no-safety-backup")
    log.info("safety backup %s done", summary["snapshot"])
    return summary["snapshot"]


def _restore_all(cfg, snap, entries) -> list[dict]:
    by_service: dict[str, list[dict]] = {}
    for e in entries:
        by_service.setdefault(e["service"], []).append(e)
    futures = {}
    for name, service_entries in by_service.items():
        t = restore_service.with_options(task_run_name=f"restore-{name}")
        futures[t.submit(name, cfg.services[name], str(snap.path), service_entries)] = name
    results = {}
    for fut in as_completed(list(futures)):
        name = futures[fut]
        value = fut.result(raise_on_failure=False)
        if fut.state.is_completed() and isinstance(value, dict):
            results[name] = value
        else:
            msg = str(value) if isinstance(value, CoderzBackupError) else f"{type(value).__name__}: {value}"
            log.error("%s: restore FAILED: %s", name, msg)
            results[name] = {"service": name, "status": "failed", "detail": msg, "health": None}
    return [results[name] for name in by_service]


RESTART_HINT = "cd /opt/coderz && docker compose restart"


def _report(snap, results, safety, cfg, stopped=(), restart_problems=(), config: str | None = None,
            auth=None) -> str:
    lines = [f"# Restore of snapshot `{snap.name}`", ""]
    if auth is not None and not auth.signed:
        lines += [f"⚠ **{auth.describe()}**", ""]
    lines += ["| service | result | detail | health |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['service']} | {r['status']} | {r['detail']} | {r['health'] or '—'} |")
    if stopped:
        lines += ["", f"Containers stopped during the restore: {', '.join(stopped)}"
                      + ("; all started again." if not restart_problems else ".")]
    if restart_problems:
        lines += ["", "Some containers could not be started again: " + "; ".join(restart_problems),
                  "", "After restore, restart all services:", "", f"    {RESTART_HINT}"]
    if safety:
        lines += ["", f"Safety backup of the state before this restore: `{safety}` in `{cfg.dest / SAFETY_DIR}`. "
                      f"Undo with `{_undo_command(config, cfg, safety)}`."]
    return "\n".join(lines)


def _publish(key: str, markdown: str, description: str) -> None:
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(key=key, markdown=markdown, description=description)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not publish %s: %s", key, exc)


def _mail(cfg, snapshot: str, results: list[dict], report: str) -> None:
    """The restore's outcome by mail; a mail failure is logged, never changes the outcome."""
    subject, html, text = notify.restore_bodies(snapshot, results, report, dt.datetime.now(dt.timezone.utc))
    fut = send_mail.with_options(task_run_name="send-mail", retries=cfg.email.retries,
                                 retry_delay_seconds=cfg.email.retry_delay_s or 0).submit(cfg.email, subject, html, text)
    value = fut.result(raise_on_failure=False)
    if not fut.state.is_completed():
        log.error("restore mail NOT sent: %s", value)
