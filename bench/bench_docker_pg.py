#!/usr/bin/env python3
"""Benchmark: pg_dump through the Docker exec API vs. over TCP from the host.

Uses the test suite's private Docker Engine and local base image (tests/docker_engine.py;
no pulls): starts ``coderz-postgres-bench`` (``--network host``, 127.0.0.1, named
volume), fills a database with ``pgbench -i -s SCALE`` inside the container, then
times, best of ``--repeat`` (wall clock), each writing through coderz-backup's writer
(isal gzip-1, sha256, fsync, rename):

  tcp    pg_dump on this host → 127.0.0.1:<port>             (LocalAccess)
  exec   pg_dump in the container, stdout over the exec API  (DockerAccess)

and, for reference, the plain ``docker exec … pg_dump > file`` CLI (no compression).

Usage:  .venv/bin/python bench/bench_docker_pg.py --scale 20 [--repeat 3]
This is a benchmark script, not a pytest test. The engine is left as the test
suite leaves it (stopped, when this was its only user).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import docker_engine as de
    from pydantic import SecretStr

    from coderz_backup.services.postgres import PostgresConfig
    from coderz_backup.services import create

    why = de.availability()
    if why:
        print(why, file=sys.stderr)
        return 1
    engine = de.Engine().up()
    services = de.Services(engine)
    work = Path(tempfile.mkdtemp(prefix="bench-docker-pg-"))
    results: dict = {"scale": args.scale}
    try:
        pg = services.postgres(name="coderz-postgres-bench", database="bench")
        os.environ["BENCH_PG_PASSWORD"] = pg.password
        t0 = time.monotonic()
        c = pg.container
        rc, out = c.exec_run(["pgbench", "-i", "-q", "-s", str(args.scale), "-h", "127.0.0.1", "-p", str(pg.port),
                              "-U", pg.user, "bench"], environment={"PGPASSWORD": pg.password})
        if rc != 0:
            print(out.decode(errors="replace"), file=sys.stderr)
            return 1
        print(f"filled scale {args.scale} in {time.monotonic() - t0:.1f}s")
        base = dict(kind="postgres", host="127.0.0.1", port=pg.port, user=pg.user,
                    password=SecretStr("env:BENCH_PG_PASSWORD"), database="bench")
        ways = {
            "tcp": PostgresConfig(**base),
            "exec": PostgresConfig(**base, container=pg.name),
        }
        os.environ["DOCKER_HOST"] = de.BASE_URL
        times: dict[str, list[float]] = {k: [] for k in [*ways, "docker-cli-raw"]}
        sizes: dict[str, tuple[int, int]] = {}
        for _ in range(args.repeat):
            for way, cfg in ways.items():
                into = work / way
                shutil.rmtree(into, ignore_errors=True)
                into.mkdir()
                svc = create("bench", cfg)
                t = time.monotonic()
                [res] = svc.backup(into)
                times[way].append(time.monotonic() - t)
                sizes[way] = (res.details["raw_bytes"], res.bytes)
            cli = shutil.which("docker")
            if cli:
                t = time.monotonic()
                with open(work / "cli.sql", "wb") as fh:
                    subprocess.run([cli, "-H", de.BASE_URL, "exec", "-e", "PGPASSWORD", pg.name, "pg_dump", "-h",
                                    "127.0.0.1", "-p", str(pg.port), "-U", pg.user, "bench"], stdout=fh, check=True,
                                   env={**os.environ, "PGPASSWORD": pg.password})
                times["docker-cli-raw"].append(time.monotonic() - t)
        raw = sizes["tcp"][0]
        for way, ts in times.items():
            if not ts:
                continue
            best = min(ts)
            results[way] = {"best_s": round(best, 2), "mb_per_s": round(raw / best / 1e6, 1)}
            print(f"{way:15s} best {best:6.2f}s  {raw / best / 1e6:7.1f} MB/s of SQL")
        results["sql_bytes"] = raw
        results["gz_bytes"] = {k: v[1] for k, v in sizes.items()}
        results["exec_over_tcp"] = round(results["exec"]["best_s"] / results["tcp"]["best_s"], 2)
        print(f"exec/tcp time ratio: {results['exec_over_tcp']}")
        print(json.dumps(results))
    finally:
        services.cleanup()
        engine.down()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
