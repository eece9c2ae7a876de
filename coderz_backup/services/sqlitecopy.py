"""A consistent copy of a live SQLite database (Grafana's grafana.db, k3s' state.db).

The online backup API in **one step** (``pages=-1``): the whole copy is one read
transaction. A stepwise copy (``pages=N``) restarts from the beginning whenever another
connection writes between two steps, so on a database that is written every few seconds
(k3s' kine renews leases constantly) and spans more than a few steps it never ends. One
read transaction does not block writers in WAL mode (k3s); in rollback-journal mode
(Grafana's default) writers wait for it, which for a database of a few MB is
milliseconds. The copy must pass ``PRAGMA integrity_check``.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArtifactError, IncompleteArtifactError

__all__ = ["SqliteCopy", "sqlite_copy"]


@dataclass(frozen=True)
class SqliteCopy:
    tables: int
    pages: int


def sqlite_copy(src: str | Path, dst: str | Path, *, timeout: float = 30.0) -> SqliteCopy:
    """Copy ``src`` (live) to ``dst`` and check the copy; ArtifactError when it cannot.

    The source is opened read-only (a reader that is root must not create ``-shm``/``-wal``
    files the service could not open afterwards); ``timeout`` is how long to wait for a lock.
    """
    uri = "file:" + urllib.parse.quote(str(src)) + "?mode=ro"
    source = target = None
    try:
        source = sqlite3.connect(uri, uri=True, timeout=timeout)
        target = sqlite3.connect(dst)
        source.backup(target, pages=-1)
        check = [r[0] for r in target.execute("PRAGMA integrity_check").fetchall()]
        tables = target.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        pages = target.execute("PRAGMA page_count").fetchone()[0]
    except sqlite3.Error as exc:
        raise ArtifactError(f"copying {src} with the SQLite online backup API failed: {exc} (busy or damaged "
                            "database; the flow retries)") from None
    finally:
        for conn in (source, target):
            if conn is not None:
                conn.close()
    if check != ["ok"]:
        raise IncompleteArtifactError(f"the copy of {src} fails PRAGMA integrity_check: "
                                      f"{'; '.join(map(str, check[:5]))}")
    return SqliteCopy(tables=tables, pages=pages)
