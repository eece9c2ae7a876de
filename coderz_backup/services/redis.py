"""Redis → ``redis.rdb``.

Backup, two paths:

- ``data_dir`` readable from here: ``BGSAVE``, wait until it finished *and succeeded*
  (``INFO persistence``: not in progress, ``rdb_last_bgsave_status:ok``, more saves or a
  newer save time than before), then stream ``<data_dir>/<dbfilename>``.
- otherwise: fetch a fresh RDB over the replication protocol, as ``redis-cli --rdb``
  does (``REPLCONF rdb-only 1`` + ``SYNC``; both the ``$<len>`` and the diskless
  ``$EOF:<mark>`` payload forms are read).

Either way the file must start with ``REDIS`` + 4 digits and end with opcode ``0xFF`` and
a CRC-64 over everything before it (computed while streaming).

Restore honours the AOF trap: with ``appendonly yes`` Redis would load the AOF and
ignore the RDB, so AOF is switched off (and persisted) before the swap and rebuilt
from memory afterwards.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from pathlib import Path
from typing import ClassVar, Iterator, Literal

import anycrc
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pydantic import Field, SecretStr

from ..access import CHUNK, ManagedLifecycle, has
from ..fingerprint import RdbCounter, tee
from ..schema import ServiceBase, resolve_secret
from ..waiting import wait_until
from ..errors import ArtifactError, CoderzBackupError, IncompleteArtifactError, RestoreError, VerifyError
from ..reader import ArtifactPath, as_artifact
from ..writer import StreamEnds, write_stream
from .base import ArtifactResult, BaseService

__all__ = ["RedisService", "RdbChecker", "crc64"]

log = logging.getLogger(__name__)
_CRC = anycrc.Model("CRC64-REDIS")


def crc64(data: bytes, crc: int | None = None) -> int:
    return _CRC.calc(data, crc) if crc is not None else _CRC.calc(data)


def _rdb_length(buf: bytes, i: int) -> tuple[int | None, int, int]:
    """(length, special-encoding or -1, next index) of an RDB length field at ``buf[i]``."""
    first = buf[i]
    kind = first >> 6
    if kind == 0:
        return first & 0x3F, -1, i + 1
    if kind == 1:
        return ((first & 0x3F) << 8) | buf[i + 1], -1, i + 2
    if first == 0x80:
        return int.from_bytes(buf[i + 1:i + 5], "big"), -1, i + 5
    if first == 0x81:
        return int.from_bytes(buf[i + 1:i + 9], "big"), -1, i + 9
    return None, first & 0x3F, i + 1


def _rdb_string(buf: bytes, i: int) -> tuple[bytes, int]:
    n, special, i = _rdb_length(buf, i)
    if special == 0:
        return str(int.from_bytes(buf[i:i + 1], "little", signed=True)).encode(), i + 1
    if special == 1:
        return str(int.from_bytes(buf[i:i + 2], "little", signed=True)).encode(), i + 2
    if special == 2:
        return str(int.from_bytes(buf[i:i + 4], "little", signed=True)).encode(), i + 4
    if n is None:
        raise ValueError("compressed aux string")
    return buf[i:i + n], i + n


def rdb_ctime(head: bytes) -> int | None:
    """The ``ctime`` aux field (when Redis wrote the file, unix seconds) from an RDB's first bytes."""
    try:
        i = 9
        while i < len(head) and head[i] == 0xFA:   # AUX fields come first
            key, i = _rdb_string(head, i + 1)
            value, i = _rdb_string(head, i)
            if key == b"ctime":
                return int(value)
    except (IndexError, ValueError):
        return None
    return None


class RdbChecker:
    """Computes the CRC-64 of a streamed RDB and checks header and trailer at the end.

    With ``not_before`` (unix time just before our BGSAVE) the file must have been written by
    that save (its ``ctime`` aux field), not be an old ``dump.rdb`` lying where ``data_dir``
    points while Redis saves somewhere else.
    """

    def __init__(self, not_before: float | None = None, where: str = "") -> None:
        self._crc: int | None = None
        self._pending = b""  # last 8 bytes seen: the candidate checksum
        self.not_before = not_before
        self.where = where

    def observe(self, data: bytes) -> None:
        buf = self._pending + data
        if len(buf) <= 8:
            self._pending = buf
            return
        body, self._pending = buf[:-8], buf[-8:]
        self._crc = crc64(body, self._crc)

    def check(self, ends: StreamEnds) -> None:
        head = ends.head
        if not (head[:5] == b"REDIS" and head[5:9].isdigit()):
            raise IncompleteArtifactError("not an RDB file (the 'REDIS' header is missing)")
        if ends.raw_bytes < 18 or ends.tail[-9:-8] != b"\xff":
            raise IncompleteArtifactError("RDB is truncated (no end-of-file opcode before the checksum)")
        ctime = rdb_ctime(bytes(head))
        if self.not_before is not None and ctime is not None and ctime < self.not_before - 5:
            written = dt.datetime.fromtimestamp(ctime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
            raise IncompleteArtifactError(
                f"{self.where or 'the RDB'} was written at {written}, before this backup's BGSAVE: it is an old "
                "file, and Redis saves somewhere else — point data_dir at Redis' `dir` (CONFIG GET dir) or unset "
                "it to fetch the RDB over the network")
        stored = int.from_bytes(self._pending, "little")
        if stored == 0:
            log.warning("RDB written with rdbchecksum no: checksum not verifiable")
            return
        if stored != (self._crc or 0):
            raise IncompleteArtifactError("RDB checksum mismatch: the file is corrupt or truncated")



class RedisConfig(ServiceBase):
    """Redis: BGSAVE, then the RDB file (from data_dir, or over the replication protocol)."""

    kind: Literal["redis"]
    host: str = Field("127.0.0.1", description="server host")
    port: int = Field(6379, ge=1, le=65535, description="server port")
    socket: str | None = Field(None, description="Unix socket path of the server (instead of host and port)")
    username: str | None = Field(None, description="ACL user (needs SYNC/REPLCONF for the network path)")
    password: SecretStr | None = Field(None, description="password reference")
    data_dir: str | None = Field(None, description="server's data dir as seen from this host; unset = fetch over the network")
    start_command: list[str] | None = Field(None, description="argv that starts the server again after a restore")
    save_timeout_s: float = Field(600.0, gt=0, description="how long to wait for BGSAVE")
    section: ClassVar[str] = "Redis"
    default_min_bytes: ClassVar[int] = 18
    order: ClassVar[int] = 20


class RedisService(BaseService):
    kind: ClassVar[str] = "redis"
    config_model: ClassVar[type[RedisConfig]] = RedisConfig
    config: RedisConfig

    @property
    def artifact_path(self) -> str:
        return f"{self.name}.rdb"

    def artifacts(self) -> list[str]:
        return [self.artifact_path]

    def _password(self) -> str | None:
        return resolve_secret(self.config.password, what=f"{self.name}.password")

    def client(self) -> redis.Redis:
        c = self.config
        # No client-side retries: the flow's task retries decide, and a dead server
        # should fail in milliseconds, not after a hidden backoff.
        where = {"unix_socket_path": c.socket} if c.socket else {"host": c.host, "port": c.port}
        return redis.Redis(**where, username=c.username, password=self._password(),
                           socket_timeout=30, socket_connect_timeout=10, retry=Retry(NoBackoff(), 0))

    def _where(self) -> str:
        c = self.config
        return f"redis at {c.socket}" if c.socket else f"redis at {c.host}:{c.port}"

    def _connect_raw(self, timeout: float) -> socket.socket:
        """A plain socket to the server (replication protocol, "is it down yet")."""
        c = self.config
        if not c.socket:
            return socket.create_connection((c.host, c.port), timeout=timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(c.socket)
        except OSError:
            sock.close()
            raise
        return sock

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except redis.AuthenticationError:
            raise ArtifactError(f"{self._where()}: authentication failed; check {self.name}.password") from None
        except redis.ConnectionError as exc:
            raise ArtifactError(f"{self._where()} is unreachable: {exc}") from None
        except redis.ResponseError as exc:
            raise ArtifactError(f"{self._where()}: {exc}") from None

    # -- backup -------------------------------------------------------------
    def backup(self, into: Path) -> list[ArtifactResult]:
        """One RDB (BGSAVE and the file, or the replication stream; see the module docstring), CRC-64 checked."""
        c = self.config
        client = self.client()
        try:
            self._call(client.ping)
            dbfile = self._dbfilename(client)
            local = os.path.join(c.data_dir, dbfile) if c.data_dir else None
            checker = RdbChecker()
            counter = RdbCounter()   # keys per db, walking the records as they stream by (read-only)
            counter.what = f"{self.name}: fingerprint"
            observe = tee(checker.observe, counter.observe)
            if local and self.access.readable(c.data_dir):
                checker.not_before, checker.where = time.time(), local
                self._bgsave(client)
                with self.access.open_read(local) as fh:
                    rec = write_stream(into, self.artifact_path, iter(lambda: fh.read(CHUNK), b""), check=checker.check, observe=observe)
                how = f"BGSAVE + copy of {local}"
            else:
                if local:
                    log.info("%s: %s is not readable here; fetching the RDB over the network", self.name, local)
                rec = write_stream(into, self.artifact_path, self._sync_rdb(),
                                   check=checker.check, observe=observe)
                how = "replication SYNC"
            keys = sum(v.get("keys", 0) for k, v in self._call(client.info, "keyspace").items()
                       if isinstance(v, dict))
        finally:
            client.close()
        log.info("%s: %s, %d bytes (%d keys at backup time)", self.name, how, rec.bytes, keys)
        return [ArtifactResult.from_files(self.name, self.kind, self.artifact_path, [rec],
                                          details={"method": how, "keys": keys}, fingerprint=counter.result())]

    # -- fingerprint (restore drills) ----------------------------------------
    def fingerprint_live(self) -> dict:
        """``keys`` and ``expires`` per db from ``INFO keyspace`` (dbs without keys are not listed)."""
        client = self.client()
        try:
            info = self._call(client.info, "keyspace")
        finally:
            client.close()
        keys, expires = {}, {}
        for name, v in info.items():
            if isinstance(v, dict) and str(name).startswith("db") and v.get("keys"):
                keys[str(name)[2:]] = int(v["keys"])
                expires[str(name)[2:]] = int(v.get("expires", 0))
        return {"keys": keys, "expires": expires}

    def _dbfilename(self, client: redis.Redis) -> str:
        try:
            return client.config_get("dbfilename").get("dbfilename") or "dump.rdb"
        except redis.ResponseError:  # CONFIG renamed/disabled
            return "dump.rdb"

    def _persistence(self, client: redis.Redis) -> dict:
        return self._call(client.info, "persistence")

    def _bgsave(self, client: redis.Redis) -> None:
        deadline = time.monotonic() + self.config.save_timeout_s
        before = self._persistence(client)
        while True:
            try:
                client.bgsave()
                break
            except redis.ResponseError as exc:
                text = str(exc)
                busy_child = "another child process" in text.lower() or "can't bgsave right now" in text.lower()
                if "in progress" not in text and "already" not in text and not busy_child:
                    raise ArtifactError(f"{self._where()}: BGSAVE refused: {exc}") from None
                # an AOF rewrite (Redis >= 6.2: "Another child process is active (AOF?): can't
                # BGSAVE right now. Use BGSAVE SCHEDULE …") → schedule it; the wait below sees it done
                if busy_child or "rewriting" in text or "AOF" in text:
                    self._call(client.execute_command, "BGSAVE", "SCHEDULE")
                    break
                if time.monotonic() > deadline:
                    raise ArtifactError(f"{self._where()}: another save kept running for "
                                        f"{self.config.save_timeout_s:.0f}s") from None
                time.sleep(0.2)
                before = self._persistence(client)
        while True:
            info = self._persistence(client)
            newer = (info.get("rdb_saves", 0) > before.get("rdb_saves", 0)
                     or info.get("rdb_last_save_time", 0) > before.get("rdb_last_save_time", 0))
            if not info.get("rdb_bgsave_in_progress") and newer:
                break
            if not info.get("rdb_bgsave_in_progress") and not newer and info.get("rdb_last_bgsave_status") == "err":
                raise ArtifactError(f"{self._where()}: BGSAVE failed (rdb_last_bgsave_status:err); "
                                    "check the Redis log and free disk space in its data dir")
            if time.monotonic() > deadline:
                raise ArtifactError(f"{self._where()}: BGSAVE did not finish within "
                                    f"{self.config.save_timeout_s:.0f}s")
            time.sleep(0.05)
        if info.get("rdb_last_bgsave_status") != "ok":
            raise ArtifactError(f"{self._where()}: BGSAVE failed (rdb_last_bgsave_status:"
                                f"{info.get('rdb_last_bgsave_status')}); check the Redis log")

    def _sync_rdb(self) -> Iterator[bytes]:
        """Yield a fresh RDB from the server over the replication protocol."""
        c = self.config
        try:
            sock = self._connect_raw(10)
        except OSError as exc:
            raise ArtifactError(f"{self._where()} is unreachable: {exc.strerror or exc}") from None
        sock.settimeout(self.config.save_timeout_s)
        reader = sock.makefile("rb", buffering=CHUNK)
        try:
            password = self._password()
            if password is not None:
                auth = ["AUTH", c.username, password] if c.username else ["AUTH", password]
                self._send(sock, auth)
                if not reader.readline().startswith(b"+OK"):
                    raise ArtifactError(f"{self._where()}: authentication failed; check {self.name}.password")
            self._send(sock, ["REPLCONF", "rdb-only", "1"])
            reader.readline()  # +OK on 7.0+, an error on older servers: both fine
            self._send(sock, ["SYNC"])
            line = reader.readline()
            while line in (b"\n", b"\r\n"):  # keep-alives while the master prepares the RDB
                line = reader.readline()
            if line.startswith(b"-"):
                raise ArtifactError(f"{self._where()}: SYNC refused: {line[1:].decode(errors='replace').strip()}"
                                    " (the user needs SYNC/REPLCONF permissions, or set data_dir)")
            if not line.startswith(b"$"):
                raise ArtifactError(f"{self._where()}: unexpected SYNC reply {line[:40]!r}")
            if line.startswith(b"$EOF:"):
                mark = line[5:].rstrip(b"\r\n")
                yield from _until_mark(reader, mark)
            else:
                remaining = int(line[1:].strip())
                while remaining:
                    chunk = reader.read(min(CHUNK, remaining))
                    if not chunk:
                        raise IncompleteArtifactError(f"{self._where()}: connection closed with {remaining} "
                                                      "RDB bytes missing")
                    remaining -= len(chunk)
                    yield chunk
        except socket.timeout:
            raise ArtifactError(f"{self._where()}: SYNC timed out") from None
        finally:
            reader.close()
            sock.close()

    @staticmethod
    def _send(sock: socket.socket, parts: list[str]) -> None:
        out = [f"*{len(parts)}\r\n".encode()]
        for p in parts:
            b = p.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        sock.sendall(b"".join(out))

    # -- verify -------------------------------------------------------------
    def verify(self, artifact: ArtifactPath | Path | Path) -> str:
        """RDB magic and version, and the CRC-64 trailer over the whole file."""
        artifact = as_artifact(artifact)
        checker = RdbChecker()
        head = b""
        tail = b""
        n = 0
        with artifact.open() as fh:
            for chunk in iter(lambda: fh.read(CHUNK), b""):
                if not head:
                    head = chunk[:16]
                checker.observe(chunk)
                tail = (tail + chunk)[-16:]
                n += len(chunk)
        try:
            checker.check(StreamEnds(head, tail, n))
        except IncompleteArtifactError as exc:
            raise VerifyError(f"{artifact.name}: {exc}") from None
        return f"RDB header {head[:9].decode()} and CRC-64 trailer ok ({n} bytes)"

    # -- restore ------------------------------------------------------------
    def restore_target(self) -> str:
        c = self.config
        start = " ".join(c.start_command) if c.start_command else "(start_command not set: restore will refuse)"
        return f"every key of {self._where()} is replaced; the server is stopped and started with {start}"

    def health(self) -> str:
        """PING answers; the key count."""
        client = self.client()
        try:
            if not client.ping():
                raise RestoreError(f"{self.name}: PING failed")
            return f"PING ok, {client.dbsize()} key(s)"
        except redis.RedisError as exc:
            raise RestoreError(f"{self.name}: {self._where()}: {exc}") from None
        finally:
            client.close()

    def restore(self, artifact: ArtifactPath | Path | Path, *, data_dir: str | None = None,
                start_command: list[str] | None = None, **_: object) -> str:
        """Stop Redis without saving, put the RDB in place, start it, wait until loaded."""
        artifact = as_artifact(artifact)
        self.verify(artifact)
        c = self.config
        start = start_command or c.start_command
        in_container = has(self.access, ManagedLifecycle)
        if not start and not in_container:
            raise RestoreError(f"{self.name}: set start_command (how to start Redis again) before restoring")
        client = self.client()
        try:
            conf = self._restore_call(client.config_get, "*")
        finally:
            client.close()
        target_dir = data_dir or c.data_dir or conf.get("dir")
        dbfile = conf.get("dbfilename") or "dump.rdb"
        aof = conf.get("appendonly") == "yes"
        reachable = self.access.readable(target_dir) if (target_dir and in_container) else \
            bool(target_dir) and os.path.isdir(target_dir)
        if not reachable:
            raise RestoreError(f"{self.name}: data dir {target_dir!r} is not reachable via "
                               f"{self.access.description}; set data_dir")
        client = self.client()
        if aof:
            # With appendonly yes Redis would load the AOF and ignore our RDB: turn AOF off
            # and persist that, so the restart loads the RDB; it is rebuilt below.
            self._restore_call(client.config_set, "appendonly", "no")
            try:
                client.config_rewrite()
            except redis.ResponseError as exc:
                self._restore_call(client.config_set, "appendonly", "yes")
                raise RestoreError(f"{self.name}: AOF is on and the config file cannot be rewritten ({exc}); "
                                   "nothing changed") from None
        if in_container:
            # `docker stop` (a restart policy does not bring back a container stopped on
            # purpose); Redis may save on SIGTERM, the file is replaced right after anyway.
            client.close()
            log.info("%s: stopping %s", self.name, self.access.description)
            self.access.stop_service(None, timeout=60)
        else:
            log.info("%s: stopping Redis (SHUTDOWN NOSAVE)", self.name)
            try:
                client.shutdown(nosave=True)
            except redis.ConnectionError:
                pass
            finally:
                client.close()
        self._wait_down()

        if in_container:
            self._place_in_container(artifact, target_dir, dbfile)
            log.info("%s: RDB placed at %s/%s; starting %s", self.name, target_dir, dbfile, self.access.description)
            self.access.start_service(None, timeout=60)
        else:
            dest = Path(target_dir) / dbfile
            tmp = dest.with_name(f".{dbfile}.coderz-restore")
            artifact.copy_to(tmp)
            st = os.stat(target_dir)
            os.chown(tmp, st.st_uid, st.st_gid)
            os.chmod(tmp, 0o660)
            os.replace(tmp, dest)
            log.info("%s: RDB placed at %s; starting Redis", self.name, dest)
            self.access.run(start, timeout=60, label="redis start_command")
        client = self._wait_up()
        try:
            if aof:
                self._restore_call(client.config_set, "appendonly", "yes")
                self._wait_aof(client)
                client.config_rewrite()
            keys = sum(v.get("keys", 0) for k, v in client.info("keyspace").items() if isinstance(v, dict))
        finally:
            client.close()
        return f"Redis restarted from {artifact.name} with {keys} keys" + (" (AOF rebuilt)" if aof else "")

    def _place_in_container(self, artifact: ArtifactPath, target_dir: str, dbfile: str) -> None:
        """Put the RDB into the (stopped) container's data dir, owned like the dir."""
        try:
            self.access.untar_into(target_dir, artifact.as_tar(dbfile, mode=0o660))
            self.access.chown_like_parent(target_dir)
        except CoderzBackupError as exc:
            raise RestoreError(f"{self.name}: placing {dbfile} in {target_dir} failed: {exc}; start the container "
                               "again by hand") from None

    def _restore_call(self, fn, *args):
        try:
            return fn(*args)
        except redis.RedisError as exc:
            raise RestoreError(f"{self.name}: {self._where()}: {exc}") from None

    def _wait_down(self, timeout: float = 30) -> None:
        def _gone() -> bool:
            try:
                with self._connect_raw(1):
                    return False
            except OSError:
                return True

        wait_until(_gone, timeout=timeout, interval=0.1, error=lambda _: RestoreError(
            f"{self.name}: Redis did not stop within {timeout:.0f}s; nothing was replaced"))

    def _wait_up(self, timeout: float = 60) -> redis.Redis:
        def _loaded() -> redis.Redis | None:
            client = self.client()
            try:
                if client.ping() and not client.info("persistence").get("loading"):
                    return client
            except redis.BusyLoadingError:
                pass
            except redis.RedisError:
                client.close()
                raise
            client.close()
            return None

        return wait_until(_loaded, timeout=timeout, interval=0.2, retry=redis.RedisError, error=lambda last: RestoreError(
            f"{self.name}: Redis did not come back within {timeout:.0f}s ({last or ''})"))

    def _wait_aof(self, client: redis.Redis, timeout: float = 600) -> None:
        def _rewritten() -> bool:
            info = client.info("persistence")
            return not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled")

        wait_until(_rewritten, timeout=timeout, interval=0.1, error=lambda _: RestoreError(
            f"{self.name}: AOF rewrite did not finish within {timeout:.0f}s"))


def _until_mark(reader, mark: bytes) -> Iterator[bytes]:
    """Yield bytes until the diskless EOF ``mark`` (which is not yielded)."""
    keep = len(mark)
    buf = b""
    while True:
        chunk = reader.read1(CHUNK) if hasattr(reader, "read1") else reader.read(CHUNK)
        if not chunk:
            raise IncompleteArtifactError("connection closed before the RDB end mark")
        buf += chunk
        idx = buf.find(mark)
        if idx >= 0:
            if idx:
                yield buf[:idx]
            return
        if len(buf) > keep:
            yield buf[:-keep]
            buf = buf[-keep:]
