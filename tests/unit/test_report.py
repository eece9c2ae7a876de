"""The boxed terminal report and human-readable sizes (as ``ls -lh`` shows them)."""

from __future__ import annotations

import pytest

from coderz_backup.report import BOX_WIDTH, human_size, render_report, section_line


@pytest.mark.parametrize("n, shown", [
    (0, "0B"),
    (1023, "1023B"),
    (1024, "1.0K"),
    (1025, "1.1K"),                        # rounded up, never down
    (1536, "1.5K"),
    (10 * 1024 - 1, "10K"),                # 9.99… rounds up to two digits, no decimal
    (45 * 1024 * 1024, "45M"),
    (1024 * 1024 - 1, "1.0M"),             # 1023.99…K is shown in the next unit
    (int(3.1 * 1024 ** 3), "3.1G"),
    (5 * 1024 ** 5, "5.0P"),
    (4096 * 1024 ** 5, "4096P"),           # nothing above P
])
def test_human_size_rounds_up_like_ls_dash_h(n, shown):
    assert human_size(n) == shown


def manifest(status="ok", artifacts=None, findings=None, **counts):
    m = {"snapshot": "2026-03-06_03-00-00", "status": status, "artifacts": artifacts or [],
         "passed": counts.get("passed", 0), "failed": counts.get("failed", 0),
         "skipped": counts.get("skipped", 0), "total_bytes": counts.get("total_bytes", 0)}
    if findings is not None:
        m["size_check"] = {"findings": findings}
    return m


def art(path, status="ok", service=None, **extra):
    return {"path": path, "status": status, "service": service or path.split(".")[0], "bytes": 2048, **extra}


def test_report_groups_artifacts_into_numbered_sections_in_order_of_appearance():
    text = render_report(manifest(artifacts=[
        art("pg-a.sql.gz", section="PostgreSQL"), art("redis.rdb", section="Redis"),
        art("pg-b.sql.gz", section="PostgreSQL"),
    ]))

    lines = text.splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("── 1/2 PostgreSQL "))
    assert lines[first + 1:first + 3] == ["✓ pg-a.sql.gz (2.0K)", "✓ pg-b.sql.gz (2.0K)"]
    assert lines[first + 3].startswith("── 2/2 Redis ")
    assert lines[first + 4] == "✓ redis.rdb (2.0K)"


def test_an_artifact_without_a_section_gets_its_service_as_title():
    assert "── 1/1 etcd-apisix " in render_report(manifest(artifacts=[art("x.snapshot", service="etcd-apisix")]))


def test_report_lines_come_before_the_artifact_line_and_a_summary_replaces_it():
    text = render_report(manifest(artifacts=[
        art("grafana/", report_lines=["Grafana dashboards exported: 10 files"]),
        art("elasticsearch/", summary="Elasticsearch: 4 indices exported"),
    ]))

    assert "✓ Grafana dashboards exported: 10 files\n✓ grafana (2.0K)" in text
    assert "✓ Elasticsearch: 4 indices exported" in text
    assert "elasticsearch (2.0K)" not in text


def test_failed_and_skipped_artifacts_show_why_failed_ones_with_the_first_line_only():
    text = render_report(manifest("partial", artifacts=[
        art("db.sql.gz", "failed", error="pg_dump exited with status 1: no route\nDETAIL: second line"),
        art("es.tar.gz", "skipped", error="no data_dir configured"),
    ]))

    assert "✗ db.sql.gz — pg_dump exited with status 1: no route" in text
    assert "second line" not in text
    assert "- es.tar.gz — skipped: no data_dir configured" in text


def test_size_check_findings_are_flagged_in_the_report():
    text = render_report(manifest(artifacts=[art("a.gz")],
                                  findings=[{"level": "warning", "message": "a.gz is 90% smaller"}]))

    assert "⚠ size check: a.gz is 90% smaller" in text


@pytest.mark.parametrize("status, title", [("ok", "Backup Complete"), ("partial", "Backup Completed with Failures"),
                                           ("failed", "Backup FAILED")])
def test_the_summary_box_title_says_how_the_run_went(status, title):
    text = render_report(manifest(status, passed=3, failed=1, skipped=2, total_bytes=3 * 1024 ** 3))

    assert f"║ {title}".ljust(BOX_WIDTH + 1) + "║" in text
    for line in ("✓ Passed : 3", "✗ Failed : 1", "- Skipped : 2", "Total size: 3.0G"):
        assert line in text


def test_every_box_line_is_as_wide_as_the_box():
    text = render_report(manifest(artifacts=[art("a.gz")], passed=1, total_bytes=10))

    boxed = [ln for ln in text.splitlines() if ln[0] in "╔║╠╚"]
    assert len(boxed) == 5 + 8   # header box, summary box
    assert {len(ln) for ln in boxed} == {BOX_WIDTH + 2}
    assert "║ Timestamp : 2026-03-06_03-00-00" in text


def test_section_lines_have_the_box_width_whatever_the_title():
    assert len(section_line(1, 8, "Redis")) == BOX_WIDTH + 2
    assert len(section_line(10, 10, "PostgreSQL — CoderAPI DB")) == BOX_WIDTH + 2
    assert section_line(1, 1, "x" * 80).endswith(" ───")   # a long title keeps a visible rule
