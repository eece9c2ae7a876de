"""Rotation's pure plan: why each old snapshot is kept, and which copy of an artifact counts.

(tests/test_rotation.py has the property tests of plan() and rotate() on real folders.)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

from coderz_backup.rotation import newest_copies, plan, rotate
from coderz_backup.snapshot import SnapshotInfo, SnapshotStore

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 3, 20, 3, 0, tzinfo=UTC)


def snap(day: int, status="ok", artifacts=None) -> SnapshotInfo:
    name = f"2026-03-{day:02d}_03-00-00"
    manifest = {"status": status}
    if artifacts is not None:
        manifest["artifacts"] = artifacts
    return SnapshotInfo(name, Path("/nonexistent") / name, manifest)


def test_plan_says_why_each_old_snapshot_is_kept():
    snaps = [snap(1, "failed"), snap(2, "ok"), snap(3, "partial", [{"path": "pg.sql.gz", "status": "ok"}]),
             snap(4, "failed"), snap(5, "failed"), snap(19, "failed")]

    result = plan(snaps, keep_days=7, now=NOW, latest=snaps[3].name, current=snaps[4].name, current_usable=True)

    assert result.delete == [snaps[0].name]
    assert result.keep_reasons == {
        snaps[1].name: "newest ok snapshot",
        snaps[2].name: "newest ok copy of pg.sql.gz",
        snaps[3].name: "latest",
        snaps[4].name: "this run",
    }


def test_snapshots_within_keep_days_need_no_reason():
    result = plan([snap(18, "failed"), snap(19, "failed")], keep_days=7, now=NOW, latest=None, current=None,
                  current_usable=True)

    assert result.delete == [] and result.keep_reasons == {}


def test_newest_copies_takes_the_newest_snapshot_with_an_ok_copy_of_each_artifact():
    snaps = [
        snap(1, "ok", [{"path": "pg.sql.gz", "status": "ok"}, {"path": "redis.rdb", "status": "ok"}]),
        snap(2, "partial", [{"path": "pg.sql.gz", "status": "ok"}, {"path": "redis.rdb", "status": "failed"}]),
        snap(3, "partial", [{"path": "pg.sql.gz", "status": "failed"}]),
    ]

    assert newest_copies(list(reversed(snaps))) == {"pg.sql.gz": snaps[1].name, "redis.rdb": snaps[0].name}


def test_newest_copies_skips_what_a_hand_edited_manifest_holds_instead_of_artifacts():
    odd = [
        SnapshotInfo("2026-03-05_03-00-00", Path("/x"), None),
        snap(4, artifacts="not a list"),
        snap(3, artifacts=[42, {"path": 7, "status": "ok"}, {"status": "ok"}, {"path": "a", "status": "OK"}]),
        snap(2, artifacts=[{"path": "a", "status": "ok"}]),
    ]

    assert newest_copies(odd) == {"a": "2026-03-02_03-00-00"}


def test_rotate_logs_why_it_keeps_an_old_snapshot(tmp_path, caplog):
    dest = tmp_path / "snapshots"
    for day, status in ((1, "ok"), (19, "failed")):
        folder = dest / f"2026-03-{day:02d}_03-00-00"
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(json.dumps({"status": status}))
    caplog.set_level(logging.INFO, logger="coderz_backup")

    deleted = rotate(SnapshotStore(dest), keep_days=7, current="2026-03-19_03-00-00", current_usable=True, now=NOW)

    assert deleted == []
    assert "keeping 2026-03-01_03-00-00 although older than 7 days (newest ok snapshot)" in caplog.text


def test_rotate_after_an_unusable_run_says_nothing_was_deleted(tmp_path, caplog):
    deleted = rotate(SnapshotStore(tmp_path), keep_days=7, current=None, current_usable=False, now=NOW)

    assert deleted == []
    assert "rotation skipped: this run produced no usable snapshot" in caplog.text
