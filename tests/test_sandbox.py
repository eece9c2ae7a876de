"""The sandbox of the README's main job (`python -m coderz_backup.sandbox`), used as a user would:
backed up, left running, restored from the CLI with its own config, stopped."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from helpers import run_cli


def _running_under(work) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if str(work) in cmd and "coderz_backup.sandbox" not in cmd:
            found.append(cmd)
    return found


def test_the_sandbox_backs_up_stays_up_restores_completely_and_stops(cli_env):
    # not under tmp_path: its parents are 0700 and the postgres OS user must reach the cluster
    work = Path(tempfile.mkdtemp(prefix="coderz-sandbox-test-"))
    res = subprocess.run([sys.executable, "-m", "coderz_backup.sandbox", "--workdir", str(work), "--keep-running"],
                         env=cli_env, capture_output=True, text=True, timeout=600)
    try:
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        out = res.stdout
        assert "║ ✗ Failed : 0" in out and "║ ✓ Passed : 7" in out, out
        # what a worker needs to back it up, and how to stop it
        cfg = work / "coderz-backup.toml"
        hint = re.search(r"CODERZ_BACKUP_CONFIG=(\S+) (.*) \\\n +prefect worker start --pool coderz-backup", out)
        assert hint and hint.group(1) == str(cfg), out
        env = dict(kv.split("=", 1) for kv in hint.group(2).split())
        assert set(env) == {"PG_PREFECT_PASSWORD", "PG_CODERAPI_PASSWORD", "REDIS_PASSWORD"}
        assert f"python -m coderz_backup.sandbox --stop --workdir {work}" in out

        # every service of its config restores (the README's restore path on the sandbox ends well)
        restore = run_cli(["restore", "--yes", "--config", str(cfg)], env=dict(cli_env, **env), timeout=600)
        assert restore.returncode == 0, restore.stdout[-3000:] + restore.stderr[-3000:]
        for service in ("postgres-prefect", "postgres-coderapi", "redis", "prometheus", "configs", "etcd-k3s",
                        "etcd-apisix"):
            assert re.search(rf"\| {service} \| ok \|", restore.stdout), (service, restore.stdout)
        assert _running_under(work), "the sandbox's servers run again after the restore"
    finally:
        stop = subprocess.run([sys.executable, "-m", "coderz_backup.sandbox", "--stop", "--workdir", str(work)],
                              env=cli_env, capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.startswith("stopped: etcd-apisix, prometheus, redis, postgres"), stop.stdout
    assert _running_under(work) == []
    shutil.rmtree(work, ignore_errors=True)
