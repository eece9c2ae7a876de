"""Flow ``coderz-backup``: every enabled service is its own retryable Prefect task.

Sequence::

    load config ─ prepare dest ─ lock ─ clean killed runs ─ room check ─ begin .in-progress-<ts>
      └─ submit one task per service (concurrently, retries with backoff, timeout)
      └─ collect as they complete (one failure never stops the others)
      └─ size-check task (minimum sizes, shrinkage vs the previous ok snapshot)
      └─ manifest.json ─ rename to <ts> ─ latest (unless nothing usable) ─ rotation
      └─ [monitor]: metrics textfile, then the success or /fail ping (/start went first; never fails the run)
      └─ report artifacts ─ send-mail task (✅/⚠️/🔴; retried, never changes the outcome)
    on_failure / on_crashed hooks: 🔴 mail when the run ended before a snapshot was finished

Final state: Completed when every artifact passed; Failed("1 of 4 artifacts failed")
when some failed (the snapshot is kept, status ``partial``); Failed with the error when
the run could not start (config, lock, destination); Crashed on an unexpected exit.

Processes that want live progress (the CLI) register a listener with
:func:`add_listener`; deployments run without one.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import flow_run as rt_flow_run
from prefect.runtime import task_run as rt_task_run
from prefect.states import Failed

from .. import __version__
from .. import mail, notify, offsite, sizecheck
from ..monitor import RunMonitor
from .. import manifest as manifest_schema
from ..progress import add_listener, emit as _emit, remove_listener
from ..config import Config, ServiceConfig, load
from ..errors import ConfigError, CoderzBackupError, PartialBackupError, RunFailed, SecretError
from ..report import render_report
from ..rotation import describe_policy, rotate
from ..runlog import run_log
from ..services import REGISTRY, ArtifactResult, create, expected_artifacts
from ..signing import load_signer
from ..snapshot import SnapshotStore
from ..stages import StageResult, failed_result, write_record
from . import api_log_handlers
from .alerts import alert_on_failure, outcome_mailed, outcome_monitored

__all__ = ["coderz_backup", "backup_service", "add_listener", "remove_listener", "section_title"]

log = logging.getLogger("coderz_backup.flow")

# -- report sections --------------------------------------------------------------
def section_title(name: str, cfg: ServiceConfig) -> str:
    """The report section a service's artifacts are listed under (declared by its kind's config model)."""
    return cfg.report_title(name)


# -- the task -------------------------------------------------------------------------
def _retry_worthwhile(task, task_run, state) -> bool:
    """Do not retry what a retry cannot fix (config and secret problems)."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001
        return True
    return not isinstance(exc, (ConfigError, SecretError))


@task(name="backup-service", cache_policy=NO_CACHE, retry_condition_fn=_retry_worthwhile)
def backup_service(name: str, service_config: Any, snapshot_dir: str) -> list[ArtifactResult]:
    """Back up one service into the in-progress snapshot folder."""
    attempt = rt_task_run.run_count or 1
    _emit("attempt", name=name, attempt=attempt)
    if attempt > 1:
        log.warning("%s: attempt %d", name, attempt)
    try:
        svc = create(name, service_config)
        svc.precheck()   # e.g. the service's container exists and runs
        results = svc.backup(Path(snapshot_dir))
    except CoderzBackupError as exc:
        log.error("%s: attempt %d failed: %s", name, attempt, exc)
        exc.attempts = attempt
        raise
    except Exception:
        log.exception("%s: attempt %d failed with an unexpected error", name, attempt)
        raise   # retried like any failure: it ends after cfg.retries + 1 attempts
    for r in results:
        r.attempts = attempt
    return results


@task(name="size-check", task_run_name="size-check", cache_policy=NO_CACHE)
def size_check(results: list[ArtifactResult], snapshot_dir: str, min_bytes: dict[str, int], cfg: Any,
               previous: Any) -> tuple[list[ArtifactResult], list[dict]]:
    """Minimum sizes and shrinkage against the previous ok snapshot (see coderz_backup.sizecheck)."""
    results, findings = sizecheck.check(results, Path(snapshot_dir), min_bytes, cfg, previous)
    for f in findings:
        (log.error if f.level == "error" else log.warning)("size check: %s", f.message)
    if not findings:
        log.info("size check: all artifact sizes plausible")
    return results, [f.as_dict() for f in findings]


@task(name="post-snapshot", cache_policy=NO_CACHE)
def post_snapshot_step(stage: Any, folder: str, manifest: dict) -> StageResult:
    """One step of the post-snapshot stage (an off-site copy): raises when it fails, so it is retried."""
    from prefect.runtime import task_run

    result = stage.run(Path(folder), manifest)
    result.attempts = max(1, int(task_run.run_count or 1))
    return result


def _post_snapshot(cfg: Config, stages: list, folder: Path, manifest: dict) -> list[StageResult]:
    """Every step as its own task (``offsite-<target>``), concurrently; results beside the manifest."""
    futures = {}
    for stage in stages:
        t = post_snapshot_step.with_options(task_run_name=stage.name, retries=cfg.retries,
                                            retry_delay_seconds=cfg.retry_delay_s or 0)
        futures[t.submit(stage, str(folder), manifest)] = (stage, time.monotonic())
    results: dict[str, StageResult] = {}
    for fut in as_completed(list(futures)):
        stage, started = futures[fut]
        value = fut.result(raise_on_failure=False)
        if fut.state.is_completed() and isinstance(value, StageResult):
            result = value
        else:
            result = failed_result(stage.name, value if isinstance(value, BaseException) else None,
                                   fut.state.message or "")
            result.attempts = cfg.retries + 1
        result.duration_s = time.monotonic() - started
        if result.status == "failed":
            log.error("%s: FAILED after %d attempt(s): %s", stage.name, result.attempts, result.detail)
        else:
            log.info("%s: %s (%.1fs, %d attempt(s))", stage.name, result.detail, result.duration_s, result.attempts)
        results[stage.name] = result
    ordered = [results[s.name] for s in stages]
    write_record(folder, ordered)
    return ordered


@task(name="publish-report", task_run_name="publish-report", cache_policy=NO_CACHE)
def publish_report(manifest: dict, snapshot_path: str, key: str = "coderz-backup",
                   offsite_results: list[dict] = (), notes: list[str] = ()) -> None:
    """The run's report as Prefect artifacts ``<key>-report`` (markdown), ``<key>-artifacts``
    (one table row per artifact) and, with off-site targets, ``<key>-offsite`` (one row per target)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from ..report import human_size

    create_markdown_artifact(
        key=f"{key}-report",
        markdown=f"# Coderz backup {manifest['snapshot']} — {manifest['status']}\n\n"
                 f"Snapshot: `{snapshot_path}`\n\n```\n{render_report(manifest, offsite_results)}\n```\n"
                 + "".join(f"\n- {n}" for n in notes),
        description=f"Backup report for snapshot {manifest['snapshot']}",
    )
    create_table_artifact(
        key=f"{key}-artifacts",
        table=[{"artifact": a["path"], "service": a["service"], "status": a["status"],
                "size": human_size(a["bytes"]) if a["status"] == "ok" else "", "bytes": a["bytes"],
                "duration_s": a["duration_s"], "attempts": a["attempts"], "error": a["error"] or "",
                "sha256": a["sha256"] or ""} for a in manifest["artifacts"]],
        description=f"Artifacts of snapshot {manifest['snapshot']}",
    )
    if offsite_results:
        create_table_artifact(
            key=f"{key}-offsite",
            table=[{"target": r["stage"].removeprefix("offsite-"), "status": r["status"],
                    "where": (r.get("details") or {}).get("where", ""),
                    "snapshots": ", ".join((r.get("details") or {}).get("snapshots", [])),
                    "bytes": (r.get("details") or {}).get("bytes", 0), "duration_s": r.get("duration_s"),
                    "attempts": r.get("attempts", 1), "detail": r.get("detail", "")} for r in offsite_results],
            description=f"Off-site copies of snapshot {manifest['snapshot']}",
        )


@task(name="send-mail", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 15])
def send_mail(email_cfg: Any, subject: str, html: str, text: str) -> str:
    """Send one alert mail through prefect-email (retried; never changes the backup's outcome)."""
    mail.send(email_cfg, subject, html, text)
    log.info("mail sent to %s: %s", ", ".join(email_cfg.to), subject)
    return subject


def _mail_outcome(cfg: Config, manifest: dict, snapshot_path: str, after: list[StageResult] = ()) -> str:
    """Send the result mail; return what happened (for the summary). Never raises."""
    if cfg.email is None:
        return "not configured"
    subject, html, text = notify.result_bodies(manifest, snapshot_path, [r.as_manifest() for r in after])
    fut = send_mail.with_options(task_run_name="send-mail", retries=cfg.email.retries,
                                 retry_delay_seconds=cfg.email.retry_delay_s or 0).submit(cfg.email, subject, html, text)
    value = fut.result(raise_on_failure=False)
    if fut.state.is_completed():
        return f"sent: {subject}"
    log.error("mail NOT sent after retries: %s — the backup itself is unaffected", value)
    return f"failed: {value}"


# -- the flow -----------------------------------------------------------------------
@flow(name="coderz-backup", log_prints=False, validate_parameters=True,
      on_failure=[alert_on_failure], on_crashed=[alert_on_failure])
def coderz_backup(
    dest: str | None = None,
    keep: int | None = None,
    only: list[str] | None = None,
    config: str | None = None,
    offsite: bool = True,
    keep_daily: int | None = None,
    keep_weekly: int | None = None,
    keep_monthly: int | None = None,
):
    """Back up every enabled service of the Coderz Stack into a new dated snapshot.

    Args:
        dest: snapshot destination (default: config file, then /opt/coderz/backup/snapshots).
        keep: rotation, keep this many days (0 = forever; default: KEEP_DAYS, config, 7).
        only: back up just these services (config table names).
        config: path of the TOML config file.
        offsite: copy the snapshot to the [offsite.*] targets (false: skip them for this run).
        keep_daily: rotation, also keep the newest usable snapshot of each of the last N days (default:
            KEEP_DAILY, config, 0 = unused); keep_weekly / keep_monthly likewise for ISO weeks and months.
    """
    cfg = load(config, dest=dest, keep=keep, keep_daily=keep_daily, keep_weekly=keep_weekly,
               keep_monthly=keep_monthly)
    return run_backup(cfg, only=only, offsite=offsite, monitor=True)


def run_backup(cfg: Config, *, only: list[str] | None = None, report_key: str = "coderz-backup",
               offsite: bool = True, monitor: bool = False):
    """The backup itself (inside a flow run). ``report_key`` names the report artifacts: the
    nightly ones are ``coderz-backup-*``, a restore's safety backup publishes its own (and is
    never sent off-site: ``offsite=False``). With ``monitor`` (the nightly flow) the run pings
    ``[monitor] ping_url`` and rewrites ``[monitor] textfile`` (coderz_backup.monitor)."""
    run_id = str(rt_flow_run.id) if rt_flow_run.id else None
    watch = RunMonitor(cfg.monitor, run_id, cfg.dest) if monitor else None
    if watch is not None and watch.active:
        watch.start()
    try:
        return _run_backup(cfg, only, report_key, offsite, watch)
    except BaseException as exc:
        if watch is not None and watch.active and not watch.done:
            watch.failed(str(exc) if isinstance(exc, CoderzBackupError) else f"{type(exc).__name__}: {exc}")
        if watch is not None and run_id:
            outcome_monitored(run_id)
        raise


def _run_backup(cfg: Config, only, report_key, offsite, watch):
    services = cfg.enabled_services(only)
    signer = load_signer(cfg.signing_key)  # an unusable key stops the run before anything is written
    store = SnapshotStore(cfg.dest)
    store.prepare()
    with store.lock():
        stale = store.clean_stale()
        preflight = sizecheck.preflight(store, cfg.size_check)  # no room → StoreError, nothing written
        previous = sizecheck.previous_ok(store)
        started = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        snap = store.begin(started)
        with run_log(snap.path / "backup.log", extra_handlers=api_log_handlers()):
            summary, final_path = _run_in_snapshot(cfg, store, snap, services, started, stale, preflight, previous,
                                                   report_key, signer, offsite, watch)
            _emit("finished", summary=summary, path=str(final_path))
    lost = [r["stage"].removeprefix("offsite-") for r in summary["offsite"] if r["status"] == "failed"]
    if summary["status"] == "ok" and not lost:
        return summary
    if summary["status"] == "ok":
        msg = f"off-site copy to {', '.join(lost)} failed (the local snapshot {summary['snapshot']} is complete)"
        return Failed(message=msg, data=RunFailed(msg, summary))
    total = summary["passed"] + summary["failed"]
    msg = (f"{summary['failed']} of {total} artifacts failed" if summary["passed"]
           else f"no usable snapshot: {summary['failed']} of {total} artifacts failed")
    return Failed(message=msg, data=RunFailed(msg, summary))


def _run_in_snapshot(cfg, store, snap, services, started, stale, preflight, previous, report_key, signer,
                     copy_offsite=True, watch=None):
    log.info("coderz-backup %s on %s: snapshot %s into %s (keep %s, flow run %s)",
             __version__, socket.gethostname(), snap.name, cfg.dest,
             describe_policy(cfg.keep_days, cfg.keep_daily, cfg.keep_weekly, cfg.keep_monthly), rt_flow_run.id)
    for name in stale:
        log.warning("removed %s left behind by an interrupted run", name)
    sections = {name: section_title(name, c) for name, c in services.items()}
    _emit("started", snapshot=snap.name, services=sections)

    results: dict[str, list[ArtifactResult]] = {}
    futures = {}
    submitted_at = {}
    for name, svc_cfg in services.items():
        if svc_cfg.kind not in REGISTRY:
            reason = f"kind {svc_cfg.kind!r} is not supported by coderz-backup {__version__} yet"
            log.warning("%s: skipped: %s", name, reason)
            results[name] = [ArtifactResult(name, svc_cfg.kind, p, status="skipped", attempts=0, error=reason)
                             for p in expected_artifacts(name, svc_cfg)]
            continue
        t = backup_service.with_options(
            task_run_name=f"backup-{name}",
            retries=cfg.retries,
            retry_delay_seconds=cfg.retry_delay_s or 0,
            # no task timeout_seconds: Prefect cannot interrupt a worker thread anyway (it
            # only warns); each producer enforces timeout_s itself by killing its process.
        )
        submitted_at[name] = time.monotonic()
        futures[t.submit(name, svc_cfg, str(snap.path))] = name

    for fut in as_completed(list(futures)):
        name = futures[fut]
        svc_cfg = services[name]
        elapsed = time.monotonic() - submitted_at[name]
        value = fut.result(raise_on_failure=False)
        if fut.state.is_completed() and isinstance(value, list):
            for r in value:
                r.duration_s = elapsed
            results[name] = value
        else:
            err = value if isinstance(value, BaseException) else None
            message = str(err) if isinstance(err, CoderzBackupError) else (
                f"{type(err).__name__}: {err}" if err else (fut.state.message or "task failed"))
            ours = err if isinstance(err, CoderzBackupError) else CoderzBackupError()
            attempts = ours.attempts or (cfg.retries + 1)
            # what the last attempt wrote (or skipped) stays; each failed artifact gets its own reason
            written = {r.path: r for r in ours.results}
            reasons = ours.failed
            if isinstance(err, PartialBackupError):
                log.error("%s: partly FAILED after %d attempt(s): %s", name, attempts, message)
            else:
                log.error("%s: FAILED after %d attempt(s): %s", name, attempts, message)
            results[name] = []
            for p in expected_artifacts(name, svc_cfg):
                r = written.get(p) or ArtifactResult(name, svc_cfg.kind, p, status="failed",
                                                     error=reasons.get(p, message))
                r.duration_s, r.attempts = elapsed, attempts
                results[name].append(r)
        for r in results[name]:
            if r.status == "ok":
                log.info("%s: %s ok (%d bytes, %.1fs, %d attempt(s))", name, r.path, r.bytes, r.duration_s, r.attempts)
        _emit("done", name=name, results=results[name], section=sections[name])

    ordered = [r for name in services for r in results.get(name, [])]
    min_bytes = {name: c.min_bytes or c.default_min_bytes for name, c in services.items()}
    ordered, findings = size_check(ordered, str(snap.path), min_bytes, cfg.size_check, previous)
    finished = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    manifest = manifest_schema.build(
        snapshot=snap.name, results=ordered, sections=sections, started=started, finished=finished,
        keep_days=cfg.keep_days, flow_run_id=str(rt_flow_run.id) if rt_flow_run.id else None,
        signing_key=signer.public_key, findings=findings, preflight=preflight,
        compared_with=previous.name if previous else None)
    status, passed, failed, skipped = (manifest[k] for k in ("status", "passed", "failed", "skipped"))
    usable = status in ("ok", "partial")
    log.info("snapshot %s: status %s — %d passed, %d failed, %d skipped, %d bytes",
             snap.name, status, passed, failed, skipped, manifest["total_bytes"])
    final = store.finish(snap, manifest, make_latest=usable, signer=signer)
    if usable:
        log.info("latest -> %s", snap.name)
    else:
        log.error("no usable artifact: %s kept for its log, `latest` not moved", final)
    stages = offsite.stages_for(cfg, store) if usable and copy_offsite else []
    # off-site copies, on the finished snapshot (recorded in post-snapshot.json beside the manifest)
    after = _post_snapshot(cfg, stages, final, manifest) if stages else []
    deleted = rotate(store, keep_days=cfg.keep_days, current=snap.name, current_usable=usable,
                     keep_daily=cfg.keep_daily, keep_weekly=cfg.keep_weekly, keep_monthly=cfg.keep_monthly)
    notes: list[str] = []
    if watch is not None and watch.active:   # metrics, then the success or /fail ping (never raises)
        watch.finished(manifest, [r.as_manifest() for r in after],
                       render_report(manifest, [r.as_manifest() for r in after]) + f"\nSnapshot: {final}\n")
        notes = list(watch.notes)
    if watch is not None and rt_flow_run.id:
        outcome_monitored(str(rt_flow_run.id))
    try:
        publish_report(manifest, str(final), report_key, [r.as_manifest() for r in after], notes)
    except Exception as exc:  # noqa: BLE001 - the UI report is a convenience, the snapshot is done
        log.warning("could not publish the report to Prefect: %s", exc)
    mail = _mail_outcome(cfg, manifest, str(final), after)
    if rt_flow_run.id and cfg.email is not None:
        outcome_mailed(str(rt_flow_run.id))  # the outcome mail went (or was tried): hooks stay quiet
    summary = manifest_schema.summary_of(manifest)
    summary.update(path=str(final), deleted=deleted, mail=mail, size_check=findings, manifest=manifest,
                   offsite=[r.as_manifest() for r in after], monitor=notes)
    return summary, final
