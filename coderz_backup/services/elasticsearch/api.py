"""Elasticsearch's REST API as this package uses it: the client (auth, refused statuses with ES's error type), names in URLs."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING
import urllib.parse

import httpx

from ...errors import ArtifactError
from ..httpapi import HttpApi, credentials

if TYPE_CHECKING:
    from .service import ElasticsearchService

log = logging.getLogger("coderz_backup.services.elasticsearch")


_ERROR_KEEP = 600


def quote(name: str) -> str:
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


class EsClient(HttpApi):
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


def hits_total(hits: dict) -> int | None:
    t = hits.get("total")
    if isinstance(t, int):
        return t
    if isinstance(t, dict) and t.get("relation", "eq") == "eq":
        return int(t.get("value", 0))
    return None
