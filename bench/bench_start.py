"""The CLI's fixed cost: a one-file backup on the embedded API and against a running Prefect
server, and the commands that never start Prefect (list, verify, config check).

    .venv/bin/python bench/bench_start.py [--repeat 5] [--strict]

Everything runs in one temp dir: a config backing up one small file, its own PREFECT_HOME (the
embedded API's database is created by a first, untimed run), and a `prefect server start` on a
free 127.0.0.1 port for the "running server" figures. Each figure is the median wall time of
``--repeat`` runs of the real command (``python -m coderz_backup …`` as a user types it). Also
measured, to show where the embedded start goes: the embedded server's boot alone (launch →
/health answers) and ``import prefect.server.api.server`` alone. Ends with one JSON line.

Targets (issue 17): embedded < 5 s, running server < 2.5 s, list / verify / config check < 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"embedded_s": 5.0, "server_s": 2.5, "list_s": 1.0, "verify_s": 1.0, "config_check_s": 1.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(argv: list[str], env: dict, repeat: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeat):
        t = time.monotonic()
        res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        times.append(time.monotonic() - t)
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(argv[2:])} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return statistics.median(times), times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="coderz-bench-start-"))
    server = None
    try:
        (work / "c").mkdir()
        (work / "c" / "app.env").write_text("A=1\n")
        cfg = work / "coderz-backup.toml"
        cfg.write_text(f'dest = "{work / "snapshots"}"\n\n[services.configs]\nkind = "configs"\n'
                       f'paths = ["{work / "c"}"]\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=str(work / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   CODERZ_BACKUP_LOCAL_API="off", CODERZ_BACKUP_SIGNING_KEY=str(work / "keys" / "signing.key"))
        py = [sys.executable, "-m", "coderz_backup"]
        backup = [*py, "backup", "--config", str(cfg)]
        subprocess.run(backup, env=env, capture_output=True, timeout=300, check=True)   # creates the database
        figures: dict[str, float] = {}
        figures["embedded_s"], runs_embedded = _timed(backup, env, args.repeat)

        # where the embedded start goes
        code = ("import os, time; from pathlib import Path; from coderz_backup.orchestrator import EmbeddedServer\n"
                "t = time.monotonic(); s = EmbeddedServer(Path(os.environ['PREFECT_HOME']), 120).start()\n"
                "print(time.monotonic() - t); s.stop()")
        boots = [float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                      check=True, timeout=300).stdout.split()[-1]) for _ in range(3)]
        figures["embedded_server_boot_s"] = statistics.median(boots)
        imp = ("import time; t = time.monotonic(); import prefect.server.api.server; print(time.monotonic() - t)")
        imports = [float(subprocess.run([sys.executable, "-c", imp], env=env, capture_output=True, text=True,
                                        check=True, timeout=300).stdout.split()[-1]) for _ in range(3)]
        figures["prefect_server_import_s"] = statistics.median(imports)

        port = _free_port()
        senv = dict(env, PREFECT_HOME=str(work / "server-home"), PREFECT_UI_ENABLED="false")
        log = open(work / "server.log", "wb")
        server = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host",
                                   "127.0.0.1", "--port", str(port)], env=senv, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        import httpx

        from coderz_backup.waiting import wait_until

        url = f"http://127.0.0.1:{port}/api"

        def up() -> bool:
            if server.poll() is not None:
                raise SystemExit(f"prefect server exited (log {work / 'server.log'})")
            return httpx.get(f"{url}/health", timeout=2).status_code == 200

        wait_until(up, timeout=120, interval=0.5, retry=httpx.HTTPError,
                   error=lambda _: SystemExit(f"prefect server did not start (log {work / 'server.log'})"))
        renv = dict(env, PREFECT_API_URL=url)
        subprocess.run(backup, env=renv, capture_output=True, timeout=300, check=True)   # first run: flow registered
        figures["server_s"], runs_server = _timed(backup, renv, args.repeat)
        figures["list_s"], _ = _timed([*py, "list", "--config", str(cfg)], env, args.repeat)
        figures["verify_s"], _ = _timed([*py, "verify", "--config", str(cfg)], env, args.repeat)
        figures["config_check_s"], _ = _timed([*py, "config", "check", "--config", str(cfg)], env, args.repeat)

        missed = []
        print(f"median of {args.repeat} (python {sys.version.split()[0]} at {sys.executable}, {os.cpu_count()} cores)")
        for key, value in figures.items():
            target = TARGETS.get(key)
            mark = "" if target is None else ("PASS" if value < target else "FAIL")
            if mark == "FAIL":
                missed.append(key)
            print(f"  {key:26} {value:6.2f} s  {'< ' + str(target) + ' s ' + mark if target else ''}")
        print(json.dumps({"bench": "start", **{k: round(v, 3) for k, v in figures.items()},
                          "runs_embedded": [round(t, 2) for t in runs_embedded],
                          "runs_server": [round(t, 2) for t in runs_server], "python": sys.version.split()[0]}))
        return 1 if (missed and args.strict) else 0
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
