"""Grafana's HTTP API as this package uses it: the client (auth, refused statuses explained) and paging."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import TYPE_CHECKING

import httpx

from ...errors import ArtifactError
from ..httpapi import HttpApi, credentials

if TYPE_CHECKING:
    from .service import GrafanaService

log = logging.getLogger("coderz_backup.services.grafana")


_ERROR_KEEP = 8192


def error_message(body: bytes) -> str:
    try:
        obj = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:300] or "(empty body)"
    if isinstance(obj, dict):
        return str(obj.get("message") or obj.get("error") or obj)[:300]
    return str(obj)[:300]


class GrafanaHTTPError(ArtifactError):
    """An HTTP error answer of Grafana (``status`` and the body's ``status`` field kept)."""

    def __init__(self, message: str, status: int, reason: str = "", text: str = ""):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.text = text


class GrafanaApi(HttpApi):
    """HTTP to Grafana; every failure becomes an ArtifactError that says what to do."""

    product = "Grafana"

    def __init__(self, svc: GrafanaService, *, read_timeout: float = 60.0, auth_required: bool = True):
        c = svc.config
        headers = {"Accept": "application/json"}
        if c.org_id:
            headers["X-Grafana-Org-Id"] = str(c.org_id)
        login, auth, who = credentials(svc, token_field="token", scheme="Bearer",
                                       token_who="the service-account token")
        headers.update(login)
        if who is None and auth_required:
            raise ArtifactError(f"{svc.name}: no credentials: set services.{svc.name}.token (a service-account "
                                "token with the Admin role) or user + password")
        super().__init__(svc, headers=headers, auth=auth, who=who or "anonymous access", read_timeout=read_timeout)

    def refused(self, resp: httpx.Response, what: str) -> GrafanaHTTPError:
        body = resp.content[:_ERROR_KEEP]
        text = error_message(body)
        reason = ""
        with contextlib.suppress(ValueError, AttributeError):
            reason = str(json.loads(body).get("status") or "")
        s = resp.status_code
        name = self.svc.name
        if s == 401:
            msg = (f"{self.where}: {self.who} was rejected (HTTP 401: {text}) while trying to {what}; check "
                   f"services.{name}.token (a service-account token; legacy API keys are gone) or user/password")
        elif s == 403:
            msg = (f"{self.where}: {self.who} lacks permission to {what} (HTTP 403: {text}); give the service "
                   "account (or user) the Admin role of the org — datasources and alert rules need it, and a "
                   "restore needs write access")
        else:
            msg = f"{self.where}: {what} failed (HTTP {s}): {text}"
        return GrafanaHTTPError(msg, s, reason, text)

    def paged(self, path: str, *, what: str, params: dict | None = None) -> list[dict]:
        """Every item of a ``limit``/``page`` list (stops at a short page)."""
        limit = self.svc.config.page_size
        out: list[dict] = []
        seen: set = set()
        page = 1
        while True:
            batch = self.json("GET", path, what=what, params={**(params or {}), "limit": limit, "page": page})
            if not isinstance(batch, list):
                raise ArtifactError(f"{self.where}: {what}: expected a JSON array, got {type(batch).__name__}")
            fresh = [h for h in batch if isinstance(h, dict) and (h.get("uid"), h.get("id")) not in seen]
            if batch and not fresh:
                raise ArtifactError(f"{self.where}: {what}: page {page} repeats earlier results (paging is not "
                                    "honoured); set page_size to 5000 or more than the number of items")
            for h in fresh:
                seen.add((h.get("uid"), h.get("id")))
            out.extend(fresh)
            if len(batch) < limit:
                return out
            page += 1
