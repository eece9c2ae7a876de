"""The crash hook of the backup flow: a run that ends before its outcome mail is never silent.

:func:`alert_on_failure` is the flow's ``on_failure`` / ``on_crashed`` hook: it sends the 🔴
mail (config loaded from the run's parameters) unless :func:`outcome_mailed` recorded that the
run already sent its result mail. For the nightly flow it also pings ``[monitor] ping_url``
``/fail`` and rewrites ``[monitor] textfile`` with status 2, unless :func:`outcome_monitored`
recorded that the run did so itself.
"""

from __future__ import annotations

import datetime as dt
import logging

from .. import mail, notify
from ..config import load
from ..errors import CoderzBackupError

__all__ = ["alert_on_failure", "outcome_mailed", "outcome_monitored"]

log = logging.getLogger("coderz_backup.flow")

_mailed_runs: set[str] = set()
_monitored_runs: set[str] = set()


def outcome_monitored(run_id: str) -> None:
    """The run pinged its outcome and wrote its metrics: the hook does not do it again."""
    _monitored_runs.add(run_id)


def outcome_mailed(run_id: str) -> None:
    """The run's outcome mail went (or was tried): the hook stays quiet for it."""
    _mailed_runs.add(run_id)


def alert_on_failure(flow, flow_run, state) -> None:
    """on_failure / on_crashed: send 🔴 unless the run already mailed its outcome."""
    run_id = str(flow_run.id)
    monitor = getattr(flow, "name", None) == "coderz-backup" and run_id not in _monitored_runs
    if run_id in _mailed_runs and not monitor:
        return
    params = dict(flow_run.parameters or {})
    try:
        cfg = load(params.get("config"), dest=params.get("dest"), keep=params.get("keep"),
                   keep_daily=params.get("keep_daily"), keep_weekly=params.get("keep_weekly"),
                   keep_monthly=params.get("keep_monthly"))
    except CoderzBackupError as exc:
        log.error("cannot send the failure mail: config unusable (%s)", exc)
        return
    if monitor:
        _monitor_failure(cfg, run_id, flow_run, state)
    if cfg.email is None or run_id in _mailed_runs:
        return
    when = flow_run.start_time or flow_run.expected_start_time or dt.datetime.now(dt.timezone.utc)
    subject, html, text = notify.crash_bodies(when, state.message or state.name, flow_run=flow_run.name,
                                              dest=str(cfg.dest))
    if mail.send_with_retries(cfg.email, subject, html, text, log):
        _mailed_runs.add(run_id)


def _monitor_failure(cfg, run_id: str, flow_run, state) -> None:
    """/fail ping and status-2 metrics for a run that ended before it could send them."""
    from ..monitor import RunMonitor

    watch = RunMonitor(cfg.monitor, run_id, cfg.dest)
    if not watch.active:
        return
    start = flow_run.start_time
    if start is not None:
        watch.started -= max(0.0, (dt.datetime.now(dt.timezone.utc) - start).total_seconds())
    watch.failed(state.message or state.name)
    _monitored_runs.add(run_id)
