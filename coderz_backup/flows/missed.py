"""Flow ``coderz-backup-missed`` (deployment ``coderz-backup-missed/coderz-backup-missed``),
started by the automation ``coderz-backup missed run`` that ``coderz-backup setup`` creates:
no Completed ``coderz-backup-daily`` run within ``[monitor] missed_after_h`` (26 h). It mails
``🔴 Coderz Backup MISSED — no successful backup since …`` through the config's ``[email]``
(prefect-email), unless an authentic ``ok`` snapshot newer than the window exists (a backup
made outside the deployment, e.g. ``backup.sh``). No mail configured, or the mail not sent:
the run ends Failed, so the Prefect UI shows it.
"""

from __future__ import annotations

import logging

from prefect import flow

from .. import mail, missed, notify
from ..config import load
from ..errors import CoderzBackupError
from . import api_log_handlers

__all__ = ["coderz_backup_missed", "MissedAlertFailed"]

log = logging.getLogger("coderz_backup.flow")


class MissedAlertFailed(CoderzBackupError):
    """The MISSED mail could not be sent (or no [email] is configured)."""


def _last_run_text() -> str | None:
    """One line on the daily deployment's newest finished-or-failed run, from the Prefect API (best effort)."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterName, FlowRunFilter,
                                                    FlowRunFilterState, FlowRunFilterStateType)
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort

        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["coderz-backup-daily"])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[
                    StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED]))),
                sort=FlowRunSort.START_TIME_DESC, limit=1)
    except Exception as exc:  # the alert must go out even when the API is half there
        log.warning("cannot read the deployment's last run: %s", type(exc).__name__)
        return None
    if not runs:
        return "none finished yet"
    run = runs[0]
    when = run.end_time or run.start_time or run.expected_start_time
    return f"{run.name} {run.state.name if run.state else '?'}" + (f" at {notify.when_text(when)} UTC" if when else "")


@flow(name="coderz-backup-missed", log_prints=False, validate_parameters=True)
def coderz_backup_missed(config: str | None = None, window_h: float | None = None) -> str:
    """Mail 🔴 MISSED unless a recent authentic ok snapshot exists; returns what it did."""
    handlers = api_log_handlers()
    for h in handlers:
        log.addHandler(h)
    try:
        cfg = load(config)
        window = window_h if window_h is not None else cfg.monitor.missed_after_h
        snap = missed.newest_ok(cfg)
        if missed.within_window(snap, window):
            msg = (f"not missed: snapshot {snap.name} (ok, signed) started within {window:g} h — "
                   "a backup outside the deployment; no mail")
            log.info(msg)
            return msg
        subject, html, text = notify.missed_bodies(missed.started_at(snap) if snap else None,
                                                   snap.name if snap else None, window, str(cfg.dest),
                                                   _last_run_text())
        log.error("%s", subject)
        if cfg.email is None:
            raise MissedAlertFailed(f"{subject}: no [email] in {cfg.source}, so no mail was sent")
        if not mail.send_with_retries(cfg.email, subject, html, text, log):
            raise MissedAlertFailed(f"{subject}: the mail could not be sent (see the log above)")
        return f"mailed: {subject}"
    finally:
        for h in handlers:
            log.removeHandler(h)
