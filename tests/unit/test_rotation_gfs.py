"""Rotation's grandfather-father-son keeps (keep_daily / keep_weekly / keep_monthly) in the pure plan."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coderz_backup.rotation import describe_policy, gfs_keeps, plan
from coderz_backup.snapshot import SnapshotInfo, snapshot_name

UTC = dt.timezone.utc


def s(name: str, status: str | None = "ok") -> SnapshotInfo:
    return SnapshotInfo(name, Path("/nonexistent") / name, None if status is None else {"status": status})


def daily_run(first: dt.date, days: int, hour: int = 3, status: str = "ok") -> list[SnapshotInfo]:
    return [s(f"{first + dt.timedelta(days=d):%Y-%m-%d}_{hour:02d}-00-00", status) for d in range(days)]


def run_plan(snaps, now, keep_days=1, **gfs):
    newest = max(snaps, key=lambda x: x.name).name
    return plan(snaps, keep_days=keep_days, now=now, latest=newest, current=newest, current_usable=True, **gfs)


def test_keep_daily_keeps_the_newest_snapshot_of_each_of_the_last_n_days():
    snaps = daily_run(dt.date(2026, 11, 1), 30)
    now = dt.datetime(2026, 11, 30, 4, 0, tzinfo=UTC)
    result = run_plan(snaps, now, keep_daily=7)
    kept = sorted({x.name for x in snaps} - set(result.delete))
    assert kept == [f"2026-11-{d:02d}_03-00-00" for d in range(24, 31)]
    assert result.keep_reasons["2026-11-24_03-00-00"] == "daily 2026-11-24"
    assert result.keep_reasons["2026-11-29_03-00-00"] == "daily 2026-11-29"


def test_several_snapshots_a_day_the_newest_counts_and_the_day_is_used_once():
    snaps = [s("2026-11-28_03-00-00"), s("2026-11-28_15-00-00"), s("2026-11-28_23-59-59"),
             s("2026-11-29_03-00-00"), s("2026-11-29_12-00-00"), s("2026-11-30_03-00-00")]
    now = dt.datetime(2026, 12, 5, tzinfo=UTC)
    keeps = gfs_keeps(snaps, keep_daily=2)
    assert keeps == {"2026-11-30_03-00-00": ["daily 2026-11-30"], "2026-11-29_12-00-00": ["daily 2026-11-29"]}
    result = run_plan(snaps, now, keep_daily=3)
    assert result.delete == ["2026-11-28_03-00-00", "2026-11-28_15-00-00", "2026-11-29_03-00-00"]
    assert result.keep_reasons["2026-11-28_23-59-59"] == "daily 2026-11-28"


def test_days_are_utc_calendar_days_by_snapshot_name():
    # 23:59:59 and 00:00:00 are two days
    keeps = gfs_keeps([s("2026-11-29_23-59-59"), s("2026-11-30_00-00-00")], keep_daily=5)
    assert keeps == {"2026-11-29_23-59-59": ["daily 2026-11-29"], "2026-11-30_00-00-00": ["daily 2026-11-30"]}


def test_the_last_n_days_that_have_a_snapshot_not_the_last_n_calendar_days():
    # a gap of two weeks: keep_daily=3 reaches back over it (restic's semantics)
    snaps = [s("2026-11-01_03-00-00"), s("2026-11-02_03-00-00"), s("2026-11-03_03-00-00"),
             s("2026-11-20_03-00-00")]
    keeps = gfs_keeps(snaps, keep_daily=3)
    assert sorted(keeps) == ["2026-11-02_03-00-00", "2026-11-03_03-00-00", "2026-11-20_03-00-00"]


def test_failed_and_unreadable_snapshots_never_count_and_never_use_up_a_day():
    snaps = [s("2026-11-27_03-00-00"), s("2026-11-28_03-00-00"),
             s("2026-11-29_03-00-00", "failed"), s("2026-11-29_04-00-00", None), s("2026-11-29_05-00-00", "unknown"),
             s("2026-11-30_03-00-00", "failed")]
    keeps = gfs_keeps(snaps, keep_daily=2)
    assert keeps == {"2026-11-28_03-00-00": ["daily 2026-11-28"], "2026-11-27_03-00-00": ["daily 2026-11-27"]}
    result = plan(snaps, keep_days=1, now=dt.datetime(2026, 12, 10, tzinfo=UTC), latest=None, current=None,
                  current_usable=True, keep_daily=2, keep_weekly=5, keep_monthly=5)
    for bad in ("2026-11-29_03-00-00", "2026-11-29_04-00-00", "2026-11-29_05-00-00", "2026-11-30_03-00-00"):
        assert bad in result.delete


def test_a_partial_snapshot_counts_only_for_a_period_without_an_ok_one():
    snaps = [s("2026-11-28_03-00-00", "ok"), s("2026-11-28_09-00-00", "partial"),   # ok wins, though older
             s("2026-11-29_03-00-00", "partial"), s("2026-11-29_09-00-00", "partial")]  # newest partial
    keeps = gfs_keeps(snaps, keep_daily=5)
    assert keeps == {"2026-11-28_03-00-00": ["daily 2026-11-28"], "2026-11-29_09-00-00": ["daily 2026-11-29"]}
    weekly = gfs_keeps(snaps, keep_weekly=1)
    assert weekly == {"2026-11-28_03-00-00": ["weekly 2026-W48"]}      # the week has an ok one


def test_weekly_uses_iso_weeks_including_week_53_and_the_year_boundary():
    # 2026-12-28 (Mon) … 2027-01-03 (Sun) is ISO week 2026-W53; 2027-01-04 starts 2027-W01
    snaps = [s("2026-12-27_03-00-00"),   # Sun, 2026-W52
             s("2026-12-28_03-00-00"), s("2026-12-31_03-00-00"), s("2027-01-01_03-00-00"),
             s("2027-01-03_03-00-00"),   # Sun, still 2026-W53
             s("2027-01-04_03-00-00")]   # Mon, 2027-W01
    keeps = gfs_keeps(snaps, keep_weekly=3)
    assert keeps == {"2027-01-04_03-00-00": ["weekly 2027-W01"], "2027-01-03_03-00-00": ["weekly 2026-W53"],
                     "2026-12-27_03-00-00": ["weekly 2026-W52"]}
    # 2021-01-01 belongs to ISO 2020-W53
    assert gfs_keeps([s("2021-01-01_03-00-00")], keep_weekly=1) == {"2021-01-01_03-00-00": ["weekly 2020-W53"]}


def test_monthly_keeps_the_last_snapshot_of_each_month_across_month_and_year_ends():
    snaps = daily_run(dt.date(2025, 11, 25), 70)   # 2025-11-25 … 2026-02-02
    keeps = gfs_keeps(snaps, keep_monthly=4)
    assert keeps == {"2026-02-02_03-00-00": ["monthly 2026-02"], "2026-01-31_03-00-00": ["monthly 2026-01"],
                     "2025-12-31_03-00-00": ["monthly 2025-12"], "2025-11-30_03-00-00": ["monthly 2025-11"]}
    # February of a leap year and not
    leap = gfs_keeps(daily_run(dt.date(2028, 2, 25), 6), keep_monthly=2)
    assert sorted(leap) == ["2028-02-29_03-00-00", "2028-03-01_03-00-00"]
    plain = gfs_keeps(daily_run(dt.date(2027, 2, 25), 6), keep_monthly=2)
    assert sorted(plain) == ["2027-02-28_03-00-00", "2027-03-02_03-00-00"]


def test_a_snapshot_kept_for_several_reasons_lists_them_all():
    snaps = daily_run(dt.date(2026, 10, 1), 61)    # 2026-10-01 … 2026-11-30
    now = dt.datetime(2026, 12, 20, tzinfo=UTC)
    result = plan(snaps, keep_days=7, now=now, latest=None, current=None, current_usable=True,
                  keep_daily=2, keep_weekly=2, keep_monthly=3)
    # 2026-11-30 is a Monday (W49), newest of everything: newest ok, daily, weekly, monthly
    assert result.keep_reasons["2026-11-30_03-00-00"] == \
        "newest ok snapshot, daily 2026-11-30, weekly 2026-W49, monthly 2026-11"
    assert result.keep_reasons["2026-11-29_03-00-00"] == "daily 2026-11-29, weekly 2026-W48"
    assert result.keep_reasons["2026-10-31_03-00-00"] == "monthly 2026-10"
    assert set(result.keep_reasons) == {"2026-11-30_03-00-00", "2026-11-29_03-00-00", "2026-10-31_03-00-00"}
    assert len(result.delete) == 61 - 3


def test_snapshots_within_keep_days_need_no_gfs_reason():
    snaps = daily_run(dt.date(2026, 11, 1), 30)
    now = dt.datetime(2026, 11, 30, 4, 0, tzinfo=UTC)
    result = run_plan(snaps, now, keep_days=10, keep_daily=3)
    assert result.keep_reasons == {} and len(result.delete) == 30 - 10


def test_keep_days_zero_still_keeps_everything_whatever_the_gfs_keeps():
    snaps = daily_run(dt.date(2026, 1, 1), 100)
    now = dt.datetime(2026, 12, 1, tzinfo=UTC)
    assert run_plan(snaps, now, keep_days=0, keep_daily=1).delete == []


def test_an_unusable_run_deletes_nothing_with_gfs_keeps():
    snaps = daily_run(dt.date(2026, 1, 1), 100)
    result = plan(snaps, keep_days=1, now=dt.datetime(2026, 12, 1, tzinfo=UTC), latest=None, current=None,
                  current_usable=False, keep_daily=1)
    assert result.delete == []


def test_gfs_zero_changes_nothing():
    snaps = daily_run(dt.date(2026, 11, 1), 30)
    now = dt.datetime(2026, 11, 30, 4, 0, tzinfo=UTC)
    assert run_plan(snaps, now, keep_days=7) == run_plan(snaps, now, keep_days=7, keep_daily=0, keep_weekly=0,
                                                         keep_monthly=0)


def test_a_typical_policy_over_a_year_of_nightly_runs():
    snaps = daily_run(dt.date(2026, 1, 1), 365)   # … 2026-12-31, a Thursday of ISO week 2026-W53
    now = dt.datetime(2026, 12, 31, 4, 0, tzinfo=UTC)
    result = run_plan(snaps, now, keep_days=7, keep_daily=14, keep_weekly=8, keep_monthly=12)
    kept = {x.name for x in snaps} - set(result.delete)
    daily = {f"2026-12-{d:02d}_03-00-00" for d in range(18, 32)}
    # this week's newest (the 31st), then the Sundays ending the 7 weeks before
    weekly = {"2026-12-31_03-00-00"} | {f"{dt.date(2026, 12, 27) - dt.timedelta(days=7 * w):%Y-%m-%d}_03-00-00"
                                        for w in range(7)}
    monthly = {f"{dt.date(2026, m + 1, 1) - dt.timedelta(days=1):%Y-%m-%d}_03-00-00" for m in range(1, 12)}
    monthly.add("2026-12-31_03-00-00")
    assert set(gfs_keeps(snaps, keep_weekly=8)) == weekly
    assert kept == daily | weekly | monthly
    assert len(kept) == 14 + 5 + 11    # Sundays 15, 22, 29 Nov, 6, 13 Dec beyond the dailies; 11 month ends
    assert result.keep_reasons["2026-11-15_03-00-00"] == "weekly 2026-W46"
    assert result.keep_reasons["2026-01-31_03-00-00"] == "monthly 2026-01"


@pytest.mark.parametrize("args, text", [
    ((7,), "7 days"), ((0, 7, 4, 12), "forever"), ((7, 7, 4, 12), "7 days + 7 daily, 4 weekly, 12 monthly"),
    ((3, 0, 0, 6), "3 days + 6 monthly")])
def test_describe_policy(args, text):
    assert describe_policy(*args) == text


# -- properties ----------------------------------------------------------------------------

@st.composite
def histories(draw):
    start = draw(st.datetimes(min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2030, 1, 1),
                              timezones=st.just(UTC))).replace(microsecond=0)
    offsets = draw(st.lists(st.integers(min_value=0, max_value=400 * 86400), min_size=1, max_size=40, unique=True))
    snaps = [s(snapshot_name(start + dt.timedelta(seconds=o)),
               draw(st.sampled_from(["ok", "ok", "partial", "failed", None]))) for o in offsets]
    return snaps, draw(st.integers(0, 10)), draw(st.integers(0, 10)), draw(st.integers(0, 10))


@settings(max_examples=300, deadline=None)
@given(histories())
def test_gfs_properties(h):
    snaps, daily, weekly, monthly = h
    keeps = gfs_keeps(snaps, keep_daily=daily, keep_weekly=weekly, keep_monthly=monthly)
    by_name = {x.name: x for x in snaps}
    for name, reasons in keeps.items():
        assert by_name[name].status in ("ok", "partial")     # failed/unreadable never kept by GFS
        assert len(reasons) == len(set(reasons))
    for kind, n, fmt in (("daily", daily, lambda t: t.strftime("%Y-%m-%d")),
                         ("weekly", weekly, lambda t: "{0}-W{1:02d}".format(*t.isocalendar())),
                         ("monthly", monthly, lambda t: t.strftime("%Y-%m"))):
        got = [r for rs in keeps.values() for r in rs if r.startswith(kind + " ")]
        periods = {fmt(x.when) for x in snaps if x.status in ("ok", "partial")}
        assert len(got) == min(n, len(periods))               # one per period, at most n
        wanted = sorted(periods, reverse=True)[:n]
        assert sorted(r.split(" ", 1)[1] for r in got) == sorted(wanted)   # the newest periods
        for name, rs in keeps.items():
            for r in rs:
                if r.startswith(kind + " "):
                    period = r.split(" ", 1)[1]
                    same = [x for x in snaps if fmt(x.when) == period and x.status in ("ok", "partial")]
                    best = max(same, key=lambda x: (x.status == "ok", x.name))
                    assert best.name == name
