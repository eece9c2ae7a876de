"""k3s cluster state → ``<name>.snapshot`` (embedded etcd) or ``k3s-server-db.tar.gz`` (SQLite).

Modes (``mode`` in the config; the report and manifest say which one ran):

- ``etcd-snapshot``: ``k3s etcd-snapshot save --name coderz-<ts> --dir <tmp>`` through the
  access layer (on this host, in a container, or behind ``exec_prefix`` such as
  ``kubectl exec``/``ssh``), then the one file it wrote (k3s appends the node name and a
  Unix timestamp to the name) is streamed back into the artifact and the temporary
  folder is deleted from the node. The file is an ordinary etcd snapshot: the bbolt
  check and SHA-256 trailer of :mod:`coderz_backup.services.etcd` apply.
- ``sqlite`` (k3s's default datastore, kine): a gzip tar holding
  ``server/db/state.db`` as a *consistent* copy (SQLite online backup API, then
  ``PRAGMA integrity_check``), the rest of ``server/db/`` (without the live
  ``state.db``/``-wal``/``-shm``/``-journal``, ``etcd/`` and ``snapshots/``) and the
  ``server/token`` file (it encrypts confidential data in the datastore).
- ``auto`` (default): ``server/db/etcd`` present → etcd-snapshot; ``server/db/state.db``
  present → sqlite; neither → a clear error.

Restore:

- sqlite: k3s is stopped (``stop_command``; refused without one unless the caller says
  it is already down), ``server/db`` and ``server/token`` are moved aside to
  ``*.coderz-old-<ts>``, the archive is extracted (paths checked first), k3s is started.
- etcd-snapshot: the documented ``k3s server --cluster-reset
  --cluster-reset-restore-path=<file>`` runs through the access layer after
  ``stop_command``; then ``start_command`` starts k3s normally again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shlex
import sqlite3
from ..tarfile_compat import tarfile
import tempfile
import time
from pathlib import Path
from typing import ClassVar, Literal


from pydantic import Field

from ..access import ARCHIVE_ERRORS, CHUNK, HostFiles, ManagedLifecycle, SeenMembers, check_member, has, tar_writer
from ..errors import (AccessError, ArtifactError, CoderzBackupError, IncompleteArtifactError, ProducerError,
                      RestoreError, VerifyError)
from ..fingerprint import NotDrillable, TarCounter, bolt_fingerprint, normalized, safely, sqlite_tables
from ..reader import ArtifactPath, as_artifact
from ..schema import ServiceBase
from ..writer import ArtifactWriter, write_stream
from .base import ArtifactResult, BaseService
from .etcd import SnapshotChecker, verify_snapshot_file
from .sqlitecopy import sqlite_copy

__all__ = ["K3sService", "SQLITE_ARTIFACT"]

log = logging.getLogger(__name__)

SQLITE_ARTIFACT = "k3s-server-db.tar.gz"
_LIVE_DB = ("state.db", "state.db-wal", "state.db-shm", "state.db-journal")
_SKIP_DIRS = ("etcd", "snapshots")



class K3sConfig(ServiceBase):
    """k3s: `k3s etcd-snapshot save` (embedded etcd) or a consistent copy of the SQLite datastore."""

    kind: Literal["k3s"]
    mode: Literal["auto", "etcd-snapshot", "sqlite"] = Field("auto", description="auto: etcd-snapshot when "
                                                             "server/db/etcd exists, else sqlite")
    data_dir: str = Field("/var/lib/rancher/k3s", description="k3s data dir (--data-dir)")
    k3s: str = Field("k3s", description="k3s executable (run through the access: host, container or exec_prefix)")
    snapshot_tmp_dir: str = Field("/tmp", description="where `etcd-snapshot save --dir` writes before the copy "
                                                      "(a fresh sub-folder, deleted afterwards)")
    stop_command: list[str] | None = Field(None, description='argv that stops k3s before a restore, e.g. '
                                                              '["systemctl", "stop", "k3s"]')
    start_command: list[str] | None = Field(None, description="argv that starts k3s after a restore")
    health_command: list[str] | None = Field(None, description="argv that checks k3s after a restore, e.g. "
                                                               '["k3s", "kubectl", "get", "--raw", "/readyz"]')
    default_min_bytes: ClassVar[int] = 512
    section: ClassVar[str] = "etcd Snapshots"
    order: ClassVar[int] = 80


class K3sService(BaseService):
    kind: ClassVar[str] = "k3s"
    config_model: ClassVar[type[K3sConfig]] = K3sConfig

    # -- layout ---------------------------------------------------------------
    @property
    def snapshot_path(self) -> str:
        return f"{self.name}.snapshot"

    def artifacts(self) -> list[str]:
        mode = self.config.mode
        if mode == "sqlite":
            return [SQLITE_ARTIFACT]
        return [self.snapshot_path]

    def _p(self, *parts: str) -> str:
        return os.path.join(self.config.data_dir, *parts)

    def _is_local(self) -> bool:
        return has(self.access, HostFiles)

    def detect_mode(self) -> str:
        if self.config.mode != "auto":
            return self.config.mode
        if self.access.readable(self._p("server", "db", "etcd")):
            return "etcd-snapshot"
        if self.access.readable(self._p("server", "db", "state.db")):
            return "sqlite"
        raise ArtifactError(
            f"{self.name}: neither embedded etcd ({self._p('server', 'db', 'etcd')}) nor SQLite "
            f"({self._p('server', 'db', 'state.db')}) found via {self.access.description}; check data_dir "
            "or set mode")

    # -- backup ---------------------------------------------------------------
    def backup(self, into: Path) -> list[ArtifactResult]:
        """The datastore: an etcd snapshot (embedded etcd) or a tar of the SQLite db and token (kine)."""
        mode = self.detect_mode()
        started = time.monotonic()
        if mode == "sqlite":
            result = self._backup_sqlite(Path(into))
        else:
            result = self._backup_etcd(Path(into))
        result.details["mode"] = mode
        log.info("%s: k3s %s backup, %d bytes in %.1fs", self.name, mode, result.bytes, time.monotonic() - started)
        return [result]

    def _k3s(self, *args: str) -> list[str]:
        return [self.config.k3s, *args]

    def _backup_etcd(self, into: Path) -> ArtifactResult:
        c = self.config
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
        tmp_dir = f"{c.snapshot_tmp_dir.rstrip('/')}/coderz-backup-{stamp}-{os.getpid()}"
        name = f"coderz-{stamp}"
        argv = self._k3s("etcd-snapshot", "save", "--name", name, "--dir", tmp_dir)
        if c.data_dir != "/var/lib/rancher/k3s":
            argv += ["--data-dir", c.data_dir]
        try:
            try:
                self.access.run(argv, timeout=c.timeout_s, label="k3s etcd-snapshot save")
            except ProducerError as exc:
                text = str(exc)
                if "not been initialized" in text or "etcd database not found" in text:
                    raise ArtifactError(f"{self.name}: k3s runs without embedded etcd ({text}); "
                                        "set mode = \"sqlite\" (or auto)") from None
                raise
            listing = self.access.run(["ls", "-1", tmp_dir], timeout=60, label=f"ls {tmp_dir}")
            files = [ln.strip() for ln in listing.splitlines() if ln.strip().startswith(name)]
            if len(files) != 1:
                raise IncompleteArtifactError(
                    f"{self.name}: expected one snapshot named {name}-* in {tmp_dir}, found {files or 'none'}")
            source = f"{tmp_dir}/{files[0]}"
            checker = SnapshotChecker()
            with self.access.open_read(source) as fh:
                rec = write_stream(into, self.snapshot_path, iter(lambda: fh.read(CHUNK), b""), check=checker.check, observe=checker.observe)
        finally:
            try:
                self.access.remove_tree(tmp_dir)
            except Exception as exc:  # noqa: BLE001 - cleanup must not hide the real outcome
                log.warning("%s: could not remove %s on the node: %s", self.name, tmp_dir, exc)
        fingerprint = safely(f"{self.name}: fingerprint", lambda: bolt_fingerprint(into / self.snapshot_path))
        return ArtifactResult.from_files(self.name, self.kind, self.snapshot_path, [rec],
                                         details={"snapshot": files[0], "via": self.access.description},
                                         fingerprint=fingerprint)

    def _backup_sqlite(self, into: Path) -> ArtifactResult:
        db_dir = self._p("server", "db")
        token = self._p("server", "token")
        if not self._is_local():
            raise AccessError(f"{self.name}: sqlite mode reads {db_dir} on this host; run coderz-backup on the "
                              "k3s server (container/exec_prefix access is for etcd-snapshot mode)")
        if not os.path.isfile(os.path.join(db_dir, "state.db")):
            raise ArtifactError(f"{self.name}: {db_dir}/state.db not found; is data_dir right?")
        if not os.path.isfile(token):
            raise ArtifactError(f"{self.name}: {token} not found; without the token the datastore's "
                                "confidential data cannot be decrypted after a restore")
        count = 0
        with tempfile.TemporaryDirectory(prefix=f".{self.name}-", dir=into) as tmp:
            copy = os.path.join(tmp, "state.db")
            pages = sqlite_copy(os.path.join(db_dir, "state.db"), copy).pages
            counter = TarCounter()   # files and bytes as the tar streams into the writer (read-only)
            counter.what = f"{self.name}: fingerprint"
            tables = safely(counter.what, lambda: {"t": sqlite_tables(copy)})

            def _check(ends) -> None:
                if count < 2:
                    raise IncompleteArtifactError(f"{self.name}: archive lacks state.db or token")

            with ArtifactWriter.open(into, SQLITE_ARTIFACT, check=_check, observe=counter.observe) as w:
                with tar_writer(w) as tar:
                    info = tar.gettarinfo(os.path.join(db_dir, "state.db"), arcname="server/db/state.db")
                    info.size = os.path.getsize(copy)
                    with open(copy, "rb") as fh:
                        tar.addfile(info, fh)
                    count += 1
                    for entry in sorted(os.listdir(db_dir)):
                        if entry in _LIVE_DB or entry in _SKIP_DIRS:
                            continue
                        tar.add(os.path.join(db_dir, entry), arcname=f"server/db/{entry}")
                        count += 1
                    tar.add(token, arcname="server/token")
                    count += 1
                rec = w.commit()
        fingerprint = counter.result()
        if fingerprint is not None and tables:
            fingerprint = normalized({**fingerprint, "tables": tables["t"]})
        return ArtifactResult.from_files(self.name, self.kind, SQLITE_ARTIFACT, [rec],
                                         details={"state_db_pages": pages, "entries": count,
                                                  "integrity_check": "ok"}, fingerprint=fingerprint)

    # -- fingerprint (restore drills) ------------------------------------------
    def fingerprint_live(self) -> dict:
        """sqlite mode: ``tables`` (rows per table of ``server/db/state.db``, opened read-only; the
        archive's files/bytes hold the consistent copy's size, which the live file does not have).
        etcd-snapshot mode is not drillable yet (k3s' etcd answers only with its client certificates)."""
        mode = self.detect_mode()
        if mode != "sqlite" or not self._is_local():
            raise NotDrillable(f"{self.name}: k3s {mode} mode via {self.access.description} cannot be "
                               "fingerprinted live yet (not drillable)")
        return {"tables": sqlite_tables(self._p("server", "db", "state.db"))}

    # -- verify ---------------------------------------------------------------
    def verify(self, artifact: ArtifactPath | Path) -> str:
        """An etcd snapshot's trailer, or the tarball: members safe, state.db passes integrity_check, token present."""
        artifact = as_artifact(artifact)
        if artifact.name.endswith(".snapshot"):
            return verify_snapshot_file(artifact)
        names = set()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                with as_artifact(artifact).open() as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
                    links = SeenMembers()
                    for member in tar:
                        check_member(member, "/restore-check", links)
                        names.add(member.name)
                        if member.name == "server/db/state.db":
                            with open(os.path.join(tmp, "state.db"), "wb") as out:
                                src = tar.extractfile(member)
                                for chunk in iter(lambda: src.read(CHUNK), b""):
                                    out.write(chunk)
                        elif member.isfile():
                            f = tar.extractfile(member)
                            while f and f.read(CHUNK):
                                pass
            except tarfile.FilterError as exc:
                raise VerifyError(f"{artifact.name}: unsafe member: {exc}") from None
            except ARCHIVE_ERRORS as exc:
                raise VerifyError(f"{artifact.name}: archive is damaged ({exc})") from None
            missing = {"server/db/state.db", "server/token"} - names
            if missing:
                raise VerifyError(f"{artifact.name}: lacks {', '.join(sorted(missing))}")
            try:
                with sqlite3.connect(os.path.join(tmp, "state.db")) as db:
                    ok = db.execute("PRAGMA integrity_check").fetchone()[0]
            except sqlite3.Error as exc:
                raise VerifyError(f"{artifact.name}: state.db is not a SQLite database ({exc})") from None
            if ok != "ok":
                raise VerifyError(f"{artifact.name}: state.db fails integrity_check: {ok}")
        return f"gzip and tar intact, {len(names)} entries, state.db integrity_check ok, token present"

    # -- restore --------------------------------------------------------------
    def restore_target(self) -> str:
        c = self.config
        stop = shlex.join(c.stop_command) if c.stop_command else "(stop_command not set: k3s must be down)"
        return (f"k3s datastore under {c.data_dir}/server (db/ and token; old ones kept as *.coderz-old-<ts>) "
                f"or a --cluster-reset from the etcd snapshot; k3s is stopped with {stop}")

    def health(self) -> str:
        c = self.config
        if c.health_command:
            out = self.access.run(c.health_command, timeout=120, label="k3s health_command")
            return f"health_command ok: {out.strip()[:200]}"
        if self.access.readable(self._p("server", "token")):
            return f"{c.data_dir}/server in place (set health_command, e.g. kubectl get --raw /readyz, for more)"
        raise RestoreError(f"{self.name}: {c.data_dir}/server/token missing after restore")

    def restore(self, artifact: ArtifactPath | Path, *, already_stopped: bool = False, **_: object) -> str:
        artifact = as_artifact(artifact)
        if artifact.name.endswith(".snapshot"):
            return self._restore_etcd(artifact, already_stopped=already_stopped)
        return self._restore_sqlite(artifact, already_stopped=already_stopped)

    def _stop(self, already_stopped: bool) -> None:
        c = self.config
        if self.access.stop_service(c.stop_command, timeout=300):
            return
        if not already_stopped:
            raise RestoreError(f"{self.name}: set stop_command (e.g. [\"systemctl\", \"stop\", \"k3s\"]) so k3s is "
                               "down before its datastore is replaced; nothing changed")

    def _start(self) -> str:
        c = self.config
        if self.access.start_service(c.start_command, timeout=300):
            return "k3s started"
        return "start k3s now (start_command not set)"

    def _restore_sqlite(self, artifact: ArtifactPath, *, already_stopped: bool) -> str:
        try:
            self.verify(artifact)
        except VerifyError as exc:
            raise RestoreError(f"{self.name}: refusing to restore, nothing changed: {exc}") from None
        if not self._is_local():
            raise RestoreError(f"{self.name}: the sqlite restore writes {self.config.data_dir} on this host")
        server = self._p("server")
        os.makedirs(server, exist_ok=True)
        self._stop(already_stopped)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
        kept = []
        for part in ("db", "token"):
            cur = os.path.join(server, part)
            if os.path.lexists(cur):
                os.rename(cur, f"{cur}.coderz-old-{stamp}")
                kept.append(f"{cur}.coderz-old-{stamp}")
        try:
            with as_artifact(artifact).open() as gz:
                n = self.access.untar_into(self.config.data_dir, iter(lambda: gz.read(CHUNK), b""))
        except AccessError as exc:
            raise RestoreError(f"{self.name}: extraction failed; the previous datastore is kept as "
                               f"{', '.join(kept)}: {exc}") from None
        started = self._start()
        return f"{n} entries restored into {server} (previous kept as {', '.join(kept) or 'nothing'}); {started}"

    def _restore_etcd(self, artifact: ArtifactPath, *, already_stopped: bool) -> str:
        try:
            verify_snapshot_file(artifact)
        except VerifyError as exc:
            raise RestoreError(f"{self.name}: refusing to restore, nothing changed: {exc}") from None
        if has(self.access, ManagedLifecycle):
            # stopping k3s stops the very container the reset would have to run in
            raise RestoreError(
                f"{self.name}: a cluster reset cannot run in {self.access.description} while k3s is stopped; "
                "nothing changed. On the host: stop the container, run `k3s server --cluster-reset "
                "--cluster-reset-restore-path=<snapshot>` from its image with its volumes, start it again "
                "(or configure exec_prefix / run coderz-backup where k3s runs)")
        with contextlib.ExitStack() as cleanup:
            return self._cluster_reset(artifact, already_stopped, cleanup)

    def _cluster_reset(self, artifact: ArtifactPath, already_stopped: bool, cleanup: contextlib.ExitStack) -> str:
        c = self.config
        on_node = not self._is_local()
        if on_node:
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
            path = f"{c.snapshot_tmp_dir.rstrip('/')}/coderz-restore-{stamp}.snapshot"
            self.access.feed(["sh", "-c", 'cat > "$1"', "sh", path], artifact.chunks(CHUNK),
                             timeout=c.timeout_s, label="copy snapshot to the node")
        else:   # a checked private copy (k3s wants a file name), removed afterwards
            path = str(cleanup.enter_context(artifact.local_file()))
        argv = self._k3s("server", "--cluster-reset", f"--cluster-reset-restore-path={path}")
        if c.data_dir != "/var/lib/rancher/k3s":
            argv += ["--data-dir", c.data_dir]
        try:
            self._stop(already_stopped)   # refuses (nothing changed) when k3s cannot be stopped
            try:
                self.access.run(argv, timeout=c.timeout_s, label="k3s server --cluster-reset")
            except CoderzBackupError as exc:
                # k3s must not stay down: start it again on whatever datastore it has
                try:
                    again = self._start()
                except CoderzBackupError as start_exc:
                    again = f"starting k3s again failed too: {start_exc}"
                raise RestoreError(f"{self.name}: cluster reset failed: {exc}; {again}") from None
        finally:
            if on_node:   # the copy on the node
                try:
                    self.access.run(["rm", "-f", path], timeout=60, label="remove the snapshot copy")
                except CoderzBackupError as exc:
                    log.warning("%s: could not remove %s: %s", self.name, path, exc)
        started = self._start()
        return f"cluster reset from {artifact.name} done; {started}"
