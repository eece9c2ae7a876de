"""The Elasticsearch index export (see the package docstring for the layout)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ...errors import ArtifactError, CoderzBackupError, IncompleteArtifactError, VerifyError
from ...writer import ArtifactWriter, FileRecord, write_stream
from ...fingerprint import normalized
from ..base import ArtifactResult
from .api import EsHTTPError, EsClient, quote, hits_total
from .layout import FORMAT, INDEX_FILE, check_index_name, flatten_settings, strip_private_settings


log = logging.getLogger("coderz_backup.services.elasticsearch")


class IndexExport:
    """The per-index export: mapping, settings, aliases and documents (point in time, else scroll), the optional ES snapshot."""

    def _list_indices(self, es: EsClient) -> tuple[list[str], list[str], list[str], list[dict]]:
        """(to export, hidden/dot skipped, closed skipped, searchable snapshots skipped), each sorted."""

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
                check_index_name(n)
            except VerifyError as exc:
                raise ArtifactError(f"{es.where}: _cat/indices listed {exc}") from None
        mounted = [m for m in (self._mounted(es, n) for n in export) if m]
        names = {m["index"] for m in mounted}
        return [n for n in export if n not in names], hidden, closed, mounted

    @staticmethod
    def _mounted(es: EsClient, idx: str) -> dict | None:
        """Where a searchable-snapshot index (``index.store.type: snapshot``, from the mount API or
        ILM's ``restored-*``/``partial-*``) lives; None for an ordinary index. Such an index cannot
        be re-created from an export (its ``index.store.snapshot.*`` settings are private): it is
        mounted again from its snapshot repository."""
        body = es.json("GET", f"/{quote(idx)}/_settings/index.store.*", what=f"read the store settings of index {idx!r}",
                       params={"flat_settings": "true"})
        flat = (body.get(idx) or {}).get("settings") or {} if isinstance(body, dict) else {}
        if any(isinstance(v, dict) for v in flat.values()):
            flat = flatten_settings(flat)
        if flat.get("index.store.type") != "snapshot":
            return None
        return {"index": idx, "repository": flat.get("index.store.snapshot.repository_name"),
                "snapshot": flat.get("index.store.snapshot.snapshot_name"),
                "snapshot_index": flat.get("index.store.snapshot.index_name"),
                "partial": str(flat.get("index.store.snapshot.partial", "false")).lower() == "true"}

    def _data_streams(self, es: EsClient) -> list[str]:
        try:
            body = es.json("GET", "/_data_stream", what="list data streams", params={"expand_wildcards": "open"})
        except EsHTTPError as exc:
            if exc.status in (400, 404, 405):
                return []   # no data streams on this version
            raise
        return sorted(d.get("name", "?") for d in body.get("data_streams", [])
                      if not (d.get("hidden") or d.get("system") or str(d.get("name", "")).startswith(".")))

    def _export(self, es: EsClient, into: Path) -> ArtifactResult:
        root = into / self.name
        if root.exists():   # left by a failed attempt: start clean
            shutil.rmtree(root)
        try:
            info = es.json("GET", "/", what="read the node info (GET /)")
            version = str((info.get("version") or {}).get("number", "?"))
            export, hidden, closed, mounted = self._list_indices(es)
            streams = self._data_streams(es)
            if hidden:
                log.info("%s: skipped hidden/system indices: %s", self.name, ", ".join(hidden))
            left_out = []
            if closed:
                log.warning("%s: closed indices cannot be exported and were skipped (open them to include "
                            "them): %s", self.name, ", ".join(closed))
                left_out.append(f"closed indices {', '.join(closed)}")
            if mounted:
                where = "; ".join(f"{m['index']} from {m['repository']}/{m['snapshot']}"
                                  + (" (partial)" if m["partial"] else "") for m in mounted)
                log.warning("%s: searchable-snapshot indices are not exported: their data lives in a snapshot "
                            "repository and ES refuses to re-create them from settings (private "
                            "index.store.snapshot.*); mount them again from there (POST /_snapshot/<repo>/"
                            "<snapshot>/_mount): %s", self.name, where)
                left_out.append(f"searchable-snapshot indices {', '.join(m['index'] for m in mounted)} "
                                "(mount them from their snapshot repository)")
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
                                      [json.dumps(index_doc, indent=1, sort_keys=True).encode() + b"\n"]))
            details: dict[str, Any] = {"elasticsearch": version, "url": self.config.url, "indices": counts,
                                       "documents": sum(counts.values()), "skipped_hidden": hidden,
                                       "skipped_closed": closed, "data_streams_not_exported": streams,
                                       "skipped_searchable_snapshots": [
                                           {**m, "reason": "searchable snapshot (index.store.type = snapshot): "
                                                           "its data lives in the snapshot repository; mount "
                                                           "it again from there"} for m in mounted]}
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
                                         details=details, fingerprint=normalized({"indices": dict(counts)}))

    def fingerprint_live(self) -> dict:
        """``indices``: ``GET /<idx>/_count`` of every index the export would take (open, not hidden)."""
        with self.http_api(self, read_timeout=min(self.config.timeout_s, 300.0)) as es:
            export, _, _, _ = self._list_indices(es)
            counts = {idx: int(es.json("GET", f"/{quote(idx)}/_count", what=f"count {idx}")["count"])
                      for idx in export}
        return normalized({"indices": counts})

    def _export_index(self, es: EsClient, into: Path, idx: str, counts: dict[str, int]) -> list[FileRecord]:
        q = quote(idx)
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
            flat = flatten_settings(flat)
        base = f"{self.name}/{idx}"
        files = [write_stream(into, f"{base}/{fname}", [json.dumps(obj, indent=1, sort_keys=True).encode() + b"\n"])
                 for fname, obj in (("mapping.json", mapping), ("settings.json", strip_private_settings(flat)),
                                    ("aliases.json", aliases))]
        rec, n = self._export_documents(es, into, idx)
        counts[idx] = n
        if rec is not None:
            files.append(rec)
        log.info("%s: index %s: %d documents exported", self.name, idx, n)
        return files

    def _export_documents(self, es: EsClient, into: Path, idx: str) -> tuple[FileRecord | None, int]:
        rel = f"{self.name}/{idx}/documents.ndjson.gz"
        with ArtifactWriter.open(into, rel) as w:
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

    def _page_checks(self, es: EsClient, body: dict, idx: str, page: int) -> list[dict]:
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

    def _pit_pages(self, es: EsClient, idx: str, sink, state: dict) -> bool:
        """Page through a point in time; False when the server has no usable PIT (use scroll)."""
        c = self.config
        try:
            pit = es.json("POST", f"/{quote(idx)}/_pit", what=f"open a point in time on index {idx!r}",
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
                    state["total"] = hits_total(res.get("hits") or {})
                if not hits:
                    return True
                sink(hits)
                after = hits[-1].get("sort")
                if not after:
                    raise ArtifactError(f"{es.where}: search hits of index {idx!r} carry no sort values")
        finally:
            with contextlib.suppress(CoderzBackupError):
                es.call("DELETE", "/_pit", what="close the point in time", ok=(200, 404), json={"id": pit})

    def _scroll_pages(self, es: EsClient, idx: str, sink, state: dict) -> None:
        c = self.config
        res = es.json("POST", f"/{quote(idx)}/_search", what=f"start a scroll on index {idx!r}",
                      params={"scroll": c.keep_alive},
                      json={"size": c.page_size, "sort": ["_doc"], "track_total_hits": True,
                                 "query": {"match_all": {}}})
        sid = res.get("_scroll_id")
        try:
            page = 1
            state["total"] = hits_total(res.get("hits") or {})
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

    def _snapshot(self, es: EsClient, indices: list[str]) -> dict:
        repo = self.config.snapshot_repository
        if not indices:
            return {"repository": repo, "skipped": "no indices exported"}
        snap = f"coderz-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
        try:
            res = es.json("PUT", f"/_snapshot/{quote(repo)}/{snap}", what=f"create snapshot {snap} in repository {repo!r}",
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
