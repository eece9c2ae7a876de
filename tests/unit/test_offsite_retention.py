"""Retention keys (config, environment, CLI) and off-site retention on a folder target."""

from __future__ import annotations

import datetime as dt
import json
import logging

import pytest

from coderz_backup.cli import _parser
from coderz_backup.config import load
from coderz_backup.errors import ConfigError
from coderz_backup.offsite import OffsiteStage, create, push, stages_for
from coderz_backup.offsite.dir import DirTargetConfig
from coderz_backup.offsite.retention import Policy, policy_for, prune
from coderz_backup.offsite.s3 import S3TargetConfig
from coderz_backup.signing import SIGNATURE_FILE, load_signer
from coderz_backup.snapshot import MANIFEST, SnapshotStore, snapshot_name
from coderz_backup.writer import write_stream

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 12, 1, 3, 0, 0, tzinfo=UTC)


# -- keys ------------------------------------------------------------------------------------

def test_gfs_keys_default_to_unused_and_come_from_file_env_and_flag_in_that_order(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("keep_days = 3\nkeep_daily = 7\nkeep_weekly = 4\n")
    plain = load(env={})
    assert (plain.keep_days, plain.keep_daily, plain.keep_weekly, plain.keep_monthly) == (7, 0, 0, 0)
    cfg = load(cfg_file, env={})
    assert (cfg.keep_days, cfg.keep_daily, cfg.keep_weekly, cfg.keep_monthly) == (3, 7, 4, 0)
    env = {"KEEP_DAILY": "10", "KEEP_MONTHLY": "12"}
    cfg = load(cfg_file, env=env)
    assert (cfg.keep_daily, cfg.keep_weekly, cfg.keep_monthly) == (10, 4, 12)
    cfg = load(cfg_file, env=env, keep_daily=2, keep_monthly=0)
    assert (cfg.keep_daily, cfg.keep_weekly, cfg.keep_monthly) == (2, 4, 0)


def test_bad_gfs_values_are_config_problems(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("keep_weekly = -1\n")
    with pytest.raises(ConfigError) as err:
        load(cfg_file, env={"KEEP_DAILY": "many"})
    assert "KEEP_DAILY='many'" in str(err.value) and "keep_weekly" in str(err.value)


def test_backup_takes_keep_daily_weekly_monthly_flags():
    args = _parser().parse_args(["backup", "--keep", "7", "--keep-daily", "14", "--keep-weekly", "8",
                                 "--keep-monthly", "12"])
    assert (args.keep, args.keep_daily, args.keep_weekly, args.keep_monthly) == (7, 14, 8, 12)
    with pytest.raises(SystemExit):
        _parser().parse_args(["backup", "--keep-daily", "-1"])


def test_a_target_takes_its_own_keys_and_the_local_ones_where_unset(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(f'keep_days = 7\nkeep_daily = 7\nkeep_monthly = 6\n'
                        f'[offsite.usb]\nkind = "dir"\npath = "{tmp_path}"\nkeep_days = 30\nkeep_monthly = 24\n'
                        f'[offsite.cloud]\nkind = "s3"\nbucket = "b-b-b"\nobject_lock_days = 14\n')
    cfg = load(cfg_file, env={})
    assert policy_for(cfg.offsite["usb"], cfg) == Policy(30, 7, 0, 24)
    assert policy_for(cfg.offsite["cloud"], cfg) == Policy(7, 7, 0, 6)
    assert cfg.offsite["cloud"].object_lock_days == 14
    assert [s.policy for s in stages_for(cfg, SnapshotStore(tmp_path))] == [Policy(30, 7, 0, 24), Policy(7, 7, 0, 6)]
    with pytest.raises(ValueError):
        S3TargetConfig(kind="s3", bucket="bbb", object_lock_days=-1)
    with pytest.raises(ValueError):
        DirTargetConfig(kind="dir", path="/x", keep_days=-2)


# -- retention on a folder target -------------------------------------------------------------

@pytest.fixture
def made(tmp_path):
    """Signed snapshots in a local store, made at the given times with the given status."""
    signer = load_signer(str(tmp_path / "keys" / "signing.key"))
    store = SnapshotStore(tmp_path / "dest")
    store.prepare()

    def make(when: dt.datetime, status: str = "ok"):
        snap = store.begin(when)
        rec = write_stream(snap.path, "db.sql.gz", [b"-- dump\n" * 100])
        manifest = {"snapshot": snap.name, "status": status, "artifacts": [
            {"service": "db", "kind": "postgres", "status": "ok" if status != "failed" else "failed",
             **rec.as_manifest(), "files": []}]}
        return store.finish(snap, manifest, make_latest=status != "failed", signer=signer)

    make.store = store
    return make


@pytest.fixture
def drive(tmp_path):
    (tmp_path / "drive").mkdir()
    return create("usb", DirTargetConfig(kind="dir", path=str(tmp_path / "drive")))


def names(drive):
    return sorted(p.name for p in drive.root.iterdir())


def test_prune_deletes_old_copies_keeps_gfs_and_protected_ones_and_logs_why(made, drive, caplog):
    days = [40, 35, 33, 20, 10, 3, 1, 0]
    folders = [made(NOW - dt.timedelta(days=d)) for d in days]
    for f in folders:
        push(f, drive)
    caplog.set_level(logging.INFO, logger="coderz_backup")
    result = prune(drive, Policy(keep_days=5, keep_monthly=3), current=folders[-1].name, now=NOW)
    # months 2026-12 and 2026-11: their newest are within 5 days; 2026-10: the one 33 days ago (2026-10-29)
    kept = {folders[i].name for i in (2, 5, 6, 7)}
    assert names(drive) == sorted(kept)
    assert result.deleted == sorted(f.name for i, f in enumerate(folders) if i not in (2, 5, 6, 7))
    assert f"keeping {folders[2].name} although older than 5 days (monthly 2026-10)" in caplog.text
    assert f"off-site usb: deleted {folders[0].name}" in caplog.text


def test_prune_never_deletes_the_newest_complete_copy_nor_names_that_are_not_snapshots(made, drive, tmp_path):
    old = made(NOW - dt.timedelta(days=60), "partial")
    older = made(NOW - dt.timedelta(days=70), "partial")
    push(old, drive)
    push(older, drive)
    for stray in ("photos", "2020-13-45_99-99-99", ".in-progress-2020-01-01_03-00-00", "2020-01-01_00-00-00.old"):
        (drive.root / stray).mkdir()
        (drive.root / stray / "x").write_text("x")
    (drive.root / "2020-01-02_00-00-00").write_text("a file with a snapshot name")
    (drive.root / "notes.txt").write_text("x")
    result = prune(drive, Policy(keep_days=1), current="2026-12-01_03-00-00", now=NOW)
    assert result.deleted == [older.name]
    assert old.name in names(drive)        # the newest complete copy, though partial and old
    for stray in ("photos", "2020-13-45_99-99-99", ".in-progress-2020-01-01_03-00-00", "2020-01-01_00-00-00.old",
                  "2020-01-02_00-00-00", "notes.txt"):
        assert stray in names(drive)


def test_prune_keeps_a_copy_whose_manifest_cannot_be_read_and_says_why(made, drive, caplog):
    folders = [made(NOW - dt.timedelta(days=d)) for d in (50, 40, 0)]
    for f in folders:
        push(f, drive)
    (drive.root / folders[0].name / MANIFEST).write_text("{not json")
    (drive.root / folders[1].name / MANIFEST).write_bytes(b"[" * (10 << 20))   # larger than a manifest can be
    caplog.set_level(logging.INFO, logger="coderz_backup")
    result = prune(drive, Policy(keep_days=7), current=folders[-1].name, now=NOW)
    assert result.deleted == [] and names(drive) == sorted(f.name for f in folders)
    assert f"kept {folders[0].name}: its manifest cannot be used (its manifest.json is not valid JSON)" in caplog.text
    assert f"kept {folders[1].name}: its manifest cannot be used" in caplog.text and "larger than" in caplog.text


def test_prune_removes_old_incomplete_copies_but_not_recent_ones_nor_one_being_pushed(made, drive, caplog):
    current = made(NOW)
    push(current, drive)
    for name in ("2026-10-01_03-00-00", "2026-11-30_03-00-00", "2026-10-02_03-00-00"):
        (drive.root / name).mkdir()
        (drive.root / name / "db.sql.gz").write_bytes(b"half")     # no manifest, no signature
    caplog.set_level(logging.INFO, logger="coderz_backup")
    result = prune(drive, Policy(keep_days=7), current=current.name, pushing=["2026-10-02_03-00-00"], now=NOW)
    assert result.incomplete == ["2026-10-01_03-00-00"] and result.deleted == []
    assert names(drive) == sorted([current.name, "2026-11-30_03-00-00", "2026-10-02_03-00-00"])
    assert "removed 2026-10-01_03-00-00, an incomplete copy (no signature)" in caplog.text


def test_prune_with_keep_forever_or_an_unusable_run_deletes_nothing(made, drive):
    for f in (made(NOW - dt.timedelta(days=400)), made(NOW)):
        push(f, drive)
    (drive.root / "2020-01-01_03-00-00").mkdir()
    before = names(drive)
    assert prune(drive, Policy(keep_days=0), current=None, now=NOW).pruned == []
    assert prune(drive, Policy(keep_days=1), current=None, current_usable=False, now=NOW).pruned == []
    assert names(drive) == before


def test_the_stage_prunes_after_pushing_and_never_catches_up_what_it_would_delete(made, drive, caplog):
    """A target with a shorter retention than the local one: an old local snapshot the target
    misses is not sent (it would be deleted right after), a recent missed one is."""
    now = dt.datetime.now(UTC).replace(microsecond=0)      # the stage prunes as of now
    old_remote = made(now - dt.timedelta(days=30))
    push(old_remote, drive)
    half = snapshot_name(now - dt.timedelta(days=60))
    (drive.root / half).mkdir()                             # an interrupted push
    (drive.root / half / "db.sql.gz").write_bytes(b"half")
    missed_old = made(now - dt.timedelta(days=20))
    missed_recent = made(now - dt.timedelta(days=2))
    current = made(now - dt.timedelta(seconds=1))
    stage = OffsiteStage("usb", drive.config, made.store, Policy(keep_days=7))
    caplog.set_level(logging.INFO, logger="coderz_backup")
    res = stage.run(current, json.loads((current / MANIFEST).read_text()))
    assert res.status == "ok"
    assert names(drive) == sorted([current.name, missed_recent.name])
    assert res.details["pruned"] == sorted([old_remote.name, half])
    assert res.details["not_caught_up"] == [missed_old.name]
    assert res.detail.endswith("; pruned 2") and f"caught up {missed_recent.name}" in res.detail
    assert f"not catching up {missed_old.name}" in caplog.text
    assert (drive.root / current.name / SIGNATURE_FILE).is_file()

