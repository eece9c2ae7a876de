"""Elasticsearch → ``<name>/`` (per-index export) + ``<name>-data.tar.gz`` (+ an ES snapshot).

Artifacts:

- ``<name>/`` — a folder artifact, one sub-folder per exported index holding
  ``mapping.json``, ``settings.json`` (flat keys, the private ones stripped so the index
  can be re-created), ``aliases.json`` and ``documents.ndjson.gz`` (one
  ``{"_id":…,"_source":…}`` object per line, ``"_routing"`` when the document has one),
  plus ``index.json`` (index → exported document count; written last). An index
  without documents has no ``documents.ndjson.gz`` (its count is 0).
  Indices are listed with ``_cat/indices`` (``expand_wildcards=open``, and ``all`` to
  name what is left out): names starting with ``.`` and hidden indices (system indices,
  data-stream backing indices) are skipped and named in the log and the details;
  closed indices cannot be searched and are skipped with a warning line in the report.
  Documents are read page by page through a point in time (``POST /<idx>/_pit``, then
  ``POST /_search`` with ``pit``, ``sort: [{"_shard_doc": "asc"}]`` and
  ``search_after``, always the newest ``pit_id``, the PIT deleted at the end, also on
  failure), or with a scroll (``_doc`` order) on servers without ``_pit``/``_shard_doc``.
  The first page asks for the exact total; the export fails unless it wrote exactly
  that many documents, and any page with failed shards or a timeout fails it too.
- ``<name>-data.tar.gz`` — the data dir (``path.data``) through the access layer.
  A copy of a running node is **not** crash-consistent: it is a last resort; the export
  (or the snapshot API) is what restores reliably. Skipped when ``data_dir`` is unset.
- With ``snapshot_repository`` set, ``PUT /_snapshot/<repo>/coderz-<ts>?wait_for_completion=true``
  of the exported indices (no global state); it must end in ``SUCCESS`` with no failed
  shard, and repository/snapshot/uuid/state/shards go into the details of ``<name>/``.

A failure of any part raises (the flow retries and then reports the artifacts failed);
the export folder of a failed attempt is removed, never left looking complete.

Restore (``restore_from``; the other artifact answers "not used"):

- ``export``: every index is deleted when it exists (restore overwrites current data;
  ``replace=False`` refuses instead), re-created from mapping + settings + aliases with
  ``number_of_replicas`` = ``replicas`` (0) and ``refresh_interval: -1``, bulk-loaded in
  batches bounded by ``bulk_docs``/``bulk_bytes`` (every item checked; rejected with 429
  are re-sent with back-off), refreshed, its ``_count`` compared with the export, then
  its ``refresh_interval`` and write blocks put back.
- ``volume``: the node is stopped (container or ``stop_command``), the data dir's
  contents are moved aside to ``<data_dir>.coderz-old-<ts>`` (local) or
  ``<data_dir>/.coderz-old-<ts>`` (inside a volume), the tarball is extracted, the node
  started and the cluster health awaited.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import shlex
import shutil
import tarfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import httpx

from pydantic import Field, SecretStr

from ..access import ARCHIVE_ERRORS, CHUNK, SeenMembers, check_member
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
from ..writer import ArtifactWriter, FileRecord, write_stream
from .apiservice import ApiService
from .datadir import write_tarball
from .base import ArtifactResult
from .httpapi import HttpApi, credentials

__all__ = ["ElasticsearchService", "EsHTTPError", "strip_private_settings"]

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
FORMAT = "coderz-es-export/1"
_ERROR_KEEP = 600
#: settings ES sets itself and refuses on create (NEST's list + other private ones)
_PRIVATE_EXACT = {"index.uuid", "index.creation_date", "index.provided_name", "index.history.uuid",
                  "index.verified_before_close", "index.creation_date_string"}
_PRIVATE_PREFIX = ("index.version.", "index.routing.allocation.initial_recovery.", "index.resize.")
_BAD_NAME_CHARS = set('\\/*?"<>| ,#:')


def strip_private_settings(flat: dict[str, Any]) -> dict[str, Any]:
    """Flat index settings without the keys ES refuses on ``PUT /<idx>``."""
    out = {}
    for key, value in flat.items():
        k = key if key.startswith("index.") else f"index.{key}"
        if k in _PRIVATE_EXACT or k.startswith(_PRIVATE_PREFIX):
            continue
        out[k] = value
    return out


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_index_name(name: str) -> None:
    """Refuse names that are not a single concrete index (``_all``, ``*``, paths)."""
    if (not name or name in (".", "..") or name.startswith(("-", "_", "+")) or name != name.lower()
            or any(ch in _BAD_NAME_CHARS for ch in name) or len(name.encode()) > 255):
        raise VerifyError(f"{name!r} is not a valid index name")


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _reason(body: bytes) -> tuple[str, str]:
    """``(type, text)`` of an ES error body (object or old string form)."""
    try:
        obj = json.loads(body)
    except ValueError:
        return "", body.decode("utf-8", "replace").strip()[:_ERROR_KEEP] or "(empty body)"
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        typ = str(err.get("type") or "")
        text = str(err.get("reason") or "")
        causes = err.get("root_cause") or []
        deeper = [c for c in (causes[0] if causes else None, err.get("caused_by")) if isinstance(c, dict)]
        for rc in deeper:
            if rc.get("reason") and str(rc.get("reason")) not in text:
                text = f"{text} ({rc.get('type')}: {rc.get('reason')})" if text else str(rc.get("reason"))
        return typ, (f"{typ}: {text}" if typ else text)[:_ERROR_KEEP]
    if err:
        return "", str(err)[:_ERROR_KEEP]
    return "", json.dumps(obj)[:_ERROR_KEEP]


class EsHTTPError(ArtifactError):
    """An HTTP error answer of Elasticsearch (``status`` and ES error ``type`` kept)."""

    def __init__(self, message: str, status: int, type_: str):
        super().__init__(message)
        self.status = status
        self.type = type_


class _Client(HttpApi):
    """HTTP to one node; every failure becomes an ArtifactError with ES's reason."""

    product = "Elasticsearch"

    def __init__(self, svc: ElasticsearchService, *, read_timeout: float = 120.0):
        headers = {"Accept": "application/json"}
        login, auth, who = credentials(svc, token_field="api_key", scheme="ApiKey", token_who="the API key")
        headers.update(login)
        super().__init__(svc, headers=headers, auth=auth, who=who or "anonymous access (no user/api_key configured)",
                         read_timeout=read_timeout)

    def refused(self, resp: httpx.Response, what: str) -> EsHTTPError:
        typ, text = _reason(resp.content[:8192])
        s = resp.status_code
        name = self.svc.name
        if s == 401:
            msg = (f"{self.where}: authentication failed for {self.who} (HTTP 401: {text}); check "
                   f"services.{name}.user/password or api_key")
        elif s == 403:
            msg = (f"{self.where}: {self.who} may not {what} (HTTP 403: {text}); grant the monitor cluster "
                   "privilege and read + view_index_metadata on the indices (manage + create_snapshot "
                   "for restore and snapshots)")
        else:
            msg = f"{self.where}: {what} failed (HTTP {s}): {text}"
        return EsHTTPError(msg, s, typ)


def _total(hits: dict) -> int | None:
    t = hits.get("total")
    if isinstance(t, int):
        return t
    if isinstance(t, dict) and t.get("relation", "eq") == "eq":
        return int(t.get("value", 0))
    return None



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


class ElasticsearchService(ApiService):
    kind: ClassVar[str] = "elasticsearch"
    config_model: ClassVar[type[ElasticsearchConfig]] = ElasticsearchConfig
    config: ElasticsearchConfig
    product: ClassVar[str] = "Elasticsearch"
    http_api: ClassVar[type[HttpApi]] = _Client
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
    def _list_indices(self, es: _Client) -> tuple[list[str], list[str], list[str]]:
        """(to export, hidden/dot skipped, closed skipped), each sorted."""

        def cat(expand: str) -> list[dict]:
            rows = es.json("GET", "/_cat/indices", what="list indices (_cat/indices)",
                           params={"format": "json", "expand_wildcards": expand, "h": "index,status,health"})
            if not isinstance(rows, list):
                raise ArtifactError(f"{es.where}: _cat/indices did not return a JSON array")
            return rows

        visible = {r["index"]: r for r in cat("open")}
        every = {r["index"]: r for r in cat("all")}
        export = sorted(n for n in visible if not n.startswith("."))
        hidden = sorted({n for n in visible if n.startswith(".")}
                        | {n for n, r in every.items() if n not in visible and r.get("status") != "close"})
        closed = sorted(n for n, r in every.items()
                        if n not in visible and r.get("status") == "close" and not n.startswith("."))
        for n in export:
            try:
                _check_index_name(n)
            except VerifyError as exc:
                raise ArtifactError(f"{es.where}: _cat/indices listed {exc}") from None
        return export, hidden, closed

    def _data_streams(self, es: _Client) -> list[str]:
        try:
            body = es.json("GET", "/_data_stream", what="list data streams", params={"expand_wildcards": "open"})
        except EsHTTPError as exc:
            if exc.status in (400, 404, 405):
                return []   # no data streams on this version
            raise
        return sorted(d.get("name", "?") for d in body.get("data_streams", [])
                      if not (d.get("hidden") or d.get("system") or str(d.get("name", "")).startswith(".")))

    def _export(self, es: _Client, into: Path) -> ArtifactResult:
        root = into / self.name
        if root.exists():   # left by a failed attempt: start clean
            shutil.rmtree(root)
        try:
            info = es.json("GET", "/", what="read the node info (GET /)")
            version = str((info.get("version") or {}).get("number", "?"))
            export, hidden, closed = self._list_indices(es)
            streams = self._data_streams(es)
            if hidden:
                log.info("%s: skipped hidden/system indices: %s", self.name, ", ".join(hidden))
            left_out = []
            if closed:
                log.warning("%s: closed indices cannot be exported and were skipped (open them to include "
                            "them): %s", self.name, ", ".join(closed))
                left_out.append(f"closed indices {', '.join(closed)}")
            if streams:
                log.warning("%s: data streams live in hidden .ds-* indices and are not exported (use "
                            "snapshot_repository or the data-dir tarball): %s", self.name, ", ".join(streams))
                left_out.append(f"data streams {', '.join(streams)}")
            files: list[FileRecord] = []
            counts: dict[str, int] = {}
            for idx in export:
                files += self._export_index(es, into, idx, counts)
            index_doc = {"format": FORMAT, "elasticsearch": version, "cluster": info.get("cluster_name"),
                         "exported_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "indices": counts}
            files.append(write_stream(into, f"{self.name}/{INDEX_FILE}",
                                      [json.dumps(index_doc, indent=1, sort_keys=True).encode() + b"\n"],
                                      compress=False))
            details: dict[str, Any] = {"elasticsearch": version, "url": self.config.url, "indices": counts,
                                       "documents": sum(counts.values()), "skipped_hidden": hidden,
                                       "skipped_closed": closed, "data_streams_not_exported": streams}
            if self.config.snapshot_repository:
                details["snapshot"] = self._snapshot(es, export)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        n = len(export)
        summary = f"Elasticsearch: {n} {'index' if n == 1 else 'indices'} exported"
        if left_out:
            summary += f" (not exported: {'; '.join(left_out)})"
        return ArtifactResult.from_files(self.name, self.kind, self.export_path, files, summary=summary,
                                         details=details)

    def _export_index(self, es: _Client, into: Path, idx: str, counts: dict[str, int]) -> list[FileRecord]:
        q = _q(idx)
        mapping = es.json("GET", f"/{q}/_mapping", what=f"read the mapping of index {idx!r}")
        settings = es.json("GET", f"/{q}/_settings", what=f"read the settings of index {idx!r}",
                           params={"flat_settings": "true"})
        aliases = es.json("GET", f"/{q}/_alias", what=f"read the aliases of index {idx!r}")
        try:
            mapping = mapping[idx].get("mappings", {})
            flat = settings[idx]["settings"]
            aliases = aliases[idx].get("aliases", {})
        except (KeyError, TypeError, AttributeError):
            raise ArtifactError(f"{es.where}: unexpected answer shape for index {idx!r} "
                                "(mapping/settings/alias not keyed by the index name)") from None
        if any(isinstance(v, dict) for v in flat.values()):  # a server that ignored flat_settings
            flat = _flatten(flat)
        base = f"{self.name}/{idx}"
        files = [write_stream(into, f"{base}/{fname}", [json.dumps(obj, indent=1, sort_keys=True).encode() + b"\n"],
                              compress=False)
                 for fname, obj in (("mapping.json", mapping), ("settings.json", strip_private_settings(flat)),
                                    ("aliases.json", aliases))]
        rec, n = self._export_documents(es, into, idx)
        counts[idx] = n
        if rec is not None:
            files.append(rec)
        log.info("%s: index %s: %d documents exported", self.name, idx, n)
        return files

    def _export_documents(self, es: _Client, into: Path, idx: str) -> tuple[FileRecord | None, int]:
        rel = f"{self.name}/{idx}/documents.ndjson.gz"
        with ArtifactWriter.open(into, rel, compress=True) as w:
            state = {"written": 0, "total": None}

            def sink(hits: list[dict]) -> None:
                for h in hits:
                    if "_source" not in h:
                        raise ArtifactError(f"index {idx!r}: document {h.get('_id')!r} has no _source "
                                            "(_source is disabled in the mapping?); it cannot be exported — "
                                            "use snapshot_repository for this index")
                    doc = {"_id": h["_id"], "_source": h["_source"]}
                    if h.get("_routing") is not None:
                        doc["_routing"] = h["_routing"]
                    w.write(json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
                    state["written"] += 1

            try:
                if not self._pit_pages(es, idx, sink, state):
                    self._scroll_pages(es, idx, sink, state)
            except EsHTTPError as exc:
                if exc.type == "search_context_missing_exception":
                    raise ArtifactError(f"{es.where}: export of index {idx!r} stopped after {state['written']} "
                                        f"documents: the point in time/scroll expired between two pages "
                                        f"(keep_alive {self.config.keep_alive}); raise keep_alive") from None
                raise ArtifactError(f"{exc} — export of index {idx!r} stopped after {state['written']} of "
                                    f"{state['total'] if state['total'] is not None else '?'} documents "
                                    "(partial export, nothing kept)") from None
            total, written = state["total"], state["written"]
            if total is None:
                raise IncompleteArtifactError(f"index {idx!r}: the server did not report an exact total; "
                                              "cannot prove the export complete")
            if written != total:
                raise IncompleteArtifactError(f"index {idx!r}: exported {written} documents but the point in "
                                              f"time holds {total}: partial export, nothing kept")
            if written == 0:
                return None, 0
            return w.commit(), written

    def _page_checks(self, es: _Client, body: dict, idx: str, page: int) -> list[dict]:
        shards = body.get("_shards") or {}
        if body.get("timed_out"):
            raise ArtifactError(f"{es.where}: page {page} of index {idx!r} timed out: partial export, nothing kept")
        if shards.get("failed"):
            failure = (shards.get("failures") or [{}])[0]
            why = (failure.get("reason") or {}).get("reason") if isinstance(failure.get("reason"), dict) else failure
            raise ArtifactError(f"{es.where}: {shards['failed']} of {shards.get('total')} shards failed on page "
                                f"{page} of index {idx!r} ({why}): partial export, nothing kept")
        hits = (body.get("hits") or {}).get("hits")
        if not isinstance(hits, list):
            raise ArtifactError(f"{es.where}: search answer for index {idx!r} has no hits.hits")
        return hits

    def _pit_pages(self, es: _Client, idx: str, sink, state: dict) -> bool:
        """Page through a point in time; False when the server has no usable PIT (use scroll)."""
        c = self.config
        try:
            pit = es.json("POST", f"/{_q(idx)}/_pit", what=f"open a point in time on index {idx!r}",
                          params={"keep_alive": c.keep_alive})["id"]
        except EsHTTPError as exc:
            if exc.status in (400, 404, 405) and exc.type != "index_not_found_exception":
                log.info("%s: no point in time API (%s); using scroll for %s", self.name, exc, idx)
                return False
            raise
        except (KeyError, TypeError):
            raise ArtifactError(f"{es.where}: _pit answer without an id") from None
        try:
            after = None
            page = 0
            while True:
                page += 1
                body: dict[str, Any] = {"size": c.page_size, "query": {"match_all": {}},
                                        "pit": {"id": pit, "keep_alive": c.keep_alive},
                                        "sort": [{"_shard_doc": "asc"}], "track_total_hits": page == 1}
                if after is not None:
                    body["search_after"] = after
                try:
                    res = es.json("POST", "/_search", what=f"search page {page} of index {idx!r}", json=body)
                except EsHTTPError as exc:
                    if page == 1 and exc.status == 400 and "_shard_doc" in str(exc):
                        log.info("%s: server cannot sort on _shard_doc; using scroll for %s", self.name, idx)
                        return False
                    raise
                pit = res.get("pit_id") or pit
                hits = self._page_checks(es, res, idx, page)
                if page == 1:
                    state["total"] = _total(res.get("hits") or {})
                if not hits:
                    return True
                sink(hits)
                after = hits[-1].get("sort")
                if not after:
                    raise ArtifactError(f"{es.where}: search hits of index {idx!r} carry no sort values")
        finally:
            with contextlib.suppress(CoderzBackupError):
                es.call("DELETE", "/_pit", what="close the point in time", ok=(200, 404), json={"id": pit})

    def _scroll_pages(self, es: _Client, idx: str, sink, state: dict) -> None:
        c = self.config
        res = es.json("POST", f"/{_q(idx)}/_search", what=f"start a scroll on index {idx!r}",
                      params={"scroll": c.keep_alive},
                      json={"size": c.page_size, "sort": ["_doc"], "track_total_hits": True,
                                 "query": {"match_all": {}}})
        sid = res.get("_scroll_id")
        try:
            page = 1
            state["total"] = _total(res.get("hits") or {})
            while True:
                hits = self._page_checks(es, res, idx, page)
                if not hits:
                    return
                sink(hits)
                page += 1
                res = es.json("POST", "/_search/scroll", what=f"scroll page {page} of index {idx!r}",
                              json={"scroll": c.keep_alive, "scroll_id": sid})
                sid = res.get("_scroll_id") or sid
        finally:
            if sid:
                with contextlib.suppress(CoderzBackupError):
                    es.call("DELETE", "/_search/scroll", what="clear the scroll", ok=(200, 404),
                            json={"scroll_id": sid})

    def _snapshot(self, es: _Client, indices: list[str]) -> dict:
        repo = self.config.snapshot_repository
        if not indices:
            return {"repository": repo, "skipped": "no indices exported"}
        snap = f"coderz-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
        try:
            res = es.json("PUT", f"/_snapshot/{_q(repo)}/{snap}", what=f"create snapshot {snap} in repository {repo!r}",
                          params={"wait_for_completion": "true"}, timeout=self.config.timeout_s,
                          json={"indices": ",".join(indices), "include_global_state": False,
                                     "ignore_unavailable": False, "metadata": {"taken_by": "coderz-backup"}})
        except EsHTTPError as exc:
            if exc.type == "repository_missing_exception":
                raise ArtifactError(f"{es.where}: snapshot repository {repo!r} is not registered; register it "
                                    f'(PUT /_snapshot/{repo} {{"type":"fs","settings":{{"location":…}}}} with '
                                    "path.repo set) or unset snapshot_repository") from None
            raise
        s = res.get("snapshot") or {}
        shards = s.get("shards") or {}
        if s.get("state") != "SUCCESS" or shards.get("failed", 0) or not shards.get("total"):
            failures = "; ".join(str(f.get("reason", f)) for f in (s.get("failures") or [])[:3])
            raise ArtifactError(f"{es.where}: snapshot {repo}/{snap} ended in state {s.get('state')!r} with "
                                f"{shards.get('failed', '?')} of {shards.get('total', '?')} shards failed"
                                + (f": {failures}" if failures else ""))
        log.info("%s: snapshot %s/%s: %s, %s shards", self.name, repo, snap, s.get("state"), shards.get("total"))
        return {"repository": repo, "snapshot": s.get("snapshot", snap), "uuid": s.get("uuid"),
                "state": s.get("state"), "shards": shards, "indices": sorted(s.get("indices") or [])}

    def _data_tarball(self, into: Path) -> ArtifactResult:
        c = self.config
        if not c.data_dir:
            return ArtifactResult(self.name, self.kind, self.tarball_path, status="skipped",
                                  error="data_dir is not set (the index export is the backup)")
        if not self.access.readable(c.data_dir):
            raise ArtifactError(f"{self.name}: data dir {c.data_dir} is not readable through {self.access.description} "
                                "access (missing, or run coderz-backup with permission to read it)")
        try:
            rec, entries = write_tarball(self.access, c.data_dir, into, self.tarball_path)
        except AccessError as exc:
            raise ArtifactError(f"{self.name}: archiving data dir {c.data_dir} failed (files change while a "
                                f"node runs; the flow retries): {exc}") from None
        log.info("%s: data dir %s archived, %d entries", self.name, c.data_dir, entries)
        return ArtifactResult.from_files(self.name, self.kind, self.tarball_path, [rec],
                                         details={"data_dir": c.data_dir, "entries": entries,
                                                  "note": "live copy of a running node: not crash-consistent; "
                                                          "restore from the index export (or an ES snapshot) "
                                                          "unless the node was stopped"})

    # -- verify -------------------------------------------------------------
    def verify(self, artifact: ArtifactPath | Path) -> str:
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
                _check_index_name(idx)
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
            with _Client(self, read_timeout=60.0) as es:
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

    def _restore_export(self, root: ArtifactPath, *, replace: bool, only: list[str] | None) -> str:
        try:
            counts = self._verify_export(root)
        except VerifyError as exc:
            raise RestoreError(f"{self.name}: refusing to restore, nothing changed: {exc}") from None
        names = sorted(counts)
        if only is not None:
            unknown = sorted(set(only) - set(counts))
            if unknown:
                raise RestoreError(f"{self.name}: not in the export: {', '.join(unknown)}; nothing changed")
            names = sorted(only)
        done = []
        try:
            with _Client(self, read_timeout=min(self.config.timeout_s, 600.0)) as es:
                es.json("GET", "/", what="reach the cluster (GET /)")
                for idx in names:
                    n = self._restore_index(es, root / idx, idx, counts[idx], replace=replace)
                    done.append(f"{idx} ({n})")
        except ArtifactError as exc:
            so_far = f" (restored before the failure: {', '.join(done)})" if done else ""
            raise RestoreError(f"{self.name}: {exc}{so_far}") from None
        return f"{len(done)} indices restored from {root.name}/: {', '.join(done) or 'none'}"

    def _restore_index(self, es: _Client, folder: ArtifactPath, idx: str, expected: int, *, replace: bool) -> int:
        c = self.config
        q = _q(idx)
        mapping = self._read_json(folder / "mapping.json", f"{idx}/mapping.json")
        settings = strip_private_settings(self._read_json(folder / "settings.json", f"{idx}/settings.json"))
        aliases = self._read_json(folder / "aliases.json", f"{idx}/aliases.json")
        after = {k: v for k, v in settings.items() if k.startswith("index.blocks.")}
        after["index.refresh_interval"] = settings.get("index.refresh_interval")   # None = default
        create = {k: v for k, v in settings.items() if not k.startswith("index.blocks.")}
        create["index.refresh_interval"] = "-1"
        if c.replicas is not None:
            create["index.number_of_replicas"] = str(c.replicas)
            create.pop("index.auto_expand_replicas", None)
        if es.call("HEAD", f"/{q}", what=f"look for index {idx!r}", ok=(200, 404)).status_code == 200:
            if not replace:
                raise ArtifactError(f"index {idx!r} exists on {c.url}; nothing changed for it "
                                    "(restore with replace=True to delete and re-create it)")
            es.json("DELETE", f"/{q}", what=f"delete the existing index {idx!r}")
            log.warning("%s: deleted the existing index %s to restore it", self.name, idx)
        try:
            es.json("PUT", f"/{q}", what=f"create index {idx!r}",
                    json={"settings": create, "mappings": mapping, "aliases": aliases})
        except EsHTTPError as exc:
            if exc.type == "resource_already_exists_exception":
                raise ArtifactError(f"index {idx!r} was created by someone else during the restore: {exc}") from None
            raise
        loaded = self._bulk_load(es, folder / "documents.ndjson.gz", idx) if expected else 0
        es.json("POST", f"/{q}/_refresh", what=f"refresh index {idx!r}")
        count = es.json("GET", f"/{q}/_count", what=f"count documents of index {idx!r}").get("count")
        if count != expected or loaded != expected:
            raise ArtifactError(f"index {idx!r} holds {count} documents after loading {loaded}; the export has "
                                f"{expected}: the restored index is incomplete")
        es.json("PUT", f"/{q}/_settings", what=f"put back refresh_interval/blocks of index {idx!r}", json=after)
        log.info("%s: index %s restored, %d documents", self.name, idx, count)
        return count

    def _bulk_load(self, es: _Client, path: ArtifactPath, idx: str) -> int:
        c = self.config
        batch: list[bytes] = []
        size = 0
        loaded = 0
        for doc in self._documents(path, f"{idx}/documents.ndjson.gz", RestoreError):
            action: dict[str, Any] = {"_index": idx, "_id": doc["_id"]}
            if doc.get("_routing") is not None:
                action["routing"] = doc["_routing"]
            item = (json.dumps({"index": action}, separators=(",", ":")).encode() + b"\n"
                    + json.dumps(doc["_source"], ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
            if batch and (len(batch) >= c.bulk_docs or size + len(item) > c.bulk_bytes):
                loaded += self._send_bulk(es, idx, batch)
                batch, size = [], 0
            batch.append(item)
            size += len(item)
        if batch:
            loaded += self._send_bulk(es, idx, batch)
        return loaded

    def _send_bulk(self, es: _Client, idx: str, batch: list[bytes]) -> int:
        """Send one batch; re-send items rejected with 429 (back-off); raise on any other item error."""
        pending = batch
        for attempt in range(6):
            try:
                res = es.json("POST", "/_bulk", what=f"bulk-load documents into index {idx!r}",
                              content=b"".join(pending), headers={"Content-Type": "application/x-ndjson"})
            except EsHTTPError as exc:
                if exc.status == 413:
                    raise ArtifactError(f"{exc}; lower services.{self.name}.bulk_bytes") from None
                if exc.status == 429 and attempt < 5:
                    time.sleep(0.5 * 2 ** attempt)
                    continue
                raise
            items = res.get("items") or []
            if len(items) != len(pending):
                raise ArtifactError(f"bulk load into index {idx!r}: {len(items)} results for {len(pending)} documents")
            retry, failed = [], []
            for item, op in zip(pending, items, strict=True):
                r = next(iter(op.values())) if isinstance(op, dict) and op else {}
                status = r.get("status", 0)
                if 200 <= status < 300 and "error" not in r:
                    continue
                (retry if status == 429 else failed).append((item, r))
            if res.get("errors") is False and (retry or failed):
                failed = failed or retry
            if failed or (retry and attempt == 5):
                bad = failed or retry
                first = "; ".join(
                    f"id {r.get('_id')!r}: {(r.get('error') or {}).get('type', r.get('status'))}: "
                    f"{str((r.get('error') or {}).get('reason', ''))[:200]}" for _, r in bad[:3])
                raise ArtifactError(f"bulk load into index {idx!r} failed: {len(bad)} of {len(pending)} documents "
                                    f"of a batch rejected; first errors: {first} — the index is incomplete")
            if not retry:
                return len(batch)
            log.warning("%s: %d documents rejected with 429 (busy); re-sending", self.name, len(retry))
            pending = [item for item, _ in retry]
            time.sleep(0.5 * 2 ** attempt)
        raise ArtifactError(f"bulk load into index {idx!r}: the cluster stayed busy (429)")

    # -- volume restore (ApiService._restore_volume) -----------------------------
    def _answers(self) -> bool:
        try:
            with _Client(self, read_timeout=5.0) as es:
                return es.answers("/", timeout=3.0)
        except ArtifactError:
            return False
