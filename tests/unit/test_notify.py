"""Alert mail subjects and bodies: what the operator reads at 03:00, in UTC."""

from __future__ import annotations

import datetime as dt

import pytest

from coderz_backup.notify import RERUN_HELP, crash_bodies, restore_bodies, result_bodies, subject

UTC = dt.timezone.utc
AT = dt.datetime(2026, 3, 6, 3, 0, tzinfo=UTC)


def test_subjects_are_the_product_documents():
    assert subject("ok", AT, total_bytes=int(3.1 * 1024 ** 3)) == "✅ Coderz Backup — OK (3.1G) on 2026-03-06 03:00"
    assert subject("partial", AT, failed=2) == "⚠️ Coderz Backup — 2 failure(s) on 2026-03-06 03:00"
    assert subject("failed", AT) == "🔴 Coderz Backup FAILED on 2026-03-06 03:00"


def test_any_other_status_is_a_failure_subject():
    assert subject("unknown", AT).startswith("🔴 Coderz Backup FAILED")


def test_subject_time_is_utc_whatever_the_zone_of_the_start_time():
    berlin = dt.datetime(2026, 3, 6, 4, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))

    assert subject("failed", berlin).endswith("on 2026-03-06 03:00")


def manifest(status, artifacts, findings=()):
    return {"snapshot": "2026-03-06_03-00-00", "started_at": "2026-03-06T03:00:00Z", "status": status,
            "passed": sum(a["status"] == "ok" for a in artifacts),
            "failed": sum(a["status"] == "failed" for a in artifacts),
            "skipped": sum(a["status"] == "skipped" for a in artifacts),
            "total_bytes": sum(a["bytes"] for a in artifacts if a["status"] == "ok"),
            "artifacts": artifacts, "size_check": {"findings": list(findings)}}


OK_DUMP = {"path": "postgres-prefect.sql.gz", "service": "postgres-prefect", "status": "ok", "bytes": 105_000,
           "duration_s": 2.3, "attempts": 1}
BROKEN = {"path": "redis.rdb", "service": "redis", "status": "failed", "bytes": 0, "duration_s": 30.0,
          "attempts": 3, "error": "<redis> refused: NOAUTH & co"}


def test_ok_mail_lists_each_artifact_and_has_no_instructions():
    subj, html, text = result_bodies(manifest("ok", [OK_DUMP]), "/srv/snap/2026-03-06_03-00-00")

    assert subj.startswith("✅ Coderz Backup — OK (103K)")
    row = next(ln for ln in text.splitlines() if ln.startswith("postgres-prefect.sql.gz"))
    assert row.split() == ["postgres-prefect.sql.gz", "ok", "103K", "2.3s", "1"]
    assert "What to do" not in text and "What to do" not in html
    assert "Backup Complete" in text   # the boxed report follows


def test_partial_mail_says_what_failed_and_what_to_do():
    subj, html, text = result_bodies(manifest("partial", [OK_DUMP, BROKEN]), "/srv/snap/2026-03-06_03-00-00")

    assert subj == "⚠️ Coderz Backup — 1 failure(s) on 2026-03-06 03:00"
    assert "Passed 1 · Failed 1 · Skipped 0" in text
    assert "Full log: /srv/snap/2026-03-06_03-00-00/backup.log" in text
    for line in RERUN_HELP:
        assert line in text
    assert "What to do" in html


def test_the_html_body_escapes_error_text():
    _, html, text = result_bodies(manifest("partial", [OK_DUMP, BROKEN]), "/srv/x")

    assert "&lt;redis&gt; refused: NOAUTH &amp; co" in html
    assert "<redis>" not in html
    assert "<redis> refused: NOAUTH & co" in text


def test_size_findings_appear_in_both_bodies():
    finding = {"level": "warning", "artifact": "postgres-prefect.sql.gz", "message": "92% smaller than before"}

    _, html, text = result_bodies(manifest("ok", [OK_DUMP], [finding]), "/srv/x")

    assert "[warning] 92% smaller than before" in text
    assert "<b>warning</b>: 92% smaller than before" in html


def test_crash_mail_gives_the_reason_the_run_and_the_destination():
    subj, html, text = crash_bodies(AT, "destination <full>", flow_run="brave-otter", dest="/srv/backups")

    assert subj == "🔴 Coderz Backup FAILED on 2026-03-06 03:00"
    assert "no new backup exists" in text
    assert "Reason: destination <full>" in text
    assert "Flow run: brave-otter" in text and "Destination: /srv/backups" in text
    assert "destination &lt;full&gt;" in html


def test_crash_mail_without_run_or_destination_leaves_those_lines_out():
    _, html, text = crash_bodies(AT, "Prefect API unreachable")

    assert "Flow run:" not in text and "Destination:" not in text
    assert "Flow run" not in html


@pytest.mark.parametrize("statuses, expected", [
    (["ok", "ok"], "✅ Coderz Restore — OK from 2026-03-06_03-00-00 on 2026-03-06 03:00"),
    (["ok", "failed"], "⚠️ Coderz Restore — 1 failure(s) from 2026-03-06_03-00-00 on 2026-03-06 03:00"),
])
def test_restore_mail_subject_counts_the_services_that_failed(statuses, expected):
    results = [{"service": f"s{i}", "status": s, "detail": "x", "health": None} for i, s in enumerate(statuses)]

    subj, html, text = restore_bodies("2026-03-06_03-00-00", results, "| report |", AT)

    assert subj == expected
    assert text.startswith(expected) and "| report |" in text
    assert html.count("<tr><td>") == len(statuses)
    assert "<td>—</td>" in html   # no health check result
