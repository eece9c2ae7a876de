"""The manifest is built in one place, with one schema."""

from __future__ import annotations

import datetime as dt

from coderz_backup import manifest
from coderz_backup.services.base import ArtifactResult

T0 = dt.datetime(2026, 12, 1, 3, 0, 0, tzinfo=dt.timezone.utc)


def _build(results):
    return manifest.build(snapshot="2026-12-01_03-00-00", results=results, sections={"db": "PostgreSQL — db"},
                          started=T0, finished=T0 + dt.timedelta(seconds=42), keep_days=7, flow_run_id=None,
                          signing_key="ed25519:abc", findings=[], preflight={"free_bytes": 10, "estimate_bytes": 5},
                          compared_with=None)


def test_status_counts_and_total_follow_the_artifacts():
    ok = ArtifactResult("db", "postgres", "db.sql.gz", bytes=100, sha256="ab")
    bad = ArtifactResult("db", "postgres", "db2.sql.gz", status="failed", bytes=0, error="pg_dump exited 1")
    skipped = ArtifactResult("db", "postgres", "db3.sql.gz", status="skipped", error="disabled")
    assert _build([ok])["status"] == "ok"
    m = _build([ok, bad, skipped])
    assert (m["status"], m["passed"], m["failed"], m["skipped"], m["total_bytes"]) == ("partial", 1, 1, 1, 100)
    assert _build([bad])["status"] == "failed"
    assert _build([])["status"] == "failed"   # nothing backed up is never "ok"


def test_times_are_utc_with_z_and_every_artifact_carries_its_section():
    m = _build([ArtifactResult("db", "postgres", "db.sql.gz", bytes=1, sha256="ab")])
    assert (m["started_at"], m["finished_at"]) == ("2026-12-01T03:00:00Z", "2026-12-01T03:00:42Z")
    (entry,) = m["artifacts"]
    assert entry["section"] == "PostgreSQL — db" and entry["path"] == "db.sql.gz" and entry["sha256"] == "ab"
    assert set(manifest.summary_of(m)) == set(manifest.SUMMARY_KEYS)
