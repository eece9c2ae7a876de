"""The post-snapshot stage: runs on the finished snapshot, records its results in the signed manifest."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest

from coderz_backup.errors import ArtifactError, SignatureError
from coderz_backup.signing import SIGNATURE_FILE, authenticate, load_signer
from coderz_backup.snapshot import MANIFEST, SnapshotStore, manifest_bytes, read_manifest_bytes
from coderz_backup.stages import StageResult, run_stages

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
    return store, final, manifest, signer


def _authentic(folder: Path, signer) -> dict:
    raw = read_manifest_bytes(folder)
    authenticate(folder, raw, own_key=signer.public_key, trusted=[])
    return json.loads(raw)


def test_stage_results_are_recorded_in_the_manifest_which_stays_authentic(finished, tmp_path):
    store, final, manifest, signer = finished
    (tmp_path / "elsewhere").mkdir()
    results = run_stages([CopyTo(tmp_path / "elsewhere"), Broken(ArtifactError("bucket unreachable"))],
                         store, final, manifest, signer=signer)
    assert [(r.stage, r.status) for r in results] == [("copy", "ok"), ("broken", "failed")]
    recorded = _authentic(final, signer)["post_snapshot"]
    assert [(r["stage"], r["status"], r["detail"]) for r in recorded] == [
        ("copy", "ok", f"copied to {tmp_path / 'elsewhere'}"), ("broken", "failed", "bucket unreachable")]
    # the copy was taken from the finished folder: the manifest it carries is the one as finished
    assert "post_snapshot" not in json.loads((tmp_path / "elsewhere" / final.name / MANIFEST).read_text())
    assert (final / "db.sql.gz").read_bytes() == b"x"      # artifacts untouched


def test_an_unexpected_exception_in_a_stage_is_a_failed_result_not_a_lost_snapshot(finished):
    store, final, manifest, signer = finished
    [result] = run_stages([Broken(KeyError("oops"))], store, final, manifest, signer=signer)
    assert result.status == "failed" and "KeyError" in result.detail
    assert _authentic(final, signer)["status"] == "ok"


def test_without_stages_the_manifest_is_left_byte_for_byte(finished):
    store, final, manifest, signer = finished
    before = (final / MANIFEST).read_bytes(), (final / SIGNATURE_FILE).read_bytes()
    assert run_stages([], store, final, manifest, signer=signer) == []
    assert ((final / MANIFEST).read_bytes(), (final / SIGNATURE_FILE).read_bytes()) == before


def test_a_crash_between_the_manifest_swaps_leaves_either_version_authentic(finished):
    _, final, manifest, signer = finished
    old = read_manifest_bytes(final)
    new = manifest_bytes({**manifest, "post_snapshot": []})
    (final / SIGNATURE_FILE).write_bytes(signer.signature_document(new, also=old))   # step 1 done, then a crash
    authenticate(final, old, own_key=signer.public_key, trusted=[])
    authenticate(final, new, own_key=signer.public_key, trusted=[])
    with pytest.raises(SignatureError, match="does not match"):
        authenticate(final, new + b" ", own_key=signer.public_key, trusted=[])
