"""The Elasticsearch service kind: its config model and its class (export, data-dir tarball, verify, restore dispatch)."""

from __future__ import annotations

import json
import logging
import shlex
from ...tarfile_compat import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal


from pydantic import Field, SecretStr

from ...access import ARCHIVE_ERRORS, CHUNK, SeenMembers, check_member
from ...schema import ServiceBase
from ...errors import AccessError, ArtifactError, CoderzBackupError, RestoreError, VerifyError
from ...reader import ArtifactPath, as_artifact
from ..apiservice import ApiService
from ..datadir import write_tarball
from ...fingerprint import TarCounter
from ..base import ArtifactResult
from ..httpapi import HttpApi
from .api import EsClient
from .export import IndexExport
from .layout import INDEX_FILE, check_index_name
from .restore import IndexRestore


log = logging.getLogger("coderz_backup.services.elasticsearch")


class ElasticsearchConfig(ServiceBase):
    """Elasticsearch: a per-index export over REST (+ data-dir tarball, + optional snapshot API)."""

    kind: Literal["elasticsearch"]
    url: str = Field("http://127.0.0.1:9200", description="REST URL of a node (http:// or https://)")
    user: str | None = Field(None, description="basic-auth user (e.g. elastic)")
    password: SecretStr | None = Field(None, description="basic-auth password reference (env:NAME recommended)")
    api_key: SecretStr | None = Field(None, description="API key reference: the `encoded` value of the "
                                                        "create-API-key call, sent as `ApiKey <encoded>` "
                                                        "(wins over user/password)")
    cacert: str | None = Field(None, description="CA bundle to verify an https URL (8.x: config/certs/http_ca.crt)")
    verify_tls: bool = Field(True, description="verify the server certificate of an https URL")
    data_dir: str | None = Field(None, description="node data dir (path.data) as seen through the access; "
                                                   "unset = no data-dir tarball")
    page_size: int = Field(1000, ge=1, le=10000, description="documents per search page of the export")
    keep_alive: str = Field("2m", pattern=r"^[0-9]+(ms|s|m|h|d)$",
                            description="point-in-time / scroll keep-alive between two pages")
    bulk_docs: int = Field(1000, ge=1, description="restore: at most this many documents per _bulk request")
    bulk_bytes: int = Field(5 * 1024 * 1024, ge=1024, description="restore: at most this many bytes per _bulk request")
    replicas: int | None = Field(0, ge=0, description="restore: number_of_replicas of re-created indices "
                                                      "(0 suits a single node; unset = as exported)")
    snapshot_repository: str | None = Field(None, description="also take an ES snapshot of the exported indices "
                                                              "into this registered repository")
    restore_from: Literal["export", "volume"] = Field("export", description="export: re-create indices and "
                                                      "bulk-load the documents; volume: replace the data dir "
                                                      "with the tarball (node stopped)")
    stop_command: list[str] | None = Field(None, description="argv that stops Elasticsearch before a volume restore "
                                                             "(not needed with container)")
    start_command: list[str] | None = Field(None, description="argv that starts Elasticsearch after a volume restore")
    health_timeout_s: float = Field(180.0, gt=0, description="wait this long for green/yellow after a volume restore")
    section: ClassVar[str] = "Elasticsearch"
    order: ClassVar[int] = 60


class ElasticsearchService(IndexExport, IndexRestore, ApiService):
    kind: ClassVar[str] = "elasticsearch"
    config_model: ClassVar[type[ElasticsearchConfig]] = ElasticsearchConfig
    config: ElasticsearchConfig
    product: ClassVar[str] = "Elasticsearch"
    http_api: ClassVar[type[HttpApi]] = EsClient
    export_read_timeout: ClassVar[float] = 600.0
    export_from: ClassVar[str] = "export"
    export_kind: ClassVar[str] = "index export"

    @property
    def export_path(self) -> str:
        return f"{self.name}/"

    @property
    def tarball_path(self) -> str:
        return f"{self.name}-data.tar.gz"

    # -- backup (ApiService.backup: the per-index export below and the data-dir tarball) --

    def _data_tarball(self, into: Path) -> ArtifactResult:
        c = self.config
        if not c.data_dir:
            return ArtifactResult(self.name, self.kind, self.tarball_path, status="skipped",
                                  error="data_dir is not set (the index export is the backup)")
        if not self.access.readable(c.data_dir):
            raise ArtifactError(f"{self.name}: data dir {c.data_dir} is not readable through {self.access.description} "
                                "access (missing, or run coderz-backup with permission to read it)")
        try:
            counter = TarCounter()
            counter.what = f"{self.name}: fingerprint"
            rec, entries = write_tarball(self.access, c.data_dir, into, self.tarball_path, counter=counter)
        except AccessError as exc:
            raise ArtifactError(f"{self.name}: archiving data dir {c.data_dir} failed (files change while a "
                                f"node runs; the flow retries): {exc}") from None
        log.info("%s: data dir %s archived, %d entries", self.name, c.data_dir, entries)
        return ArtifactResult.from_files(self.name, self.kind, self.tarball_path, [rec],
                                         details={"data_dir": c.data_dir, "entries": entries,
                                                  "note": "live copy of a running node: not crash-consistent; "
                                                          "restore from the index export (or an ES snapshot) "
                                                          "unless the node was stopped"},
                                         fingerprint=counter.result())

    # -- verify -------------------------------------------------------------
    def verify(self, artifact: ArtifactPath | Path) -> str:
        """The export (JSON and gzip intact, document counts match the index file) or the tarball (members safe)."""
        artifact = as_artifact(artifact)
        if artifact.is_dir():
            counts = self._verify_export(artifact)
            return (f"{len(counts)} indices, {sum(counts.values())} documents: JSON and gzip intact, "
                    f"document counts match {INDEX_FILE}")
        return self._verify_tarball(artifact)

    @staticmethod
    def _read_json(path: ArtifactPath, what: str) -> Any:
        try:
            with as_artifact(path).open() as fh:
                return json.load(fh)
        except FileNotFoundError:
            raise VerifyError(f"{what}: missing") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise VerifyError(f"{what}: not valid JSON ({exc})") from None

    def _verify_export(self, root: ArtifactPath) -> dict[str, int]:
        index = self._read_json(root / INDEX_FILE, f"{root.name}/{INDEX_FILE}")
        counts = index.get("indices") if isinstance(index, dict) else None
        if not isinstance(counts, dict) or not all(isinstance(v, int) and v >= 0 for v in counts.values()):
            raise VerifyError(f"{root.name}/{INDEX_FILE}: no index → document count table")
        folders = {p.name for p in root.iterdir() if p.is_dir()}
        extra = folders - set(counts)
        if extra:
            raise VerifyError(f"{root.name}: folders not listed in {INDEX_FILE}: {', '.join(sorted(extra))}")
        for idx, expected in counts.items():
            where = f"{root.name}/{idx}"
            try:
                check_index_name(idx)
            except VerifyError as exc:
                raise VerifyError(f"{root.name}/{INDEX_FILE}: {exc}") from None
            if idx not in folders:
                raise VerifyError(f"{where}: folder missing")
            for fname in ("mapping.json", "settings.json", "aliases.json"):
                if not isinstance(self._read_json(root / idx / fname, f"{where}/{fname}"), dict):
                    raise VerifyError(f"{where}/{fname}: not a JSON object")
            docs = root / idx / "documents.ndjson.gz"
            if not docs.exists():
                if expected:
                    raise VerifyError(f"{where}/documents.ndjson.gz: missing ({expected} documents expected)")
                continue
            n = sum(1 for _ in self._documents(docs, f"{where}/documents.ndjson.gz", VerifyError))
            if n != expected:
                raise VerifyError(f"{where}/documents.ndjson.gz: {n} documents, {INDEX_FILE} says {expected}")
        return counts

    @staticmethod
    def _documents(path: ArtifactPath, what: str, error: type[CoderzBackupError]) -> Iterator[dict]:
        """The documents of an export file, one at a time; ``error`` on any damage."""
        try:
            with as_artifact(path).open() as gz:
                for no, line in enumerate(gz, 1):
                    try:
                        doc = json.loads(line)
                    except ValueError:
                        raise error(f"{what}: line {no} is not a JSON object") from None
                    if (not isinstance(doc, dict) or not isinstance(doc.get("_id"), str)
                            or not isinstance(doc.get("_source"), dict) or not line.endswith(b"\n")):
                        raise error(f"{what}: line {no} is not a {{\"_id\", \"_source\"}} document")
                    yield doc
        except ARCHIVE_ERRORS as exc:
            raise error(f"{what}: gzip stream is damaged or truncated ({exc})") from None

    def _verify_tarball(self, artifact: ArtifactPath) -> str:
        n = 0
        try:
            with as_artifact(artifact).open() as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
                links = SeenMembers()
                for member in tar:
                    check_member(member, "/restore-check", links)
                    if member.isfile():
                        f = tar.extractfile(member)
                        while f and f.read(CHUNK):
                            pass
                    n += 1
        except tarfile.FilterError as exc:
            raise VerifyError(f"{artifact.name}: unsafe member: {exc}") from None
        except ARCHIVE_ERRORS as exc:
            raise VerifyError(f"{artifact.name}: archive is damaged ({exc})") from None
        if n == 0:
            raise VerifyError(f"{artifact.name}: archive is empty")
        return f"gzip and tar intact, {n} entries"

    # -- restore ------------------------------------------------------------
    def restore_target(self) -> str:
        c = self.config
        if c.restore_from == "volume":
            stop = shlex.join(c.stop_command) if c.stop_command else (
                "its container" if getattr(c, "container", None) else "(stop_command not set: it must be down)")
            return (f"Elasticsearch data dir {c.data_dir} is replaced by the tarball (old contents kept as "
                    f"{c.data_dir}.coderz-old-<ts>); the node is stopped with {stop} and started again")
        return (f"every exported index on {c.url} is deleted if it exists and re-created from the export "
                "(mapping, settings, aliases, documents) — restore overwrites current data; "
                "indices not in the export are left alone")

    def health(self) -> str:
        try:
            with EsClient(self, read_timeout=60.0) as es:
                h = es.json("GET", "/_cluster/health", what="read the cluster health")
        except ArtifactError as exc:
            raise RestoreError(f"{self.name}: {exc}") from None
        status = h.get("status")
        if status not in ("green", "yellow"):
            raise RestoreError(f"{self.name}: cluster {h.get('cluster_name')} is {status}: "
                               f"{h.get('unassigned_shards', '?')} unassigned shards")
        return (f"cluster {h.get('cluster_name')} {status}, {h.get('number_of_nodes', '?')} node(s), "
                f"{h.get('active_primary_shards', '?')} primary shards active")

    def restore(self, artifact: ArtifactPath | Path, *, replace: bool = True, indices: list[str] | None = None,
                already_stopped: bool = False, **_: object) -> str:
        """Restore one artifact (see the module docstring); ``restore_from`` picks which one is used."""
        return self._restore_chosen(artifact, lambda root: self._restore_export(root, replace=replace, only=indices),
                                    already_stopped=already_stopped)

    # -- volume restore (ApiService._restore_volume) -----------------------------
    def _answers(self) -> bool:
        try:
            with EsClient(self, read_timeout=5.0) as es:
                return es.answers("/", timeout=3.0)
        except ArtifactError:
            return False
