"""Retention through the real backup flow and CLI: GFS keeps locally, per-target retention on a
folder target, and on a real S3 server (SeaweedFS) with Object Lock."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil

from helpers import run_cli

from coderz_backup.offsite import complete_snapshots, create, push
from coderz_backup.offsite.retention import Policy, prune
from coderz_backup.offsite.s3 import S3TargetConfig
from coderz_backup.signing import SIGNATURE_FILE, load_signer
from coderz_backup.snapshot import MANIFEST

PREFIX = "coderz/"


def _fabricate(dest, name, status):
    """An old local snapshot, the way tests/test_backup_flow.py makes them (a folder and its manifest)."""
    (dest / name).mkdir(parents=True)
    (dest / name / MANIFEST).write_text(json.dumps({"snapshot": name, "status": status}))


def _old_copy(snap, into, name, status="ok"):
    """``snap`` again under the old snapshot name ``name``, its manifest rewritten and signed with this
    host's key (what a push of an old snapshot leaves on a target)."""
    dst = into / name
    shutil.copytree(snap, dst)
    (dst / "post-snapshot.json").unlink(missing_ok=True)
    manifest = json.loads((snap / MANIFEST).read_text())
    manifest.update(snapshot=name, status=status)
    raw = json.dumps(manifest, indent=2).encode()
    (dst / MANIFEST).write_bytes(raw)
    signer = load_signer(os.environ["CODERZ_BACKUP_SIGNING_KEY"])
    (dst / SIGNATURE_FILE).write_bytes(signer.signature_document(raw))
    return dst


def test_gfs_keeps_through_the_cli_and_their_reasons_in_the_log(stack):
    stack.dest.mkdir()
    made = {"2020-01-05_03-00-00": "ok", "2020-01-20_03-00-00": "ok", "2020-01-25_03-00-00": "failed",
            "2020-02-10_03-00-00": "partial", "2020-02-11_01-00-00": "ok", "2020-02-11_03-00-00": "ok"}
    for name, status in made.items():
        _fabricate(stack.dest, name, status)
    (stack.dest / "not-a-snapshot").mkdir()
    res = run_cli(["backup", "--config", str(stack.config), "--only", "redis", "--keep", "1", "--keep-daily", "3"],
                  dict(stack.env, KEEP_MONTHLY="3"))
    assert res.returncode == 0, res.stdout + res.stderr
    current = stack.snapshots()[-1]
    # daily: today, 2020-02-11 (its newest), 2020-02-10 (partial: that day has no ok one);
    # monthly: this month, 2020-02, 2020-01 (its newest ok; the failed one never counts)
    assert [p.name for p in stack.snapshots()] == ["2020-01-20_03-00-00", "2020-02-10_03-00-00",
                                                   "2020-02-11_03-00-00", current.name]
    assert (stack.dest / "not-a-snapshot").exists()
    log = (current / "backup.log").read_text()
    assert "keep 1 days + 3 daily, 3 monthly" in log
    assert "keeping 2020-01-20_03-00-00 although older than 1 days (monthly 2020-01)" in log
    assert "keeping 2020-02-11_03-00-00 although older than 1 days (daily 2020-02-11, monthly 2020-02)" in log
    assert "keeping 2020-02-10_03-00-00 although older than 1 days (daily 2020-02-10)" in log
    for gone in ("2020-01-05_03-00-00", "2020-01-25_03-00-00", "2020-02-11_01-00-00"):
        assert f"rotation: deleted {gone}" in log


def test_a_dir_target_prunes_old_copies_and_leftovers_and_keeps_what_it_must(stack, tmp_path):
    drive = tmp_path / "drive"
    drive.mkdir()
    first = run_cli(["backup", "--no-offsite", "--config", str(stack.config)], stack.env)
    assert first.returncode == 0, first.stdout + first.stderr
    snap = stack.snapshots()[-1]
    gone = _old_copy(snap, drive, "2020-03-01_03-00-00")            # older than the target keeps
    monthly = _old_copy(snap, drive, "2020-03-02_03-00-00")         # newest of 2020-03: keep_monthly
    half = drive / "2020-02-01_03-00-00"                            # an interrupted push: no signature
    shutil.copytree(snap, half)
    (half / SIGNATURE_FILE).unlink()
    strays = [drive / "photos", drive / "2020-01-01_00-00-00.old", drive / "notes.txt"]
    for d in strays[:2]:
        d.mkdir()
        (d / "keep.txt").write_text("x")
    strays[2].write_text("x")
    stack.config.write_text(stack.config.read_text() + f'\n[offsite.usb]\nkind = "dir"\npath = "{drive}"\n'
                            'keep_days = 2\nkeep_monthly = 2\n')
    res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 0, res.stdout + res.stderr
    current = stack.snapshots()[-1]
    assert sorted(p.name for p in drive.iterdir()) == sorted(
        [monthly.name, snap.name, current.name, "photos", "2020-01-01_00-00-00.old", "notes.txt"])
    assert not gone.exists() and not half.exists()
    assert all(p.exists() for p in strays) and (drive / "photos" / "keep.txt").exists()
    assert "; pruned 2" in res.stdout and f"caught up {snap.name}" in res.stdout
    record = json.loads((current / "post-snapshot.json").read_text())
    assert record["stages"][0]["details"]["pruned"] == [half.name, gone.name]
    log = (current / "backup.log").read_text()
    assert f"off-site usb: deleted {gone.name}" in log
    assert f"off-site usb: keeping {monthly.name} although older than 2 days (monthly 2020-03)" in log
    assert f"off-site usb: removed {half.name}, an incomplete copy" in log
    listed = run_cli(["offsite", "list", "--json", "--config", str(stack.config)], stack.env)
    assert json.loads(listed.stdout) == {"usb": [current.name, snap.name, monthly.name]}
    # local rotation is the local keep_days' business (7 by default): both local snapshots stay
    assert [p.name for p in stack.snapshots()] == [snap.name, current.name]


def _with_s3(stack, seaweed, bucket, extra=""):
    stack.env.update(T_S3_KEY=seaweed.access_key, T_S3_SECRET=seaweed.secret_key)
    stack.config.write_text(stack.config.read_text() + (
        f'\n[offsite.cloud]\nkind = "s3"\nbucket = "{bucket}"\nendpoint_url = "{seaweed.endpoint}"\n'
        f'access_key_id = "env:T_S3_KEY"\nsecret_access_key = "env:T_S3_SECRET"\n{extra}'))


def _target(seaweed, bucket, **over):
    cfg = dict(kind="s3", bucket=bucket, endpoint_url=seaweed.endpoint, access_key_id=seaweed.access_key,
               secret_access_key=seaweed.secret_key)
    cfg.update(over)
    return create("cloud", S3TargetConfig(**cfg))


def test_object_lock_uploads_locked_objects_and_retention_skips_a_locked_snapshot(stack, seaweed, tmp_path):
    bucket = seaweed.make_bucket(object_lock=True)
    _with_s3(stack, seaweed, bucket, "object_lock_days = 1\nkeep_days = 1\n")
    first = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert first.returncode == 0, first.stdout + first.stderr
    snap = stack.snapshots()[-1]
    cl = seaweed.client()
    tomorrow = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    for rel in (MANIFEST, SIGNATURE_FILE, "backup.log"):
        ret = cl.get_object_retention(Bucket=bucket, Key=f"{PREFIX}{snap.name}/{rel}")["Retention"]
        assert ret["Mode"] == "COMPLIANCE"
        assert abs((ret["RetainUntilDate"] - tomorrow).total_seconds()) < 600
    # an old snapshot on the bucket, pushed (and locked for a day) as a backup would have
    old = _old_copy(snap, tmp_path / "old", "2020-03-01_03-00-00")
    push(old, _target(seaweed, bucket, object_lock_days=1))
    second = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "✗ Failed : 0" in second.stdout and "✗ cloud" not in second.stdout and "✓ cloud: " in second.stdout and "1 kept under Object Lock" in second.stdout
    current = stack.snapshots()[-1]
    log = (current / "backup.log").read_text()
    about_old = [line for line in log.splitlines() if old.name in line]
    assert len(about_old) == 1, about_old
    assert "off-site cloud: kept 2020-03-01_03-00-00: under Object Lock until" in about_old[0]
    assert "WARNING" not in about_old[0] and "the store keeps" not in log
    listed = run_cli(["offsite", "list", "--json", "--config", str(stack.config)], stack.env)
    assert json.loads(listed.stdout) == {"cloud": [current.name, snap.name, old.name]}
    record = json.loads((current / "post-snapshot.json").read_text())
    assert record["stages"][0]["details"]["kept_locked"] == [old.name]


def test_s3_retention_deletes_an_unlocked_old_copy_and_a_leftover(stack, seaweed, tmp_path, caplog):
    bucket = seaweed.make_bucket()
    res = run_cli(["backup", "--no-offsite", "--config", str(stack.config), "--only", "redis"], stack.env)
    assert res.returncode == 0, res.stdout + res.stderr
    snap = stack.snapshots()[-1]
    target = _target(seaweed, bucket)
    push(snap, target)
    old = _old_copy(snap, tmp_path / "old", "2020-03-01_03-00-00")
    push(old, target)
    seaweed.client().put_object(Bucket=bucket, Key=f"{PREFIX}2020-02-01_03-00-00/redis.rdb", Body=b"half")
    seaweed.client().put_object(Bucket=bucket, Key=f"{PREFIX}photos/a.jpg", Body=b"x")
    caplog.set_level(logging.INFO, logger="coderz_backup")
    result = prune(target, Policy(keep_days=1), current=snap.name)
    assert result.deleted == [old.name] and result.incomplete == ["2020-02-01_03-00-00"]
    assert complete_snapshots(target) == [snap.name]
    assert target.names() == sorted([snap.name, "photos"])


def test_object_lock_days_on_a_bucket_without_object_lock_says_so(seaweed, tmp_path):
    import hashlib

    import pytest

    from coderz_backup.errors import OffsiteError

    bucket = seaweed.make_bucket()
    src = tmp_path / "f"
    src.write_bytes(b"data")
    target = _target(seaweed, bucket, object_lock_days=3)
    with pytest.raises(OffsiteError, match=f"bucket {bucket} must have Object Lock enabled"):
        target.put("2026-12-01_03-00-00/f", src, size=4, sha256=hashlib.sha256(b"data").hexdigest())
    assert target.names() == []
