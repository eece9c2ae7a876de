"""Restore drills through the real CLI and flow: real snapshots of the stack's PostgreSQL, Redis
and configs restored into throwaway instances, their content compared with the signed
fingerprints; altered and broken snapshots caught; nothing left behind, production untouched."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import decoded_subject, run_cli, with_email

from coderz_backup.signing import SIGNATURE_FILE, load_signer
from coderz_backup.snapshot import MANIFEST, manifest_bytes
from coderz_backup.waiting import wait_until


def _backup(stack) -> Path:
    res = run_cli(["backup", "--config", str(stack.config)], stack.env)
    assert res.returncode == 0, res.stdout + res.stderr
    return stack.snapshots()[-1]


def _production(stack, redis_server) -> dict:
    a, b = stack.dbs
    with a.connect() as c:
        rows_a = c.execute("SELECT count(*) FROM flow_run").fetchone()[0]
    with b.connect() as c:
        rows_b = c.execute("SELECT count(*) FROM users").fetchone()[0]
    r = redis_server.client()
    return {"a": rows_a, "b": rows_b, "redis": sorted(r.keys()), "redis_pid": r.info("server")["process_id"],
            "pg_pid": a.server.proc.pid if getattr(a.server, "proc", None) else None}


def _scratch_processes() -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"coderz-drill-" in cmd and b"pytest" not in cmd and b"coderz_backup drill" not in cmd:
                out.append(cmd.decode(errors="replace"))
    return out


def _scratch_folders() -> list[Path]:
    import tempfile

    return list(Path(tempfile.gettempdir()).glob("coderz-drill-*"))


def test_a_drill_of_a_real_snapshot_matches_every_drillable_artifact_and_leaves_production_alone(
        stack, redis_server, smtp):
    snap = _backup(stack)
    with_email(stack, smtp.port)
    before = _production(stack, redis_server)
    res = run_cli(["drill", "--config", str(stack.config)], stack.env)
    assert res.returncode == 0, res.stdout + res.stderr
    for svc in ("postgres-prefect", "postgres-coderapi", "redis", "configs"):
        assert f"✓ {svc} (" in res.stdout and "content matches the manifest" in res.stdout, res.stdout
    assert "4 matched, 0 mismatched, 0 failed" in res.stdout
    assert _production(stack, redis_server) == before
    assert not _scratch_processes() and not _scratch_folders()
    record = json.loads((snap / "drill.json").read_text())
    assert record["ok"] and record["matched"] == 4 and record["restore_s"] > 0
    assert {r["service"]: r["status"] for r in record["results"]} == {
        "postgres-prefect": "matched", "postgres-coderapi": "matched", "redis": "matched", "configs": "matched"}
    listed = run_cli(["list", "--json", "--config", str(stack.config)], stack.env)
    [row] = json.loads(listed.stdout)
    assert row["drilled"]["ok"] is True and row["drilled"]["restore_s"] == record["restore_s"]
    table = run_cli(["list", "--config", str(stack.config)], stack.env).stdout
    assert "DRILLED" in table and f"{record['drilled_at'][:10]} ok " in table, table
    [(_, msg)] = smtp.messages
    assert decoded_subject(msg).startswith(f"✅ Coderz Drill — OK: {snap.name} restores in ")
    js = run_cli(["drill", "--json", "--only", "redis", "--config", str(stack.config)], stack.env)
    assert js.returncode == 0, js.stdout + js.stderr
    data = json.loads(js.stdout)
    assert [(r["service"], r["status"]) for r in data["results"]] == [("redis", "matched")]
    assert data["results"][0]["got"]["keys"] == data["results"][0]["expected"]["keys"]


def _resign(snap: Path, manifest: dict) -> None:
    raw = manifest_bytes(manifest)
    (snap / MANIFEST).write_bytes(raw)
    signer = load_signer(os.environ["CODERZ_BACKUP_SIGNING_KEY"])
    (snap / SIGNATURE_FILE).write_bytes(signer.signature_document(raw))


def _rewrite_dump(snap: Path, service: str, change) -> None:
    """Change the dump of ``service`` with ``change(text) -> text``, then re-hash it in the manifest
    and re-sign the manifest with the host's own key: only the fingerprint still tells."""
    manifest = json.loads((snap / MANIFEST).read_text())
    entry = next(a for a in manifest["artifacts"] if a["service"] == service)
    path = snap / entry["path"]
    text = gzip.decompress(path.read_bytes()).decode()
    path.write_bytes(gzip.compress(change(text).encode()))
    entry["bytes"] = path.stat().st_size
    entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    _resign(snap, manifest)


def test_a_dump_with_rows_removed_and_re_signed_is_caught_by_its_fingerprint(stack, smtp):
    snap = _backup(stack)
    with_email(stack, smtp.port)

    def drop_rows(text: str) -> str:
        lines = text.split("\n")
        start = next(i for i, line in enumerate(lines) if line.startswith("COPY ") and "flow_run" in line)
        return "\n".join(lines[:start + 1] + lines[start + 11:])   # ten rows fewer

    _rewrite_dump(snap, "postgres-prefect", drop_rows)
    verify = run_cli(["verify", "--config", str(stack.config)], stack.env)
    assert verify.returncode == 0, verify.stdout + verify.stderr   # hashes and signature check: only the drill can tell
    res = run_cli(["drill", "--only", "postgres-prefect", "--config", str(stack.config)], stack.env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "✗ postgres-prefect (" in res.stdout and "mismatched" in res.stdout
    assert "3000" in res.stdout and "2990" in res.stdout, res.stdout
    [(_, msg)] = smtp.messages
    assert decoded_subject(msg).startswith(f"🔴 Coderz Drill FAILED: {snap.name} — 1 mismatched, 0 failed")
    assert json.loads((snap / "drill.json").read_text())["ok"] is False


def test_a_dump_that_does_not_load_is_a_failed_drill(stack):
    snap = _backup(stack)
    _rewrite_dump(snap, "postgres-coderapi", lambda t: t.replace("CREATE TABLE", "CREATE TABLEX", 1))
    res = run_cli(["drill", "--only", "postgres-coderapi", "--config", str(stack.config)], stack.env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "✗ postgres-coderapi (" in res.stdout and "failed: the restore failed" in res.stdout, res.stdout
    assert not _scratch_processes() and not _scratch_folders()


def test_a_drill_killed_half_way_leaves_no_scratch_server_or_folder(stack, redis_server):
    _backup(stack)
    before = _production(stack, redis_server)
    proc = subprocess.Popen([sys.executable, "-m", "coderz_backup", "drill", "--config", str(stack.config)],
                            env=stack.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _scratch_processes():
        assert proc.poll() is None, "the drill ended before a scratch server ran"
        time.sleep(0.05)
    assert _scratch_processes(), "no scratch server seen"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (_scratch_processes() or _scratch_folders()):
        time.sleep(0.2)
    assert not _scratch_processes() and not _scratch_folders()
    assert _production(stack, redis_server) == before


def test_a_drill_of_a_snapshot_signed_by_an_unknown_key_is_refused_before_anything_runs(stack, tmp_path):
    snap = _backup(stack)
    manifest = json.loads((snap / MANIFEST).read_text())
    raw = manifest_bytes(manifest)
    stranger = load_signer(str(tmp_path / "stranger" / "signing.key"))
    (snap / SIGNATURE_FILE).write_bytes(stranger.signature_document(raw))
    res = run_cli(["drill", "--config", str(stack.config)], stack.env)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "neither this host's key nor in trusted_keys" in res.stderr
    assert not (snap / "drill.json").exists()


def test_etcd_and_prometheus_snapshots_are_drilled_into_scratch_servers(tmp_path, cli_env):
    import httpx
    from helpers import Stack

    from coderz_backup.sandbox import EtcdServer, PrometheusServer

    etcd = EtcdServer(tmp_path / "etcd").start()
    prom = PrometheusServer(tmp_path / "prom").start()
    try:
        for i in range(25):
            etcd.put(f"/apisix/routes/{i}".encode(), b'{"uri": "/x"}')
        def three_samples() -> bool:   # a few samples of `up` in the head
            r = httpx.get(f"{prom.url}/api/v1/query", params={"query": "count_over_time(up[1m])"}).json()
            return bool(r["data"]["result"]) and float(r["data"]["result"][0]["value"][1]) >= 3

        wait_until(three_samples, timeout=60, interval=0.5)   # TimeoutError fails the test
        services = (f'[services.etcd]\nkind = "etcd"\nendpoint = "{etcd.url}"\n\n'
                    f'[services.prometheus]\nkind = "prometheus"\nurl = "{prom.url}"\ndata_dir = "{prom.data}"\n')
        stack = Stack(tmp_path, dict(cli_env), services, tmp_path / "snapshots")
        res = run_cli(["backup", "--config", str(stack.config)], stack.env)
        assert res.returncode == 0, res.stdout + res.stderr
        keys_before = len(etcd.everything())
        res = run_cli(["drill", "--json", "--config", str(stack.config)], stack.env)
        assert res.returncode == 0, res.stdout + res.stderr
        data = json.loads(res.stdout)
        assert {r["service"]: r["status"] for r in data["results"]} == {"etcd": "matched", "prometheus": "matched"}
        by = {r["service"]: r for r in data["results"]}
        assert by["etcd"]["got"]["keys"] == by["etcd"]["expected"]["keys"] == 25
        assert by["prometheus"]["got"]["samples"] == by["prometheus"]["expected"]["samples"] >= 3
        assert len(etcd.everything()) == keys_before   # production untouched
        assert httpx.get(f"{prom.url}/-/ready").status_code == 200
        assert not _scratch_processes() and not _scratch_folders()
    finally:
        prom.stop()
        etcd.stop()


def test_a_drill_of_an_offsite_copy_fetches_checks_and_drills_it(stack, tmp_path):
    drive = tmp_path / "drive"
    drive.mkdir()
    stack.config.write_text(stack.config.read_text() + f'\n[offsite.usb]\nkind = "dir"\npath = "{drive}"\n')
    snap = _backup(stack)
    res = run_cli(["drill", "--from", "usb", "--only", "redis", "--only", "postgres-prefect",
                   "--config", str(stack.config)], stack.env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"Restore drill of {snap.name} (off-site usb)" in res.stdout
    assert "2 matched, 0 mismatched, 0 failed" in res.stdout
    assert not (snap / "drill.json").exists()        # the local snapshot was not the one drilled
    assert not _scratch_processes() and not _scratch_folders()
