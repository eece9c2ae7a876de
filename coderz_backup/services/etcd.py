"""etcd v3 → ``<name>.snapshot``: a member's database as ``etcdctl snapshot save`` writes it.

Backup, two methods (``method`` in the config):

- ``gateway`` (default): ``POST {endpoint}/v3/maintenance/snapshot`` with body ``{}`` on
  the v3 gRPC gateway (``/v3beta`` when ``/v3`` gives 404, i.e. etcd 3.3). The answer
  is a stream of JSON objects, one per line, ``{"result":{"blob":"<base64>"}}``; the
  blobs, decoded and concatenated in order, are the snapshot file. The body is read
  line by line and never held in memory. When ``user`` is set we first call
  ``/v3/auth/authenticate`` and send the token as ``Authorization: <token>`` (no
  ``Bearer``: etcd rejects it). TLS: ``cacert`` verifies the server, ``cert``/``key``
  give transport client auth (the gateway does not map certificate CNs to users).
- ``etcdctl``: ``etcdctl --endpoints=<endpoint> snapshot save <tmp>`` through the access
  layer, the credentials in ``ETCDCTL_USER``/``ETCDCTL_PASSWORD`` (never argv), then the
  file is streamed into the artifact and removed.

Either way the file must be a bbolt database (meta page magic ``0xED0CDAED`` at offset
16) followed by the 32-byte **SHA-256 of the database bytes**, which etcd appends to
every snapshot. bbolt files are a multiple of 512 bytes, so ``size % 512 == 32``; the
hash is computed while streaming, holding back the last 32 bytes as the candidate
trailer. Fail closed: a mid-stream ``{"error":…}``, a cut connection, a missing or
wrong trailer, an HTTP error (400 bad password, 500 no token) all raise, and the
partial file is removed. ``etcdctl snapshot status`` does not look at the trailer, so
verify() checks it itself.

Restore runs ``etcdutl snapshot restore`` when ``etcdutl`` is present where the restore
runs (etcd ≥3.5; in 3.6 only etcdutl has it), else ``etcdctl snapshot restore`` (3.4).
It never writes into a non-empty data dir:

- ``restore(artifact, data_dir=NEW)`` restores into a new (absent or empty) dir and
  says how to start etcd on it;
- with ``data_dir`` and ``start_command`` in the config it restores in place: restore
  into ``<data_dir>.coderz-restore-<ts>`` first (nothing changed if that fails), stop
  etcd (``stop_command``; refused if etcd still answers), move the old dir aside to
  ``<data_dir>.coderz-old-<ts>``, rename the restored dir into place, start it and wait
  until it answers.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import ssl
import tempfile
import time
from pathlib import Path
from typing import ClassVar, Iterator, Literal

import httpx

from pydantic import Field, SecretStr

from ..access import CHUNK, HostFiles, ManagedLifecycle, has
from ..fingerprint import bolt_fingerprint, safely
from ..schema import ServiceBase, resolve_secret
from ..errors import (
    AccessError,
    ArtifactError,
    IncompleteArtifactError,
    ProducerError,
    RestoreError,
    VerifyError,
)
from ..reader import ArtifactPath, as_artifact
from ..waiting import wait_until
from ..writer import StreamEnds, write_stream
from .base import ArtifactResult, BaseService
from .httpapi import HttpApi, tls_context

__all__ = ["EtcdService", "SnapshotChecker", "verify_snapshot_file"]

log = logging.getLogger(__name__)

HASH_LEN = 32
BOLT_MAGIC = 0xED0CDAED
_MAX_LINE = 64 << 20       # one JSON message; etcd sends ≤ 32 KiB of data per message
_ERROR_KEEP = 4096         # bytes of an error body we read


class SnapshotChecker:
    """SHA-256 over a streamed snapshot, the last 32 bytes held back as the trailer."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._pending = b""

    def observe(self, data: bytes) -> None:
        buf = self._pending + data
        if len(buf) <= HASH_LEN:
            self._pending = buf
            return
        self._sha.update(memoryview(buf)[:-HASH_LEN])
        self._pending = buf[-HASH_LEN:]

    def check(self, ends: StreamEnds) -> None:
        size = ends.raw_bytes
        if size < 512 + HASH_LEN or size % 512 != HASH_LEN:
            raise IncompleteArtifactError(
                f"snapshot is truncated or has no SHA-256 trailer ({size} bytes; a bbolt database "
                "is a multiple of 512 bytes and etcd appends 32 bytes of SHA-256)")
        if int.from_bytes(ends.head[16:20], "little") != BOLT_MAGIC:
            raise IncompleteArtifactError("not an etcd snapshot (no bbolt meta page magic at offset 16)")
        if self._sha.digest() != self._pending:
            raise IncompleteArtifactError("snapshot SHA-256 trailer mismatch: the file is corrupt or truncated")


def verify_snapshot_file(artifact: ArtifactPath | Path) -> str:
    """Check an etcd snapshot file: bbolt magic, size rule and the SHA-256 trailer."""
    checker = SnapshotChecker()
    head = b""
    n = 0
    artifact = as_artifact(artifact)
    with artifact.open() as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            if len(head) < 64:
                head += chunk[: 64 - len(head)]
            checker.observe(chunk)
            n += len(chunk)
    try:
        checker.check(StreamEnds(head, b"", n))
    except IncompleteArtifactError as exc:
        raise VerifyError(f"{artifact.name}: {exc}") from None
    return f"bbolt header and SHA-256 trailer ok ({n} bytes)"


def _message(body: bytes) -> str:
    """The error text of a gateway error body (both the unary and the stream shape)."""
    try:
        obj = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:300] or "(empty body)"
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)
    if err:
        return str(err)
    return str(obj.get("message") or obj)[:300] if isinstance(obj, dict) else str(obj)[:300]


class _Gateway(HttpApi):
    """A connection to the v3 gRPC gateway of one member (raises ArtifactError)."""

    product = "etcd"
    url_field = "endpoint"

    def __init__(self, svc: "EtcdService", *, read_timeout: float):
        super().__init__(svc, read_timeout=read_timeout)
        self.prefix = "/v3"
        self._prefix_known = False
        self.headers: dict[str, str] = {}

    def tls(self) -> ssl.SSLContext | bool:
        c = self.svc.config
        if c.endpoint.startswith("https://") or c.cacert or c.cert:
            try:
                ctx = tls_context(c.cacert)   # the one TLS policy of every HTTP client here
                if c.cert:
                    ctx.load_cert_chain(c.cert, c.key)
            except (OSError, ssl.SSLError) as exc:
                raise ArtifactError(f"{self.svc.name}: cannot load TLS files (cacert/cert/key): {exc}") from None
            return ctx
        return True

    def transport(self, exc: httpx.HTTPError, what: str) -> ArtifactError:
        if "SSL" in str(exc) or "certificate" in str(exc).lower():  # TLS 1.3 reports a refused cert on read
            return ArtifactError(f"{self.where}: TLS handshake failed ({exc}); check cacert/cert/key")
        if isinstance(exc, httpx.ConnectError):
            return ArtifactError(f"{self.where} is unreachable: {exc}")
        if isinstance(exc, httpx.TimeoutException):
            return ArtifactError(f"{self.where}: timed out ({type(exc).__name__})")
        return ArtifactError(f"{self.where}: {type(exc).__name__}: {exc}")

    def _paths(self, path: str) -> list[str]:
        if self._prefix_known:
            return [self.prefix + path]
        return ["/v3" + path, "/v3beta" + path]

    def _no_gateway(self) -> ArtifactError:
        return ArtifactError(f"{self.where}: no etcd v3 gRPC gateway (404 on /v3 and /v3beta; "
                             "etcd ≤3.2 serves only /v3alpha and is not supported)")

    def refused(self, resp: httpx.Response, what: str) -> ArtifactError:
        return ArtifactError(f"{self.where}: {what} failed (HTTP {resp.status_code}): "
                             f"{_message(resp.content[:_ERROR_KEEP])}")

    def not_json(self, resp: httpx.Response, what: str) -> ArtifactError:
        return ArtifactError(f"{self.where}: {what} returned no JSON")

    def post(self, path: str, body: dict) -> dict:
        """A unary call; returns the JSON answer or raises ArtifactError with etcd's message."""
        for url in self._paths(path):
            resp = self.call("POST", url, json=body, headers=self.headers, what=path, ok=None)
            if resp.status_code == 404 and not self._prefix_known:
                continue
            self.prefix, self._prefix_known = url[: -len(path)], True
            if resp.status_code != 200:
                raise self.refused(resp, path)
            return self.parse(resp, path)
        raise self._no_gateway()

    def authenticate(self, user: str | None, password: str | None) -> None:
        if not user:
            return
        if password is None:
            raise ArtifactError(f"{self.svc.name}: user {user!r} is set but no password; set {self.svc.name}.password")
        try:
            token = self.post("/auth/authenticate", {"name": user, "password": password}).get("token")
        except ArtifactError as exc:
            text = str(exc)
            if "authentication is not enabled" in text:
                log.info("%s: auth is not enabled on %s; continuing without a token", self.svc.name, self.where)
                return
            if "authentication failed" in text or "invalid user" in text:
                raise ArtifactError(f"{self.where}: authentication failed for user {user!r}; "
                                    f"check {self.svc.name}.password") from None
            raise
        if not token:
            raise ArtifactError(f"{self.where}: authenticate returned no token")
        self.headers["Authorization"] = token  # etcd wants the bare token, no "Bearer"

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[httpx.Response]:
        """The open snapshot response (status 200 checked)."""
        for url in self._paths("/maintenance/snapshot"):
            with self.stream("POST", url, json={}, headers=self.headers, what="/maintenance/snapshot") as resp:
                if resp.status_code == 404 and not self._prefix_known:
                    continue
                self.prefix, self._prefix_known = url[: -len("/maintenance/snapshot")], True
                if resp.status_code != 200:
                    body = b""
                    for chunk in resp.iter_bytes():
                        body += chunk
                        if len(body) >= _ERROR_KEEP:
                            break
                    raise self.snapshot_refused(resp.status_code, _message(body[:_ERROR_KEEP]))
                yield resp
                return
        raise self._no_gateway()

    def snapshot_refused(self, status: int, message: str) -> ArtifactError:
        hint = ""
        if "user name is empty" in message or "invalid auth token" in message:
            hint = f"; auth is enabled on the server: set {self.svc.name}.user and .password"
        elif "permission denied" in message:
            hint = f"; user {self.svc.config.user!r} may not take snapshots (use a user with the root role)"
        return ArtifactError(f"{self.where}: snapshot refused (HTTP {status}): {message}{hint}")

    def blobs(self, resp: httpx.Response) -> Iterator[bytes]:
        """Decoded blobs of the snapshot stream, read line by line."""
        try:
            for line in _lines(resp.iter_bytes()):
                try:
                    msg = json.loads(line)
                except ValueError:
                    raise IncompleteArtifactError(f"{self.where}: malformed line in the snapshot stream") from None
                if not isinstance(msg, dict):
                    raise IncompleteArtifactError(f"{self.where}: unexpected message in the snapshot stream")
                if "error" in msg:
                    raise ArtifactError(f"{self.where}: snapshot stream failed mid-way: {_message(line)}")
                blob = (msg.get("result") or {}).get("blob")
                if blob:
                    try:
                        yield base64.b64decode(blob, validate=True)
                    except (binascii.Error, ValueError):
                        raise IncompleteArtifactError(f"{self.where}: bad base64 in the snapshot stream") from None
        except httpx.HTTPError as exc:
            raise ArtifactError(f"{self.where}: snapshot stream broke off: {type(exc).__name__}: {exc}") from None


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Newline-delimited records of a byte stream, one at a time (bounded memory)."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        start = 0
        while True:
            i = buf.find(b"\n", start)
            if i < 0:
                break
            if i > start:
                yield bytes(buf[start:i])
            start = i + 1
        if start:
            del buf[:start]
        if len(buf) > _MAX_LINE:
            raise IncompleteArtifactError("snapshot stream: a message exceeds 64 MiB (not an etcd stream?)")
    if bytes(buf).strip():
        yield bytes(buf)



class EtcdConfig(ServiceBase):
    """An etcd v3 member: a snapshot over the gRPC gateway (or ``etcdctl snapshot save``)."""

    kind: Literal["etcd"]
    endpoint: str = Field("http://127.0.0.1:2379", description="client URL of one member (http:// or https://)")
    user: str | None = Field(None, description="etcd user (auth enabled); the gateway has no CN-based auth")
    password: SecretStr | None = Field(None, description="password reference (env:NAME recommended)")
    method: Literal["gateway", "etcdctl"] = Field("gateway", description="gateway: HTTP v3 gRPC gateway; "
                                                   "etcdctl: `etcdctl snapshot save`")
    cacert: str | None = Field(None, description="CA bundle to verify an https endpoint")
    cert: str | None = Field(None, description="client certificate (TLS transport)")
    key: str | None = Field(None, description="client certificate key (TLS transport)")
    etcdctl: str = Field("etcdctl", description="etcdctl executable (etcdctl method; restore when etcdutl is absent)")
    etcdutl: str = Field("etcdutl", description="etcdutl executable: restores with `etcdutl snapshot restore` when "
                                                "it is present where the restore runs (etcd ≥3.5; 3.6 has only it)")
    data_dir: str | None = Field(None, description="member data dir as seen from this host (in-place restore)")
    name: str | None = Field(None, description="member name (--name) used when restoring")
    peer_url: str | None = Field(None, description="member peer URL (--initial-advertise-peer-urls) for restore")
    stop_command: list[str] | None = Field(None, description="argv that stops etcd before an in-place restore")
    start_command: list[str] | None = Field(None, description="argv that starts etcd after an in-place restore")
    section: ClassVar[str] = "etcd Snapshots"
    default_min_bytes: ClassVar[int] = 512 + 32
    order: ClassVar[int] = 80


class EtcdService(BaseService):
    kind: ClassVar[str] = "etcd"
    config_model: ClassVar[type[EtcdConfig]] = EtcdConfig
    config: EtcdConfig

    @property
    def artifact_path(self) -> str:
        return f"{self.name}.snapshot"

    def artifacts(self) -> list[str]:
        return [self.artifact_path]

    def _password(self) -> str | None:
        return resolve_secret(self.config.password, what=f"{self.name}.password")

    def _where(self) -> str:
        return f"etcd at {self.config.endpoint}"

    # -- backup -------------------------------------------------------------
    def backup(self, into: Path) -> list[ArtifactResult]:
        """One snapshot (gRPC gateway stream, or etcdctl); bbolt magic and SHA-256 trailer checked as it is written."""
        started = time.monotonic()
        checker = SnapshotChecker()
        if self.config.method == "etcdctl":
            rec = self._backup_etcdctl(Path(into), checker)
            how = "etcdctl snapshot save"
        else:
            rec = self._backup_gateway(Path(into), checker)
            how = "v3 gateway /maintenance/snapshot"
        log.info("%s: %s, %d bytes in %.1fs", self.name, how, rec.bytes, time.monotonic() - started)
        # live keys and revision read from the written snapshot's bbolt pages (mmap, page-cache hot)
        fingerprint = safely(f"{self.name}: fingerprint", lambda: bolt_fingerprint(Path(into) / self.artifact_path))
        return [ArtifactResult.from_files(self.name, self.kind, self.artifact_path, [rec],
                                          details={"method": how, "endpoint": self.config.endpoint},
                                          fingerprint=fingerprint)]

    # -- fingerprint (restore drills) ----------------------------------------
    def fingerprint_live(self) -> dict:
        """``keys``: a count-only range over the whole key space; ``revision``: its header's."""
        with _Gateway(self, read_timeout=60.0) as gw:
            gw.authenticate(self.config.user, self._password())
            body = gw.post("/kv/range", {"key": "AA==", "range_end": "AA==", "count_only": True})
        return {"keys": int(body.get("count", 0)), "revision": int((body.get("header") or {}).get("revision", 0))}

    def _backup_gateway(self, into: Path, checker: SnapshotChecker):
        with _Gateway(self, read_timeout=min(self.config.timeout_s, 300.0)) as gw:
            gw.authenticate(self.config.user, self._password())
            with gw.snapshot() as resp, contextlib.closing(gw.blobs(resp)) as blobs:
                return write_stream(into, self.artifact_path, blobs,
                                    check=checker.check, observe=checker.observe)

    def _etcdctl_env(self) -> dict[str, str]:
        env = {"ETCDCTL_API": "3"}
        user = self.config.user
        if user:
            password = self._password()
            if password is None:
                raise ArtifactError(f"{self.name}: user {user!r} is set but no password; set {self.name}.password")
            env["ETCDCTL_USER"] = user          # --user / --password as environment, never argv
            env["ETCDCTL_PASSWORD"] = password
        return env

    def _tls_args(self) -> list[str]:
        c = self.config
        out = []
        for flag, value in (("--cacert", c.cacert), ("--cert", c.cert), ("--key", c.key)):
            if value:
                out.append(f"{flag}={value}")
        return out

    def _backup_etcdctl(self, into: Path, checker: SnapshotChecker):
        c = self.config
        into.mkdir(parents=True, exist_ok=True)
        local = has(self.access, HostFiles)
        # the file is written where etcdctl runs: here, or in the container / behind the prefix
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.name}.etcdctl-", dir=into)) if local else \
            Path(f"/tmp/.coderz-backup-{self.name}-{os.getpid()}-{time.time_ns()}")
        try:
            if not local:
                self.access.run(["mkdir", "-m", "700", str(tmp)], timeout=60, label="mkdir")
            target = tmp / "snapshot.db"
            base = [c.etcdctl, f"--endpoints={c.endpoint}", *self._tls_args(), "--dial-timeout=10s"]
            env = self._etcdctl_env()
            try:
                # etcdctl 3.4 `snapshot save` waits forever for an unreachable member, so
                # probe it first with a bounded call (which also checks the credentials).
                self.access.run([*base, "--command-timeout=10s", "endpoint", "status"], env=env, timeout=60,
                                label=f"etcdctl endpoint status of {c.endpoint}")
                self.access.run([*base, "snapshot", "save", str(target)], env=env, timeout=c.timeout_s,
                                label=f"etcdctl snapshot save of {c.endpoint}")
            except ProducerError as exc:
                text = str(exc)
                if "authentication failed" in text or "invalid user" in text:
                    raise ArtifactError(f"{self._where()}: authentication failed for user {c.user!r}; "
                                        f"check {self.name}.password") from None
                if "connection refused" in text or "deadline exceeded" in text:
                    raise ArtifactError(f"{self._where()} is unreachable: {text}") from None
                raise
            with self.access.open_read(str(target)) as fh:
                return write_stream(into, self.artifact_path, iter(lambda: fh.read(CHUNK), b""), check=checker.check, observe=checker.observe)
        finally:
            if local:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                with contextlib.suppress(Exception):
                    self.access.remove_tree(str(tmp))

    # -- verify -------------------------------------------------------------
    def verify(self, artifact: ArtifactPath | Path) -> str:
        artifact = as_artifact(artifact)
        return verify_snapshot_file(artifact)

    # -- restore ------------------------------------------------------------
    def restore_target(self) -> str:
        c = self.config
        if c.data_dir and c.start_command:
            return (f"etcd data dir {c.data_dir} of {c.endpoint} is replaced (old dir kept as "
                    f"{c.data_dir}.coderz-old-<ts>); etcd is stopped with "
                    f"{' '.join(c.stop_command) if c.stop_command else '(stop_command not set: it must be down)'} "
                    f"and started with {' '.join(c.start_command)}")
        return ("nothing is overwritten: the snapshot is restored into a new data dir (pass data_dir); "
                "set data_dir and start_command to restore in place")

    def health(self) -> str:
        """The endpoint answers ``/version`` and the cluster is healthy."""
        try:
            with _Gateway(self, read_timeout=30.0) as gw:
                try:
                    version = gw.client.get("/version").json().get("etcdserver", "?")
                except (httpx.HTTPError, ValueError, AttributeError) as exc:
                    raise ArtifactError(f"{gw.where}: GET /version failed: {exc}") from None
                gw.authenticate(self.config.user, self._password())
                status = gw.post("/maintenance/status", {})
                count = gw.post("/kv/range", {"key": "AA==", "range_end": "AA==", "count_only": True}).get("count", 0)
        except ArtifactError as exc:
            raise RestoreError(f"{self.name}: {exc}") from None
        return (f"etcd {version} answers, revision {status.get('header', {}).get('revision', '?')}, "
                f"{int(count)} key(s)")

    def _answers(self) -> bool:
        try:
            with _Gateway(self, read_timeout=5.0) as gw:
                return gw.answers("/version", timeout=3.0)
        except ArtifactError:
            return False

    def _wait_healthy(self, kept: str) -> str:
        """health() once etcd answers again after its start (60s at the most)."""
        return wait_until(self.health, timeout=60, interval=0.3, retry=RestoreError, error=lambda exc: RestoreError(
            f"{self.name}: etcd did not come back within 60s{kept}: {exc}"))

    def _restore_argv(self, snapshot: str, data_dir: str, name: str | None, peer_url: str | None) -> list[str]:
        """``etcdutl snapshot restore`` where etcdutl exists (where the restore runs), else etcdctl's."""
        c = self.config
        tool = c.etcdctl
        try:
            self.access.run(["sh", "-c", 'command -v "$1" >/dev/null', "sh", c.etcdutl], timeout=30,
                            label=f"look for {c.etcdutl}")
            tool = c.etcdutl
        except (ProducerError, AccessError):
            pass   # not there (or no shell to ask): etcd 3.4's etcdctl has the restore
        argv = [tool, "snapshot", "restore", snapshot, "--data-dir", data_dir]
        if name:
            argv += ["--name", name]
        if peer_url:
            argv += ["--initial-advertise-peer-urls", peer_url,
                     "--initial-cluster", f"{name or 'default'}={peer_url}"]
        return argv

    def _restore_into(self, artifact: ArtifactPath, data_dir: Path, name: str | None, peer_url: str | None) -> None:
        c = self.config
        try:
            with artifact.local_file() as snapshot:   # a checked private copy: the tool wants a file name
                argv = self._restore_argv(str(snapshot), str(data_dir), name, peer_url)
                self.access.run(argv, env={"ETCDCTL_API": "3"}, timeout=c.timeout_s,
                                label=f"{os.path.basename(argv[0])} snapshot restore")
        except (ProducerError, AccessError) as exc:
            raise RestoreError(f"{self.name}: {exc}") from None

    def restore(self, artifact: ArtifactPath | Path, *, data_dir: str | None = None, name: str | None = None,
                peer_url: str | None = None, start_command: list[str] | None = None, **_: object) -> str:
        """Restore ``artifact`` into a new data dir, or in place (see the module docstring)."""
        artifact = as_artifact(artifact)
        try:
            self.verify(artifact)
        except VerifyError as exc:
            raise RestoreError(f"{self.name}: refusing to restore: {exc}") from None
        c = self.config
        name = name or c.name
        peer_url = peer_url or c.peer_url
        if data_dir:
            target = Path(data_dir)
            if target.exists() and (not target.is_dir() or any(target.iterdir())):
                raise RestoreError(f"{self.name}: {target} exists and is not empty; restore into a new dir")
            self._restore_into(artifact, target, name, peer_url)
            start = f"etcd --data-dir {target}" + (f" --name {name}" if name else "")
            return f"snapshot {artifact.name} restored into {target}; start it with `{start} ...`"
        if c.data_dir and has(self.access, ManagedLifecycle):
            return self._restore_in_container(artifact, c.data_dir, name, peer_url)
        start = start_command or c.start_command
        if not (c.data_dir and start):
            raise RestoreError(f"{self.name}: pass data_dir (a new, empty dir) or set data_dir and "
                               "start_command to restore in place")
        return self._restore_in_place(artifact, Path(c.data_dir), name, peer_url, start)

    def _restore_in_container(self, artifact: ArtifactPath, live: str, name: str | None, peer_url: str | None) -> str:
        """In-place restore in a container: restore beside the data dir in it, stop, swap, start."""
        c = self.config
        ts = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        live = live.rstrip("/")
        staging, old = f"{live}.coderz-restore-{ts}", f"{live}.coderz-old-{ts}"
        copy = f"coderz-restore-{ts}.snapshot"
        try:
            self.access.untar_into("/tmp", artifact.as_tar(copy))
            # readable by the container's user only (the snapshot holds every key and secret)
            self.access.shell('chown "$(stat -c %u:%g "$2")" "$1"', f"/tmp/{copy}", os.path.dirname(live),
                              label="chown snapshot copy")
            argv = self._restore_argv(f"/tmp/{copy}", staging, name, peer_url)
            self.access.run(argv, env={"ETCDCTL_API": "3"}, timeout=c.timeout_s,
                            label=f"{os.path.basename(argv[0])} snapshot restore")
        except (ProducerError, AccessError) as exc:
            with contextlib.suppress(Exception):
                self.access.remove_tree(staging)
            raise RestoreError(f"{self.name}: restore in {self.access.description} failed, nothing changed: "
                               f"{exc}") from None
        finally:
            with contextlib.suppress(Exception):
                self.access.remove_tree(f"/tmp/{copy}")
        log.info("%s: stopping %s to swap in the restored data dir", self.name, self.access.description)
        self.access.stop_service(None, timeout=120)
        try:
            self.access.shell('if [ -e "$1" ]; then mv "$1" "$3"; fi && mv "$2" "$1"', live, staging, old,
                               label="swap etcd data dir")
        except (ProducerError, AccessError) as exc:
            raise RestoreError(f"{self.name}: swapping {staging} into {live} failed: {exc}; start "
                               f"{self.access.description} again by hand") from None
        try:
            self.access.start_service(None, timeout=120)
        except AccessError as exc:
            raise RestoreError(f"{self.name}: {exc} (old data kept at {old})") from None
        health = self._wait_healthy(f" (old data kept at {old})")
        return f"etcd in {self.access.description} restarted on {live} from {artifact.name} (old data kept at {old}): {health}"

    def _restore_in_place(self, artifact: ArtifactPath, live: Path, name: str | None, peer_url: str | None,
                          start: list[str]) -> str:
        c = self.config
        if self._answers() and not c.stop_command:
            raise RestoreError(f"{self.name}: {self._where()} is running; stop it first or set stop_command "
                               "(nothing changed)")
        ts = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        staging = live.with_name(f"{live.name}.coderz-restore-{ts}")
        old = live.with_name(f"{live.name}.coderz-old-{ts}")
        try:
            self._restore_into(artifact, staging, name, peer_url)
        except RestoreError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if c.stop_command and self._answers():
            log.info("%s: stopping etcd", self.name)
            try:
                self.access.run(c.stop_command, timeout=120, label="etcd stop_command")
            except (ProducerError, AccessError) as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise RestoreError(f"{self.name}: stop_command failed, nothing changed: {exc}") from None
            try:
                wait_until(lambda: not self._answers(), timeout=60, interval=0.2)
            except TimeoutError:
                shutil.rmtree(staging, ignore_errors=True)
                raise RestoreError(f"{self.name}: etcd still answers 60s after stop_command; nothing changed") from None
        owner = live.stat() if live.exists() else None
        if live.exists():
            os.rename(live, old)
        os.rename(staging, live)
        os.chmod(live, 0o700)
        if owner is not None:
            for root, dirs, files in os.walk(live):
                for p in [root, *(os.path.join(root, f) for f in files)]:
                    os.chown(p, owner.st_uid, owner.st_gid)
        kept = f" (old data kept at {old})" if owner is not None else ""
        log.info("%s: restored data dir in place at %s%s; starting etcd", self.name, live, kept)
        try:
            self.access.run(start, timeout=120, label="etcd start_command")
        except (ProducerError, AccessError) as exc:
            raise RestoreError(f"{self.name}: start_command failed after the swap{kept}: {exc}") from None
        health = self._wait_healthy(kept)
        return f"etcd restarted on {live} from {artifact.name}{kept}: {health}"
