"""The Grafana export's layout: file names, safe folder names, the datasource fields kept."""

from __future__ import annotations

import re


INDEX_FILE = "export.json"


DB_NAME = "grafana.db"


LIVE_DB_FILES = frozenset({DB_NAME, f"{DB_NAME}-journal", f"{DB_NAME}-wal", f"{DB_NAME}-shm"})


#: files added with issue 19; a snapshot without them (older) still restores
RULE_GROUPS_FILE = "rule-groups.json"
LIBRARY_FILE = "library-panels.json"
CONTACT_POINTS_FILE = "contact-points.json"
POLICIES_FILE = "notification-policies.json"


#: what Grafana answers in place of a contact point's secure setting
REDACTED = "[REDACTED]"


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


def secrets_to_reenter(datasources: list, contact_points: list) -> list[str]:
    """Names (never values) of the secrets the API did not export: datasources with set
    ``secureJsonFields`` and contact-point settings answered as ``[REDACTED]``."""
    out = []
    for ds in datasources:
        if isinstance(ds, dict):
            fields = sorted(k for k, v in (ds.get("secureJsonFields") or {}).items() if v)
            if fields:
                out.append(f"datasource {ds.get('name') or ds.get('uid')}: {', '.join(fields)}")
    for cp in contact_points:
        if isinstance(cp, dict) and isinstance(cp.get("settings"), dict):
            fields = sorted(k for k, v in cp["settings"].items() if v == REDACTED)
            if fields:
                out.append(f"contact point {cp.get('name') or cp.get('uid')}: {', '.join(fields)}")
    return out
