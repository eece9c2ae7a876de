"""Size checks: is there room before a run, are the sizes plausible after it."""

from __future__ import annotations

import json
import shutil

import pytest

from coderz_backup.config import SizeCheckConfig
from coderz_backup.errors import StoreError
from coderz_backup.services.base import ArtifactResult
from coderz_backup.sizecheck import check, preflight, previous_ok
from coderz_backup.snapshot import SnapshotInfo, SnapshotStore

PB = 1024 ** 5


def snapshot(dest, name, manifest):
    folder = dest / name
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def store(tmp_path):
    s = SnapshotStore(tmp_path / "snapshots")
    s.prepare()
    return s


# -- preflight ----------------------------------------------------------------------------


def test_preflight_estimates_from_the_previous_snapshot_times_the_margin(store):
    snapshot(store.dest, "2026-03-05_03-00-00", {"status": "ok", "total_bytes": 1000})

    info = preflight(store, SizeCheckConfig(margin=1.5, min_free_bytes=10))

    assert info["estimate_bytes"] == 1510
    assert info["based_on"] == "2026-03-05_03-00-00"
    assert info["free_bytes"] == shutil.disk_usage(store.dest).free


def test_preflight_without_room_names_the_numbers_and_what_to_do(store):
    snapshot(store.dest, "2026-03-05_03-00-00", {"status": "partial", "total_bytes": 3 * PB})

    with pytest.raises(StoreError) as info:
        preflight(store, SizeCheckConfig(margin=2))

    text = str(info.value)
    assert f"not enough space in {store.dest}" in text
    assert "the previous snapshot 2026-03-05_03-00-00 took 3.0P, ×2 margin" in text
    assert "about 6.0P needed" in text
    assert "nothing was written" in text and "--dest" in text


def test_preflight_without_a_previous_snapshot_still_keeps_the_minimum_free(store):
    with pytest.raises(StoreError, match=r"no previous snapshot \+ 1.0P kept free"):
        preflight(store, SizeCheckConfig(min_free_bytes=PB))


@pytest.mark.parametrize("bogus", ["12", True, -5, None])
def test_preflight_skips_manifests_whose_size_is_not_a_byte_count(store, bogus):
    snapshot(store.dest, "2026-03-04_03-00-00", {"status": "ok", "total_bytes": 400})
    snapshot(store.dest, "2026-03-05_03-00-00", {"status": "ok", "total_bytes": bogus})

    info = preflight(store, SizeCheckConfig(margin=1.0))

    assert info["based_on"] == "2026-03-04_03-00-00" and info["estimate_bytes"] == 400


def test_previous_ok_is_the_newest_ok_snapshot(store):
    snapshot(store.dest, "2026-03-03_03-00-00", {"status": "ok"})
    snapshot(store.dest, "2026-03-04_03-00-00", {"status": "ok"})
    snapshot(store.dest, "2026-03-05_03-00-00", {"status": "partial"})

    assert previous_ok(store).name == "2026-03-04_03-00-00"


# -- check --------------------------------------------------------------------------------

CFG = SizeCheckConfig(max_shrink=0.5, shrink_floor_bytes=1000)


def result(path, n, service="pg", status="ok"):
    return ArtifactResult(service, "postgres", path, status=status, bytes=n)


def previous(*artifacts, name="2026-03-05_03-00-00"):
    return SnapshotInfo(name, None, {"status": "ok", "artifacts": list(artifacts)})


def test_an_artifact_below_its_minimum_fails_with_the_numbers(tmp_path):
    results, findings = check([result("pg.sql.gz", 20)], tmp_path, {"pg": 64}, CFG, None)

    assert results[0].status == "failed"
    assert results[0].error == "size check: pg.sql.gz is 20 bytes, below its minimum of 64 bytes"
    assert [(f.level, f.artifact) for f in findings] == [("error", "pg.sql.gz")]


def test_an_empty_artifact_fails_even_without_a_configured_minimum(tmp_path):
    results, _ = check([result("x", 0, service="other")], tmp_path, {}, CFG, None)

    assert results[0].status == "failed"


def test_an_artifact_that_shrank_past_the_limit_is_flagged_but_kept(tmp_path):
    prev = previous({"path": "pg.sql.gz", "status": "ok", "bytes": 100 * 1024})

    results, findings = check([result("pg.sql.gz", 10 * 1024)], tmp_path, {}, CFG, prev)

    assert results[0].status == "ok"
    assert [f.level for f in findings] == ["warning"]
    assert findings[0].message == ("pg.sql.gz is 90% smaller than in 2026-03-05_03-00-00 (100K → 10K); "
                                   "check for lost data")
    assert findings[0].as_dict()["artifact"] == "pg.sql.gz"


def test_shrinking_within_the_limit_is_not_flagged(tmp_path):
    prev = previous({"path": "pg.sql.gz", "status": "ok", "bytes": 10_000})

    assert check([result("pg.sql.gz", 5_000)], tmp_path, {}, CFG, prev)[1] == []


def test_shrinking_of_a_tiny_artifact_is_ignored(tmp_path):
    prev = previous({"path": "pg.sql.gz", "status": "ok", "bytes": 999})   # below shrink_floor_bytes

    assert check([result("pg.sql.gz", 10)], tmp_path, {}, CFG, prev)[1] == []


def test_only_an_ok_copy_in_the_previous_snapshot_is_a_baseline(tmp_path):
    prev = previous({"path": "pg.sql.gz", "status": "failed", "bytes": 10 ** 9})

    assert check([result("pg.sql.gz", 5_000)], tmp_path, {}, CFG, prev)[1] == []


def test_failed_and_skipped_results_are_left_as_they_are(tmp_path):
    failed = result("a", 0, status="failed")
    failed.error = "pg_dump died"

    results, findings = check([failed, result("b", 0, status="skipped")], tmp_path, {"pg": 64}, CFG, None)

    assert [(r.status, r.error) for r in results] == [("failed", "pg_dump died"), ("skipped", None)]
    assert findings == []


@pytest.mark.parametrize("manifest", [
    {"artifacts": "not a list"},
    {"artifacts": [42, {"path": 7, "status": "ok", "bytes": 1}, {"path": "pg.sql.gz", "status": "ok", "bytes": "x"}]},
    None,
], ids=["artifacts-not-a-list", "odd-entries", "no-manifest"])
def test_a_hand_edited_previous_manifest_is_no_baseline_and_no_crash(tmp_path, manifest):
    prev = SnapshotInfo("2026-03-05_03-00-00", None, manifest)

    results, findings = check([result("pg.sql.gz", 5_000)], tmp_path, {}, CFG, prev)

    assert results[0].status == "ok" and findings == []
