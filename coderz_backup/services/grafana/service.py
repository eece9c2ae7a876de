"""The Grafana service kind: its config model and its class (export, data-dir tarball, verify, restore dispatch)."""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import sqlite3
from ...tarfile_compat import tarfile
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any, ClassVar, Literal

import httpx
from pydantic import Field, SecretStr

from ...access import ARCHIVE_ERRORS, CHUNK, Freezable, HostFiles, SeenMembers, check_member, has, require
from ...schema import ServiceBase
from ...errors import AccessError, ArtifactError, CoderzBackupError, RestoreError, VerifyError
from ...reader import ArtifactPath, as_artifact
from ..apiservice import ApiService
from ..datadir import write_tarball
from ...fingerprint import TarCounter, normalized, safely, sqlite_tables
from ..base import ArtifactResult
from ..sqlitecopy import sqlite_copy
from ..httpapi import HttpApi
from .api import GrafanaApi
from .export import ApiExport
from .layout import CONTACT_POINTS_FILE, DB_NAME, INDEX_FILE, LIBRARY_FILE, LIVE_DB_FILES, RULE_GROUPS_FILE
from .restore import ApiRestore


log = logging.getLogger("coderz_backup.services.grafana")


def _db_check(path: Path) -> int:
    """``PRAGMA integrity_check`` of a database file on disk; its table count, or VerifyError."""
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=ro", uri=True)
        try:
            check = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
            tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise VerifyError(f"{DB_NAME} in the tarball is not a readable SQLite database ({exc})") from None
    if check != ["ok"]:
        raise VerifyError(f"{DB_NAME} in the tarball fails PRAGMA integrity_check: {'; '.join(map(str, check[:5]))}")
    return tables


class GrafanaConfig(ServiceBase):
    """Grafana: dashboards, folders, datasources and alert rules over the HTTP API + a data-dir tarball."""

    kind: Literal["grafana"]
    url: str = Field("http://127.0.0.1:3000", description="Grafana base URL (http:// or https://)")
    token: SecretStr | None = Field(None, description="service-account token reference, sent as Bearer "
                                                      "(Admin role: datasources and alert rules need it)")
    user: str | None = Field(None, description="basic-auth user (used when no token is set)")
    password: SecretStr | None = Field(None, description="basic-auth password reference (env:NAME recommended)")
    org_id: int | None = Field(None, ge=1, description="organisation to back up (X-Grafana-Org-Id); "
                                                        "unset = the user's/token's current org")
    data_dir: str | None = Field(None, description="Grafana data dir holding grafana.db (e.g. /var/lib/grafana) "
                                                   "as seen from this host; unset = no data-dir tarball")
    page_size: int = Field(1000, ge=1, le=5000, description="search hits / folders per page")
    alert_rules: bool = Field(True, description="export and restore alert rules (provisioning API); set false "
                                                "when unified alerting is disabled")
    restore_from: Literal["api", "volume"] = Field("api", description="api: re-create folders, dashboards, "
                                                   "alert rules (and missing datasources) over the HTTP API; "
                                                   "volume: replace the data dir with the tarball (Grafana stopped)")
    stop_command: list[str] | None = Field(None, description="argv that stops Grafana before a volume restore "
                                                             "(not needed with container)")
    start_command: list[str] | None = Field(None, description="argv that starts Grafana after a volume restore")
    health_timeout_s: float = Field(120.0, gt=0, description="wait this long for /api/health after a volume restore")
    cacert: str | None = Field(None, description="CA bundle to verify an https url")
    verify_tls: bool = Field(True, description="verify the server certificate of an https url")
    section: ClassVar[str] = "Grafana"
    order: ClassVar[int] = 40


class GrafanaService(ApiExport, ApiRestore, ApiService):
    kind: ClassVar[str] = "grafana"
    config_model: ClassVar[type[GrafanaConfig]] = GrafanaConfig
    config: GrafanaConfig
    product: ClassVar[str] = "Grafana"
    http_api: ClassVar[type[HttpApi]] = GrafanaApi
    export_read_timeout: ClassVar[float] = 300.0
    export_from: ClassVar[str] = "api"
    export_kind: ClassVar[str] = "API export"

    @property
    def export_path(self) -> str:
        return f"{self.name}/dashboards/"

    @property
    def tarball_path(self) -> str:
        return f"{self.name}/grafana-data.tar.gz"

    # -- backup (ApiService.backup: the export below and the data-dir tarball) ---------

    def _data_tarball(self, into: Path) -> ArtifactResult:
        c = self.config
        if not c.data_dir:
            return ArtifactResult(self.name, self.kind, self.tarball_path, status="skipped",
                                  error="data_dir not set")
        if not has(self.access, HostFiles):
            if not has(self.access, Freezable):
                return ArtifactResult(self.name, self.kind, self.tarball_path, status="skipped",
                                      error=f"the data-dir tarball needs local or Docker access "
                                            f"({self.access.description}: the API export is the backup)")
            return self._data_tarball_container(into)
        data_dir = Path(c.data_dir)
        db = data_dir / DB_NAME
        if not self.access.readable(str(data_dir)):
            raise ArtifactError(f"{self.name}: data dir {data_dir} is missing or not readable; fix data_dir or "
                                "run coderz-backup with permission to read it")
        if not db.is_file():
            raise ArtifactError(f"{self.name}: no {DB_NAME} in {data_dir}: Grafana keeps its database elsewhere "
                                "([database] path, or MySQL/PostgreSQL) — point data_dir at the folder holding "
                                f"{DB_NAME}, or unset it and back that database up on its own")
        into.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{self.name}-db-", dir=into) as tmp:
            copy = Path(tmp) / DB_NAME
            try:
                tables = sqlite_copy(db, copy).tables
            except ArtifactError as exc:
                raise type(exc)(f"{self.name}: {exc}") from None
            counter = TarCounter()
            counter.what = f"{self.name}: fingerprint"
            db_rows = safely(counter.what, lambda: {"t": sqlite_tables(copy)})
            db_bytes = copy.stat().st_size
            info = tarfile.TarInfo(DB_NAME)   # owner, mode, mtime of the live file; the consistent copy's bytes
            st = db.stat()
            info.size, info.mode, info.mtime, info.uid, info.gid = db_bytes, st.st_mode & 0o7777, int(st.st_mtime), \
                st.st_uid, st.st_gid
            try:
                rec, entries = write_tarball(self.access, str(data_dir), into, self.tarball_path,
                                             exclude=tuple(LIVE_DB_FILES), first=[(info, copy)],
                                             counter=counter)
            except AccessError as exc:
                raise ArtifactError(f"{self.name}: {exc}") from None
        log.info("%s: data dir %s archived (%d entries, %s %d bytes, integrity ok)", self.name, data_dir,
                 entries, DB_NAME, db_bytes)
        return ArtifactResult.from_files(self.name, self.kind, self.tarball_path, [rec], details={
            "data_dir": str(data_dir), "entries": entries, "grafana_db_bytes": db_bytes, "grafana_db_tables": tables,
            "grafana_db": "SQLite online backup, PRAGMA integrity_check ok"},
            fingerprint=_with_tables(counter.result(), db_rows))

    def _data_tarball_container(self, into: Path) -> ArtifactResult:
        """Docker: copy grafana.db (+ journal/WAL) while the container is paused, make the
        consistent copy here, then stream the rest of the data dir out of the container."""
        c = self.config
        data_dir = c.data_dir.rstrip("/")
        into.mkdir(parents=True, exist_ok=True)
        entries = 0
        with tempfile.TemporaryDirectory(prefix=f".{self.name}-db-", dir=into) as tmp:
            live = Path(tmp) / "live"
            live.mkdir()
            try:
                with require(self.access, Freezable).frozen():   # paused, Grafana writes nothing: db + journal at once
                    for fname in sorted(LIVE_DB_FILES):
                        path = f"{data_dir}/{fname}"
                        if fname != DB_NAME and not self.access.readable(path):
                            continue
                        with self.access.open_read(path) as src, open(live / fname, "wb") as dst:
                            shutil.copyfileobj(src, dst, CHUNK)
            except AccessError as exc:
                raise ArtifactError(f"{self.name}: cannot copy {data_dir}/{DB_NAME} out of "
                                    f"{self.access.description}: {exc}") from None
            try:  # opening it read-write applies a hot journal / the WAL, as Grafana would after a crash
                conn = sqlite3.connect(live / DB_NAME)
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                conn.close()
            except sqlite3.Error as exc:
                raise ArtifactError(f"{self.name}: {DB_NAME} copied from the container is not readable: {exc}") from None
            copy = Path(tmp) / DB_NAME
            tables = sqlite_copy(live / DB_NAME, copy).tables
            counter = TarCounter()
            counter.what = f"{self.name}: fingerprint"
            db_rows = safely(counter.what, lambda: {"t": sqlite_tables(copy)})
            db_bytes = copy.stat().st_size
            info = tarfile.TarInfo(DB_NAME)
            info.size, info.mode, info.mtime = db_bytes, 0o640, int(time.time())
            try:
                rec, entries = write_tarball(self.access, data_dir, into, self.tarball_path,
                                             exclude=tuple(LIVE_DB_FILES), first=[(info, copy)],
                                             counter=counter)
            except AccessError as exc:
                raise ArtifactError(f"{self.name}: reading {data_dir} from {self.access.description} "
                                    f"failed: {exc}") from None
        log.info("%s: data dir %s archived from %s (%d entries, %s %d bytes, integrity ok)", self.name, data_dir,
                 self.access.description, entries, DB_NAME, db_bytes)
        return ArtifactResult.from_files(self.name, self.kind, self.tarball_path, [rec], details={
            "data_dir": data_dir, "entries": entries, "grafana_db_bytes": db_bytes, "grafana_db_tables": tables,
            "grafana_db": "copied while the container was paused, SQLite online backup, PRAGMA integrity_check ok"},
            fingerprint=_with_tables(counter.result(), db_rows))

    # -- verify -------------------------------------------------------------
    def verify(self, artifact: ArtifactPath | Path) -> str:
        artifact = as_artifact(artifact)
        if artifact.is_dir():
            return self._verify_export(artifact)
        return self._verify_tarball(artifact)

    @staticmethod
    def _read_json(path: ArtifactPath, what: str, error: type[CoderzBackupError] = VerifyError) -> Any:
        try:
            with as_artifact(path).open() as fh:
                return json.load(fh)
        except FileNotFoundError:
            raise error(f"{what}: missing") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise error(f"{what}: not valid JSON ({exc})") from None

    def _verify_export(self, dash_dir: ArtifactPath, error: type[CoderzBackupError] = VerifyError) -> str:
        root = dash_dir.parent
        name = root.name
        index = self._read_json(root / INDEX_FILE, f"{name}/{INDEX_FILE}", error)
        table = index.get("dashboards") if isinstance(index, dict) else None
        counts = index.get("counts") if isinstance(index, dict) else None
        if not isinstance(table, dict) or not isinstance(counts, dict):
            raise error(f"{name}/{INDEX_FILE}: no dashboard table / counts")
        if counts.get("dashboards") != len(table):
            raise error(f"{name}/{INDEX_FILE}: {len(table)} dashboards listed, counts say {counts.get('dashboards')}")
        root_real = os.path.realpath(root.path)
        for uid, rel in table.items():
            parts = rel.split("/") if isinstance(rel, str) else [".."]
            if ".." in parts or not rel.startswith("dashboards/") or \
                    not os.path.realpath(root.path / rel).startswith(root_real + os.sep):
                raise error(f"{name}/{INDEX_FILE}: unsafe path {rel!r} for dashboard {uid}")
            path = root / rel
            obj = self._read_json(path, f"{name}/{rel}", error)
            dash = obj.get("dashboard") if isinstance(obj, dict) else None
            if not isinstance(dash, dict) or dash.get("uid") != uid:
                raise error(f"{name}/{rel}: no dashboard with uid {uid!r} ({{\"dashboard\": {{\"uid\": …}}}} expected)")
        on_disk = sum(1 for p in dash_dir.files() if p.name.endswith(".json"))
        if on_disk != len(table):
            raise error(f"{name}/dashboards: {on_disk} JSON files, {INDEX_FILE} lists {len(table)}")
        expected = self._manifest_count(root)
        if expected is not None and expected != len(table):
            raise error(f"{name}/dashboards: {len(table)} dashboards, the manifest says {expected}")
        parts = [f"{len(table)} dashboards"]
        for fname, key in (("folders.json", "folders"), ("datasources.json", "datasources"),
                           ("alert-rules.json", "alert_rules"), (RULE_GROUPS_FILE, "rule_groups"),
                           (LIBRARY_FILE, "library_panels"), (CONTACT_POINTS_FILE, "contact_points")):
            if counts.get(key) is None:
                continue
            items = self._read_json(root / fname, f"{name}/{fname}", error)
            if not isinstance(items, list) or len(items) != counts[key]:
                raise error(f"{name}/{fname}: expected a list of {counts[key]} items")
            parts.append(f"{len(items)} {key.replace('_', ' ')}")
        return ", ".join(parts) + ": JSON intact, every dashboard has its uid, counts match"

    def _manifest_count(self, root: ArtifactPath) -> int | None:
        """Dashboards count in the snapshot manifest's details, when a manifest is there."""
        try:
            manifest = root.manifest() or json.loads((root.parent / "manifest.json").read_text())
            entries = manifest.get("artifacts") or []
        except (OSError, ValueError, AttributeError):
            return None
        for e in entries if isinstance(entries, list) else []:
            if isinstance(e, dict) and e.get("path") == f"{root.name}/dashboards/":
                n = (e.get("details") or {}).get("dashboards")
                return n if isinstance(n, int) else None
        return None

    def _verify_tarball(self, artifact: ArtifactPath, error: type[CoderzBackupError] = VerifyError) -> str:
        n = 0
        tables = None
        try:
            with tempfile.TemporaryDirectory(prefix="coderz-grafana-verify-") as tmp, \
                    as_artifact(artifact).open() as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
                links = SeenMembers()
                for member in tar:
                    check_member(member, "/restore-check", links)
                    if member.isfile():
                        f = tar.extractfile(member)
                        if member.name == DB_NAME and f is not None:
                            db = Path(tmp) / DB_NAME
                            with open(db, "wb") as out:
                                shutil.copyfileobj(f, out, CHUNK)
                            try:
                                tables = _db_check(db)
                            except VerifyError as exc:
                                raise error(f"{artifact.name}: {exc}") from None
                        else:
                            while f and f.read(CHUNK):
                                pass
                    n += 1
        except tarfile.FilterError as exc:
            raise error(f"{artifact.name}: unsafe member: {exc}") from None
        except ARCHIVE_ERRORS as exc:
            raise error(f"{artifact.name}: archive is damaged ({exc})") from None
        if tables is None:
            raise error(f"{artifact.name}: no {DB_NAME} in the archive")
        return f"gzip and tar intact, {n} entries, {DB_NAME} passes integrity_check ({tables} tables)"

    # -- restore ------------------------------------------------------------
    def restore_target(self) -> str:
        c = self.config
        if c.restore_from == "volume":
            stop = shlex.join(c.stop_command) if c.stop_command else (
                "its container" if c.container else "(stop_command not set: it must be down)")
            return (f"Grafana data dir {c.data_dir} is replaced by the tarball (old contents kept as "
                    f"{c.data_dir}.coderz-old-<ts>); Grafana is stopped with {stop} and started again")
        org = f" (org {c.org_id})" if c.org_id else ""
        return (f"folders, dashboards and alert rules of the export on {c.url}{org} are created or overwritten "
                "(same uid, overwrite: true); missing datasources are created without their secrets; objects "
                "not in the export are left alone")

    def health(self) -> str:
        c = self.config
        try:
            with HttpApi(self, timeout=10.0) as api:   # no credentials: /api/health is public
                resp = api.client.get("/api/health")
        except httpx.HTTPError as exc:
            raise RestoreError(f"{self.name}: Grafana at {c.url} does not answer: {exc}") from None
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code != 200 or body.get("database") != "ok":
            raise RestoreError(f"{self.name}: Grafana at {c.url} is not healthy (HTTP {resp.status_code}, "
                               f"database {body.get('database')!r})")
        return f"Grafana {body.get('version', '?')} answers, database ok"

    def restore(self, artifact: ArtifactPath | Path, *, already_stopped: bool = False, **_: object) -> str:
        """Restore one artifact; ``restore_from`` decides which one is used (the other is left alone)."""
        return self._restore_chosen(artifact, self._restore_api, already_stopped=already_stopped)

    def _not_used(self, instead: str) -> str:
        return f"not used (restore_from = {self.config.restore_from})"

    # -- volume restore (ApiService._restore_volume) -----------------------------
    def _answers(self) -> bool:
        with HttpApi(self, timeout=3.0) as api:   # no credentials: /api/health is public
            return api.answers("/api/health", timeout=3.0)


def _with_tables(tar: dict | None, db_rows: dict | None) -> dict | None:
    """The tarball's files/bytes plus ``tables`` (rows per table of the grafana.db copy)."""
    if tar is None:
        return None
    return normalized({**tar, "tables": db_rows["t"]}) if db_rows else tar
