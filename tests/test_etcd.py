"""etcd service against real etcd 3.4 members (free ports, temp data dirs)."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from etcd_server import ROOT_PW, EtcdServer, _b64
from helpers import refused_port, watch_argv
from pydantic import SecretStr

from coderz_backup.access import LocalAccess
from coderz_backup.services.etcd import EtcdConfig
from coderz_backup.errors import (
    ArtifactError,
    IncompleteArtifactError,
    RestoreError,
    VerifyError,
)
from coderz_backup.services import REGISTRY, expected_artifacts
from coderz_backup.services.etcd import EtcdService

pytestmark = pytest.mark.skipif(not (shutil.which("etcd") and shutil.which("etcdctl")),
                                reason="etcd-server / etcd-client not installed (scripts/setup.sh)")

NAME = "etcd-apisix"


def _fill(srv: EtcdServer) -> None:
    for i in range(1, 41):
        route = {"id": str(i), "uri": f"/api/v{i}/*", "methods": ["GET", "POST"],
                 "upstream": {"type": "roundrobin", "nodes": {f"10.0.0.{i}:8080": 1}},
                 "plugins": {"limit-count": {"count": 100, "time_window": 60}}}
        srv.put(f"/apisix/routes/{i}".encode(), json.dumps(route).encode())
    srv.put(b"/apisix/upstreams/1", b'{"type":"chash","key":"remote_addr"}')
    srv.put(b"binary\x00\xff\xfekey", bytes(range(256)) * 4)
    srv.put(b"empty", b"")
    # enough data that the snapshot stream has many 32 KiB messages (txns of ≤128 puts: fast)
    for start in range(0, 1500, 100):
        srv.call("/kv/txn", {"success": [{"request_put": {"key": _b64(f"/bulk/{i:05d}".encode()),
                                                          "value": _b64(os.urandom(300))}}
                                         for i in range(start, start + 100)]})


@pytest.fixture(scope="module")
def etcd_auth(tmp_path_factory):
    srv = EtcdServer(tmp_path_factory.mktemp("etcd-auth")).start()
    try:
        _fill(srv)
        srv.enable_auth()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def etcd_plain(tmp_path_factory):
    srv = EtcdServer(tmp_path_factory.mktemp("etcd-plain")).start()
    try:
        _fill(srv)
        yield srv
    finally:
        srv.stop()


def _cfg(srv: EtcdServer | None = None, **over) -> EtcdConfig:
    data: dict = {"kind": "etcd", "endpoint": srv.url if srv else "http://127.0.0.1:1"}
    if srv is not None and srv.token:
        data.update(user="root", password=SecretStr(ROOT_PW))
    data.update(over)
    return EtcdConfig(**data)


def _svc(srv: EtcdServer | None = None, **over) -> EtcdService:
    return EtcdService(NAME, _cfg(srv, **over), LocalAccess())


def _restore_and_start(svc: EtcdService, snap: Path, base: Path, *, auth: bool) -> EtcdServer:
    new = EtcdServer(base, name="restored")
    data = base / "restored-data"
    msg = svc.restore(snap, data_dir=str(data), name=new.name, peer_url=new.peer_url)
    assert str(data) in msg
    assert (data / "member" / "snap" / "db").is_file()
    new.data = data
    new.start()
    if auth:
        new.login()
    return new


def test_registered_with_the_product_artifact_name():
    assert REGISTRY["etcd"] is EtcdService
    assert expected_artifacts("etcd-apisix", EtcdConfig(kind="etcd")) == ["etcd-apisix.snapshot"]


@pytest.mark.parametrize("method", ["gateway", "etcdctl"])
def test_round_trip_with_auth_into_a_new_member(etcd_auth, tmp_path, method):
    svc = _svc(etcd_auth, method=method)
    out = tmp_path / "snap"
    out.mkdir()

    [res] = svc.backup(out)

    snap = out / "etcd-apisix.snapshot"
    assert sorted(p.name for p in out.iterdir()) == ["etcd-apisix.snapshot"]  # no temp files left
    assert res.status == "ok" and res.path == "etcd-apisix.snapshot" and res.bytes == snap.stat().st_size
    assert len(res.sha256) == 64 and oct(snap.stat().st_mode & 0o777) == "0o600"
    assert snap.stat().st_size % 512 == 32 and snap.stat().st_size > 512 * 1024
    assert svc.verify(snap) == f"bbolt header and SHA-256 trailer ok ({snap.stat().st_size} bytes)"

    before = etcd_auth.everything()
    assert before[b"binary\x00\xff\xfekey"] == bytes(range(256)) * 4
    assert json.loads(before[b"/apisix/routes/7"])["uri"] == "/api/v7/*"
    new = _restore_and_start(svc, snap, tmp_path / "new", auth=True)  # users and auth travel with it
    try:
        assert new.everything() == before
        health = EtcdService(NAME, _cfg(new), LocalAccess()).health()
        assert f"{len(before)} key(s)" in health and "3.4" in health
    finally:
        new.stop()


def test_round_trip_without_auth_and_health(etcd_plain, tmp_path):
    svc = _svc(etcd_plain)
    [res] = svc.backup(tmp_path)
    snap = tmp_path / "etcd-apisix.snapshot"
    assert res.details["method"].startswith("v3 gateway")
    before = etcd_plain.everything()
    assert len(before) == 40 + 1 + 1 + 1 + 1500
    new = _restore_and_start(svc, snap, tmp_path / "new", auth=False)
    try:
        assert new.everything() == before
    finally:
        new.stop()
    assert f"{len(before)} key(s)" in svc.health()


@pytest.mark.parametrize("method", ["gateway", "etcdctl"])
def test_wrong_password_fails_as_authentication_and_leaves_nothing(etcd_auth, tmp_path, method):
    svc = _svc(etcd_auth, method=method, password=SecretStr("wrong-pw-9931"))
    with pytest.raises(ArtifactError, match="authentication failed") as err:
        svc.backup(tmp_path)
    assert "wrong-pw-9931" not in str(err.value) and ROOT_PW not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_missing_credentials_on_auth_server_say_so(etcd_auth, tmp_path):
    svc = _svc(etcd_auth, user=None, password=None)
    with pytest.raises(ArtifactError, match=r"HTTP 500.*user name is empty.*set etcd-apisix.user"):
        svc.backup(tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("method", ["gateway", "etcdctl"])
def test_server_down_fails_clearly(tmp_path, method):
    svc = _svc(None, endpoint=f"http://127.0.0.1:{refused_port()}", method=method)
    with pytest.raises(ArtifactError, match="is unreachable"):
        svc.backup(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_restore_uses_etcdutl_where_it_exists(etcd_plain, tmp_path):
    """etcd ≥3.5 moved the restore to etcdutl (3.6 has no other): when it is present it is used.

    etcd 3.4 has no etcdutl, so the one here is etcdctl under that name, logging its argv.
    """
    svc = _svc(etcd_plain)
    [res] = svc.backup(tmp_path)
    calls = tmp_path / "etcdutl-calls"
    etcdutl = tmp_path / "bin" / "etcdutl"
    etcdutl.parent.mkdir()
    etcdutl.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nETCDCTL_API=3 exec {shutil.which("etcdctl")} "$@"\n')
    etcdutl.chmod(0o755)
    with_utl = _svc(etcd_plain, etcdutl=str(etcdutl))
    new = _restore_and_start(with_utl, tmp_path / res.path, tmp_path / "new", auth=False)
    try:
        assert new.everything() == etcd_plain.everything()
    finally:
        new.stop()
    [argv] = calls.read_text().splitlines()
    # it reads a private, checked copy of the snapshot (never the file on the backup medium), gone afterwards
    copy, rest = argv.removeprefix("snapshot restore ").split(" ", 1)
    assert Path(copy).name == "etcd-apisix.snapshot" and Path(copy).parent != tmp_path and not Path(copy).exists()
    assert rest.startswith(f"--data-dir {tmp_path / 'new' / 'restored-data'}")


def test_verify_and_restore_reject_truncated_and_flipped_snapshots(etcd_plain, tmp_path):
    svc = _svc(etcd_plain)
    svc.backup(tmp_path)
    good = (tmp_path / "etcd-apisix.snapshot").read_bytes()
    no_trailer = "snapshot is truncated or has no SHA-256 trailer"
    mismatch = "snapshot SHA-256 trailer mismatch: the file is corrupt or truncated"
    cases = {  # label: (bytes, the check that must fire)
        "no-trailer": (good[:-32], no_trailer),          # a raw bbolt file: size % 512 == 0
        "half": (good[: len(good) // 2], no_trailer),
        "cut-inside-trailer": (good[:-5], no_trailer),
        "flipped-db": (good[: len(good) // 3] + bytes([good[len(good) // 3] ^ 0x01]) + good[len(good) // 3 + 1:],
                       mismatch),
        "flipped-trailer": (good[:-1] + bytes([good[-1] ^ 0xFF]), mismatch),
        "garbage": (b"\0" * (len(good)), r"not an etcd snapshot \(no bbolt meta page magic at offset 16\)"),
    }
    for label, (data, match) in cases.items():
        bad = tmp_path / f"{label}.snapshot"
        bad.write_bytes(data)
        with pytest.raises(VerifyError, match=rf"^{label}\.snapshot: {match}"):
            svc.verify(bad)
    with pytest.raises(RestoreError, match="refusing to restore"):
        svc.restore(tmp_path / "flipped-db.snapshot", data_dir=str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()


def test_restore_refuses_a_non_empty_data_dir_and_needs_a_target(etcd_plain, tmp_path):
    svc = _svc(etcd_plain)
    svc.backup(tmp_path)
    snap = tmp_path / "etcd-apisix.snapshot"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(RestoreError, match="not empty"):
        svc.restore(snap, data_dir=str(busy))
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    with pytest.raises(RestoreError, match="pass data_dir"):
        svc.restore(snap)
    assert "new data dir" in svc.restore_target()


def test_password_never_in_process_argv(etcd_auth, tmp_path):
    with watch_argv() as seen:
        for method in ("etcdctl", "gateway"):
            out = tmp_path / method
            out.mkdir()
            _svc(etcd_auth, method=method).backup(out)
    assert any(b"etcdctl" in c and b"snapshot" in c for c in seen), "the watcher never saw etcdctl running"
    assert not any(ROOT_PW.encode() in c for c in seen)


# -- a stand-in gateway for stream faults -----------------------------------------


class _Stub(http.server.ThreadingHTTPServer):
    daemon_threads = True


def _stub(lines_for: dict[str, tuple[int, list[bytes]]]):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, lines = lines_for.get(self.path, (404, [b"Not Found"]))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for line in lines:
                if line == b"<cut>":  # drop the connection without the final chunk
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.write(b"0\r\n\r\n")

    srv = _Stub(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _messages(snapshot: bytes, size: int = 32 * 1024) -> list[bytes]:
    db, digest = snapshot[:-32], snapshot[-32:]
    parts = [db[i:i + size] for i in range(0, len(db), size)] + [digest]
    return [json.dumps({"result": {"blob": _b64(p)}}).encode() + b"\n" for p in parts]


@pytest.fixture(scope="module")
def real_snapshot(etcd_plain, tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("real-snap")
    _svc(etcd_plain).backup(out)
    return (out / "etcd-apisix.snapshot").read_bytes()


def _stub_svc(stub) -> EtcdService:
    return _svc(None, endpoint=f"http://127.0.0.1:{stub.server_address[1]}")


def test_v3beta_fallback_gives_the_same_bytes(real_snapshot, tmp_path):
    stub = _stub({"/v3beta/maintenance/snapshot": (200, _messages(real_snapshot, 7000))})
    try:
        _stub_svc(stub).backup(tmp_path)
    finally:
        stub.shutdown()
    assert (tmp_path / "etcd-apisix.snapshot").read_bytes() == real_snapshot


@pytest.mark.parametrize("fault", ["error-message", "no-trailer", "cut", "bad-json", "http-500"])
def test_stream_faults_never_leave_a_file(real_snapshot, tmp_path, fault):
    msgs = _messages(real_snapshot)
    error = (b'{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: leader changed",'
             b'"http_status":"Service Unavailable"}}\n')
    status, lines, match = {
        "error-message": (200, msgs[:5] + [error], "failed mid-way: etcdserver: leader changed"),
        "no-trailer": (200, msgs[:-1], "truncated or has no SHA-256 trailer"),
        "cut": (200, msgs[:5] + [b"<cut>"], "broke off"),
        "bad-json": (200, msgs[:3] + [b'{"result":{"blob":\n'], "malformed"),
        "http-500": (500, [b'{"error":{"grpc_code":2,"http_code":500,"message":"auth: user name is empty"}}'],
                     "HTTP 500.*user name is empty"),
    }[fault]
    stub = _stub({"/v3/maintenance/snapshot": (status, lines)})
    try:
        with pytest.raises(ArtifactError, match=match) as err:
            _stub_svc(stub).backup(tmp_path)
    finally:
        stub.shutdown()
    if fault == "no-trailer":
        assert isinstance(err.value, IncompleteArtifactError)
    assert list(tmp_path.iterdir()) == []


# -- in-place restore with start/stop commands --------------------------------------


def test_in_place_restore_swaps_the_data_dir_and_restarts(tmp_path):
    srv = EtcdServer(tmp_path / "live", name="live")
    pidfile = tmp_path / "etcd.pid"
    cmd = " ".join(srv.argv())
    start = ["sh", "-c", f"{cmd} >>{tmp_path}/live.log 2>&1 & echo $! > {pidfile}"]
    stop = ["sh", "-c", f"kill $(cat {pidfile})"]
    subprocess.run(start, check=True)
    try:
        srv.wait_ready()
        srv.put(b"/apisix/routes/1", b'{"uri":"/v1"}')
        srv.put(b"keep", b"original")
        cfg = _cfg(srv, data_dir=str(srv.data), name=srv.name, peer_url=srv.peer_url,
                   start_command=start, stop_command=stop)
        svc = EtcdService(NAME, cfg, LocalAccess())
        assert "replaced" in svc.restore_target()
        out = tmp_path / "snap"
        svc.backup(out)
        before = srv.everything()
        srv.put(b"keep", b"changed after the backup")
        srv.put(b"stray", b"should disappear")
        srv.delete(b"/apisix/routes/1")

        msg = svc.restore(out / "etcd-apisix.snapshot")

        assert "old data kept at" in msg and "2 key(s)" in msg
        assert srv.everything() == before
        olds = list(srv.data.parent.glob("data.coderz-old-*"))
        assert len(olds) == 1 and (olds[0] / "member").is_dir()
        assert not list(srv.data.parent.glob("data.coderz-restore-*"))
        assert oct(srv.data.stat().st_mode & 0o777) == "0o700"
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass


def test_in_place_restore_refuses_while_etcd_runs_without_stop_command(etcd_plain, tmp_path):
    svc = _svc(etcd_plain)
    svc.backup(tmp_path)
    live = tmp_path / "pretend-live"
    live.mkdir()
    svc2 = _svc(etcd_plain, data_dir=str(live), start_command=["true"])
    with pytest.raises(RestoreError, match="is running; stop it first"):
        svc2.restore(tmp_path / "etcd-apisix.snapshot")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["etcd-apisix.snapshot", "pretend-live"]


# -- TLS transport with client certificates -------------------------------------------


def _certs(d: Path) -> dict[str, Path]:
    d.mkdir()

    def ssl_(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl_("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
         "-subj", "/CN=coderz-test-ca")
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                           "extendedKeyUsage=serverAuth,clientAuth\n")
    for who in ("server", "client"):
        ssl_("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{who}.key", "-out", f"{who}.csr",
             "-subj", f"/CN={who}")
        ssl_("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{who}.pem", "-days", "2", "-extfile", "ext")
    return {n: d / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl not installed")
def test_tls_with_client_certificates_both_methods(tmp_path):
    c = _certs(tmp_path / "pki")
    srv = EtcdServer(tmp_path / "tls")
    srv.url = srv.url.replace("http://", "https://")
    argv = srv.argv() + ["--cert-file", str(c["server.pem"]), "--key-file", str(c["server.key"]),
                         "--trusted-ca-file", str(c["ca.pem"]), "--client-cert-auth"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "tls.log", "ab"),
                            start_new_session=True)
    try:
        tls = dict(cacert=str(c["ca.pem"]), cert=str(c["client.pem"]), key=str(c["client.key"]))
        svc = _svc(None, endpoint=srv.url, **tls)
        deadline = time.monotonic() + 30
        while True:
            try:
                svc.health()
                break
            except RestoreError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        for method in ("gateway", "etcdctl"):
            out = tmp_path / method
            _svc(None, endpoint=srv.url, method=method, **tls).backup(out)
            snap = out / "etcd-apisix.snapshot"
            assert svc.verify(snap) == f"bbolt header and SHA-256 trailer ok ({snap.stat().st_size} bytes)"
        # without the client certificate the server refuses the TLS handshake
        with pytest.raises(ArtifactError, match="TLS handshake failed.*bad certificate"):
            _svc(None, endpoint=srv.url, cacert=str(c["ca.pem"])).backup(tmp_path / "nocert")
        with pytest.raises(ArtifactError, match="TLS handshake failed"):  # server not trusted
            _svc(None, endpoint=srv.url).backup(tmp_path / "untrusted")
        assert not (tmp_path / "nocert" / "etcd-apisix.snapshot").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
