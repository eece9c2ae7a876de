"""The post-snapshot stage: runs on the finished snapshot, records its results beside the signed manifest."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest

from coderz_backup.errors import ArtifactError
from coderz_backup.signing import SIGNATURE_FILE, authenticate, load_signer
from coderz_backup.snapshot import MANIFEST, SnapshotStore, read_manifest_bytes
from coderz_backup.stages import RECORD, StageResult, read_record, run_stages

T0 = dt.datetime(2026, 12, 1, 3, 0, 0, tzinfo=dt.timezone.utc)


class CopyTo:
    """A real stage: copies the snapshot folder to another folder (what an off-site "dir" target does)."""

    name = "copy"

    def __init__(self, target: Path):
        self.target = target

    def run(self, snapshot: Path, manifest: dict) -> StageResult:
        shutil.copytree(snapshot, self.target / snapshot.name)
        return StageResult(self.name, "ok", f"copied to {self.target}", details={"files": len(list(snapshot.iterdir()))})


class Broken:
    name = "broken"

    def __init__(self, exc: Exception):
        self.exc = exc

    def run(self, snapshot: Path, manifest: dict) -> StageResult:
        raise self.exc


@pytest.fixture
def finished(tmp_path):
    signer = load_signer(str(tmp_path / "keys" / "signing.key"))
    store = SnapshotStore(tmp_path / "dest")
    store.prepare()
    snap = store.begin(T0)
    (snap.path / "db.sql.gz").write_bytes(b"x")
    manifest = {"snapshot": snap.name, "status": "ok", "artifacts": []}
    final = store.finish(snap, manifest, make_latest=True, signer=signer)
    return final, manifest, signer


def test_stage_results_are_recorded_beside_the_manifest_which_stays_as_signed(finished, tmp_path):
    final, manifest, signer = finished
    signed = (final / MANIFEST).read_bytes(), (final / SIGNATURE_FILE).read_bytes()
    (tmp_path / "elsewhere").mkdir()
    results = run_stages([CopyTo(tmp_path / "elsewhere"), Broken(ArtifactError("bucket unreachable"))],
                         final, manifest)
    assert [(r.stage, r.status) for r in results] == [("copy", "ok"), ("broken", "failed")]
    record = read_record(final)
    assert [(r["stage"], r["status"], r["detail"]) for r in record["stages"]] == [
        ("copy", "ok", f"copied to {tmp_path / 'elsewhere'}"), ("broken", "failed", "bucket unreachable")]
    assert ((final / MANIFEST).read_bytes(), (final / SIGNATURE_FILE).read_bytes()) == signed
    authenticate(final, read_manifest_bytes(final), own_key=signer.public_key, trusted=[])
    # the copy carries the very manifest the local snapshot has
    assert (tmp_path / "elsewhere" / final.name / MANIFEST).read_bytes() == signed[0]
    assert (final / "db.sql.gz").read_bytes() == b"x"      # files untouched


def test_an_unexpected_exception_in_a_stage_is_a_failed_result_not_a_lost_snapshot(finished):
    final, manifest, signer = finished
    [result] = run_stages([Broken(KeyError("oops"))], final, manifest)
    assert result.status == "failed" and "KeyError" in result.detail
    authenticate(final, read_manifest_bytes(final), own_key=signer.public_key, trusted=[])


def test_without_stages_nothing_is_written(finished):
    final, manifest, _ = finished
    before = sorted(p.name for p in final.iterdir())
    assert run_stages([], final, manifest) == []
    assert sorted(p.name for p in final.iterdir()) == before and not (final / RECORD).exists()


def test_a_record_that_does_not_belong_to_the_manifest_is_not_read(finished, tmp_path):
    final, manifest, _ = finished
    run_stages([CopyTo(tmp_path)], final, manifest)
    record = json.loads((final / RECORD).read_text())
    record["manifest_sha256"] = "0" * 64            # left from another manifest, or made up
    (final / RECORD).write_text(json.dumps(record))
    assert read_record(final) is None
