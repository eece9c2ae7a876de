#!/usr/bin/env python3
"""Benchmark: the whole stack at the product document's scale, through the real CLI.

Builds, in one temp dir, a stack shaped like the document's 3.1 GB night (scale 1):

  postgres       a real PostgreSQL 15 (coderz_backup.sandbox.PostgresServer), pgbench -i, ≥ 500 MB
  prometheus     a real Prometheus 2.42 on a TSDB of ≥ 800 MB in many 2 h blocks, made with
                 ``promtool tsdb create-blocks-from openmetrics`` from generated OpenMetrics text
  elasticsearch  a data dir of ≥ 2 GB of segment-like files (mostly incompressible stored
                 fields, some compressible terms/postings), API served by tests/standins
  grafana        a data dir with a 45 MB grafana.db (real SQLite), API served by tests/standins
  configs        a tree of a few hundred small files

and times, best of ``--repeat`` (medians printed too):

  ours     ``python -m coderz_backup backup --config …`` (embedded Prefect API), all services;
           and the same against a running ``prefect server start`` (``--no-server`` skips it)
  serial   the document's way, as one bash script: pg_dump | gzip > f; tar czf of each dir
  single   each service alone through our writer (service.backup() in a child process)
  floor    the raw tools alone: pg_dump > file; tar cf - DIR | cat > /dev/null

Targets: ours ≤ 0.5 × serial; ours ≤ 1.2 × the slowest floor; peak RSS of our processes
< 200 MB. Exit status 0 unless --strict is given and a target is missed.

Usage:  PYTHONPATH=$PWD .venv/bin/python bench/bench_stack.py [--scale 0.05] [--repeat 1] [--strict]
This is a benchmark script, not a pytest test.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TARGET_VS_SERIAL = 0.5
TARGET_VS_FLOOR = 1.2
TARGET_RSS_MB = 200.0

# the document's sizes at scale 1 (bytes)
PG_SCALE_AT_1 = 34               # pgbench -i -s 34 ≈ 540 MB database
PROM_BYTES_AT_1 = 820e6
ES_BYTES_AT_1 = 2.1e9
GRAFANA_DB_AT_1 = 45e6
CONFIG_FILES = 300

ROLE = DATABASE = "bench"
PG_PW_ENV, GF_PW_ENV, ES_PW_ENV = "BENCH_PG_PASSWORD", "BENCH_GF_PASSWORD", "BENCH_ES_PASSWORD"
SERVICES = ("postgres", "grafana", "prometheus", "elasticsearch", "configs")


# ---------------------------------------------------------------------------
# child mode: one service's backup() alone, in its own process


def child_main(config: str, name: str, out_dir: str, result_file: str) -> int:
    from coderz_backup import config as cfgmod
    from coderz_backup import services

    cfg = cfgmod.load(config)
    svc = services.create(name, cfg.services[name])
    t = time.monotonic()
    svc.backup(Path(out_dir))
    elapsed = time.monotonic() - t
    hwm_kb = 0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                hwm_kb = int(line.split()[1])
    size = sum(p.stat().st_size for p in Path(out_dir).rglob("*") if p.is_file())
    Path(result_file).write_text(json.dumps({"backup_s": elapsed, "vmhwm_kb": hwm_kb, "bytes": size}))
    return 0


# ---------------------------------------------------------------------------
# parent: process bookkeeping


_interrupted = False
_live: list[subprocess.Popen] = []


def _interrupt(*_: object) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def _stop_children() -> None:
    for proc in list(_live):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGINT)   # each child leads its own group (start_new_session)
                proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                proc.wait()
    _live.clear()


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            pass
    return out


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_timed(argv: list[str], env: dict, *, log: Path, sample: bool = False) -> dict:
    """Run argv in its own session; wall, CPU (user+sys of it and what it reaped), max RSS.

    With ``sample`` a thread polls /proc every 0.2 s: VmHWM of the top process and the largest
    sum of VmRSS over its whole process tree (pg_dump, tar, the embedded Prefect server …).
    """
    with open(log, "ab") as lf:
        epoch = time.time()
        t = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
        _live.append(proc)
        peak = {"hwm_kb": 0, "tree_rss_kb": 0}
        done = threading.Event()

        def poll() -> None:
            while not done.wait(0.2):
                hwm = _status_kb(proc.pid, "VmHWM:")
                if hwm:
                    peak["hwm_kb"] = max(peak["hwm_kb"], hwm)
                peak["tree_rss_kb"] = max(peak["tree_rss_kb"], sum(_status_kb(p, "VmRSS:") for p in _tree(proc.pid)))

        th = threading.Thread(target=poll, daemon=True)
        if sample:
            th.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t
        done.set()
        proc.returncode = os.waitstatus_to_exitcode(status)
    _live.remove(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} … exited with status {proc.returncode}; see {log}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_kb": ru.ru_maxrss, "start_epoch": epoch,
            **peak}


def flow_span(backup_log: Path) -> tuple[float, float]:
    """(epoch of the first line, epoch of the last line) of a snapshot's backup.log (1 s resolution)."""
    import datetime as dt

    stamps = [line.split(" ", 1)[0] for line in backup_log.read_text().splitlines() if line[:2] == "20"]
    conv = [dt.datetime.strptime(x, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp() for x in stamps]
    return conv[0], conv[-1] + 1.0


_server: subprocess.Popen | None = None


def start_prefect_server(work: Path, env: dict) -> dict:
    """A `prefect server start` on a free 127.0.0.1 port (its own PREFECT_HOME); env for the CLI to use it."""
    global _server
    import httpx

    from coderz_backup.sandbox import free_port
    from coderz_backup.waiting import wait_until

    port = free_port()
    senv = dict(env, PREFECT_HOME=str(work / "server-home"), PREFECT_UI_ENABLED="false")
    with open(work / "prefect-server.log", "wb") as log:
        _server = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host",
                                    "127.0.0.1", "--port", str(port)], env=senv, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"

    def up() -> bool:
        if _server.poll() is not None:
            raise SystemExit(f"prefect server exited (log {work / 'prefect-server.log'})")
        return httpx.get(f"{url}/health", timeout=2).status_code == 200

    wait_until(up, timeout=180, interval=0.5, retry=httpx.HTTPError,
               error=lambda _: SystemExit(f"prefect server did not start (log {work / 'prefect-server.log'})"))
    return dict(env, PREFECT_API_URL=url)


def stop_prefect_server() -> None:
    if _server is not None and _server.poll() is None:
        os.killpg(_server.pid, signal.SIGTERM)
        try:
            _server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(_server.pid, signal.SIGKILL)
            _server.wait()


def fmt_mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# ---------------------------------------------------------------------------
# building the stack


def _promtool_done(proc: subprocess.Popen) -> None:
    _, err = proc.communicate()
    _live.remove(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"promtool tsdb create-blocks-from openmetrics failed: {err.decode(errors='replace')[-500:]}")


def build_prometheus_tsdb(out: Path, target_bytes: float, work: Path) -> int:
    """Blocks of ≥ target_bytes via promtool, one 2 h window per OpenMetrics file.

    Random float values (a pool of 65 536, picked at random) make real XOR chunks of about
    8 bytes a sample, as poorly compressible as busy real data. Series-major within each file;
    promtool parses each file while the next one is generated.
    """
    promtool = shutil.which("promtool")
    if not promtool:
        raise SystemExit("promtool not found (Debian package prometheus)")
    series, step = 2000, 15                       # 2000 series, one sample every 15 s
    per_window = 7200 // step                     # 480 samples per series per 2 h block
    samples = target_bytes / 7.8                  # measured: ≈ 7.8 bytes per sample on disk (index included)
    windows = max(2, round(samples / (series * per_window)))
    rnd = random.Random(17)
    pool = [repr(rnd.uniform(0, 1e6)) for _ in range(65536)]
    now = int(time.time()) // 7200 * 7200
    start = now - (windows + 1) * 7200            # all blocks in the past, none overlapping the head
    prefixes = [f'bench_metric_{s % 40}{{instance="node-{s // 40}",job="bench"}} ' for s in range(series)]
    out.mkdir(parents=True, exist_ok=True)
    running: subprocess.Popen | None = None
    for w in range(windows):
        t0 = start + w * 7200
        ts = [str(t0 + i * step) for i in range(per_window)]
        src = work / f"om-{w % 2}.txt"
        with open(src, "w", buffering=1 << 22) as fh:
            for fam in range(40):
                fh.write(f"# TYPE bench_metric_{fam} gauge\n")
                for s in range(fam, series, 40):
                    p = prefixes[s]
                    vals = rnd.choices(pool, k=per_window)
                    fh.write("".join([f"{p}{v} {t}\n" for v, t in zip(vals, ts)]))
            fh.write("# EOF\n")
        if running is not None:
            _promtool_done(running)
        running = subprocess.Popen([promtool, "tsdb", "create-blocks-from", "openmetrics", str(src), str(out)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        _live.append(running)
    if running is not None:
        _promtool_done(running)
    for f in work.glob("om-*.txt"):
        f.unlink()
    return windows


def build_es_dir(root: Path, target_bytes: float) -> None:
    """Lucene-like segments: 85 % stored fields (.fdt, incompressible), the rest terms/postings-like
    text that gzip shrinks, plus per-shard state and translog files."""
    buf = os.urandom(16 << 20)
    words = b" ".join(b"term%05d" % i for i in range(4000)) + b"\n"
    text = (words * ((4 << 20) // len(words) + 1))[: 4 << 20]
    indices, shards = 4, 2
    per_shard = target_bytes / (indices * shards)
    seg_bytes = 64 << 20
    for i in range(indices):
        for sh in range(shards):
            d = root / "nodes" / "0" / "indices" / f"idx{i}uuid{os.urandom(6).hex()}" / str(sh)
            (d / "index").mkdir(parents=True)
            (d / "translog").mkdir()
            (d / "_state").mkdir()
            (d / "_state" / "state-1.st").write_bytes(os.urandom(300))
            (d / "translog" / "translog-1.tlog").write_bytes(text[: 1 << 16])
            left, seg = per_shard, 0
            while left > 0:
                n = int(min(seg_bytes, left))
                fdt, rest = int(n * 0.85), n - int(n * 0.85)
                with open(d / "index" / f"_{seg}.fdt", "wb") as fh:
                    off = random.randrange(len(buf) // 2)
                    while fdt > 0:
                        chunk = buf[off: off + min(fdt, len(buf) - off)]
                        fh.write(chunk)
                        fdt -= len(chunk)
                        off = 0
                for ext, share in ((".tim", 0.4), (".doc", 0.3), (".pos", 0.3)):
                    with open(d / "index" / f"_{seg}{ext}", "wb") as fh:
                        k = int(rest * share)
                        while k > 0:
                            fh.write(text[: min(k, len(text))])
                            k -= len(text)
                (d / "index" / f"_{seg}.si").write_bytes(os.urandom(400))
                left -= n
                seg += 1
            (d / "index" / "segments_1").write_bytes(os.urandom(1000))
    (root / "nodes" / "0" / "node.lock").write_bytes(b"")


def build_grafana_dir(root: Path, db_bytes: float) -> None:
    (root / "plugins" / "some-panel").mkdir(parents=True)
    (root / "plugins" / "some-panel" / "module.js").write_text("console.log('panel');\n" * 2000)
    (root / "png").mkdir()
    db = sqlite3.connect(root / "grafana.db")
    db.execute("CREATE TABLE dashboard (id INTEGER PRIMARY KEY, uid TEXT, title TEXT, data TEXT)")
    db.execute("CREATE TABLE dashboard_version (id INTEGER PRIMARY KEY, dashboard_id INT, data TEXT)")
    db.execute("CREATE TABLE annotation (id INTEGER PRIMARY KEY, epoch INT, text TEXT, tags BLOB)")
    panel = json.dumps({"type": "timeseries", "targets": [{"expr": "rate(http_requests_total[5m])"}]})
    i = 0
    while (root / "grafana.db").stat().st_size < db_bytes:
        rows = [(i + k, f"uid{i + k}", f"Dashboard {i + k}", "[" + ",".join([panel] * 40) + "]") for k in range(50)]
        db.executemany("INSERT INTO dashboard VALUES (?,?,?,?)", rows)
        db.executemany("INSERT INTO dashboard_version (dashboard_id, data) VALUES (?,?)",
                       [(r[0], r[3]) for r in rows])
        db.executemany("INSERT INTO annotation (epoch, text, tags) VALUES (?,?,?)",
                       [(k, f"deploy {k}", os.urandom(200)) for k in range(500)])
        db.commit()
        i += 50
    db.close()


def build_configs(root: Path, n: int) -> None:
    rnd = random.Random(5)
    for k in range(n):
        d = root / f"svc{k % 25}" / ("conf.d" if k % 3 else "")
        d.mkdir(parents=True, exist_ok=True)
        lines = [f"option_{j} = value-{rnd.randrange(10 ** 6)}\n" for j in range(rnd.randrange(20, 600))]
        (d / f"file{k}.conf").write_text("".join(lines))
    (root / "docker-compose.yml").write_text("services:\n" + "".join(f"  s{k}:\n    image: x:{k}\n" for k in range(40)))


# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_child":
        try:
            return child_main(*argv[1:])
        except KeyboardInterrupt:
            return 130

    p = argparse.ArgumentParser(description="Whole-stack benchmark: CLI backup vs. the serial shell script vs. "
                                            "each artifact alone vs. the raw tools.")
    p.add_argument("--scale", type=float, default=1.0,
                   help="size factor of every part (1 = the document: 540 MB DB, 820 MB TSDB, 2.1 GB ES, 45 MB "
                        "grafana.db); e.g. 0.05 for a quick run")
    p.add_argument("--repeat", type=int, default=1, help="rounds; the best is kept (default 1)")
    p.add_argument("--strict", action="store_true", help="exit non-zero when a target is missed")
    p.add_argument("--workdir", default=None, help="parent dir for the temp dir (default: system temp)")
    p.add_argument("--no-server", action="store_true",
                   help="skip the CLI runs against a running `prefect server start` (embedded API only)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir afterwards")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.scale <= 0:
        p.error("--repeat must be ≥ 1 and --scale > 0")

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from coderz_backup.sandbox import PostgresServer, PrometheusServer, pg_bin
    from standins.elasticsearch import EsStandin
    from standins.grafana import GrafanaStandin

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="coderz-bench-stack-", dir=args.workdir))
    os.chmod(work, 0o755)
    pw = {k: "bench-" + os.urandom(8).hex() for k in (PG_PW_ENV, GF_PW_ENV, ES_PW_ENV)}
    pg = PostgresServer(work / "postgres")

    class Prom(PrometheusServer):   # no compaction or retention while we measure; no self-scrape
        def argv(self) -> list[str]:
            return super().argv() + ["--storage.tsdb.min-block-duration=2h", "--storage.tsdb.max-block-duration=2h",
                                     "--storage.tsdb.retention.time=100y"]

    prom = Prom(work / "prom", self_scrape=False)
    gf = GrafanaStandin(users={"admin": pw[GF_PW_ENV]})
    es = EsStandin(users={"elastic": pw[ES_PW_ENV]})
    pg_dump, pgbench = pg_bin("pg_dump"), pg_bin("pgbench")
    rc = 0
    try:
        print(f"temp dir {work}; scale {args.scale}", flush=True)
        built: dict[str, float] = {}
        t = time.monotonic()
        pg.start()
        pg.create_role_db(ROLE, pw[PG_PW_ENV], DATABASE)
        env_pg = dict(os.environ, PGPASSWORD=pw[PG_PW_ENV])
        pg_scale = max(1, round(PG_SCALE_AT_1 * args.scale))
        subprocess.run([pgbench, "-i", "-s", str(pg_scale), "-q", "-h", "127.0.0.1", "-p", str(pg.port), "-U", ROLE,
                        DATABASE], env=env_pg, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with pg.connect(DATABASE) as c:
            c.execute("VACUUM ANALYZE")
            db_bytes = c.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        built["postgres_s"] = time.monotonic() - t
        print(f"postgres: pgbench -s {pg_scale}, database {fmt_mb(db_bytes)} ({built['postgres_s']:.0f}s)", flush=True)

        t = time.monotonic()
        blocks = build_prometheus_tsdb(prom.data, PROM_BYTES_AT_1 * args.scale, work)
        prom.start(timeout=300)
        built["prometheus_s"] = time.monotonic() - t
        prom_bytes = du(prom.data)
        print(f"prometheus: {blocks} blocks, TSDB {fmt_mb(prom_bytes)} ({built['prometheus_s']:.0f}s)", flush=True)

        t = time.monotonic()
        es_dir, gf_dir, cf_dir = work / "es-data", work / "grafana-data", work / "configs"
        build_es_dir(es_dir, ES_BYTES_AT_1 * args.scale)
        build_grafana_dir(gf_dir, max(1e6, GRAFANA_DB_AT_1 * args.scale))
        build_configs(cf_dir, CONFIG_FILES)
        gf.start()
        es.start()
        import httpx

        for k in range(10):
            httpx.post(f"{gf.url}/api/dashboards/db", auth=("admin", pw[GF_PW_ENV]), timeout=10, json={
                "dashboard": {"id": None, "uid": f"d{k}", "title": f"Dash {k}", "panels": []}, "overwrite": False},
                       ).raise_for_status()
        for k in range(4):
            lines = b"".join(b'{"index":{"_index":"logs-%d","_id":"%d"}}\n{"msg":"line %d"}\n' % (k, i, i)
                             for i in range(500))
            httpx.post(f"{es.url}/_bulk?refresh=true", auth=("elastic", pw[ES_PW_ENV]), content=lines, timeout=30,
                       headers={"Content-Type": "application/x-ndjson"}).raise_for_status()
        built["files_s"] = time.monotonic() - t
        es_bytes, gf_bytes, cf_bytes = du(es_dir), du(gf_dir), du(cf_dir)
        print(f"elasticsearch data {fmt_mb(es_bytes)}, grafana data {fmt_mb(gf_bytes)}, configs "
              f"{fmt_mb(cf_bytes)} ({built['files_s']:.0f}s)", flush=True)

        dest = work / "snapshots"
        cfg = work / "coderz-backup.toml"
        cfg.write_text(f'''dest = "{dest}"

[services.postgres]
kind = "postgres"
host = "127.0.0.1"
port = {pg.port}
user = "{ROLE}"
password = "env:{PG_PW_ENV}"
database = "{DATABASE}"
pg_dump = "{pg_dump}"

[services.grafana]
kind = "grafana"
url = "{gf.url}"
user = "admin"
password = "env:{GF_PW_ENV}"
data_dir = "{gf_dir}"

[services.prometheus]
kind = "prometheus"
url = "{prom.url}"
data_dir = "{prom.data}"

[services.elasticsearch]
kind = "elasticsearch"
url = "{es.url}"
user = "elastic"
password = "env:{ES_PW_ENV}"
data_dir = "{es_dir}"

[services.configs]
kind = "configs"
paths = ["{cf_dir}"]
''')
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(pw, PREFECT_HOME=str(work / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   CODERZ_BACKUP_LOCAL_API="off", CODERZ_BACKUP_SIGNING_KEY=str(work / "keys" / "signing.key"),
                   PYTHONPATH=os.pathsep.join([str(ROOT), env_pg.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        out = work / "out"
        out.mkdir()
        log = work / "bench.log"
        py = [sys.executable, "-m", "coderz_backup"]
        backup = [*py, "backup", "--config", str(cfg)]
        print("first CLI run (creates the embedded API's database; untimed) …", flush=True)
        run_timed(backup, env, log=log)
        shutil.rmtree(dest)
        variants = [("ours", env)]
        if not args.no_server:
            server_env = start_prefect_server(work, env)
            print(f"first CLI run against prefect server {server_env['PREFECT_API_URL']} (untimed) …", flush=True)
            run_timed(backup, server_env, log=log)
            shutil.rmtree(dest)
            variants.append(("ours_server", server_env))

        dump = [pg_dump, "--host", "127.0.0.1", "--port", str(pg.port), "--username", ROLE, "--no-password",
                "--dbname", DATABASE, "--format=plain"]
        q = " ".join
        serial_sh = work / "serial.sh"
        serial_sh.write_text(f"""set -euo pipefail
cd {out}
{q(dump)} | gzip > postgres.sql.gz
tar czf grafana-data.tar.gz -C {gf_dir} .
tar czf prometheus.tar.gz -C {prom.data} .
tar czf elasticsearch-data.tar.gz -C {es_dir} .
tar czf configs.tar.gz -C {cf_dir} .
""")
        floors_cmd = {
            "postgres": ["sh", "-c", f'exec "$@" > {out}/floor.sql', "sh", *dump],
            "grafana": ["sh", "-c", f"tar cf - -C {gf_dir} . | cat > /dev/null"],
            "prometheus": ["sh", "-c", f"tar cf - -C {prom.data} . | cat > /dev/null"],
            "elasticsearch": ["sh", "-c", f"tar cf - -C {es_dir} . | cat > /dev/null"],
            "configs": ["sh", "-c", f"tar cf - -C {cf_dir} . | cat > /dev/null"],
        }
        R: dict[str, list] = {"ours": [], "ours_server": [], "serial": [], **{f"floor_{n}": [] for n in SERVICES},
                              **{f"single_{n}": [] for n in SERVICES}}
        sizes: dict[str, int] = {}
        for i in range(1, args.repeat + 1):
            tag = f"[{i}/{args.repeat}]"
            for n in SERVICES:
                r = run_timed(floors_cmd[n], env_pg, log=log)
                R[f"floor_{n}"].append(r)
                print(f"{tag} floor  {n:<14}{r['wall_s']:8.2f}s", flush=True)
            (out / "floor.sql").unlink()
            r = run_timed(["bash", str(serial_sh)], env_pg, log=log)
            R["serial"].append(r)
            sizes["serial"] = du(out)
            print(f"{tag} serial script      {r['wall_s']:8.2f}s  cpu {r['cpu_s']:.1f}s  "
                  f"output {fmt_mb(sizes['serial'])}", flush=True)
            for f in out.iterdir():
                f.unlink()
            for n in SERVICES:
                d = out / f"single-{n}"
                d.mkdir()
                res = d / "result.json"
                r = run_timed([sys.executable, os.path.abspath(__file__), "--_child", str(cfg), n, str(d / "o"),
                               str(res)], env, log=log)
                (d / "o").mkdir(exist_ok=True)
                got = json.loads(res.read_text())
                r.update(got)
                R[f"single_{n}"].append(r)
                sizes[f"single_{n}"] = got["bytes"]
                print(f"{tag} single {n:<14}{got['backup_s']:8.2f}s  (process {r['wall_s']:.2f}s, cpu "
                      f"{r['cpu_s']:.1f}s, VmHWM {got['vmhwm_kb'] / 1024:.0f} MB, output {fmt_mb(got['bytes'])})",
                      flush=True)
                shutil.rmtree(d)
            for key, e in variants:
                r = run_timed(backup, e, log=log, sample=True)
                R[key].append(r)
                sizes[key] = du(dest)
                for snap_log in dest.glob("*/backup.log"):   # the run's own timeline, kept for --keep
                    shutil.copy(snap_log, work / f"{key}-backup-{i}.log")
                    first, last = flow_span(snap_log)
                    r["before_flow_s"] = first - r["start_epoch"]
                    r["flow_s"] = last - first
                    r["after_flow_s"] = r["start_epoch"] + r["wall_s"] - last
                label = "ours CLI (embedded)" if key == "ours" else "ours CLI (server)"
                print(f"{tag} {label:<20}{r['wall_s']:7.2f}s  cpu {r['cpu_s']:.1f}s  VmHWM "
                      f"{r['hwm_kb'] / 1024:.0f} MB  tree RSS {r['tree_rss_kb'] / 1024:.0f} MB  output "
                      f"{fmt_mb(sizes[key])}", flush=True)
                if "flow_s" in r:
                    print(f"{tag}   of which: before the flow's first log line {r['before_flow_s']:.1f}s, flow "
                          f"{r['flow_s']:.1f}s, after its last line {r['after_flow_s']:.1f}s (backup.log, 1 s steps)",
                          flush=True)
                shutil.rmtree(dest)

        def best(key: str, field: str = "wall_s") -> float:
            return min(r[field] for r in R[key])

        def med(key: str, field: str = "wall_s") -> float:
            return statistics.median(r[field] for r in R[key])

        ours, serial = best("ours"), best("serial")
        floors = {n: best(f"floor_{n}") for n in SERVICES}
        singles = {n: best(f"single_{n}", "backup_s") for n in SERVICES}
        slow_floor = max(floors, key=floors.get)
        slow_single = max(singles, key=singles.get)
        rss_mb = max(r["hwm_kb"] for r in R["ours"]) / 1024            # the CLI's own Python process
        largest_mb = max(r["maxrss_kb"] for r in R["ours"]) / 1024     # largest single process it reaped
        single_rss = max(r["vmhwm_kb"] for n in SERVICES for r in R[f"single_{n}"]) / 1024
        tree_mb = max(r["tree_rss_kb"] for r in R["ours"]) / 1024
        ratios = {
            "ours_serial": ours / serial,
            "ours_sum_floors": ours / sum(floors.values()),
            "ours_slowest_single": ours / singles[slow_single],
            "ours_slowest_floor": ours / floors[slow_floor],
        }
        data_bytes = db_bytes + prom_bytes + es_bytes + gf_bytes + cf_bytes
        ok = {"serial": ratios["ours_serial"] <= TARGET_VS_SERIAL,
              "floor": ratios["ours_slowest_floor"] <= TARGET_VS_FLOOR,
              "rss": rss_mb < TARGET_RSS_MB}
        srv = best("ours_server") if R["ours_server"] else None
        if srv is not None:
            ratios.update(server_serial=srv / serial, server_sum_floors=srv / sum(floors.values()),
                          server_slowest_single=srv / singles[slow_single], server_slowest_floor=srv / floors[slow_floor])
            srv_rss = max(r["hwm_kb"] for r in R["ours_server"]) / 1024
            ok.update(server_serial=ratios["server_serial"] <= TARGET_VS_SERIAL,
                      server_floor=ratios["server_slowest_floor"] <= TARGET_VS_FLOOR, server_rss=srv_rss < TARGET_RSS_MB)

        print()
        print(f"scale {args.scale}, {os.cpu_count()} cores, best of {args.repeat}; data {fmt_mb(data_bytes)}: "
              f"postgres {fmt_mb(db_bytes)}, prometheus {fmt_mb(prom_bytes)} ({blocks} blocks), elasticsearch "
              f"{fmt_mb(es_bytes)}, grafana {fmt_mb(gf_bytes)}, configs {fmt_mb(cf_bytes)}")
        print(f"  {'service':<15}{'floor':>9}{'ours alone':>12}{'ratio':>8}{'output':>14}")
        for n in SERVICES:
            print(f"  {n:<15}{floors[n]:8.2f}s{singles[n]:11.2f}s{singles[n] / floors[n]:8.2f}"
                  f"{fmt_mb(sizes[f'single_{n}']):>14}")
        print(f"  serial script {serial:8.2f}s (median {med('serial'):.2f}s), cpu {best('serial', 'cpu_s'):.1f}s, "
              f"output {fmt_mb(sizes['serial'])}")
        print(f"  ours CLI      {ours:8.2f}s (median {med('ours'):.2f}s), cpu {best('ours', 'cpu_s'):.1f}s, "
              f"output {fmt_mb(sizes['ours'])}")
        print(f"  prometheus TSDB gzip ratio (ours): {sizes['single_prometheus'] / prom_bytes:.1%}; elasticsearch "
              f"{sizes['single_elasticsearch'] / es_bytes:.1%}")
        print(f"  ours / sum of floors ({sum(floors.values()):.2f}s) = {ratios['ours_sum_floors']:.2f}; "
              f"ours / slowest single ({slow_single}, {singles[slow_single]:.2f}s) = "
              f"{ratios['ours_slowest_single']:.2f}")
        print(f"  peak RSS: CLI process {rss_mb:.1f} MB (VmHWM); largest process of its tree {largest_mb:.1f} MB "
              f"(ru_maxrss, the embedded Prefect server included); sum over the tree {tree_mb:.1f} MB; "
              f"single-service children ≤ {single_rss:.1f} MB")
        print(f"  {'PASS' if ok['serial'] else 'FAIL'}  ours / serial script = {ratios['ours_serial']:.3f} "
              f"(target ≤ {TARGET_VS_SERIAL})")
        print(f"  {'PASS' if ok['floor'] else 'FAIL'}  ours / slowest floor ({slow_floor}, {floors[slow_floor]:.2f}s) "
              f"= {ratios['ours_slowest_floor']:.3f} (target ≤ {TARGET_VS_FLOOR})")
        print(f"  {'PASS' if ok['rss'] else 'FAIL'}  peak RSS = {rss_mb:.1f} MB (target < {TARGET_RSS_MB:.0f} MB)")
        if srv is not None:
            print(f"  against a running prefect server: {srv:.2f}s (median {med('ours_server'):.2f}s), cpu "
                  f"{best('ours_server', 'cpu_s'):.1f}s, CLI VmHWM {srv_rss:.1f} MB; / sum of floors "
                  f"{ratios['server_sum_floors']:.2f}; / slowest single {ratios['server_slowest_single']:.2f}")
            print(f"  {'PASS' if ok['server_serial'] else 'FAIL'}  server run / serial script = "
                  f"{ratios['server_serial']:.3f} (target ≤ {TARGET_VS_SERIAL})")
            print(f"  {'PASS' if ok['server_floor'] else 'FAIL'}  server run / slowest floor = "
                  f"{ratios['server_slowest_floor']:.3f} (target ≤ {TARGET_VS_FLOOR})")
            print(f"  {'PASS' if ok['server_rss'] else 'FAIL'}  server run peak RSS = {srv_rss:.1f} MB "
                  f"(target < {TARGET_RSS_MB:.0f} MB)")
        print("  PostgreSQL ≤ 1.10 × pg_dump > file: see bench/bench_postgres.py")
        r3 = lambda x: round(x, 3)  # noqa: E731
        figures = {
            "bench": "stack", "scale": args.scale, "repeat": args.repeat, "cpus": os.cpu_count(),
            "bytes": {"postgres_db": db_bytes, "prometheus_tsdb": prom_bytes, "prometheus_blocks": blocks,
                      "elasticsearch": es_bytes, "grafana": gf_bytes, "configs": cf_bytes, "total": data_bytes,
                      "ours_out": sizes["ours"], "serial_out": sizes["serial"]},
            "build_s": {k: round(v, 1) for k, v in built.items()},
            "ours_s": [r3(r["wall_s"]) for r in R["ours"]],
            "ours_split_s": [{k: round(r[k], 1) for k in ("before_flow_s", "flow_s", "after_flow_s") if k in r}
                             for r in R["ours"]], "serial_s": [r3(r["wall_s"]) for r in R["serial"]],
            "best_ours_s": r3(ours), "best_serial_s": r3(serial),
            "median_ours_s": r3(med("ours")), "median_serial_s": r3(med("serial")),
            "ours_cpu_s": r3(best("ours", "cpu_s")), "serial_cpu_s": r3(best("serial", "cpu_s")),
            "floor_s": {n: r3(v) for n, v in floors.items()}, "single_s": {n: r3(v) for n, v in singles.items()},
            "single_bytes": {n: sizes[f"single_{n}"] for n in SERVICES},
            "ratios": {k: r3(v) for k, v in ratios.items()},
            "ours_peak_rss_mb": round(rss_mb, 1), "ours_largest_child_rss_mb": round(largest_mb, 1),
            "ours_tree_rss_mb": round(tree_mb, 1),
            "single_peak_rss_mb": round(single_rss, 1),
            "server_s": [r3(r["wall_s"]) for r in R["ours_server"]],
            "server_split_s": [{k: round(r[k], 1) for k in ("before_flow_s", "flow_s", "after_flow_s") if k in r}
                               for r in R["ours_server"]],
            "best_server_s": r3(srv) if srv is not None else None,
            "median_server_s": r3(med("ours_server")) if srv is not None else None,
            "server_cpu_s": r3(best("ours_server", "cpu_s")) if srv is not None else None,
            "server_peak_rss_mb": round(srv_rss, 1) if srv is not None else None,
            "pass_serial": ok["serial"], "pass_floor": ok["floor"], "pass_rss": ok["rss"],
            **{f"pass_{k}": v for k, v in ok.items() if k.startswith("server")}, "pass": all(ok.values()),
        }
        print(json.dumps(figures))
        if args.strict and not all(ok.values()):
            rc = 1
    except KeyboardInterrupt:
        rc = 130
    except Exception:
        if not _interrupted:
            raise
        rc = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if rc == 130:
            print("\ninterrupted; stopping the servers and cleaning up", file=sys.stderr)
        try:
            _stop_children()
            for stop in (stop_prefect_server, gf.stop, es.stop, prom.stop, pg.stop):
                try:
                    stop()
                except Exception as exc:  # noqa: BLE001 - keep cleaning up
                    print(f"cleanup: {exc}", file=sys.stderr)
        finally:
            if args.keep:
                print(f"kept {work}", file=sys.stderr)
            else:
                shutil.rmtree(work, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
