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

Modules: ``service`` (the kind: config model and class), ``api`` (the HTTP client),
``export`` and ``restore`` (the API export and restore), ``layout`` (file names).
"""

from .api import GrafanaHTTPError
from .layout import safe_name
from .service import GrafanaConfig, GrafanaService
from ..sqlitecopy import sqlite_copy

__all__ = ["GrafanaConfig", "GrafanaHTTPError", "GrafanaService", "safe_name", "sqlite_copy"]
