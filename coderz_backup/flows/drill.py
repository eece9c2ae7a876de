"""Flow ``coderz-drill`` (deployment ``coderz-drill/coderz-drill-weekly``): the restore drill of
a snapshot (:mod:`coderz_backup.drill`) with one task ``drill-<service>`` per artifact, the
results as Prefect artifacts (``coderz-drill-report``, ``coderz-drill-results``), the record
``drill.json`` beside the snapshot's manifest and a mail (``✅ Coderz Drill — OK …`` /
``🔴 Coderz Drill FAILED …``). A drill with a mismatch or a failure ends Failed."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from .. import drill as drills
from ..config import load
from ..errors import CoderzBackupError
from ..progress import emit as _emit
from ..reader import SnapshotReader
from ..runlog import run_log
from ..snapshot import SnapshotStore
from ..verify import authenticate_snapshot
from . import api_log_handlers

__all__ = ["coderz_drill", "DrillFailed"]

log = logging.getLogger("coderz_backup.flow")


class DrillFailed(CoderzBackupError):
    """Some artifact did not restore, or restored with other content than recorded."""


@task(name="drill-artifact", cache_policy=NO_CACHE)
def drill_task(name: str, service_config: Any, entry: dict, snapshot_dir: str, manifest: dict, root: str) -> dict:
    reader = SnapshotReader(snapshot_dir, manifest)
    return drills.drill_artifact(name, service_config, entry, reader, Path(root)).as_dict()


@flow(name="coderz-drill", log_prints=False, validate_parameters=True)
def coderz_drill(snapshot: str = "latest", only: list[str] | None = None, config: str | None = None,
                 dest: str | None = None, source: str | None = None, identity: str | None = None) -> dict:
    """Restore a snapshot (default latest) into throwaway instances and compare what comes back
    with the fingerprints its signed manifest recorded.

    Args:
        snapshot: snapshot name YYYY-MM-DD_HH-MM-SS or latest.
        only: drill only these services (config table names).
        config: TOML config file (default: CODERZ_BACKUP_CONFIG, then the built-in defaults).
        dest: snapshot destination (default: the config's).
        source: drill the copy on this off-site target instead (fetched and checked first).
        identity: the age identity for an encrypted off-site copy (a file, env:NAME, prefect-secret:NAME).
    """
    cfg = load(config, dest=dest)
    # one scratch folder for everything (a fetched copy too), removed also when the drill is killed
    with drills.Reaper() as reaper:
        if source:
            from ..offsite_cli import fetch_from

            fetched = reaper.root / "fetched"
            folder, _ = fetch_from(cfg, source, snapshot, fetched, identity=identity)
            snap = SnapshotStore(fetched).get(folder.name)
        else:
            snap = SnapshotStore(cfg.dest).get(snapshot)
        authenticate_snapshot(snap, cfg)   # the same signature check as restore: refused → the run fails
        logfile = (reaper.root if source else snap.path) / "drill.log"
        with run_log(logfile, extra_handlers=api_log_handlers()):
            return _drill(cfg, snap, only, reaper, record=not source, where=source)


def _drill(cfg, snap, only, reaper: drills.Reaper, *, record: bool, where: str | None) -> dict:
    when = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    entries = [a for a in (snap.manifest or {}).get("artifacts", []) if a.get("status") == "ok"
               and (not only or a.get("service") in only)]
    if only:
        unknown = [n for n in only if n not in cfg.services]
        if unknown:
            from ..errors import ConfigError

            raise ConfigError("--only", [f"unknown service {n!r}" for n in unknown])
    log.info("drill of %s%s: %d artifact(s)", snap.name, f" from off-site {where}" if where else "", len(entries))
    results: list[drills.DrillResult] = []
    for entry in entries:
        name = entry["service"]
        if name not in cfg.services:
            res = drills.DrillResult(name, entry.get("kind", "?"), entry["path"], "not-drillable",
                                     f"service {name} is not in the config (its restore settings are unknown)")
        else:
            value = drill_task.with_options(task_run_name=f"drill-{name}")(
                name, cfg.services[name], entry, str(snap.path), snap.manifest, str(reaper.root))
            res = drills.DrillResult(**value)
        log.log(logging.INFO if res.status in ("matched", "not-drillable") else logging.ERROR,
                "drill: %s %s: %s", name, res.status.upper(), res.detail)
        results.append(res)
        _emit("drill-result", **res.as_dict())
    summary = drills.summary(results)
    if record:
        try:
            drills.write_record(snap.path, results, when=when.isoformat().replace("+00:00", "Z"))
        except OSError as exc:
            log.warning("could not write %s beside %s: %s", drills.RECORD, snap.name, exc)
    report = render(snap.name, results, summary, where)
    _publish(snap.name, report, results)
    mail = _mail(cfg, snap.name, results, summary, report)
    out = {"snapshot": snap.name, "source": where, "drilled_at": when.isoformat(), **summary,
           "results": [r.as_dict() for r in results], "report": report, "mail": mail}
    _emit("drill-finished", summary=out)
    if not summary["ok"]:
        bad = [f"{r.service} {r.status}" for r in results if r.status in ("mismatched", "failed")]
        raise DrillFailed(f"drill of {snap.name}: " + (", ".join(bad) if bad else "nothing could be drilled"))
    return out


MARK = {"matched": "✓", "mismatched": "✗", "failed": "✗", "not-drillable": "–"}


def render(name: str, results: list, summary: dict, where: str | None = None) -> str:
    lines = [f"Restore drill of {name}" + (f" (off-site {where})" if where else ""), ""]
    for r in results:
        took = f" [{r.duration_s:.1f}s]" if r.status in ("matched", "mismatched") else ""
        lines.append(f"{MARK[r.status]} {r.service} ({r.artifact}) — {r.status}{took}: {r.detail}")
    lines += ["", f"{summary['matched']} matched, {summary['mismatched']} mismatched, {summary['failed']} failed, "
                  f"{summary['not-drillable']} not drillable here; time to restore {summary['restore_s']:.1f}s"]
    return "\n".join(lines)


def subject(name: str, summary: dict) -> str:
    if summary["ok"]:
        return (f"✅ Coderz Drill — OK: {name} restores in {summary['restore_s']:.1f}s "
                f"({summary['matched']} matched)")
    return (f"🔴 Coderz Drill FAILED: {name} — {summary['mismatched']} mismatched, {summary['failed']} failed, "
            f"{summary['matched']} matched")


def _publish(name: str, report: str, results: list) -> None:
    try:
        from prefect.artifacts import create_markdown_artifact, create_table_artifact

        create_markdown_artifact(key="coderz-drill-report", markdown=f"```\n{report}\n```\n",
                                 description=f"Restore drill of snapshot {name}")
        create_table_artifact(key="coderz-drill-results", description=f"Restore drill of snapshot {name}",
                              table=[{"service": r.service, "artifact": r.artifact, "status": r.status,
                                      "restore_s": round(r.duration_s, 3), "detail": r.detail} for r in results])
    except Exception as exc:  # noqa: BLE001 - the UI artifacts are a convenience
        log.warning("could not publish the drill report to Prefect: %s", exc)


def _mail(cfg, name: str, results: list, summary: dict, report: str) -> str:
    if cfg.email is None:
        return "not configured"
    import html

    from .backup import send_mail

    subj = subject(name, summary)
    body = f"<h2>{html.escape(subj)}</h2><pre>{html.escape(report)}</pre>"
    fut = send_mail.with_options(task_run_name="send-mail", retries=cfg.email.retries,
                                 retry_delay_seconds=cfg.email.retry_delay_s or 0).submit(
        cfg.email, subj, body, f"{subj}\n\n{report}\n")
    value = fut.result(raise_on_failure=False)
    return f"sent: {subj}" if fut.state.is_completed() else f"failed: {value}"
