#!/usr/bin/env python3
"""Benchmark: coderz-backup's PostgreSQL backup against plain pg_dump.

Starts a throwaway PostgreSQL 15 cluster (coderz_backup.sandbox.PostgresServer) in a
temp dir, fills a database with ``pgbench -i -s SCALE`` and then times, best of
``--repeat`` runs (wall clock):

  raw    pg_dump --format=plain > file                        (one subprocess)
  gzip6  pg_dump --format=plain | gzip -6 > file              (two subprocesses)
  ours   PostgresService.backup()  → <name>.sql.gz            (isal gzip, sha256, fsync)

"ours" runs in a fresh child Python process per repetition so that the peak RSS of
that process (VmHWM) can be measured on its own. Its time is the wall clock of the
backup() call inside the child (interpreter start-up and imports are reported apart).

Targets: ours ≤ 1.10 × raw time, peak RSS of our Python process < 200 MB.
Exit status is 0 unless --strict is given and a target is missed.

Usage:  .venv/bin/python bench/bench_postgres.py --scale 50 [--repeat 3] [--strict]
This is a benchmark script, not a pytest test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.10
TARGET_RSS_MB = 200.0

ROLE = "bench"
DATABASE = "bench"
PASSWORD_ENV = "BENCH_PG_PASSWORD"


# ---------------------------------------------------------------------------
# child mode: one run of our backup, in its own process


def child_main(port: int, out_dir: str, pg_dump: str, result_file: str) -> int:
    t0 = time.monotonic()
    from pydantic import SecretStr

    from coderz_backup.access import LocalAccess
    from coderz_backup.services.postgres import PostgresConfig
    from coderz_backup.services.postgres import PostgresService

    imported = time.monotonic()
    cfg = PostgresConfig(kind="postgres", host="127.0.0.1", port=port, user=ROLE,
                         password=SecretStr(f"env:{PASSWORD_ENV}"), database=DATABASE, pg_dump=pg_dump)
    svc = PostgresService(name="bench", config=cfg, access=LocalAccess())
    started = time.monotonic()
    results = svc.backup(Path(out_dir))
    elapsed = time.monotonic() - started
    hwm_kb = None
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                hwm_kb = int(line.split()[1])
    import resource

    path = Path(out_dir) / svc.artifact_path
    res = results[0]
    out = {
        "backup_s": elapsed,
        "import_s": imported - t0,
        "vmhwm_kb": hwm_kb,
        "ru_maxrss_self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "bytes": path.stat().st_size,
        "raw_bytes": getattr(res, "details", {}).get("raw_bytes"),
    }
    Path(result_file).write_text(json.dumps(out))
    return 0


# ---------------------------------------------------------------------------
# parent


_interrupted = False
_live: list[subprocess.Popen] = []  # children still running, stopped on the way out


def _interrupt(*_: object) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def _stop_children() -> None:
    """Stop whatever we started that still runs (our backup child gets SIGINT so it cleans up)."""
    for proc in _live:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGINT if proc.args[0] == sys.executable else signal.SIGKILL)
                proc.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
    _live.clear()


def _pg_env(password: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PGPASSWORD"] = password
    return env


def _dump_argv(pg_dump: str, port: int) -> list[str]:
    return [pg_dump, "--host", "127.0.0.1", "--port", str(port), "--username", ROLE, "--no-password",
            "--dbname", DATABASE, "--format=plain"]


def run_raw(argv: list[str], env: dict[str, str], out: Path) -> tuple[float, float]:
    """pg_dump > out; returns (seconds, fsync seconds measured after, not included)."""
    with open(out, "wb") as fh:
        t = time.monotonic()
        subprocess.run(argv, stdout=fh, env=env, check=True)
        elapsed = time.monotonic() - t
        t = time.monotonic()
        os.fsync(fh.fileno())
        fsync_s = time.monotonic() - t
    return elapsed, fsync_s


def run_gzip(argv: list[str], env: dict[str, str], out: Path, level: int = 6) -> float:
    """pg_dump | gzip -LEVEL > out, as two subprocesses joined by a pipe."""
    gzip = shutil.which("gzip") or "gzip"
    with open(out, "wb") as fh:
        t = time.monotonic()
        p1 = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
        _live.append(p1)
        p2 = subprocess.Popen([gzip, f"-{level}"], stdin=p1.stdout, stdout=fh)
        _live.append(p2)
        assert p1.stdout is not None
        p1.stdout.close()  # so pg_dump gets SIGPIPE if gzip dies
        rc2 = p2.wait()
        rc1 = p1.wait()
        elapsed = time.monotonic() - t
    _live.clear()
    if rc1 or rc2:
        raise RuntimeError(f"pg_dump | gzip failed: pg_dump={rc1} gzip={rc2}")
    return elapsed


def run_ours(port: int, pg_dump: str, password: str, out_dir: Path) -> dict:
    """One backup in a fresh child Python process; returns its figures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result_file = out_dir / "result.json"
    env = dict(os.environ)
    env[PASSWORD_ENV] = password  # env, never argv
    argv = [sys.executable, os.path.abspath(__file__), "--_child", str(port), str(out_dir), pg_dump,
            str(result_file)]
    t = time.monotonic()
    proc = subprocess.Popen(argv, env=env)
    _live.append(proc)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    _live.clear()
    total = time.monotonic() - t
    if proc.returncode != 0:
        raise RuntimeError(f"child backup process exited with status {proc.returncode}")
    res = json.loads(result_file.read_text())
    res["child_total_s"] = total
    res["wait4_maxrss_kb"] = ru.ru_maxrss  # max over the child and the pg_dump it reaped; VmHWM is ours alone
    return res


def fmt_mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_child":
        _, port, out_dir, pg_dump, result_file = argv
        try:
            return child_main(int(port), out_dir, pg_dump, result_file)
        except KeyboardInterrupt:  # the parent was interrupted; the writer has removed its partial file
            return 130

    p = argparse.ArgumentParser(description="Benchmark PostgresService.backup against pg_dump > file "
                                            "and pg_dump | gzip -6 > file.")
    p.add_argument("--scale", type=int, default=50, help="pgbench -i scale factor (default 50, ≈ 750 MB of tables)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions per variant; the best is kept (default 3)")
    p.add_argument("--strict", action="store_true", help="exit non-zero when a target is missed")
    p.add_argument("--workdir", default=None, help="parent dir for the temp dir (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (dumps, pgdata) afterwards")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be ≥ 1")

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from coderz_backup.sandbox import PostgresServer, pg_bin

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="coderz-bench-pg-", dir=args.workdir))
    os.chmod(work, 0o755)  # the postgres OS user must reach its data dir below
    password = "bench-" + os.urandom(8).hex()
    pg = PostgresServer(work / "postgres")
    pg_dump = pg_bin("pg_dump")
    pgbench = pg_bin("pgbench")
    out = work / "out"
    out.mkdir()
    rc = 0
    try:
        print(f"temp dir {work}; starting PostgreSQL on 127.0.0.1:{pg.port}", flush=True)
        pg.start()
        pg.create_role_db(ROLE, password, DATABASE)
        env = _pg_env(password)
        t = time.monotonic()
        print(f"pgbench -i -s {args.scale} …", flush=True)
        subprocess.run([pgbench, "-i", "-s", str(args.scale), "-q", "-h", "127.0.0.1", "-p", str(pg.port),
                        "-U", ROLE, DATABASE], env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
        init_s = time.monotonic() - t
        with pg.connect(DATABASE) as c:
            c.execute("VACUUM ANALYZE")
            db_bytes = c.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        print(f"loaded in {init_s:.1f}s; database size {fmt_mb(db_bytes)}", flush=True)

        dump = _dump_argv(pg_dump, pg.port)
        raw_t, gz_t, ours_t, fsyncs, ours_runs = [], [], [], [], []
        raw_file, gz_file = out / "raw.sql", out / "gzip6.sql.gz"
        ours_dir = out / "ours"
        for i in range(1, args.repeat + 1):  # interleaved, so drift hits all three alike
            s, f = run_raw(dump, env, raw_file)
            raw_t.append(s)
            fsyncs.append(f)
            print(f"[{i}/{args.repeat}] raw   {s:7.2f}s  (fsync afterwards {f:.2f}s, not counted)", flush=True)
            s = run_gzip(dump, env, gz_file)
            gz_t.append(s)
            print(f"[{i}/{args.repeat}] gzip6 {s:7.2f}s", flush=True)
            shutil.rmtree(ours_dir, ignore_errors=True)
            r = run_ours(pg.port, pg_dump, password, ours_dir)
            ours_t.append(r["backup_s"])
            ours_runs.append(r)
            print(f"[{i}/{args.repeat}] ours  {r['backup_s']:7.2f}s  (child total {r['child_total_s']:.2f}s, "
                  f"imports {r['import_s']:.2f}s, VmHWM {r['vmhwm_kb'] / 1024:.1f} MB)", flush=True)

        raw_size = raw_file.stat().st_size
        gz_size = gz_file.stat().st_size
        ours_size = ours_runs[-1]["bytes"]
        ours_raw = ours_runs[-1]["raw_bytes"]
        best_raw, best_gz, best_ours = min(raw_t), min(gz_t), min(ours_t)
        ratio_ours = best_ours / best_raw
        ratio_gz = best_gz / best_raw
        rss_mb = max(r["vmhwm_kb"] for r in ours_runs) / 1024
        ok_time = ratio_ours <= TARGET_RATIO
        ok_rss = rss_mb < TARGET_RSS_MB

        print()
        print(f"scale {args.scale}, database {fmt_mb(db_bytes)}, best of {args.repeat}")
        print(f"  {'variant':<22}{'time':>9}{'ratio':>8}{'output':>14}{'vs raw':>9}")
        print(f"  {'raw  pg_dump > file':<22}{best_raw:8.2f}s{1:8.2f}{fmt_mb(raw_size):>14}{1:8.1%}")
        print(f"  {'gzip6  | gzip -6':<22}{best_gz:8.2f}s{ratio_gz:8.2f}{fmt_mb(gz_size):>14}"
              f"{gz_size / raw_size:8.1%}")
        print(f"  {'ours  backup()':<22}{best_ours:8.2f}s{ratio_ours:8.2f}{fmt_mb(ours_size):>14}"
              f"{ours_size / raw_size:8.1%}")
        med = {k: statistics.median(v) for k, v in (("raw", raw_t), ("gzip6", gz_t), ("ours", ours_t))}
        print(f"  medians: raw {med['raw']:.2f}s, gzip6 {med['gzip6']:.2f}s, ours {med['ours']:.2f}s "
              f"(ours/raw {med['ours'] / med['raw']:.2f}); spread shows how noisy the host is")
        print(f"  raw SQL through ours: {ours_raw:,} bytes (raw file {raw_size:,})")
        print(f"  raw throughput {raw_size / best_raw / 1e6:,.0f} MB/s; ours {ours_raw / best_ours / 1e6:,.0f} MB/s")
        print(f"  peak RSS of our Python process: {rss_mb:.1f} MB")
        print(f"  {'PASS' if ok_time else 'FAIL'}  time: ours/raw = {ratio_ours:.3f} (target ≤ {TARGET_RATIO:.2f})")
        print(f"  {'PASS' if ok_rss else 'FAIL'}  memory: peak RSS = {rss_mb:.1f} MB (target < {TARGET_RSS_MB:.0f} MB)")
        figures = {
            "bench": "postgres", "scale": args.scale, "repeat": args.repeat, "db_bytes": db_bytes,
            "cpus": os.cpu_count(), "pgbench_init_s": round(init_s, 2),
            "raw_s": [round(x, 3) for x in raw_t], "gzip6_s": [round(x, 3) for x in gz_t],
            "ours_s": [round(x, 3) for x in ours_t],
            "ours_child_total_s": [round(r["child_total_s"], 3) for r in ours_runs],
            "raw_fsync_s": [round(x, 3) for x in fsyncs],
            "best_raw_s": round(best_raw, 3), "best_gzip6_s": round(best_gz, 3), "best_ours_s": round(best_ours, 3),
            "median_raw_s": round(med["raw"], 3), "median_gzip6_s": round(med["gzip6"], 3),
            "median_ours_s": round(med["ours"], 3), "median_ratio_ours_raw": round(med["ours"] / med["raw"], 3),
            "ratio_ours_raw": round(ratio_ours, 3), "ratio_gzip6_raw": round(ratio_gz, 3),
            "raw_bytes": raw_size, "gzip6_bytes": gz_size, "ours_bytes": ours_size, "ours_raw_bytes": ours_raw,
            "ours_peak_rss_mb": round(rss_mb, 1),
            "pass_time": ok_time, "pass_rss": ok_rss, "pass": ok_time and ok_rss,
        }
        print(json.dumps(figures))
        if args.strict and not (ok_time and ok_rss):
            rc = 1
    except KeyboardInterrupt:
        rc = 130
    except Exception:
        if not _interrupted:  # a child that died of the same Ctrl-C is not an error of its own
            raise
        rc = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if rc == 130:
            print("\ninterrupted; stopping PostgreSQL and cleaning up", file=sys.stderr)
        try:
            _stop_children()
            pg.stop()
        finally:
            if args.keep:
                print(f"kept {work}", file=sys.stderr)
            else:
                shutil.rmtree(work, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
