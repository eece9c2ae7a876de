"""The drill's own parts without servers: the reaper that cleans up after a killed drill, the
verdict over a drill's results."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from coderz_backup.drill import DrillResult, summary

CHILD = r"""
import os, signal, subprocess, sys
from coderz_backup.drill import Reaper
r = Reaper()
(r.root / "scratch-data").write_text("x")
p = subprocess.Popen(["sh", "-c", "sleep 300; true", str(r.root / "scratch-data")], start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
import time
deadline = time.monotonic() + 10
child = None
while child is None and time.monotonic() < deadline:   # the worker that does not name the folder
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and open(f"/proc/{pid}/stat").read().split(") ")[1].split()[1] == str(p.pid):
                child = pid
        except OSError:
            pass
print(r.root, p.pid, child, flush=True)
os.kill(os.getpid(), signal.SIGKILL)      # the drill dies without cleaning up anything
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def test_the_reaper_kills_the_scratch_processes_and_removes_the_folder_when_the_drill_is_killed():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    root, pid, child = out.stdout.split()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (_alive(int(pid)) or _alive(int(child)) or os.path.exists(root)):
        time.sleep(0.1)
    assert not _alive(int(pid)), "the scratch process outlived the drill"
    assert not _alive(int(child)), "the scratch process's child outlived the drill"
    assert not os.path.exists(root), "the scratch folder outlived the drill"


def test_a_drill_is_ok_only_when_something_matched_and_nothing_mismatched_or_failed():
    def r(status):
        return DrillResult("s", "postgres", "s.sql.gz", status, duration_s=1.5)

    assert summary([r("matched"), r("not-drillable")])["ok"] is True
    assert summary([r("matched"), r("mismatched")])["ok"] is False
    assert summary([r("matched"), r("failed")])["ok"] is False
    assert summary([r("not-drillable")])["ok"] is False       # a drill that proved nothing is not OK
    assert summary([r("matched"), r("matched")])["restore_s"] == 3.0


def test_a_dump_from_another_postgresql_major_version_is_not_drillable_here(tmp_path):
    import pytest

    from coderz_backup.drill import NotDrillable, _postgres
    from coderz_backup.services.postgres import PostgresConfig

    cfg = PostgresConfig(kind="postgres", user="u", database="d")
    with pytest.raises(NotDrillable, match=r"the dump is from PostgreSQL 99\.1, this host's scratch server is 15"):
        with _postgres(tmp_path, cfg, {"server_version": "99.1", "tables": {}}):
            pass
    assert not list(tmp_path.iterdir())   # nothing was started
