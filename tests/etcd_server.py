"""A throwaway real etcd 3.4 member for tests (free 127.0.0.1 ports, temp data dir).

Shared by the etcd, k3s and APISIX tests; the gateway helpers talk to it over its v3
gRPC gateway.
"""

from __future__ import annotations

import base64
import subprocess
import time
from pathlib import Path

import httpx

from coderz_backup.sandbox import free_port

__all__ = ["ROOT_PW", "EtcdServer", "_b64"]

ROOT_PW = "etcd-root-pw-5517"


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


class EtcdServer:
    """A throwaway single-member etcd on free 127.0.0.1 ports."""

    def __init__(self, base: Path, *, name: str = "m1", data: Path | None = None):
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.data = data or self.base / "data"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        self.proc: subprocess.Popen | None = None
        self.token: str | None = None

    def argv(self) -> list[str]:
        return ["etcd", "--name", self.name, "--data-dir", str(self.data),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", f"{self.name}={self.peer_url}", "--initial-cluster-state", "new"]

    def start(self) -> EtcdServer:
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL,
                                     stderr=open(self.base / "etcd.log", "ab"), start_new_session=True)
        self.wait_ready(lambda: self.proc.poll() is not None)
        return self

    def wait_ready(self, died=lambda: False, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if died():
                raise RuntimeError(f"etcd exited early; see {self.base / 'etcd.log'}")
            try:
                r = httpx.post(f"{self.url}/v3/maintenance/status", json={}, timeout=1)
                if r.status_code == 200 and r.json().get("leader"):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"etcd on {self.url} not ready within {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # -- gateway helpers ------------------------------------------------------
    def call(self, path: str, body: dict) -> dict:
        headers = {"Authorization": self.token} if self.token else {}
        r = httpx.post(f"{self.url}/v3{path}", json=body, headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def login(self, password: str = ROOT_PW) -> None:
        self.token = httpx.post(f"{self.url}/v3/auth/authenticate", json={"name": "root", "password": password},
                                timeout=10).json()["token"]

    def enable_auth(self, password: str = ROOT_PW) -> None:
        self.call("/auth/user/add", {"name": "root", "password": password})
        self.call("/auth/role/add", {"name": "root"})
        self.call("/auth/user/grant", {"user": "root", "role": "root"})
        self.call("/auth/enable", {})
        self.login(password)

    def put(self, key: bytes, value: bytes) -> None:
        self.call("/kv/put", {"key": _b64(key), "value": _b64(value)})

    def delete(self, key: bytes) -> None:
        self.call("/kv/deleterange", {"key": _b64(key)})

    def everything(self) -> dict[bytes, bytes]:
        res = self.call("/kv/range", {"key": _b64(b"\0"), "range_end": _b64(b"\0")})
        return {base64.b64decode(kv["key"]): base64.b64decode(kv.get("value", "")) for kv in res.get("kvs", [])}
