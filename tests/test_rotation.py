"""Rotation: property tests of the pure plan, and real folders for rotate()."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coderz_backup import rotation
from coderz_backup.snapshot import SnapshotInfo, SnapshotStore, snapshot_name

UTC = dt.timezone.utc
DAY = 86400

# ---------------------------------------------------------------------------
# plan(): properties over generated snapshot sets

STATUS_MANIFESTS = [
    {"status": "ok"},
    {"status": "partial"},
    {"status": "failed"},
    {"status": "unknown"},
    {},      # manifest without status
    None,    # no / unreadable manifest
]


@st.composite
def scenarios(draw):
    now = draw(st.datetimes(min_value=dt.datetime(2024, 1, 1), max_value=dt.datetime(2030, 12, 31),
                            timezones=st.just(UTC))).replace(microsecond=0)
    keep_days = draw(st.integers(min_value=0, max_value=30))
    # seconds before now; boundaries around the cutoff are drawn on purpose
    cutoff_s = keep_days * DAY
    ages = draw(st.lists(
        st.one_of(
            st.integers(min_value=-2 * DAY, max_value=45 * DAY),
            st.sampled_from([cutoff_s - 1, cutoff_s, cutoff_s + 1]),
        ),
        max_size=25, unique=True,
    ))
    snaps = []
    for age in ages:
        name = snapshot_name(now - dt.timedelta(seconds=age))
        manifest = draw(st.sampled_from(STATUS_MANIFESTS))
        snaps.append(SnapshotInfo(name, Path("/nonexistent") / name, manifest))
    snaps = draw(st.permutations(snaps))
    names = [s.name for s in snaps]
    pick = st.one_of(st.none(), st.just("2001-01-01_00-00-00"),
                     *([st.sampled_from(names)] if names else []))
    return {
        "snapshots": snaps,
        "keep_days": keep_days,
        "now": now,
        "latest": draw(pick),
        "current": draw(pick),
        "current_usable": draw(st.booleans()),
    }


def newest_ok(snaps):
    oks = [s for s in snaps if s.status == "ok"]
    return max(oks, key=lambda s: s.when).name if oks else None


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_plan_deletes_exactly_the_unprotected_snapshots_older_than_keep_days(sc):
    result = rotation.plan(**sc)
    deleted = result.delete
    snaps = {s.name: s for s in sc["snapshots"]}
    cutoff = sc["now"] - dt.timedelta(days=sc["keep_days"])

    # only existing snapshots, each once
    assert len(deleted) == len(set(deleted))
    assert set(deleted) <= set(snaps)

    if sc["keep_days"] == 0 or not sc["current_usable"]:
        assert deleted == []
        return

    protected = {sc["latest"], sc["current"], newest_ok(sc["snapshots"])} - {None}
    assert not protected & set(deleted)
    for name in deleted:
        assert snaps[name].when < cutoff, f"{name} is not older than {sc['keep_days']} days"
    should_go = {n for n, s in snaps.items() if s.when < cutoff and n not in protected}
    assert set(deleted) == should_go


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_plan_with_keep_zero_deletes_nothing(sc):
    sc["keep_days"] = 0
    sc["current_usable"] = True
    assert rotation.plan(**sc).delete == []


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_plan_deletes_nothing_when_current_run_is_unusable(sc):
    sc["current_usable"] = False
    sc["keep_days"] = max(sc["keep_days"], 1)
    assert rotation.plan(**sc).delete == []


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_plan_never_deletes_latest_newest_ok_or_current(sc):
    sc["current_usable"] = True
    result = rotation.plan(**sc)
    for keep in (sc["latest"], sc["current"], newest_ok(sc["snapshots"])):
        if keep is not None:
            assert keep not in result.delete


def info(name: str, status: str | None) -> SnapshotInfo:
    return SnapshotInfo(name, Path("/nonexistent") / name, None if status is None else {"status": status})


NOW = dt.datetime(2026, 3, 10, 3, 0, 0, tzinfo=UTC)


def test_plan_keeps_newest_ok_snapshot_when_every_newer_run_failed():
    snaps = [
        info("2026-02-01_03-00-00", "ok"),
        info("2026-02-02_03-00-00", "ok"),      # newest ok, 36 days old
        info("2026-03-09_03-00-00", "failed"),
        info("2026-03-10_03-00-00", "partial"),
    ]
    result = rotation.plan(snaps, keep_days=7, now=NOW, latest="2026-03-10_03-00-00",
                           current="2026-03-10_03-00-00", current_usable=True)

    assert result.delete == ["2026-02-01_03-00-00"]
    assert "2026-02-02_03-00-00" in result.keep_reasons


def _with(name: str, status: str, ok: list[str], failed: list[str] = ()) -> SnapshotInfo:
    arts = [{"path": p, "status": "ok"} for p in ok] + [{"path": p, "status": "failed"} for p in failed]
    return SnapshotInfo(name, Path("/nonexistent") / name, {"status": status, "artifacts": arts})


def test_plan_keeps_the_last_good_copy_of_a_service_that_keeps_failing():
    """Never an ok snapshot (Elasticsearch always fails); PostgreSQL fails from day 3 on."""
    snaps = [_with(f"2026-03-{d:02d}_03-00-00", "partial",
                   ok=["redis.rdb"] + (["pg.sql.gz"] if d < 3 else []),
                   failed=["es/"] + (["pg.sql.gz"] if d >= 3 else []))
             for d in range(1, 20)]
    now = dt.datetime(2026, 3, 19, 4, 0, 0, tzinfo=UTC)
    result = rotation.plan(snaps, keep_days=7, now=now, latest=snaps[-1].name, current=snaps[-1].name,
                           current_usable=True)
    assert "2026-03-02_03-00-00" not in result.delete   # the last pg.sql.gz
    assert result.keep_reasons["2026-03-02_03-00-00"] == "newest ok copy of pg.sql.gz"
    assert result.delete == [f"2026-03-{d:02d}_03-00-00" for d in (1, *range(3, 13))]


def test_plan_keeps_the_last_full_snapshot_behind_only_runs():
    """`backup --only redis` runs are ok and move latest; the last full one must stay."""
    full = _with("2026-03-01_03-00-00", "ok", ok=["pg.sql.gz", "redis.rdb"])
    only = [_with(f"2026-03-{d:02d}_03-00-00", "ok", ok=["redis.rdb"]) for d in range(2, 20)]
    now = dt.datetime(2026, 3, 19, 4, 0, 0, tzinfo=UTC)
    result = rotation.plan([full, *only], keep_days=7, now=now, latest=only[-1].name, current=only[-1].name,
                           current_usable=True)
    assert full.name not in result.delete and "pg.sql.gz" in result.keep_reasons[full.name]


def test_plan_keeps_snapshot_exactly_keep_days_old():
    snaps = [info("2026-03-03_03-00-00", "ok"), info("2026-03-03_02-59-59", "ok"),
             info("2026-03-10_03-00-00", "ok")]
    result = rotation.plan(snaps, keep_days=7, now=NOW, latest=None, current=None,
                           current_usable=True)

    assert result.delete == ["2026-03-03_02-59-59"]


# ---------------------------------------------------------------------------
# rotate(): real folders


def make_snapshot(dest: Path, name: str, status: str | None) -> Path:
    path = dest / name
    path.mkdir(mode=0o700)
    (path / "postgres-prefect.sql.gz").write_bytes(b"dump")
    if status is not None:
        (path / "manifest.json").write_text(json.dumps({"snapshot": name, "status": status}))
    return path


@pytest.fixture
def populated(tmp_path):
    """A destination with old and new snapshots plus everything that is not a snapshot."""
    dest = tmp_path / "snapshots"
    dest.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("not ours")

    old_ok = make_snapshot(dest, "2026-02-01_03-00-00", "ok")
    old_failed = make_snapshot(dest, "2026-02-02_03-00-00", "failed")
    old_unknown = make_snapshot(dest, "2026-02-03_03-00-00", None)
    make_snapshot(dest, "2026-03-05_03-00-00", "ok")      # recent, newest ok
    make_snapshot(dest, "2026-03-10_03-00-00", "partial")  # this run

    strays = [
        dest / "photos",
        dest / "2026-13-45_99-99-99",        # looks like a name, is no date
        dest / ".in-progress-2026-01-01_03-00-00",
        dest / "2020-01-01_00-00-00.old",
    ]
    for d in strays:
        d.mkdir()
        (d / "keep.txt").write_text("x")
    (dest / "2020-01-02_00-00-00").write_text("a file with a snapshot name")
    (dest / "notes.txt").write_text("x")
    os.symlink(outside, dest / "2020-01-03_00-00-00")   # snapshot-named link to elsewhere
    os.symlink("2026-03-10_03-00-00", dest / "latest")
    strays += [dest / "2020-01-02_00-00-00", dest / "notes.txt", dest / "2020-01-03_00-00-00"]
    return {
        "dest": dest,
        "outside": outside,
        "old": [old_ok, old_failed, old_unknown],
        "strays": strays,
    }


def test_rotate_deletes_old_snapshots_and_returns_their_names(populated):
    store = SnapshotStore(populated["dest"])

    deleted = rotation.rotate(store, keep_days=7, current="2026-03-10_03-00-00",
                              current_usable=True, now=NOW)

    assert deleted == ["2026-02-01_03-00-00", "2026-02-02_03-00-00", "2026-02-03_03-00-00"]
    for path in populated["old"]:
        assert not path.exists()
    assert [s.name for s in store.list()] == ["2026-03-10_03-00-00", "2026-03-05_03-00-00"]
    assert not [p for p in populated["dest"].iterdir() if p.name.startswith(".deleting-")]


def test_a_deletion_cut_short_is_never_taken_for_a_snapshot(tmp_path):
    """Rotation renames before it removes: a run killed mid-rmtree leaves a .deleting- folder,
    which list/latest/restore ignore and the next run's clean-up removes."""
    store = SnapshotStore(tmp_path)
    half = tmp_path / ".deleting-2026-02-01_03-00-00"
    half.mkdir()
    (half / "manifest.json").write_text(json.dumps({"status": "ok", "artifacts": []}))
    assert store.list() == []
    assert store.clean_stale() == [half.name] and not half.exists()


def test_rotate_never_touches_things_that_are_not_snapshots(populated):
    store = SnapshotStore(populated["dest"])

    rotation.rotate(store, keep_days=7, current="2026-03-10_03-00-00", current_usable=True, now=NOW)

    for path in populated["strays"]:
        assert os.path.lexists(path), f"{path.name} was removed"
    assert (populated["dest"] / "photos" / "keep.txt").exists()
    assert (populated["outside"] / "precious.txt").read_text() == "not ours"
    assert os.readlink(populated["dest"] / "latest") == "2026-03-10_03-00-00"
    assert (populated["dest"] / "latest" / "postgres-prefect.sql.gz").exists()


def test_rotation_never_deletes_latest_target_even_when_old(populated):
    dest = populated["dest"]
    os.unlink(dest / "latest")
    os.symlink("2026-02-02_03-00-00", dest / "latest")
    store = SnapshotStore(dest)

    deleted = rotation.rotate(store, keep_days=7, current="2026-03-10_03-00-00",
                              current_usable=True, now=NOW)

    assert "2026-02-02_03-00-00" not in deleted
    assert (dest / "latest" / "manifest.json").exists()
    assert deleted == ["2026-02-01_03-00-00", "2026-02-03_03-00-00"]


def test_rotation_keeps_old_newest_ok_snapshot_and_current_run(tmp_path):
    dest = tmp_path / "snapshots"
    dest.mkdir()
    make_snapshot(dest, "2026-01-01_03-00-00", "ok")
    make_snapshot(dest, "2026-01-02_03-00-00", "ok")       # newest ok
    make_snapshot(dest, "2026-01-03_03-00-00", "failed")   # the current run, somehow old
    store = SnapshotStore(dest)

    deleted = rotation.rotate(store, keep_days=7, current="2026-01-03_03-00-00",
                              current_usable=True, now=NOW)

    assert deleted == ["2026-01-01_03-00-00"]
    assert sorted(p.name for p in dest.iterdir()) == ["2026-01-02_03-00-00", "2026-01-03_03-00-00"]


@pytest.mark.parametrize("keep_days, usable", [(7, False), (0, True)])
def test_rotate_deletes_nothing_on_disk_when_run_unusable_or_keep_forever(populated, keep_days, usable):
    dest = populated["dest"]
    before = sorted(p.name for p in dest.iterdir())

    deleted = rotation.rotate(SnapshotStore(dest), keep_days=keep_days, current=None,
                              current_usable=usable, now=NOW)

    assert deleted == []
    assert sorted(p.name for p in dest.iterdir()) == before
    for path in populated["old"]:
        assert (path / "postgres-prefect.sql.gz").exists()


def test_rotate_on_missing_destination_deletes_nothing(tmp_path):
    store = SnapshotStore(tmp_path / "never-created")
    assert rotation.rotate(store, keep_days=7, current=None, current_usable=True, now=NOW) == []


def test_rotation_never_deletes_target_of_an_absolute_latest_link(populated):
    dest = populated["dest"]
    os.unlink(dest / "latest")
    os.symlink(dest / "2026-02-02_03-00-00", dest / "latest")

    deleted = rotation.rotate(SnapshotStore(dest), keep_days=7, current="2026-03-10_03-00-00",
                              current_usable=True, now=NOW)

    assert "2026-02-02_03-00-00" not in deleted
    assert (dest / "latest" / "manifest.json").exists()
