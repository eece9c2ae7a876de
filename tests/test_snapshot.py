"""The snapshot store: in-progress folders, finishing, `latest`, the lock, safe names."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from coderz_backup.errors import LockHeldError, SnapshotNotFoundError, StoreError
from coderz_backup.snapshot import IN_PROGRESS_PREFIX, SnapshotStore, snapshot_name

ROOT = Path(__file__).resolve().parent.parent
UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 6, 3, 0, 0, tzinfo=UTC)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def store(tmp_path) -> SnapshotStore:
    s = SnapshotStore(tmp_path / "snapshots")
    s.prepare()
    return s


def finished(store: SnapshotStore, when: dt.datetime, status: str = "ok", *, make_latest: bool = True):
    snap = store.begin(when)
    (snap.path / "redis.rdb").write_bytes(b"REDIS0011")
    return store.finish(snap, {"snapshot": snap.name, "status": status}, make_latest=make_latest)


# ---------------------------------------------------------------------------
# begin / finish / list / latest


def test_begin_creates_private_in_progress_folder_named_after_start_time(store):
    snap = store.begin(T0)

    assert snap.name == "2026-03-06_03-00-00"
    assert snap.path == store.dest / f"{IN_PROGRESS_PREFIX}2026-03-06_03-00-00"
    assert snap.path.is_dir()
    assert mode(snap.path) == 0o700


def test_begin_uses_utc_for_the_name():
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert snapshot_name(dt.datetime(2026, 3, 6, 5, 0, 0, tzinfo=plus_two)) == "2026-03-06_03-00-00"


def test_in_progress_snapshot_is_not_listed(store):
    store.begin(T0)

    assert store.list() == []
    with pytest.raises(SnapshotNotFoundError):
        store.get("2026-03-06_03-00-00")


def test_two_begins_in_the_same_second_get_distinct_names(store):
    first = store.begin(T0)
    second = store.begin(T0.replace(microsecond=500_000))

    assert first.name != second.name
    assert second.name == "2026-03-06_03-00-01"
    assert first.path.is_dir() and second.path.is_dir()


def test_begin_does_not_reuse_the_name_of_a_finished_snapshot(store):
    finished(store, T0)

    again = store.begin(T0)

    assert again.name != "2026-03-06_03-00-00"
    assert (store.dest / "2026-03-06_03-00-00" / "redis.rdb").exists()


def test_finish_renames_and_writes_private_manifest(store):
    snap = store.begin(T0)
    (snap.path / "redis.rdb").write_bytes(b"REDIS0011")
    manifest = {"snapshot": snap.name, "status": "ok", "passed": 1, "note": "ünïcode"}

    final = store.finish(snap, manifest, make_latest=False)

    assert final == store.dest / "2026-03-06_03-00-00"
    assert not snap.path.exists()
    assert (final / "redis.rdb").read_bytes() == b"REDIS0011"
    assert json.loads((final / "manifest.json").read_text(encoding="utf-8")) == manifest
    assert mode(final / "manifest.json") == 0o600
    assert [s.name for s in store.list()] == ["2026-03-06_03-00-00"]
    assert store.list()[0].status == "ok"
    assert not any(p.name.endswith(".tmp") for p in final.iterdir())


def test_finish_without_make_latest_leaves_latest_alone(store):
    finished(store, T0, make_latest=True)

    finished(store, T0 + dt.timedelta(days=1), "failed", make_latest=False)

    assert os.readlink(store.dest / "latest") == "2026-03-06_03-00-00"
    assert store.latest_name() == "2026-03-06_03-00-00"


def test_finish_without_make_latest_creates_no_latest(store):
    finished(store, T0, make_latest=False)

    assert not os.path.lexists(store.dest / "latest")
    assert store.latest_name() is None


def test_finish_with_make_latest_points_a_relative_latest_link_at_the_snapshot(store):
    finished(store, T0)
    finished(store, T0 + dt.timedelta(days=1))

    link = store.dest / "latest"
    assert link.is_symlink()
    assert os.readlink(link) == "2026-03-07_03-00-00"   # relative, survives moving dest
    assert (link / "manifest.json").exists()
    assert not [p for p in store.dest.iterdir() if p.name.startswith(".latest-")]


def test_point_latest_refuses_to_replace_a_real_folder_named_latest(store):
    finished(store, T0, make_latest=False)
    (store.dest / "latest").mkdir()

    with pytest.raises(StoreError, match="not a symlink"):
        store.point_latest("2026-03-06_03-00-00")

    assert (store.dest / "latest").is_dir() and not (store.dest / "latest").is_symlink()


def test_list_returns_newest_first_and_reads_status(store):
    finished(store, T0, "ok")
    finished(store, T0 + dt.timedelta(days=2), "partial")
    finished(store, T0 + dt.timedelta(days=1), "failed")
    (store.dest / "2026-03-09_03-00-00").mkdir()   # no manifest

    listed = store.list()

    assert [s.name for s in listed] == ["2026-03-09_03-00-00", "2026-03-08_03-00-00",
                                        "2026-03-07_03-00-00", "2026-03-06_03-00-00"]
    assert [s.status for s in listed] == ["unknown", "partial", "failed", "ok"]


def test_list_ignores_strays_invalid_dates_files_and_links(store, tmp_path):
    finished(store, T0)
    (store.dest / "photos").mkdir()
    (store.dest / "2026-13-45_99-99-99").mkdir()
    (store.dest / "2026-03-01_00-00-00").write_text("a file")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, store.dest / "2026-03-02_00-00-00")

    assert [s.name for s in store.list()] == ["2026-03-06_03-00-00"]


# ---------------------------------------------------------------------------
# get


def test_get_latest_resolves_to_its_target(store):
    finished(store, T0)
    finished(store, T0 + dt.timedelta(days=1))

    snap = store.get("latest")

    assert snap.name == "2026-03-07_03-00-00"
    assert snap.path == store.dest / "2026-03-07_03-00-00"
    assert snap.status == "ok"


def test_get_latest_without_latest_link_is_not_found(store):
    finished(store, T0, make_latest=False)

    with pytest.raises(SnapshotNotFoundError, match="latest"):
        store.get("latest")


def test_get_by_name_returns_the_snapshot(store):
    finished(store, T0, "partial")
    assert store.get("2026-03-06_03-00-00").status == "partial"


@pytest.mark.parametrize("name", [
    "../x", "/etc", "latest/../..", "foo", "", ".", "..",
    "2026-03-06_03-00-00/../..", "../2026-03-06_03-00-00", ".in-progress-2026-03-06_03-00-00",
])
def test_get_refuses_names_that_are_not_snapshot_names(store, name):
    finished(store, T0)
    store.begin(T0)   # an in-progress folder exists too

    with pytest.raises(SnapshotNotFoundError):
        store.get(name)


def test_get_refuses_snapshot_named_symlink_to_elsewhere(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, store.dest / "2026-03-06_03-00-00")

    with pytest.raises(SnapshotNotFoundError):
        store.get("2026-03-06_03-00-00")


def test_get_missing_snapshot_names_destination(store):
    with pytest.raises(SnapshotNotFoundError, match=re.escape(str(store.dest))):
        store.get("2026-03-06_03-00-00")


# ---------------------------------------------------------------------------
# clean_stale


def test_clean_stale_removes_in_progress_folders_and_nothing_else(store, tmp_path):
    finished(store, T0)
    killed_a = store.begin(T0 + dt.timedelta(days=1))
    (killed_a.path / "postgres-prefect.sql.gz").write_bytes(b"half")
    killed_b = store.begin(T0 + dt.timedelta(days=2))
    (store.dest / "photos").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    os.symlink(outside, store.dest / f"{IN_PROGRESS_PREFIX}link")

    removed = store.clean_stale()

    assert sorted(removed) == sorted([killed_a.path.name, killed_b.path.name])
    assert not killed_a.path.exists() and not killed_b.path.exists()
    assert (store.dest / "2026-03-06_03-00-00" / "manifest.json").exists()
    assert (store.dest / "photos").is_dir()
    assert os.readlink(store.dest / "latest") == "2026-03-06_03-00-00"
    assert (outside / "keep.txt").exists()


# ---------------------------------------------------------------------------
# prepare


def test_prepare_creates_missing_destination_and_leaves_no_probe(tmp_path):
    dest = tmp_path / "a" / "b" / "snapshots"

    SnapshotStore(dest).prepare()

    assert dest.is_dir()
    assert list(dest.iterdir()) == []


def test_prepare_on_path_below_a_file_raises_store_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    dest = tmp_path / "afile" / "dest"

    with pytest.raises(StoreError) as info:
        SnapshotStore(dest).prepare()

    msg = str(info.value)
    assert str(dest) in msg
    assert "cannot be created" in msg
    assert "--dest" in msg


def test_prepare_on_a_file_raises_store_error(tmp_path):
    dest = tmp_path / "afile"
    dest.write_text("x")

    with pytest.raises(StoreError, match=re.escape(str(dest))):
        SnapshotStore(dest).prepare()


# ---------------------------------------------------------------------------
# lock (real separate processes; flock is per open file, released by the kernel)

TRY_LOCK = """
import sys
from coderz_backup.errors import LockHeldError
from coderz_backup.snapshot import SnapshotStore
try:
    with SnapshotStore(sys.argv[1]).lock():
        print("acquired")
except LockHeldError as exc:
    print(exc)
    sys.exit(3)
"""

HOLD_LOCK = """
import sys, time
from coderz_backup.snapshot import SnapshotStore
with SnapshotStore(sys.argv[1]).lock():
    print("locked", flush=True)
    time.sleep(300)
"""


def try_lock_in_other_process(dest: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", TRY_LOCK, str(dest)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def holder(store):
    """A separate process holding the destination lock."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(store.dest)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if line.strip() != "locked":
            proc.kill()
            pytest.fail(f"lock holder did not start: {line!r} {proc.stderr.read()}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()


def test_lock_held_here_blocks_another_process_with_a_clear_message(store):
    with store.lock():
        result = try_lock_in_other_process(store.dest)

    assert result.returncode == 3, result.stderr
    assert str(store.dest) in result.stdout
    assert f"pid {os.getpid()}" in result.stdout   # says who holds it


def test_lock_is_free_for_another_process_after_the_block(store):
    with store.lock():
        pass

    result = try_lock_in_other_process(store.dest)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "acquired" in result.stdout


def test_lock_held_by_another_process_raises_lock_held_error(store, holder):
    with pytest.raises(LockHeldError) as info:
        with store.lock():
            pytest.fail("lock acquired although another process holds it")

    assert str(store.dest) in str(info.value)
    assert f"pid {holder.pid}" in str(info.value)
    assert isinstance(info.value, StoreError)


def test_lock_of_a_killed_run_is_released_by_the_kernel(store, holder):
    with pytest.raises(LockHeldError):
        with store.lock():
            pass

    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)

    assert (store.dest / ".coderz-backup.lock").exists()   # stale file stays, harmless
    with store.lock():
        pass
    result = try_lock_in_other_process(store.dest)
    assert result.returncode == 0, result.stdout + result.stderr


def test_lock_on_missing_destination_raises_store_error(tmp_path):
    dest = tmp_path / "missing"
    with pytest.raises(StoreError, match=re.escape(str(dest))):
        with SnapshotStore(dest).lock():
            pass


def test_a_real_folder_named_latest_is_refused_before_the_run(tmp_path):
    from coderz_backup.errors import StoreError

    (tmp_path / "latest").mkdir()
    with pytest.raises(StoreError, match="real folder, not the link.*nothing was written"):
        SnapshotStore(tmp_path).prepare()
