"""Never silent: heartbeat pings (healthchecks.io convention) and a node_exporter textfile.

Plain Python (no Prefect): the backup flow calls :class:`RunMonitor` at the start and at the
end of a run, the crash hook calls :meth:`RunMonitor.failed` for a run that ended early.
Nothing here ever raises into a backup: every problem becomes a warning line (logged, and
shown in the run's report), the backup's outcome is unchanged.

Pings (``[monitor] ping_url``)::

    <url>/start?rid=<flow run id>     when the run starts
    <url>?rid=<flow run id>           when it ended ok (every artifact and every off-site copy)
    <url>/fail?rid=<flow run id>      partial (some artifacts or an off-site copy failed), failed, crashed

The POST body is the run's report, truncated to :data:`BODY_LIMIT` bytes (healthchecks'
``PING_BODY_LIMIT`` default; hc-ping.com keeps 100 kB). The URL holds the check's secret
uuid (or ping key): it is shown only as ``scheme://host/…``.

Metrics (``[monitor] textfile``): after each run the file is replaced atomically (temp file in
the same folder, not ending in ``.prom``, then rename; mode 0644) with the text exposition
format node_exporter's textfile collector reads (no client timestamps).

Push (``[monitor] pushgateway``): the same text is PUT to a Prometheus Pushgateway at
``<url>/metrics/job/<pushgateway_job>/instance/<pushgateway_instance or host name>``; a PUT
replaces the whole group, so a family the run no longer has (an off-site target removed) goes
too. Timeout and retries are the ping's; a failed push is a warning like a failed ping.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import quote, urlsplit

__all__ = ["BODY_LIMIT", "STATUS_CODES", "RunMonitor", "outcome_of", "push_url", "pushgateway_problem",
           "redact_url", "render_metrics", "read_textfile", "url_problem", "write_textfile"]

log = logging.getLogger("coderz_backup.monitor")

#: bytes of the ping body healthchecks keeps (self-hosted default PING_BODY_LIMIT)
BODY_LIMIT = 10_000
#: ``coderz_backup_last_status``: the CLI's exit codes
STATUS_CODES = {"ok": 0, "partial": 1, "failed": 2}
PREFIX = "coderz_backup_"
#: the exposition format's content type (what node_exporter serves; the Pushgateway accepts it)
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


# -- URLs -----------------------------------------------------------------------------------
def _http_problem(raw: str, query_why: str):
    try:
        parts = urlsplit(raw.strip())
        parts.port   # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "not a valid URL", None
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL", parts
    if not parts.hostname:
        return "has no host", parts
    if parts.query or parts.fragment:
        return f"must not have a ?query or #fragment ({query_why})", parts
    if raw != raw.strip() or any(c.isspace() for c in raw):
        return "must not contain spaces", parts
    return None, parts


def url_problem(raw: str) -> str | None:
    """Why ``raw`` is not a usable ping URL (never repeating it), or None."""
    return _http_problem(raw, "the run id is added as ?rid=…")[0]


def pushgateway_problem(raw: str) -> str | None:
    """Why ``raw`` is not a usable Pushgateway base URL, or None."""
    problem, parts = _http_problem(raw, "the group is added as /metrics/job/…/instance/…")
    if problem:
        return problem
    if parts.username is not None or parts.password is not None:
        return "must not hold a user or password (they would show in logs)"
    if "/metrics/" in parts.path + "/":
        return "is the Pushgateway's base URL, e.g. http://127.0.0.1:9091 (without /metrics/job/…)"
    return None


def push_url(base: str, job: str, instance: str) -> str:
    """``<base>/metrics/job/<job>/instance/<instance>`` (the Pushgateway's grouping key path)."""
    return f"{base.rstrip('/')}/metrics/job/{quote(job, safe='')}/instance/{quote(instance, safe='')}"


def redact_url(url: str) -> str:
    """``https://hc-ping.com/…``: the path (the check's secret uuid / ping key) hidden."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}/…"
    except ValueError:
        return "<ping url>"


def outcome_of(manifest_status: str | None, offsite: Sequence[dict] = ()) -> str:
    """ok / partial / failed of a run, as the CLI's exit code counts it: an ok local snapshot
    whose off-site copy failed is partial."""
    if manifest_status == "ok":
        return "partial" if any(r.get("status") == "failed" for r in offsite) else "ok"
    return "partial" if manifest_status == "partial" else "failed"


def _truncate(text: str, limit: int = BODY_LIMIT) -> bytes:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", "ignore").encode("utf-8")


# -- exposition format -----------------------------------------------------------------------
def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def _num(v: float) -> str:
    f = float(v)
    return str(int(f)) if f.is_integer() and abs(f) < 2**53 else repr(f)


@dataclass
class _Family:
    name: str
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"# HELP {PREFIX}{self.name} {self.help}", f"# TYPE {PREFIX}{self.name} gauge"]
        for labels, value in self.samples:
            lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            out.append(f"{PREFIX}{self.name}{'{' + lab + '}' if lab else ''} {_num(value)}")
        return out


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)\s*$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def read_textfile(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of a previous textfile (ours), by (name, labels); {} when absent or unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    out = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or line.startswith("#"):
            continue
        labels = tuple(sorted((k, _unescape(v)) for k, v in _LABEL.findall(m.group(2) or "")))
        try:
            out[(m.group(1), labels)] = float(m.group(3))
        except ValueError:
            continue
    return out


def render_metrics(*, run_ts: float, status: str, last_success_ts: float | None, run_duration_s: float,
                   snapshots_kept: int | None, artifacts: Iterable[dict] = (), offsite: Sequence[dict] = (),
                   offsite_last_success: dict[str, float] | None = None) -> str:
    """The textfile's text. ``artifacts`` are manifest entries, ``offsite`` post-snapshot results."""
    fams = {
        "last_run_timestamp_seconds": _Family("last_run_timestamp_seconds",
                                              "Unix time the last backup run finished (its snapshot, or its failure)."),
        "last_success_timestamp_seconds": _Family("last_success_timestamp_seconds",
                                                  "Unix time of the last run that ended ok (every artifact and off-site "
                                                  "copy); 0 = none known."),
        "last_status": _Family("last_status", "Outcome of the last run: 0 ok, 1 partial, 2 failed (the CLI's exit code)."),
        "run_duration_seconds": _Family("run_duration_seconds", "Wall time of the last run."),
    }
    fams["last_run_timestamp_seconds"].samples.append(({}, run_ts))
    fams["last_success_timestamp_seconds"].samples.append(({}, last_success_ts or 0))
    fams["last_status"].samples.append(({}, STATUS_CODES.get(status, 2)))
    fams["run_duration_seconds"].samples.append(({}, round(run_duration_s, 3)))
    if snapshots_kept is not None:
        fams["snapshots_kept"] = _Family("snapshots_kept", "Finished snapshots in the destination after rotation.")
        fams["snapshots_kept"].samples.append(({}, snapshots_kept))
    arts = list(artifacts)
    if arts:
        size = fams["artifact_bytes"] = _Family("artifact_bytes", "Size of each artifact of the last run that has it.")
        ok = fams["artifact_ok"] = _Family("artifact_ok", "1 when the artifact passed in the last run, 0 when not.")
        took = fams["artifact_duration_seconds"] = _Family("artifact_duration_seconds",
                                                            "Time the last run spent backing up each service.")
        seen: dict[str, float] = {}
        for a in arts:
            labels = {"service": a["service"], "file": a["path"]}
            ok.samples.append((labels, 1 if a["status"] == "ok" else 0))
            if a["status"] == "ok":
                size.samples.append((labels, int(a.get("bytes") or 0)))
            if a.get("duration_s") is not None and a["status"] != "skipped":
                seen[a["service"]] = max(seen.get(a["service"], 0.0), float(a["duration_s"]))
        took.samples.extend(({"service": s}, round(d, 3)) for s, d in seen.items())
    kept = dict(offsite_last_success or {})
    if offsite or kept:
        st = fams["offsite_status"] = _Family("offsite_status",
                                              "Off-site copy of the last run per target: 0 ok, 2 failed.")
        ob = fams["offsite_bytes"] = _Family("offsite_bytes", "Bytes the last run copied to each off-site target.")
        od = fams["offsite_duration_seconds"] = _Family("offsite_duration_seconds",
                                                        "Time the last run's off-site copy took per target.")
        last = fams["offsite_last_success_timestamp_seconds"] = _Family(
            "offsite_last_success_timestamp_seconds", "Unix time of the last ok copy to each off-site target.")
        for r in offsite:
            target = r["stage"].removeprefix("offsite-")
            if r.get("status") == "skipped":
                continue
            st.samples.append(({"target": target}, 0 if r["status"] == "ok" else 2))
            ob.samples.append(({"target": target}, int((r.get("details") or {}).get("bytes") or 0)))
            od.samples.append(({"target": target}, round(float(r.get("duration_s") or 0), 3)))
            if r["status"] == "ok":
                kept[target] = run_ts
        last.samples.extend(({"target": t}, v) for t, v in sorted(kept.items()))
    lines: list[str] = []
    for fam in fams.values():
        if fam.samples:
            lines += fam.lines()
    return "\n".join(lines) + "\n"


def write_textfile(path: Path, text: str) -> None:
    """Replace ``path`` atomically (mode 0644): a scrape never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")   # not *.prom: node_exporter skips it
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)   # whatever the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()
    except ValueError:
        return None


# -- the run's monitor -------------------------------------------------------------------------
class RunMonitor:
    """Pings and metrics of one backup run. Every method logs and returns; none raises."""

    def __init__(self, monitor_cfg: Any, run_id: str | None, dest: Path | None = None,
                 started: float | None = None):
        self.cfg = monitor_cfg
        self.run_id = run_id
        self.dest = Path(dest) if dest else None
        self.started = time.monotonic() if started is None else started
        self.notes: list[str] = []     # what the report shows (warnings, and where metrics went)
        self.done = False
        self._url: str | None = None
        self._label = ""
        self._url_error: str | None = None
        raw = getattr(monitor_cfg, "ping_url", None)
        if raw is not None:
            from .errors import SecretError
            from .runlog import redact
            from .schema import resolve_secret

            try:
                url = resolve_secret(raw, what="monitor.ping_url") or ""
            except SecretError as exc:
                self._url_error = str(exc)
            else:
                problem = url_problem(url)
                if problem:
                    self._url_error = f"monitor.ping_url {problem}"
                else:
                    self._url, self._label = url.rstrip("/"), redact_url(url)
                    redact(self._url)
                    path = urlsplit(self._url).path.strip("/")
                    if len(path) >= 16:   # short paths would mask ordinary words in every log line
                        redact(path)
                    for part in path.split("/"):   # the uuid / ping key never reaches a log line
                        if len(part) >= 16 and any(c.isdigit() for c in part):
                            redact(part)

    @property
    def active(self) -> bool:
        return (self._url is not None or self._url_error is not None or self.textfile is not None
                or self.pushgateway is not None)

    @property
    def textfile(self) -> Path | None:
        return getattr(self.cfg, "textfile", None)

    @property
    def pushgateway(self) -> str | None:
        return getattr(self.cfg, "pushgateway", None)

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        self.notes.append(f"⚠ {message}")

    # -- pings
    def _scrub(self, text: str) -> str:
        if self._url:
            text = text.replace(self._url, self._label)
            path = urlsplit(self._url).path
            if path.strip("/"):
                text = text.replace(path.strip("/"), "…")
        return text

    def _send(self, method: str, url: str, content: bytes, content_type: str,
              params: dict | None = None) -> str | None:
        """One request with the ping's timeout and retries; None when it went, else why not."""
        import httpx

        timeout = float(getattr(self.cfg, "ping_timeout_s", 10.0))
        attempts = 1 + int(getattr(self.cfg, "ping_retries", 1))
        reason = ""
        for attempt in range(1, attempts + 1):
            try:
                with httpx.Client(timeout=timeout, follow_redirects=True, trust_env=False) as client:
                    resp = client.request(method, url, params=params or {}, content=content,
                                          headers={"Content-Type": content_type})
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__}: {self._scrub(str(exc)) or 'no answer'}"
            else:
                if 200 <= resp.status_code < 300:
                    return None
                said = " ".join(resp.text.split())[:200] if method == "PUT" else ""
                reason = f"HTTP {resp.status_code}" + (f": {self._scrub(said)}" if said else "")
                if resp.status_code < 500:
                    break   # 4xx: a retry gets the same answer
            if attempt < attempts:
                time.sleep(min(2.0, 0.5 * attempt))
        return reason

    def ping(self, kind: str, body: str = "") -> bool:
        """POST ``<url>[/start|/fail]?rid=<run id>``; a failure is a warning. True when it went."""
        if self._url_error:
            self._warn(f"heartbeat ping {kind} not sent: {self._url_error} — the backup itself is unaffected")
            return False
        if not self._url:
            return False
        suffix = {"start": "/start", "success": "", "fail": "/fail"}[kind]
        params = {"rid": self.run_id} if self.run_id else {}
        reason = self._send("POST", self._url + suffix, _truncate(body), "text/plain; charset=utf-8", params)
        if reason is None:
            log.info("heartbeat ping %s sent to %s", kind, self._label)
            return True
        self._warn(f"heartbeat ping {kind} to {self._label} failed ({reason}) — the backup itself is unaffected")
        return False

    def push(self, text: str) -> bool:
        """PUT the metrics to ``[monitor] pushgateway``; a failure is a warning. True when it went."""
        base = self.pushgateway
        if base is None:
            return False
        job = getattr(self.cfg, "pushgateway_job", None) or "coderz_backup"
        instance = getattr(self.cfg, "pushgateway_instance", None) or socket.gethostname() or "localhost"
        group = f"job {job}, instance {instance}"
        reason = self._send("PUT", push_url(base, job, instance), text.encode("utf-8"), TEXT_FORMAT)
        if reason is None:
            log.info("metrics pushed to %s (%s)", base, group)
            self.notes.append(f"metrics pushed to {base} ({group})")
            return True
        self._warn(f"metrics push to {base} ({group}) failed ({reason}) — the backup itself is unaffected")
        return False

    def start(self) -> None:
        self.ping("start", f"coderz-backup run {self.run_id or ''} started")

    # -- metrics
    def _previous(self) -> tuple[float | None, dict[str, float]]:
        prev = read_textfile(self.textfile) if self.textfile else {}
        last = prev.get((PREFIX + "last_success_timestamp_seconds", ()))
        per_target = {dict(labels).get("target", ""): v for (name, labels), v in prev.items()
                      if name == PREFIX + "offsite_last_success_timestamp_seconds"}
        if not last and self.dest is not None:   # no file yet: the newest ok snapshot kept
            from .snapshot import SnapshotStore

            try:
                for info in SnapshotStore(self.dest).list():
                    if info.status == "ok":
                        last = _epoch((info.manifest or {}).get("finished_at"))
                        break
            except OSError:
                pass
        return (last or None), per_target

    def _kept(self) -> int | None:
        if self.dest is None:
            return None
        from .snapshot import SnapshotStore

        try:
            return len(SnapshotStore(self.dest).list())
        except OSError:
            return None

    def _write_metrics(self, *, run_ts: float, status: str, artifacts: Iterable[dict] = (),
                       offsite: Sequence[dict] = ()) -> None:
        if self.textfile is None and self.pushgateway is None:
            return
        try:
            last, per_target = self._previous()
            if status == "ok":
                last = run_ts
            text = render_metrics(run_ts=run_ts, status=status, last_success_ts=last,
                                  run_duration_s=time.monotonic() - self.started, snapshots_kept=self._kept(),
                                  artifacts=artifacts, offsite=offsite, offsite_last_success=per_target)
        except Exception as exc:  # noqa: BLE001 - metrics never fail a backup
            self._warn(f"metrics not produced: {type(exc).__name__}: {exc} — the backup itself is unaffected")
            return
        if self.textfile is not None:
            try:
                write_textfile(self.textfile, text)
            except Exception as exc:  # noqa: BLE001 - metrics never fail a backup
                self._warn(f"metrics not written to {self.textfile}: {type(exc).__name__}: {exc} — "
                           "the backup itself is unaffected")
            else:
                log.info("metrics written to %s (status %s)", self.textfile, status)
                self.notes.append(f"metrics written to {self.textfile}")
        self.push(text)

    # -- the run's end
    def finished(self, manifest: dict, offsite: Sequence[dict], report: str) -> str:
        """The run made a snapshot: metrics, then the success or /fail ping. Returns the outcome."""
        status = outcome_of(manifest.get("status"), offsite)
        run_ts = _epoch(manifest.get("finished_at")) or time.time()
        self._write_metrics(run_ts=run_ts, status=status, artifacts=manifest.get("artifacts") or [], offsite=offsite)
        self.ping("success" if status == "ok" else "fail", report)
        self.done = True
        return status

    def failed(self, reason: str) -> None:
        """The run ended without a snapshot (could not start, crashed): metrics 2, /fail ping."""
        self._write_metrics(run_ts=time.time(), status="failed")
        self.ping("fail", f"coderz-backup run {self.run_id or ''} FAILED: {reason}")
        self.done = True
