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
  closed indices cannot be searched and are skipped with a warning line in the report;
  searchable-snapshot indices (``index.store.type`` = ``snapshot``: mounted, ILM's
  ``restored-*``/``partial-*``) cannot be re-created from settings (private
  ``index.store.snapshot.*``) and are skipped with their repository/snapshot and the reason
  (``skipped_searchable_snapshots``): they are mounted again from their repository.
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

Modules: ``service`` (the kind: config model and class), ``api`` (the REST client),
``export`` and ``restore`` (the index export and its restore), ``layout`` (file names, settings).
"""

from .api import EsHTTPError
from .layout import strip_private_settings
from .service import ElasticsearchConfig, ElasticsearchService

__all__ = ["ElasticsearchConfig", "ElasticsearchService", "EsHTTPError", "strip_private_settings"]
