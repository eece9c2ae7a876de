"""Alert mails: subjects and bodies (plain Python; sending lives in the flow layer).

Subjects are the product document's, date and time of the run's start in UTC::

    ✅ Coderz Backup — OK (3.1G) on 2026-03-06 03:00
    ⚠️ Coderz Backup — 1 failure(s) on 2026-03-06 03:00
    🔴 Coderz Backup FAILED on 2026-03-06 03:00
    🔴 Coderz Backup MISSED — no successful backup since 2026-03-05 03:00
"""

from __future__ import annotations

import datetime as dt
import html

from .report import human_size, render_report

__all__ = ["subject", "when_text", "result_bodies", "crash_bodies", "restore_bodies", "missed_bodies", "RERUN_HELP"]

RERUN_HELP = [
    "Re-run from Prefect: prefect deployment run coderz-backup/coderz-backup-daily",
    "Re-run by hand:      bash /opt/coderz/backup/backup.sh   (or: coderz-backup backup)",
]


def when_text(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def subject(status: str, when: dt.datetime, *, total_bytes: int = 0, failed: int = 0) -> str:
    """The mail subject for a run outcome (``ok`` | ``partial`` | anything else = failed)."""
    at = when_text(when)
    if status == "ok":
        return f"✅ Coderz Backup — OK ({human_size(total_bytes)}) on {at}"
    if status == "partial":
        return f"⚠️ Coderz Backup — {failed} failure(s) on {at}"
    return f"🔴 Coderz Backup FAILED on {at}"


def _started(manifest: dict) -> dt.datetime:
    return dt.datetime.strptime(manifest["started_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)


def result_bodies(manifest: dict, snapshot_path: str, offsite: list[dict] = ()) -> tuple[str, str, str]:
    """(subject, html, text) for a finished snapshot (and its off-site copies: a failed one is ⚠️)."""
    lost = [r for r in offsite if r["status"] == "failed"]
    status = "partial" if manifest["status"] == "ok" and lost else manifest["status"]
    subj = subject(status, _started(manifest), total_bytes=manifest["total_bytes"],
                   failed=manifest["failed"] + len(lost))
    findings = (manifest.get("size_check") or {}).get("findings", [])
    rows = [(a["path"], a["status"], human_size(a["bytes"]) if a["status"] == "ok" else "—",
             f"{a.get('duration_s', 0):.1f}s", str(a.get("attempts", "")), a.get("error") or "")
            for a in manifest["artifacts"]]
    head = ("artifact", "status", "size", "duration", "attempts", "error")
    needs_help = status != "ok"
    copies = [f"{r['stage']}: {r['status']} — {r['detail']}" for r in offsite]

    text = [subj, "", f"Snapshot: {snapshot_path} (status {manifest['status']})",
            f"Passed {manifest['passed']} · Failed {manifest['failed']} · Skipped {manifest['skipped']} · "
            f"Total {human_size(manifest['total_bytes'])}", ""]
    text += ["  ".join(h.ljust(w) for h, w in zip(head, (28, 8, 8, 9, 8)))]
    text += ["  ".join(str(c).ljust(w) for c, w in zip(r, (28, 8, 8, 9, 8))).rstrip() for r in rows]
    if findings:
        text += ["", "Size check:"] + [f"  [{f['level']}] {f['message']}" for f in findings]
    if copies:
        text += ["", "Off-site:"] + [f"  {c}" for c in copies]
    if needs_help:
        text += ["", "What to do:", f"  Full log: {snapshot_path}/backup.log", *(f"  {h}" for h in RERUN_HELP)]
    text += ["", render_report(manifest, offsite)]

    e = html.escape
    colour = {"ok": "#1a7f37", "failed": "#cf222e", "skipped": "#6e7781"}
    html_rows = "".join(
        "<tr>" + "".join(
            f'<td style="padding:2px 8px;{"color:" + colour.get(c, "#000") + ";" if i == 1 else ""}">{e(c)}</td>'
            for i, c in enumerate(r)) + "</tr>" for r in rows)
    parts = [f"<h2>{e(subj)}</h2>",
             f"<p>Snapshot <code>{e(snapshot_path)}</code> — status <b>{e(manifest['status'])}</b>: "
             f"{manifest['passed']} passed, {manifest['failed']} failed, {manifest['skipped']} skipped, "
             f"{e(human_size(manifest['total_bytes']))} in total.</p>",
             '<table border="1" cellspacing="0"><tr>' + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
             + html_rows + "</table>"]
    if findings:
        parts.append("<h3>Size check</h3><ul>" + "".join(
            f"<li><b>{e(f['level'])}</b>: {e(f['message'])}</li>" for f in findings) + "</ul>")
    if copies:
        parts.append("<h3>Off-site</h3><ul>" + "".join(f"<li>{e(c)}</li>" for c in copies) + "</ul>")
    if needs_help:
        parts.append("<h3>What to do</h3><ul>" + f"<li>Full log: <code>{e(snapshot_path)}/backup.log</code></li>"
                     + "".join(f"<li><code>{e(h)}</code></li>" for h in RERUN_HELP) + "</ul>")
    return subj, "\n".join(parts), "\n".join(text) + "\n"


def crash_bodies(when: dt.datetime, reason: str, *, flow_run: str | None = None,
                 dest: str | None = None) -> tuple[str, str, str]:
    """(subject, html, text) when the run failed or crashed before a snapshot was finished."""
    subj = subject("failed", when)
    lines = [subj, "", "The backup run ended before a snapshot could be finished; no new backup exists.",
             f"Reason: {reason}"]
    if flow_run:
        lines.append(f"Flow run: {flow_run} (logs in the Prefect UI)")
    if dest:
        lines.append(f"Destination: {dest} (a killed run's .in-progress-* folder is cleaned up by the next run)")
    lines += ["", "What to do:", *(f"  {h}" for h in RERUN_HELP)]
    e = html.escape
    body = (f"<h2>{e(subj)}</h2><p>The backup run ended before a snapshot could be finished; "
            f"no new backup exists.</p><p><b>Reason:</b> {e(reason)}</p>"
            + (f"<p>Flow run: <code>{e(flow_run)}</code></p>" if flow_run else "")
            + (f"<p>Destination: <code>{e(dest)}</code></p>" if dest else "")
            + "<h3>What to do</h3><ul>" + "".join(f"<li><code>{e(h)}</code></li>" for h in RERUN_HELP) + "</ul>")
    return subj, body, "\n".join(lines) + "\n"


def missed_bodies(since: dt.datetime | None, snapshot: str | None, window_h: float, dest: str,
                  last_run: str | None = None) -> tuple[str, str, str]:
    """(subject, html, text) when no backup completed within the window (the missed-run automation).

    ``since``: when the newest authentic ``ok`` snapshot in ``dest`` started (None: there is none).
    ``last_run``: a line about the deployment's last run, when one is known.
    """
    subj = ("🔴 Coderz Backup MISSED — no successful backup since " + when_text(since) + " UTC" if since
            else "🔴 Coderz Backup MISSED — no successful backup at all")
    hours = f"{window_h:g} h"
    lines = [subj, "", f"No run of coderz-backup/coderz-backup-daily completed within {hours}: the scheduled "
             "backup did not run (worker or server down, deployment paused) or did not finish.",
             f"Newest ok snapshot: {snapshot + ' (' + when_text(since) + ' UTC)' if snapshot and since else 'none'} "
             f"in {dest}"]
    if last_run:
        lines.append(f"Last run of the deployment: {last_run}")
    checks = ["Is the worker running?  docker ps --filter name=coderz-prefect-worker",
              "Is the schedule active?  prefect deployment inspect coderz-backup/coderz-backup-daily"]
    lines += ["", "What to do:", *(f"  {c}" for c in checks), *(f"  {h}" for h in RERUN_HELP)]
    e = html.escape
    body = (f"<h2>{e(subj)}</h2>" + "".join(f"<p>{e(x)}</p>" for x in lines[2:lines.index("", 2)])
            + "<h3>What to do</h3><ul>" + "".join(f"<li><code>{e(h)}</code></li>" for h in [*checks, *RERUN_HELP])
            + "</ul>")
    return subj, body, "\n".join(lines) + "\n"


def restore_bodies(snapshot: str, results: list[dict], report_md: str, when: dt.datetime) -> tuple[str, str, str]:
    """(subject, html, text) for a finished restore: ✅ all restored, ⚠️ some failed."""
    failed = sum(r["status"] != "ok" for r in results)
    at = when_text(when)
    subj = (f"✅ Coderz Restore — OK from {snapshot} on {at}" if not failed
            else f"⚠️ Coderz Restore — {failed} failure(s) from {snapshot} on {at}")
    text = f"{subj}\n\n{report_md}\n"
    e = html.escape
    rows = "".join(f"<tr><td>{e(r['service'])}</td><td>{e(r['status'])}</td><td>{e(str(r['detail']))}</td>"
                   f"<td>{e(str(r['health'] or '—'))}</td></tr>" for r in results)
    body = (f"<h2>{e(subj)}</h2><table border=\"1\" cellspacing=\"0\"><tr><th>service</th><th>result</th>"
            f"<th>detail</th><th>health</th></tr>{rows}</table><pre>{e(report_md)}</pre>")
    return subj, body, text
