"""The manifest of a snapshot: its one schema, built here and nowhere else.

``manifest.json`` (signed by ``manifest.json.sig``, see :mod:`coderz_backup.signing`)::

    snapshot, status (ok | partial | failed), started_at, finished_at (UTC, ISO 8601 "Z"),
    passed, failed, skipped, total_bytes, tool_version, host, keep_days, flow_run_id,
    signing_key, size_check {findings, free_bytes_before, estimate_bytes, compared_with},
    artifacts: [ {service, kind, path, status, bytes, sha256, duration_s, attempts, error,
                  files: [{path, bytes, sha256}], summary, details, fingerprint, section, report_lines} ]

An artifact entry is :meth:`ArtifactResult.as_manifest` plus its report section and lines;
a multi-file artifact (a folder) lists its files, each written by the writer (its
:class:`~coderz_backup.writer.FileRecord`). The reader (:mod:`coderz_backup.reader`) reads
artifacts back against these records. ``fingerprint`` (or null) is what the artifact holds in
numbers, for restore drills (:mod:`coderz_backup.fingerprint`; docs/services.md, "Fingerprints").
"""

from __future__ import annotations

import datetime as dt
import socket
from typing import Any, Sequence

from . import __version__

__all__ = ["SUMMARY_KEYS", "build", "counts", "status_of", "summary_of"]

#: the manifest keys a run's summary (flow result, CLI output) repeats
SUMMARY_KEYS = ("snapshot", "status", "started_at", "finished_at", "passed", "failed", "skipped", "total_bytes")


def _ts(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def counts(results: Sequence[Any]) -> tuple[int, int, int]:
    """(passed, failed, skipped) of artifact results."""
    return (sum(r.status == "ok" for r in results), sum(r.status == "failed" for r in results),
            sum(r.status == "skipped" for r in results))


def status_of(passed: int, failed: int) -> str:
    """ok when everything passed, partial when something did, else failed."""
    return "ok" if passed and not failed else ("partial" if passed else "failed")


def build(*, snapshot: str, results: Sequence[Any], sections: dict[str, str], started: dt.datetime,
          finished: dt.datetime, keep_days: int, flow_run_id: str | None, signing_key: str,
          findings: list[dict], preflight: dict, compared_with: str | None) -> dict:
    """The manifest of a finished run, artifacts in report order."""
    passed, failed, skipped = counts(results)
    return {
        "snapshot": snapshot,
        "status": status_of(passed, failed),
        "started_at": _ts(started),
        "finished_at": _ts(finished),
        "passed": passed,
        "failed": failed,
        "skipped": skipped,
        "total_bytes": sum(r.bytes for r in results if r.status == "ok"),
        "tool_version": __version__,
        "host": socket.gethostname(),
        "keep_days": keep_days,
        "flow_run_id": flow_run_id,
        "signing_key": signing_key,   # manifest.json.sig beside this file is its signature
        "size_check": {"findings": findings, "free_bytes_before": preflight["free_bytes"],
                       "estimate_bytes": preflight["estimate_bytes"], "compared_with": compared_with},
        "artifacts": [{**r.as_manifest(), "section": sections[r.service], "report_lines": r.lines}
                      for r in results],
    }


def summary_of(manifest: dict) -> dict:
    """The run summary's part that repeats the manifest."""
    return {k: manifest[k] for k in SUMMARY_KEYS}
