"""Grafana → ``<name>/dashboards/`` (HTTP API export) and ``<name>/grafana-data.tar.gz``.

**API export** (one folder artifact, every file written through the streaming writer):

- ``<name>/dashboards/<folder path by title>/<uid>.json`` — ``GET /api/dashboards/uid/:uid``
  as Grafana answers it, ``{"dashboard": …, "meta": …}`` (``meta.folderUid`` always set,
  ``""`` for the root). The dashboards are listed with ``GET /api/search?type=dash-db``
  paged with ``limit``/``page=1,2,…`` until a short page. Folder names are the folder
  titles made file-name safe (``/`` and other odd characters become ``_``; siblings whose
  safe names collide get ``__<uid>`` appended).
- ``<name>/folders.json`` — every folder, nested ones included (``parentUid``), parents
  before children (``GET /api/folders`` walked level by level with ``parentUid=``).
- ``<name>/datasources.json`` — ``GET /api/datasources``. Grafana never returns datasource
  secrets (``secureJsonFields`` only says which are set): they must be re-entered after
  a restore.
- ``<name>/alert-rules.json`` — ``GET /api/v1/provisioning/alert-rules``.
- ``<name>/export.json`` — the index: uid → file, and the counts verify checks.

If the search listed N dashboards and fewer could be fetched (404/5xx mid-way), or any
list call fails, the backup raises and nothing of the export stays on disk: a partial
export is never reported ok. 401/403 name the credential and the permission to grant.

**Data dir tarball** (``data_dir`` set; local, or Docker — the container is paused while
``grafana.db`` and its journal are copied out): a gzip tar of the data dir with a
*consistent* copy of ``grafana.db`` made with SQLite's online backup API (the live
``grafana.db`` and its ``-journal``/``-wal``/``-shm`` are left out), checked with
``PRAGMA integrity_check`` before it goes in. ``data_dir`` unset → skipped.

**Restore** (``restore_from``): ``api`` re-creates folders (parents first; an existing uid
is kept), missing datasources (without secrets), every dashboard (``POST
/api/dashboards/db``, ``overwrite: true``, ``id`` null, uid and ``folderUid`` kept) and the
alert rules (``X-Disable-Provenance: true``, an existing uid is updated). ``volume`` stops
Grafana, keeps the old data dir as ``<data_dir>.coderz-old-<ts>``, extracts the tarball
(ownership of the dir kept), starts Grafana and waits for ``/api/health``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import sqlite3
import tarfile
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any, ClassVar, Literal

import httpx

from pydantic import Field, SecretStr

from ..access import ARCHIVE_ERRORS, CHUNK, Freezable, HostFiles, SeenMembers, check_member, has, require
from ..schema import ServiceBase
from ..errors import (
    AccessError,
    ArtifactError,
    CoderzBackupError,
    IncompleteArtifactError,
    RestoreError,
    VerifyError,
)
from ..reader import ArtifactPath, as_artifact
from ..writer import FileRecord, write_stream
from .apiservice import ApiService
from .datadir import write_tarball
from .base import ArtifactResult
from .sqlitecopy import sqlite_copy
from .httpapi import HttpApi, credentials

__all__ = ["GrafanaHTTPError", "GrafanaService", "safe_name", "sqlite_copy"]

log = logging.getLogger(__name__)

INDEX_FILE = "export.json"
DB_NAME = "grafana.db"
LIVE_DB_FILES = frozenset({DB_NAME, f"{DB_NAME}-journal", f"{DB_NAME}-wal", f"{DB_NAME}-shm"})
SECRETS_NOTE = "not exported by the Grafana API; re-enter them after a restore"
_ERROR_KEEP = 8192
#: folder uids Grafana lists that are not real folders ("Shared with me" for limited users, the root)
_VIRTUAL_FOLDERS = frozenset({"sharedwithme", "general"})
_UNSAFE = re.compile(r"[^A-Za-z0-9._ ()+,=@-]+")
#: datasource fields sent back when a missing datasource is re-created
_DS_FIELDS = ("uid", "name", "type", "access", "url", "user", "database", "basicAuth", "basicAuthUser",
              "withCredentials", "isDefault", "jsonData")


def safe_name(text: str, *, limit: int = 100) -> str:
    """A file or folder name for ``text``: odd characters → ``_``, never empty, ``.`` or ``..``."""
    name = _UNSAFE.sub("_", text or "").strip(" .")[:limit].strip(" .")
    return name or "_"


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


def _message(body: bytes) -> str:
    try:
        obj = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:300] or "(empty body)"
    if isinstance(obj, dict):
        return str(obj.get("message") or obj.get("error") or obj)[:300]
    return str(obj)[:300]


class GrafanaHTTPError(ArtifactError):
    """An HTTP error answer of Grafana (``status`` and the body's ``status`` field kept)."""

    def __init__(self, message: str, status: int, reason: str = "", text: str = ""):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.text = text


class _Api(HttpApi):
    """HTTP to Grafana; every failure becomes an ArtifactError that says what to do."""

    product = "Grafana"

    def __init__(self, svc: GrafanaService, *, read_timeout: float = 60.0, auth_required: bool = True):
        c = svc.config
        headers = {"Accept": "application/json"}
        if c.org_id:
            headers["X-Grafana-Org-Id"] = str(c.org_id)
        login, auth, who = credentials(svc, token_field="token", scheme="Bearer",
                                       token_who="the service-account token")
        headers.update(login)
        if who is None and auth_required:
            raise ArtifactError(f"{svc.name}: no credentials: set services.{svc.name}.token (a service-account "
                                "token with the Admin role) or user + password")
        super().__init__(svc, headers=headers, auth=auth, who=who or "anonymous access", read_timeout=read_timeout)

    def refused(self, resp: httpx.Response, what: str) -> GrafanaHTTPError:
        body = resp.content[:_ERROR_KEEP]
        text = _message(body)
        reason = ""
        with contextlib.suppress(ValueError, AttributeError):
            reason = str(json.loads(body).get("status") or "")
        s = resp.status_code
        name = self.svc.name
        if s == 401:
            msg = (f"{self.where}: {self.who} was rejected (HTTP 401: {text}) while trying to {what}; check "
                   f"services.{name}.token (a service-account token; legacy API keys are gone) or user/password")
        elif s == 403:
            msg = (f"{self.where}: {self.who} lacks permission to {what} (HTTP 403: {text}); give the service "
                   "account (or user) the Admin role of the org — datasources and alert rules need it, and a "
                   "restore needs write access")
        else:
            msg = f"{self.where}: {what} failed (HTTP {s}): {text}"
        return GrafanaHTTPError(msg, s, reason, text)

    def paged(self, path: str, *, what: str, params: dict | None = None) -> list[dict]:
        """Every item of a ``limit``/``page`` list (stops at a short page)."""
        limit = self.svc.config.page_size
        out: list[dict] = []
        seen: set = set()
        page = 1
        while True:
            batch = self.json("GET", path, what=what, params={**(params or {}), "limit": limit, "page": page})
            if not isinstance(batch, list):
                raise ArtifactError(f"{self.where}: {what}: expected a JSON array, got {type(batch).__name__}")
            fresh = [h for h in batch if isinstance(h, dict) and (h.get("uid"), h.get("id")) not in seen]
            if batch and not fresh:
                raise ArtifactError(f"{self.where}: {what}: page {page} repeats earlier results (paging is not "
                                    "honoured); set page_size to 5000 or more than the number of items")
            for h in fresh:
                seen.add((h.get("uid"), h.get("id")))
            out.extend(fresh)
            if len(batch) < limit:
                return out
            page += 1



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


class GrafanaService(ApiService):
    kind: ClassVar[str] = "grafana"
    config_model: ClassVar[type[GrafanaConfig]] = GrafanaConfig
    config: GrafanaConfig
    product: ClassVar[str] = "Grafana"
    http_api: ClassVar[type[HttpApi]] = _Api
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
    def _folders(self, api: _Api) -> dict[str, dict]:
        """uid → {uid, title, parentUid}, parents before children."""
        out: dict[str, dict] = {}
        queue: list[str | None] = [None]
        while queue:
            parent = queue.pop(0)
            params = {"parentUid": parent} if parent else {}
            where = f"list the folders in {parent}" if parent else "list the folders"
            for f in api.paged("/api/folders", what=where, params=params):
                uid = f.get("uid")
                if not uid or uid in out or uid in _VIRTUAL_FOLDERS:
                    continue   # a server without nested folders ignores parentUid and lists the roots again
                out[uid] = {"uid": uid, "title": f.get("title") or uid, "parentUid": parent}
                queue.append(uid)
        return out

    def _add_folder(self, api: _Api, folders: dict[str, dict], uid: str) -> None:
        """A folder a dashboard is in but the listing did not show (and its parents)."""
        f = api.json("GET", f"/api/folders/{urllib.parse.quote(uid, safe='')}", what=f"read folder {uid}")
        chain = [*(f.get("parents") or []), f]
        parent = None
        for p in chain:
            puid = p.get("uid")
            if puid and puid not in folders:
                folders[puid] = {"uid": puid, "title": p.get("title") or puid,
                                 "parentUid": p.get("parentUid") or parent}
            parent = puid

    def _search(self, api: _Api) -> list[dict]:
        hits = api.paged("/api/search", what="search dashboards", params={"type": "dash-db"})
        return [h for h in hits if h.get("type", "dash-db") == "dash-db" and h.get("uid")]

    @staticmethod
    def _folder_paths(folders: dict[str, dict]) -> dict[str, str]:
        """uid → relative folder path by safe titles (siblings made unique)."""
        used: dict[tuple[str | None, str], str] = {}
        own: dict[str, str] = {}
        for uid, f in folders.items():
            name = safe_name(f["title"])
            if name.endswith(".json"):
                name += "_"
            key = (f.get("parentUid"), name.lower())
            if key in used and used[key] != uid:
                name = safe_name(f"{f['title']}__{uid}", limit=160)
            used[(f.get("parentUid"), name.lower())] = uid
            own[uid] = name
        paths: dict[str, str] = {}

        def path(uid: str, depth: int = 0) -> str:
            if uid in paths:
                return paths[uid]
            parent = folders[uid].get("parentUid")
            if parent in folders and depth < 64:
                p = f"{path(parent, depth + 1)}/{own[uid]}"
            else:
                p = own[uid]
            paths[uid] = p
            return p

        for uid in folders:
            path(uid)
        return paths

    def _export(self, api: _Api, into: Path) -> ArtifactResult:
        c = self.config
        version = None
        with contextlib.suppress(CoderzBackupError, AttributeError):
            version = api.json("GET", "/api/health", what="read /api/health").get("version")
        hits = self._search(api)
        folders = self._folders(api)
        for h in hits:
            fuid = h.get("folderUid")
            if fuid and fuid not in folders and fuid not in _VIRTUAL_FOLDERS:
                self._add_folder(api, folders, fuid)
        paths = self._folder_paths(folders)
        datasources = api.json("GET", "/api/datasources", what="list the datasources")
        if not isinstance(datasources, list):
            raise ArtifactError(f"{api.where}: /api/datasources did not return a JSON array")
        rules: list | None = None
        if c.alert_rules:
            try:
                rules = api.json("GET", "/api/v1/provisioning/alert-rules", what="export the alert rules")
            except GrafanaHTTPError as exc:
                if exc.status == 404:
                    raise ArtifactError(f"{api.where}: the alert-rule provisioning API is not there (HTTP 404); "
                                        "unified alerting is disabled or Grafana is older than 9 — set "
                                        f"services.{self.name}.alert_rules = false to back up without them") from None
                raise
            if not isinstance(rules, list):
                raise ArtifactError(f"{api.where}: the alert-rules answer is not a JSON array")

        files: list[FileRecord] = []
        index: dict[str, str] = {}
        base = f"{self.name}/dashboards"
        for n, hit in enumerate(hits, 1):
            uid = hit["uid"]
            title = hit.get("title") or uid
            try:
                obj = api.json("GET", f"/api/dashboards/uid/{urllib.parse.quote(uid, safe='')}",
                               what=f"read dashboard {title!r} (uid {uid})")
            except ArtifactError as exc:
                raise IncompleteArtifactError(
                    f"{self.name}: partial export: search listed {len(hits)} dashboards, {n - 1} exported, then "
                    f"dashboard {title!r} (uid {uid}) could not be read: {exc}") from None
            dash = obj.get("dashboard") if isinstance(obj, dict) else None
            if not isinstance(dash, dict) or dash.get("uid") != uid:
                raise IncompleteArtifactError(f"{self.name}: partial export: dashboard {title!r} (uid {uid}) "
                                              "came back without its model (no dashboard.uid)")
            meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
            fuid = meta.get("folderUid") or hit.get("folderUid") or ""
            obj["meta"] = {**meta, "folderUid": fuid}
            folder = paths.get(fuid) if fuid else None
            rel = f"{base}/{folder}/{safe_name(uid)}.json" if folder else f"{base}/{safe_name(uid)}.json"
            if rel in index.values():
                rel = rel[: -len(".json")] + f"__{n}.json"
            files.append(write_stream(into, rel, [json.dumps(obj, indent=1, ensure_ascii=False).encode()],
                                      compress=False))
            index[uid] = rel[len(self.name) + 1:]
        folder_list = [{**f, "path": paths[uid]} for uid, f in folders.items()]
        files.append(self._write_json(into, "folders.json", folder_list))
        files.append(self._write_json(into, "datasources.json", datasources))
        if rules is not None:
            files.append(self._write_json(into, "alert-rules.json", rules))
        counts = {"dashboards": len(index), "folders": len(folder_list), "datasources": len(datasources),
                  "alert_rules": len(rules) if rules is not None else None}
        files.append(self._write_json(into, INDEX_FILE, {
            "format": 1, "grafana_version": version, "url": c.url, "org_id": c.org_id,
            "counts": counts, "dashboards": index}))
        details = {"url": c.url, **counts, "grafana_version": version, "datasource_secrets": SECRETS_NOTE}
        if rules is None:
            details["alert_rules"] = "not exported (alert_rules = false)"
        return ArtifactResult.from_files(self.name, self.kind, self.export_path, files,
                                         summary=f"Grafana dashboards exported: {len(index)} files",
                                         details=details)

    def _write_json(self, into: Path, fname: str, obj: Any) -> FileRecord:
        return write_stream(into, f"{self.name}/{fname}",
                            [json.dumps(obj, indent=1, ensure_ascii=False).encode()], compress=False)

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
            db_bytes = copy.stat().st_size
            info = tarfile.TarInfo(DB_NAME)   # owner, mode, mtime of the live file; the consistent copy's bytes
            st = db.stat()
            info.size, info.mode, info.mtime, info.uid, info.gid = db_bytes, st.st_mode & 0o7777, int(st.st_mtime), \
                st.st_uid, st.st_gid
            try:
                rec, entries = write_tarball(self.access, str(data_dir), into, self.tarball_path,
                                             exclude=tuple(LIVE_DB_FILES), first=[(info, copy)])
            except AccessError as exc:
                raise ArtifactError(f"{self.name}: {exc}") from None
        log.info("%s: data dir %s archived (%d entries, %s %d bytes, integrity ok)", self.name, data_dir,
                 entries, DB_NAME, db_bytes)
        return ArtifactResult.from_files(self.name, self.kind, self.tarball_path, [rec], details={
            "data_dir": str(data_dir), "entries": entries, "grafana_db_bytes": db_bytes, "grafana_db_tables": tables,
            "grafana_db": "SQLite online backup, PRAGMA integrity_check ok"})

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
            db_bytes = copy.stat().st_size
            info = tarfile.TarInfo(DB_NAME)
            info.size, info.mode, info.mtime = db_bytes, 0o640, int(time.time())
            try:
                rec, entries = write_tarball(self.access, data_dir, into, self.tarball_path,
                                             exclude=tuple(LIVE_DB_FILES), first=[(info, copy)])
            except AccessError as exc:
                raise ArtifactError(f"{self.name}: reading {data_dir} from {self.access.description} "
                                    f"failed: {exc}") from None
        log.info("%s: data dir %s archived from %s (%d entries, %s %d bytes, integrity ok)", self.name, data_dir,
                 self.access.description, entries, DB_NAME, db_bytes)
        return ArtifactResult.from_files(self.name, self.kind, self.tarball_path, [rec], details={
            "data_dir": data_dir, "entries": entries, "grafana_db_bytes": db_bytes, "grafana_db_tables": tables,
            "grafana_db": "copied while the container was paused, SQLite online backup, PRAGMA integrity_check ok"})

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
                           ("alert-rules.json", "alert_rules")):
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

    def _restore_api(self, dash_dir: ArtifactPath) -> str:
        root = dash_dir.parent
        try:
            self._verify_export(dash_dir)
        except VerifyError as exc:
            raise RestoreError(f"{self.name}: refusing to restore, nothing changed: {exc}") from None
        index = self._read_json(root / INDEX_FILE, INDEX_FILE, RestoreError)
        folders = self._read_json(root / "folders.json", "folders.json", RestoreError)
        datasources = self._read_json(root / "datasources.json", "datasources.json", RestoreError)
        rules = (self._read_json(root / "alert-rules.json", "alert-rules.json", RestoreError)
                 if self.config.alert_rules and (root / "alert-rules.json").exists() else [])
        problems: list[str] = []
        report: list[str] = []
        try:
            with _Api(self, read_timeout=120.0) as api:
                report.append(self._restore_folders(api, folders, problems))
                report.append(self._restore_datasources(api, datasources, problems))
                report.append(self._restore_dashboards(api, root, index["dashboards"], problems))
                if self.config.alert_rules:
                    report.append(self._restore_rules(api, rules, problems))
        except ArtifactError as exc:   # transport / auth: nothing more can be done
            raise RestoreError(f"{self.name}: {exc} (restored so far: {'; '.join(report) or 'nothing'})") from None
        done = "; ".join(report)
        if problems:
            raise RestoreError(f"{self.name}: restore incomplete, {len(problems)} problem(s): "
                               f"{' | '.join(problems[:10])} (restored: {done})")
        return done

    @staticmethod
    def _parents_first(folders: list[dict]) -> list[dict]:
        by_uid = {f["uid"]: f for f in folders if isinstance(f, dict) and f.get("uid")}
        out: list[dict] = []
        placed: set[str] = set()

        def place(f: dict, depth: int = 0) -> None:
            if f["uid"] in placed:
                return
            parent = f.get("parentUid")
            if parent in by_uid and depth < 64:
                place(by_uid[parent], depth + 1)
            placed.add(f["uid"])
            out.append(f)

        for f in by_uid.values():
            place(f)
        return out

    def _restore_folders(self, api: _Api, folders: list[dict], problems: list[str]) -> str:
        created = existing = 0
        for f in self._parents_first(folders):
            uid, title = f["uid"], f.get("title") or f["uid"]
            body = {"uid": uid, "title": title}
            if f.get("parentUid"):
                body["parentUid"] = f["parentUid"]
            resp = api.call("POST", "/api/folders", json=body, what=f"create folder {title!r}",
                            ok=(200, 400, 404, 409, 412))
            if resp.status_code == 200:
                created += 1
                continue
            if resp.status_code == 409:
                got = api.call("GET", f"/api/folders/{urllib.parse.quote(uid, safe='')}",
                               what=f"read folder {title!r}", ok=(200, 404))
                if got.status_code == 200:
                    existing += 1
                    try:
                        cur = got.json()
                    except ValueError:
                        cur = {}
                    if cur.get("title") != title:
                        upd = api.call("PUT", f"/api/folders/{urllib.parse.quote(uid, safe='')}",
                                       json={"title": title, "overwrite": True}, what=f"rename folder {uid}",
                                       ok=(200, 400, 409, 412))
                        if upd.status_code != 200:
                            problems.append(f"folder {title!r} (uid {uid}) exists as {cur.get('title')!r} and "
                                            f"could not be renamed: {_message(upd.content)}")
                    continue
                problems.append(f"folder {title!r} (uid {uid}): another folder with that title already exists "
                                f"under the same parent (HTTP 409: {_message(resp.content)}); rename or delete it "
                                "and restore again")
                continue
            problems.append(f"folder {title!r} (uid {uid}) not created (HTTP {resp.status_code}: "
                            f"{_message(resp.content)})")
        return f"folders: {created} created, {existing} already there"

    def _restore_datasources(self, api: _Api, datasources: list[dict], problems: list[str]) -> str:
        created: list[str] = []
        existing = 0
        for ds in datasources:
            if not isinstance(ds, dict) or not ds.get("uid"):
                continue
            name = ds.get("name") or ds["uid"]
            got = api.call("GET", f"/api/datasources/uid/{urllib.parse.quote(ds['uid'], safe='')}",
                           what=f"read datasource {name!r}", ok=(200, 404))
            if got.status_code == 200:
                existing += 1
                continue
            body = {k: ds[k] for k in _DS_FIELDS if k in ds}
            resp = api.call("POST", "/api/datasources", json=body, what=f"create datasource {name!r}",
                            ok=(200, 400, 409))
            if resp.status_code == 200:
                created.append(name)
            elif resp.status_code == 409:
                problems.append(f"datasource {name!r} (uid {ds['uid']}): a datasource with that name but another "
                                "uid exists; dashboards using this uid will not find it — rename one of them")
            else:
                problems.append(f"datasource {name!r} not created (HTTP 400: {_message(resp.content)})")
        need = [ds.get("name") for ds in datasources if isinstance(ds, dict) and ds.get("name") in created
                and any((ds.get("secureJsonFields") or {}).values())]
        secrets = f" (re-enter their secrets: {', '.join(need)})" if need else ""
        return f"datasources: {len(created)} created{secrets}, {existing} already there"

    def _restore_dashboards(self, api: _Api, root: ArtifactPath, table: dict[str, str], problems: list[str]) -> str:
        created = updated = provisioned = 0
        for uid, rel in table.items():
            obj = self._read_json(root / rel, rel, RestoreError)
            dash = dict(obj["dashboard"])
            meta = obj.get("meta") or {}
            title = dash.get("title") or uid
            if meta.get("provisioned"):
                provisioned += 1   # Grafana re-creates it from its provisioning file (the configs backup)
                continue
            dash["id"] = None
            body: dict[str, Any] = {"dashboard": dash, "overwrite": True, "message": "restored by coderz-backup"}
            if meta.get("folderUid"):
                body["folderUid"] = meta["folderUid"]
            qid = urllib.parse.quote(uid, safe="")
            before = api.call("GET", f"/api/dashboards/uid/{qid}", what=f"look up dashboard {title!r}",
                              ok=(200, 404))
            resp = api.call("POST", "/api/dashboards/db", json=body, what=f"save dashboard {title!r}",
                            ok=(200, 400, 404, 412))
            if resp.status_code == 412:
                err = api.refused(resp, "save")
                hint = {"version-mismatch": "it was changed on the server meanwhile",
                        "name-exists": "another dashboard with this title is in the same folder; rename or delete it",
                        "plugin-dashboard": "it belongs to a plugin; remove or update it through the plugin"
                        }.get(err.reason, "")
                problems.append(f"dashboard {title!r} (uid {uid}) refused (HTTP 412 {err.reason}: {err.text})"
                                + (f": {hint}" if hint else ""))
                continue
            if resp.status_code != 200:
                problems.append(f"dashboard {title!r} (uid {uid}) refused (HTTP {resp.status_code}: "
                                f"{_message(resp.content)})")
                continue
            got_uid = None
            with contextlib.suppress(ValueError, AttributeError):
                got_uid = resp.json().get("uid")
            if got_uid and got_uid != uid:
                problems.append(f"dashboard {title!r} was saved over the same-title dashboard uid {got_uid}, not "
                                f"as uid {uid}; links to /d/{uid} will not work — rename one and restore again")
            if before.status_code == 200:
                updated += 1
            else:
                created += 1
        skipped = f", {provisioned} provisioned left to their provisioning files" if provisioned else ""
        return f"dashboards: {created} created, {updated} updated{skipped}"

    def _restore_rules(self, api: _Api, rules: list[dict], problems: list[str]) -> str:
        created = updated = 0
        headers = {"X-Disable-Provenance": "true"}
        for rule in rules:
            if not isinstance(rule, dict):
                continue
            uid = rule.get("uid")
            title = rule.get("title") or uid
            body = {k: v for k, v in rule.items() if k not in ("id", "updated", "provenance")}
            resp = api.call("POST", "/api/v1/provisioning/alert-rules", json=body, headers=headers,
                            what=f"create alert rule {title!r}", ok=(201, 400, 409))
            if resp.status_code == 201:
                created += 1
                continue
            text = _message(resp.content)
            if uid and (resp.status_code == 409 or re.search(r"exist|conflict|unique", text, re.IGNORECASE)):
                upd = api.call("PUT", f"/api/v1/provisioning/alert-rules/{urllib.parse.quote(uid, safe='')}",
                               json=body, headers=headers, what=f"update alert rule {title!r}", ok=(200, 400, 404))
                if upd.status_code == 200:
                    updated += 1
                    continue
                text = _message(upd.content)
            problems.append(f"alert rule {title!r} (uid {uid}) refused (HTTP {resp.status_code}: {text})")
        return f"alert rules: {created} created, {updated} updated"

    # -- volume restore (ApiService._restore_volume) -----------------------------
    def _answers(self) -> bool:
        with HttpApi(self, timeout=3.0) as api:   # no credentials: /api/health is public
            return api.answers("/api/health", timeout=3.0)
