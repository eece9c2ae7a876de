"""The missed-run pieces that need no server: setup's duration flag,
the mail's subject, and the window check."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from coderz_backup import notify
from coderz_backup.missed import within_window
from coderz_backup.setup import parse_duration_h
from coderz_backup.snapshot import SnapshotInfo

UTC = dt.timezone.utc


@pytest.mark.parametrize("text, hours", [("26h", 26), ("26", 26), ("90m", 1.5), ("30s", 30 / 3600),
                                         (" 1.5h ", 1.5), ("10s", 10 / 3600)])
def test_durations(text, hours):
    assert parse_duration_h(text) == pytest.approx(hours)


@pytest.mark.parametrize("text, why", [("9s", "shorter than 10 s"), ("1d", "not a duration"),
                                       ("-1h", "not a duration"), ("", "not a duration")])
def test_bad_durations_say_why(text, why):
    with pytest.raises(ValueError, match=why):
        parse_duration_h(text)


def test_subject_names_the_last_success_or_says_there_is_none():
    since = dt.datetime(2026, 3, 5, 3, 0, 12, tzinfo=UTC)
    subj, html, text = notify.missed_bodies(since, "2026-03-05_03-00-12", 26, "/opt/coderz/backup/snapshots")
    assert subj == "🔴 Coderz Backup MISSED — no successful backup since 2026-03-05 03:00 UTC"
    assert "within 26 h" in text and "2026-03-05_03-00-12" in text and "<h2>🔴 Coderz Backup MISSED" in html
    assert notify.missed_bodies(None, None, 26, "/x")[0] == "🔴 Coderz Backup MISSED — no successful backup at all"


def test_within_window():
    snap = SnapshotInfo("2026-03-05_03-00-00", Path("/x/2026-03-05_03-00-00"), {"status": "ok"})
    at = dt.datetime(2026, 3, 5, 3, 0, tzinfo=UTC)
    assert within_window(snap, 26, now=at + dt.timedelta(hours=25, minutes=59))
    assert not within_window(snap, 26, now=at + dt.timedelta(hours=26))
    assert not within_window(None, 26, now=at)
