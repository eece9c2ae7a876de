"""The snapshot store on tmp dirs: names, atomic writes, the `latest` pointer, manifest reading.

(tests/test_snapshot.py covers begin/finish/list/get/lock; these are the pieces under them.)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat

import pytest

from coderz_backup import snapshot
from coderz_backup.errors import SnapshotNotFoundError
from coderz_backup.snapshot import (SAFETY_DIR, SnapshotStore, manifest_bytes, parse_snapshot_name,
                                    read_manifest_bytes, snapshot_name, stores_around, write_bytes_atomic)

UTC = dt.timezone.utc


@pytest.fixture
def store(tmp_path) -> SnapshotStore:
    s = SnapshotStore(tmp_path / "snapshots")
    s.prepare()
    return s


def folder(store, name, manifest: dict | None = None):
    path = store.dest / name
    path.mkdir()
    if manifest is not None:
        (path / "manifest.json").write_bytes(manifest_bytes(manifest))
    return path


# -- names --------------------------------------------------------------------------------


def test_a_snapshot_is_named_after_its_utc_start_time():
    local = dt.datetime(2026, 3, 6, 5, 0, 9, tzinfo=dt.timezone(dt.timedelta(hours=2)))

    assert snapshot_name(local) == "2026-03-06_03-00-09"
    assert parse_snapshot_name("2026-03-06_03-00-09") == dt.datetime(2026, 3, 6, 3, 0, 9, tzinfo=UTC)


@pytest.mark.parametrize("name", ["2026-02-30_03-00-00", "2026-03-06_24-00-00", "2026-03-06 03-00-00",
                                  "2026-03-06_03-00-00.old", "latest", "../2026-03-06_03-00-00", ""])
def test_what_is_not_a_real_utc_time_is_not_a_snapshot_name(name):
    assert parse_snapshot_name(name) is None


def test_stores_around_a_safety_backup_include_the_destination_holding_it(tmp_path):
    dest = tmp_path / "snapshots"

    assert stores_around(dest / "2026-03-06_03-00-00") == [dest]
    assert stores_around(dest / SAFETY_DIR / ".in-progress-x") == [dest / SAFETY_DIR, dest]


# -- atomic writes ------------------------------------------------------------------------


def test_atomic_write_replaces_the_file_whole_private_and_leaves_no_temp(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_text("old")

    write_bytes_atomic(target, b'{"new": true}\n')

    assert target.read_bytes() == b'{"new": true}\n'
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_a_failed_atomic_write_leaves_the_old_file_intact(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_text("old")

    with pytest.raises(TypeError):
        write_bytes_atomic(target, "not bytes")   # the write itself fails

    assert target.read_text() == "old"


def test_the_written_manifest_is_exactly_what_the_store_reads_back(store):
    manifest = {"snapshot": "2026-03-06_03-00-00", "status": "ok", "title": "PostgreSQL — Prefect DB"}
    snap = store.begin(dt.datetime(2026, 3, 6, 3, 0, tzinfo=UTC))

    store.finish(snap, manifest, make_latest=False)

    info = store.get("2026-03-06_03-00-00")
    assert info.manifest == manifest
    assert info.manifest_bytes == manifest_bytes(manifest) == (store.dest / snap.name / "manifest.json").read_bytes()
    assert "PostgreSQL — Prefect DB".encode() in info.manifest_bytes   # UTF-8, not \\u escapes


# -- manifest reading ---------------------------------------------------------------------


def test_a_manifest_that_is_a_symlink_is_not_read(store, tmp_path):
    elsewhere = tmp_path / "forged.json"
    elsewhere.write_text(json.dumps({"status": "ok"}))
    path = folder(store, "2026-03-06_03-00-00")
    os.symlink(elsewhere, path / "manifest.json")

    assert read_manifest_bytes(path) is None
    info = store.get("2026-03-06_03-00-00")
    assert info.manifest is None and info.status == "unknown"


def test_an_oversized_manifest_is_not_read(store, monkeypatch):
    path = folder(store, "2026-03-06_03-00-00", {"status": "ok", "pad": "x" * 200})
    monkeypatch.setattr(snapshot, "MAX_MANIFEST_BYTES", 100)

    assert read_manifest_bytes(path) is None


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe"], ids=["broken", "a-list", "not-utf8"])
def test_a_manifest_that_is_not_a_json_object_gives_status_unknown(store, raw):
    path = folder(store, "2026-03-06_03-00-00")
    (path / "manifest.json").write_bytes(raw)

    info = store.list()[0]

    assert info.manifest is None and info.status == "unknown"
    assert info.manifest_bytes == raw


# -- latest -------------------------------------------------------------------------------


def test_point_latest_swaps_the_link_to_the_new_snapshot_and_leaves_no_temp(store):
    for name in ("2026-03-05_03-00-00", "2026-03-06_03-00-00"):
        folder(store, name, {"status": "ok"})
        store.point_latest(name)

    assert os.readlink(store.dest / "latest") == "2026-03-06_03-00-00"
    assert not [p for p in store.dest.iterdir() if p.name.startswith(".latest-")]


def test_an_absolute_latest_link_into_the_destination_is_followed(store):
    folder(store, "2026-03-06_03-00-00", {"status": "ok"})
    os.symlink(store.dest / "2026-03-06_03-00-00", store.dest / "latest")

    assert store.latest_name() == "2026-03-06_03-00-00"


@pytest.mark.parametrize("target", ["photos", "2026-03-07_03-00-00", "/elsewhere/2026-03-06_03-00-00"],
                         ids=["not-a-snapshot-name", "dangling", "absolute-outside"])
def test_a_latest_link_that_is_not_to_a_snapshot_here_is_no_latest(store, target):
    folder(store, "2026-03-06_03-00-00", {"status": "ok"})
    (store.dest / "photos").mkdir()
    os.symlink(target, store.dest / "latest")

    assert store.latest_name() is None
    with pytest.raises(SnapshotNotFoundError, match="changed by hand"):
        store.get("latest")

