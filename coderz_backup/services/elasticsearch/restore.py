"""The Elasticsearch export restore (``restore_from = "export"``)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ...errors import ArtifactError, RestoreError, VerifyError
from ...reader import ArtifactPath
from .api import EsHTTPError, EsClient, quote
from .layout import strip_private_settings


log = logging.getLogger("coderz_backup.services.elasticsearch")


class IndexRestore:
    """The export restore: each index deleted if it exists, re-created and bulk-loaded (restore_from = "export")."""

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
        mounted, left = [], set()   # exports made before searchable-snapshot indices were skipped at backup
        for idx in names:
            flat = self._read_json(root / idx / "settings.json", f"{idx}/settings.json")
            if isinstance(flat, dict) and flat.get("index.store.type") == "snapshot":
                mounted.append(f"{idx} (mount it from snapshot {flat.get('index.store.snapshot.repository_name')}/"
                               f"{flat.get('index.store.snapshot.snapshot_name')})")
                left.add(idx)
        if mounted:
            log.warning("%s: searchable-snapshot indices cannot be re-created from an export and are left "
                        "alone: %s", self.name, ", ".join(mounted))
            names = [n for n in names if n not in left]
        done = []
        try:
            with EsClient(self, read_timeout=min(self.config.timeout_s, 600.0)) as es:
                es.json("GET", "/", what="reach the cluster (GET /)")
                for idx in names:
                    n = self._restore_index(es, root / idx, idx, counts[idx], replace=replace)
                    done.append(f"{idx} ({n})")
        except ArtifactError as exc:
            so_far = f" (restored before the failure: {', '.join(done)})" if done else ""
            raise RestoreError(f"{self.name}: {exc}{so_far}") from None
        skipped = f"; searchable-snapshot indices not restored: {', '.join(mounted)}" if mounted else ""
        return f"{len(done)} indices restored from {root.name}/: {', '.join(done) or 'none'}{skipped}"

    def _restore_index(self, es: EsClient, folder: ArtifactPath, idx: str, expected: int, *, replace: bool) -> int:
        c = self.config
        q = quote(idx)
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

    def _bulk_load(self, es: EsClient, path: ArtifactPath, idx: str) -> int:
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

    def _send_bulk(self, es: EsClient, idx: str, batch: list[bytes]) -> int:
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
