"""The Grafana export's layout: file names, safe folder names, the datasource fields kept."""

from __future__ import annotations

import re


INDEX_FILE = "export.json"


DB_NAME = "grafana.db"


LIVE_DB_FILES = frozenset({DB_NAME, f"{DB_NAME}-journal", f"{DB_NAME}-wal", f"{DB_NAME}-shm"})


SECRETS_NOTE = "not exported by the Grafana API; re-enter them after a restore"


#: folder uids Grafana lists that are not real folders ("Shared with me" for limited users, the root)
VIRTUAL_FOLDERS = frozenset({"sharedwithme", "general"})


_UNSAFE = re.compile(r"[^A-Za-z0-9._ ()+,=@-]+")


#: datasource fields sent back when a missing datasource is re-created
DATASOURCE_FIELDS = ("uid", "name", "type", "access", "url", "user", "database", "basicAuth", "basicAuthUser",
              "withCredentials", "isDefault", "jsonData")


def safe_name(text: str, *, limit: int = 100) -> str:
    """A file or folder name for ``text``: odd characters → ``_``, never empty, ``.`` or ``..``."""
    name = _UNSAFE.sub("_", text or "").strip(" .")[:limit].strip(" .")
    return name or "_"
