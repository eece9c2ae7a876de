"""An in-memory stand-in for the Grafana 10/11 HTTP API (contracts §1), stdlib only.

It models what the backup/restore client relies on, with Grafana's status codes and
``{"message": …}`` error bodies:

- auth: basic (``users``) and ``Bearer`` service-account tokens (``tokens``: token → role
  ``Admin``/``Editor``/``Viewer``); none or a wrong one → 401 with Grafana's 401 body;
  a Viewer gets 403 on every write and on datasources / alert provisioning (Admin-only
  by default); ``/api/health`` needs no auth;
- ``GET /api/search`` (``type``, ``query``, ``limit`` default 1000, max 5000, invalid →
  1000, ``page`` from 1; a bare array; ``folderId``/``folderUid``/``folderTitle``/
  ``folderUrl`` only for dashboards in a folder; sorted by title);
- ``GET /api/dashboards/uid/:uid`` (404 ``{"message":"Dashboard not found"}``),
  ``POST /api/dashboards/db`` (``id`` must be null/absent to create; uid kept or
  generated; ``overwrite``; 412 ``version-mismatch``/``name-exists``/``plugin-dashboard``
  with ``status``; ``folderUid`` beats ``folderId``; without a folder → root);
- folders, nested: ``GET /api/folders`` (roots, or the children of ``parentUid``; paged),
  ``GET/PUT /api/folders/:uid``, ``POST /api/folders`` (409/412 by version for an existing uid, 409 for a
  sibling with the same title);
- ``GET /api/datasources`` (the list DTO: no ``secureJsonFields``), ``GET
  /api/datasources/uid/:uid``, ``POST /api/datasources`` (409 on a taken name);
- ``GET/POST /api/v1/provisioning/alert-rules`` (201; 409 for an existing uid; provenance
  ``api`` unless ``X-Disable-Provenance``), ``PUT …/alert-rules/:uid``.

Per version (``GrafanaStandin(version="10.1.5")``; ``/api/health`` reports it; contracts §1):

- ``POST /api/folders`` with a uid that exists: 412 ``version-mismatch`` before 10.3, 409 from 10.3;
- ``POST /api/v1/provisioning/alert-rules`` with a uid that exists: 500 before 10.3, 400 on
  10.3–10.4, 409 from 11.0;
- always: the datasource list (``DataSourceListItemDTO``) has no ``secureJsonFields``,
  ``basicAuthUser`` or ``withCredentials`` — only ``GET /api/datasources/uid/:uid`` has them;
  ``GET /api/v1/provisioning/alert-rules/:uid``; ``GET/PUT
  /api/v1/provisioning/folder/:folderUid/rule-groups/:group`` (a rule's own ``interval`` is
  ignored on create: a new group evaluates every 60 s);
- library panels (``/api/library-elements``), contact points
  (``/api/v1/provisioning/contact-points``, secure settings answered as ``[REDACTED]``) and the
  notification policy tree (``/api/v1/provisioning/policies``); from 11.0 a rule whose
  ``notification_settings.receiver`` names no contact point is refused with 400.

Faults for tests: ``faults["dashboard:<uid>"] = 500`` (or 404) breaks that dashboard's
GET; ``faults["save:<uid>"] = "version-mismatch"`` answers its save with that 412.
``requests`` logs ``(method, path, json body)``.
"""

from __future__ import annotations

import base64
import copy
import http.server
import itertools
import json
import re
import secrets
import threading
import urllib.parse
from typing import Any

VERSION = "11.3.0"
DEFAULT_POLICY = {"receiver": "grafana-default-email", "group_by": ["grafana_folder", "alertname"]}
#: contact-point settings Grafana stores encrypted and answers as "[REDACTED]" (per type, the ones used here)
SECURE_SETTINGS = {"slack": ("url", "token"), "webhook": ("password", "authorization_credentials"),
                   "email": (), "pagerduty": ("integrationKey",)}
REDACTED = "[REDACTED]"
UNAUTHORIZED = {"extra": None, "message": "Unauthorized", "messageId": "auth.unauthorized", "statusCode": 401,
                "traceID": ""}


class GrafanaError(Exception):
    def __init__(self, code: int, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.payload = code, {"message": message, **extra}


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "-"


def _limit(raw: str | None) -> int:
    try:
        n = int(raw or "")
    except ValueError:
        return 1000
    if n <= 0:
        return 1000
    return min(n, 5000)


def _page(raw: str | None) -> int:
    try:
        return max(1, int(raw or "1"))
    except ValueError:
        return 1


class GrafanaStandin:
    """The server state plus a ThreadingHTTPServer on 127.0.0.1 (``start()``/``stop()``)."""

    def __init__(self, *, users: dict[str, str] | None = None, tokens: dict[str, str] | None = None,
                 port: int = 0, version: str = VERSION):
        self.version = version
        self.vt = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
        self.users = users or {}
        self.tokens = tokens or {}
        self.port = port
        self.lock = threading.RLock()
        self.faults: dict[str, Any] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self._ids = itertools.count(1)
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self.wipe()

    def wipe(self) -> None:
        """Forget every folder, dashboard, datasource and alert rule (a fresh Grafana)."""
        with self.lock:
            self.folders: dict[str, dict] = {}
            self.dashboards: dict[str, dict] = {}     # uid → {"model", "folderUid", "version", "id", …}
            self.datasources: dict[str, dict] = {}    # uid → datasource incl. secureJsonData
            self.rules: dict[str, dict] = {}
            self.intervals: dict[tuple[str, str], int] = {}   # (folderUid, group) → seconds
            self.library: dict[str, dict] = {}                # uid → library element
            # uid → contact point incl. its secrets; every org starts with the default email one, whose uid
            # is generated per install [U] — so a restore onto another Grafana meets it under another uid
            default_uid = secrets.token_hex(7)
            self.contact_points: dict[str, dict] = {default_uid: {
                "uid": default_uid, "name": DEFAULT_POLICY["receiver"], "type": "email",
                "settings": {"addresses": "<example@email.com>"}, "disableResolveMessage": False}}
            self.policies: dict = dict(DEFAULT_POLICY)

    # -- life cycle ------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GrafanaStandin:
        srv = self

        class Handler(_Handler):
            standin = srv

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()

    # -- auth ------------------------------------------------------------------------
    def role(self, header: str | None) -> str:
        if header and header.startswith("Basic "):
            try:
                user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                raise GrafanaError(401, "Unauthorized") from None
            if user in self.users and secrets.compare_digest(self.users[user], pw):
                return "Admin"
        elif header and header.startswith("Bearer "):
            role = self.tokens.get(header[7:])
            if role:
                return role
        raise GrafanaError(401, "Unauthorized")

    # -- helpers ---------------------------------------------------------------------
    def _folder_url(self, f: dict) -> str:
        return f"/dashboards/f/{f['uid']}/{_slug(f['title'])}"

    def _parents(self, uid: str | None) -> list[dict]:
        chain = []
        while uid and uid in self.folders and len(chain) < 64:
            chain.append(self.folders[uid])
            uid = self.folders[uid]["parentUid"]
        return list(reversed(chain))

    def _folder_obj(self, f: dict) -> dict:
        obj = {"id": f["id"], "uid": f["uid"], "title": f["title"], "url": self._folder_url(f), "hasAcl": False,
               "canSave": True, "canEdit": True, "canAdmin": True, "createdBy": "admin", "created": "2026-11-23T00:00:00Z",
               "updatedBy": "admin", "updated": "2026-11-23T00:00:00Z", "version": f["version"]}
        if f["parentUid"]:
            obj["parentUid"] = f["parentUid"]
            obj["parents"] = [{"uid": p["uid"], "title": p["title"], "id": p["id"]} for p in self._parents(f["parentUid"])]
        return obj

    def _hit(self, d: dict) -> dict:
        m = d["model"]
        hit = {"id": d["id"], "uid": m["uid"], "title": m["title"], "uri": f"db/{_slug(m['title'])}",
               "url": f"/d/{m['uid']}/{_slug(m['title'])}", "slug": "", "type": "dash-db",
               "tags": list(m.get("tags") or []), "isStarred": False, "sortMeta": 0}
        f = self.folders.get(d["folderUid"] or "")
        if f:
            hit.update(folderId=f["id"], folderUid=f["uid"], folderTitle=f["title"], folderUrl=self._folder_url(f))
        return hit

    @classmethod
    def _ds_list_item(cls, ds: dict) -> dict:
        """``DataSourceListItemDTO``: no secureJsonFields, basicAuthUser, withCredentials."""
        return {k: v for k, v in cls._ds_public(ds).items()
                if k not in ("secureJsonFields", "basicAuthUser", "withCredentials")}

    @staticmethod
    def _ds_public(ds: dict) -> dict:
        out = {k: copy.deepcopy(v) for k, v in ds.items() if k != "secureJsonData"}
        out["secureJsonFields"] = {k: True for k in ds.get("secureJsonData") or {}}
        return out

    # -- dispatch --------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, str], body: Any, headers) -> tuple[int, Any]:
        if path == "/api/health" and method == "GET":
            return 200, {"commit": "standin", "database": "ok", "version": self.version}
        role = self.role(headers.get("Authorization"))
        if method != "GET" and role == "Viewer":
            raise GrafanaError(403, "You'll need additional permissions to perform this action. "
                                    "Permissions needed: dashboards:write")
        admin_only = path.startswith(("/api/datasources", "/api/v1/provisioning"))
        if admin_only and role != "Admin":
            raise GrafanaError(403, "You'll need additional permissions to perform this action. "
                                    "Permissions needed: datasources:read")
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "search"] and method == "GET":
            return 200, self.search(query)
        if parts[:3] == ["api", "dashboards", "uid"] and len(parts) == 4 and method == "GET":
            return 200, self.get_dashboard(parts[3])
        if parts == ["api", "dashboards", "db"] and method == "POST":
            return 200, self.save_dashboard(body)
        if parts == ["api", "folders"]:
            if method == "GET":
                return 200, self.list_folders(query)
            if method == "POST":
                return 200, self.create_folder(body)
        if parts[:2] == ["api", "folders"] and len(parts) == 3:
            f = self.folders.get(parts[2])
            if f is None:
                raise GrafanaError(404, "folder not found")
            if method == "GET":
                return 200, self._folder_obj(f)
            if method == "PUT":
                if not body.get("overwrite") and body.get("version") != f["version"]:
                    raise GrafanaError(412, "the folder has been changed by someone else", status="version-mismatch")
                f["title"] = body.get("title") or f["title"]
                f["version"] += 1
                return 200, self._folder_obj(f)
        if parts == ["api", "datasources"]:
            if method == "GET":
                return 200, [self._ds_list_item(d) for d in self.datasources.values()]
            if method == "POST":
                return 200, self.create_datasource(body)
        if parts[:3] == ["api", "datasources", "uid"] and len(parts) == 4 and method == "GET":
            ds = self.datasources.get(parts[3])
            if ds is None:
                raise GrafanaError(404, "Data source not found")
            return 200, self._ds_public(ds)
        if parts == ["api", "v1", "provisioning", "alert-rules"]:
            if method == "GET":
                return 200, [copy.deepcopy(r) for r in self.rules.values()]
            if method == "POST":
                return 201, self.create_rule(body, headers)
        if parts[:4] == ["api", "v1", "provisioning", "alert-rules"] and len(parts) == 5:
            if parts[4] not in self.rules:
                raise GrafanaError(404, "rule not found")
            if method == "GET":
                return 200, copy.deepcopy(self.rules[parts[4]])
            if method == "PUT":
                return 200, self.create_rule({**body, "uid": parts[4]}, headers, update=True)
        if parts[:4] == ["api", "v1", "provisioning", "folder"] and len(parts) == 7 and parts[5] == "rule-groups" \
                and method in ("GET", "PUT"):
            return 200, self.rule_group(method, parts[4], parts[6], body, headers)
        if parts == ["api", "library-elements"]:
            if method == "GET":
                return 200, self.library_elements(query)
            if method == "POST":
                return 200, self.create_library_element(body)
        if parts[:2] == ["api", "library-elements"] and len(parts) == 3:
            if method == "GET":
                if parts[2] not in self.library:
                    raise GrafanaError(404, "library element could not be found")
                return 200, {"result": copy.deepcopy(self.library[parts[2]])}
            if method == "PATCH":
                return 200, self.patch_library_element(parts[2], body)
        if parts == ["api", "v1", "provisioning", "contact-points"]:
            if method == "GET":
                return 200, [self._cp_public(c) for c in self.contact_points.values()]
            if method == "POST":
                return 202, self.save_contact_point(body)
        if parts[:4] == ["api", "v1", "provisioning", "contact-points"] and len(parts) == 5 and method == "PUT":
            if parts[4] not in self.contact_points:
                raise GrafanaError(404, "contact point not found")
            return 202, self.save_contact_point(body, parts[4])
        if parts == ["api", "v1", "provisioning", "policies"]:
            if method == "GET":
                return 200, copy.deepcopy(self.policies)
            if method == "PUT":
                return 202, self.put_policies(body)
        raise GrafanaError(404, "Not found")

    # -- search / dashboards ---------------------------------------------------------
    def search(self, q: dict[str, str]) -> list[dict]:
        typ = q.get("type")
        hits: list[dict] = []
        if typ in (None, "", "dash-folder"):
            for f in self.folders.values():
                hit = {"id": f["id"], "uid": f["uid"], "title": f["title"], "uri": f"db/{_slug(f['title'])}",
                       "url": self._folder_url(f), "slug": "", "type": "dash-folder", "tags": [],
                       "isStarred": False, "sortMeta": 0}
                p = self.folders.get(f["parentUid"] or "")
                if p:
                    hit.update(folderId=p["id"], folderUid=p["uid"], folderTitle=p["title"],
                               folderUrl=self._folder_url(p))
                hits.append(hit)
        if typ in (None, "", "dash-db"):
            hits.extend(self._hit(d) for d in self.dashboards.values())
        if q.get("query"):
            hits = [h for h in hits if q["query"].lower() in h["title"].lower()]
        hits.sort(key=lambda h: (h["title"].lower(), h["uid"]))
        limit, page = _limit(q.get("limit")), _page(q.get("page"))
        return hits[(page - 1) * limit: page * limit]

    def get_dashboard(self, uid: str) -> dict:
        fault = self.faults.get(f"dashboard:{uid}")
        if fault == 404 or uid not in self.dashboards:
            raise GrafanaError(404, "Dashboard not found")
        if fault:
            raise GrafanaError(int(fault), "Internal Server Error")
        d = self.dashboards[uid]
        m = copy.deepcopy(d["model"])
        m["id"], m["version"] = d["id"], d["version"]
        f = self.folders.get(d["folderUid"] or "")
        meta = {"type": "db", "canSave": True, "canEdit": True, "canAdmin": True, "canStar": True,
                "canDelete": True, "slug": _slug(m["title"]), "url": f"/d/{uid}/{_slug(m['title'])}",
                "expires": "0001-01-01T00:00:00Z", "created": "2026-11-23T00:00:00Z",
                "updated": "2026-11-23T00:00:00Z", "updatedBy": "admin", "createdBy": "admin",
                "version": d["version"], "hasAcl": False, "isFolder": False,
                "folderId": f["id"] if f else 0, "folderUid": f["uid"] if f else "",
                "folderTitle": f["title"] if f else "General", "folderUrl": self._folder_url(f) if f else "",
                "provisioned": d.get("provisioned", False), "provisionedExternalId": ""}
        return {"dashboard": m, "meta": meta}

    def save_dashboard(self, body: Any) -> dict:
        if not isinstance(body, dict) or not isinstance(body.get("dashboard"), dict):
            raise GrafanaError(400, "bad request data")
        model = copy.deepcopy(body["dashboard"])
        title = model.get("title")
        if not title or not isinstance(title, str):
            raise GrafanaError(400, "Dashboard title cannot be empty")
        overwrite = bool(body.get("overwrite"))
        folder_uid = body.get("folderUid")
        if not folder_uid and body.get("folderId"):
            folder_uid = next((f["uid"] for f in self.folders.values() if f["id"] == body["folderId"]), None)
            if folder_uid is None:
                raise GrafanaError(400, "folder not found")
        if folder_uid and folder_uid not in self.folders:
            raise GrafanaError(400, "folder not found")
        folder_uid = folder_uid or ""
        uid = model.get("uid") or secrets.token_hex(7)
        did = model.get("id")
        existing = self.dashboards.get(uid)
        if did is not None:
            by_id = next((d for d in self.dashboards.values() if d["id"] == did), None)
            if by_id is None:
                raise GrafanaError(404, "Dashboard not found")
            if existing is None:
                existing = by_id
        fault = self.faults.get(f"save:{uid}")
        if fault:
            raise GrafanaError(412, f"fault injected: {fault}", status=fault)
        same_title = next((d for d in self.dashboards.values() if d["folderUid"] == folder_uid
                           and d["model"]["title"].lower() == title.lower() and d["model"]["uid"] != uid), None)
        if same_title is not None:
            if not overwrite:
                raise GrafanaError(412, "A dashboard with the same name in the folder already exists",
                                   status="name-exists")
            existing, uid = same_title, same_title["model"]["uid"]   # Grafana takes the same-title one over
        if existing is not None:
            if existing.get("pluginId") and not overwrite:
                raise GrafanaError(412, f"The dashboard belongs to plugin {existing['pluginId']}.",
                                   status="plugin-dashboard")
            if not overwrite and model.get("version") != existing["version"]:
                raise GrafanaError(412, "The dashboard has been changed by someone else",
                                   status="version-mismatch")
            dash_id, version = existing["id"], existing["version"] + 1
            if existing["model"]["uid"] != uid:
                self.dashboards.pop(existing["model"]["uid"], None)
        else:
            dash_id, version = next(self._ids), 1
        model["uid"] = uid
        model.pop("id", None)
        model.pop("version", None)
        self.dashboards[uid] = {"model": model, "folderUid": folder_uid, "version": version, "id": dash_id}
        return {"id": dash_id, "uid": uid, "url": f"/d/{uid}/{_slug(title)}", "status": "success",
                "version": version, "slug": _slug(title)}

    # -- folders ---------------------------------------------------------------------
    def list_folders(self, q: dict[str, str]) -> list[dict]:
        parent = q.get("parentUid") or None
        if parent and parent not in self.folders:
            raise GrafanaError(404, "folder not found")
        items = [f for f in self.folders.values() if f["parentUid"] == parent]
        items.sort(key=lambda f: f["title"].lower())
        limit, page = _limit(q.get("limit")), _page(q.get("page"))
        return [{"id": f["id"], "uid": f["uid"], "title": f["title"]} for f in items[(page - 1) * limit: page * limit]]

    def create_folder(self, body: Any) -> dict:
        if not isinstance(body, dict) or not body.get("title"):
            raise GrafanaError(400, "folder title cannot be empty")
        uid = body.get("uid") or secrets.token_hex(7)
        parent = body.get("parentUid") or None
        if uid in self.folders:
            if self.vt < (10, 3):
                raise GrafanaError(412, "the folder has been changed by someone else", status="version-mismatch")
            raise GrafanaError(409, "a folder with the same uid already exists")
        if parent and parent not in self.folders:
            raise GrafanaError(400, "parent folder not found")
        if any(f["parentUid"] == parent and f["title"].lower() == body["title"].lower() for f in self.folders.values()):
            raise GrafanaError(409, "a folder with the same name already exists")
        f = {"id": next(self._ids), "uid": uid, "title": body["title"], "parentUid": parent, "version": 1}
        self.folders[uid] = f
        return self._folder_obj(f)

    # -- datasources / alert rules ---------------------------------------------------
    def create_datasource(self, body: Any) -> dict:
        if not isinstance(body, dict) or not body.get("name") or not body.get("type"):
            raise GrafanaError(400, "bad request data")
        if any(d["name"] == body["name"] for d in self.datasources.values()):
            raise GrafanaError(409, "data source with the same name already exists")
        uid = body.get("uid") or secrets.token_hex(7)
        if uid in self.datasources:
            raise GrafanaError(409, "data source with the same uid already exists")
        ds = {"id": next(self._ids), "uid": uid, "orgId": 1, "name": body["name"], "type": body["type"],
              "typeLogoUrl": f"public/app/plugins/datasource/{body['type']}/img/logo.svg",
              "access": body.get("access", "proxy"), "url": body.get("url", ""), "user": body.get("user", ""),
              "database": body.get("database", ""), "basicAuth": bool(body.get("basicAuth")),
              "basicAuthUser": body.get("basicAuthUser", ""), "withCredentials": bool(body.get("withCredentials")),
              "isDefault": bool(body.get("isDefault")), "jsonData": body.get("jsonData") or {},
              "readOnly": False, "secureJsonData": dict(body.get("secureJsonData") or {})}
        self.datasources[uid] = ds
        return {"datasource": self._ds_public(ds), "id": ds["id"], "message": "Datasource added", "name": ds["name"]}

    def create_rule(self, body: Any, headers, *, update: bool = False) -> dict:
        if not isinstance(body, dict):
            raise GrafanaError(400, "bad request data")
        missing = [k for k in ("title", "folderUID", "ruleGroup", "condition", "data") if not body.get(k)]
        if missing:
            raise GrafanaError(400, f"invalid alert rule: missing {', '.join(missing)}")
        if body["folderUID"] not in self.folders:
            raise GrafanaError(400, f"invalid alert rule: folder {body['folderUID']} does not exist")
        uid = body.get("uid") or secrets.token_hex(7)
        if not update and uid in self.rules:
            if self.vt < (10, 3):
                raise GrafanaError(500, "failed to store alert rule: UNIQUE constraint failed: alert_rule.org_id, "
                                        "alert_rule.uid")
            if self.vt < (11, 0):
                raise GrafanaError(400, "failed to store alert rule: rule with this uid already exists")
            raise GrafanaError(409, "conflict: a rule with this uid already exists")
        receiver = (body.get("notification_settings") or {}).get("receiver")
        if receiver and self.vt >= (11, 0) and not any(c["name"] == receiver for c in self.contact_points.values()):
            raise GrafanaError(400, f"invalid alert rule: receiver {receiver} does not exist")
        key = (body["folderUID"], body["ruleGroup"])
        self.intervals.setdefault(key, 60)   # the rule's own interval, if any, is ignored
        rule = {**copy.deepcopy(body), "uid": uid, "id": self.rules.get(uid, {}).get("id") or next(self._ids),
                "orgID": 1, "updated": "2026-11-23T00:00:00Z",
                "provenance": "" if headers.get("X-Disable-Provenance") else "api"}
        rule.setdefault("noDataState", "NoData")
        rule.setdefault("execErrState", "Error")
        rule.setdefault("for", "0s")
        rule.setdefault("isPaused", False)
        rule.pop("interval", None)
        self.rules[uid] = rule
        return copy.deepcopy(rule)

    def rule_group(self, method: str, folder: str, group: str, body: Any, headers) -> dict:
        key = (folder, group)
        if method == "PUT":
            if not isinstance(body, dict) or not isinstance(body.get("interval"), int) or body["interval"] <= 0:
                raise GrafanaError(400, "invalid rule group: interval must be a positive number of seconds")
            if folder not in self.folders:
                raise GrafanaError(400, f"folder {folder} does not exist")
            given = {r.get("uid") for r in body.get("rules") or [] if isinstance(r, dict)}
            for uid in [u for u, r in self.rules.items() if (r["folderUID"], r["ruleGroup"]) == key]:
                if uid not in given:
                    del self.rules[uid]   # PUT replaces the group: rules left out are deleted
            for r in body.get("rules") or []:
                self.create_rule({**r, "folderUID": folder, "ruleGroup": group}, headers,
                                 update=r.get("uid") in self.rules)
            self.intervals[key] = body["interval"]
        rules = [copy.deepcopy(r) for r in self.rules.values() if (r["folderUID"], r["ruleGroup"]) == key]
        if not rules:
            raise GrafanaError(404, "rule group not found")
        return {"title": group, "folderUid": folder, "interval": self.intervals.get(key, 60), "rules": rules}

    # -- library panels / contact points / policies ---------------------------------
    def library_elements(self, q: dict[str, str]) -> dict:
        items = sorted(self.library.values(), key=lambda e: e["name"].lower())
        limit, page = _limit(q.get("perPage")) if q.get("perPage") else 100, _page(q.get("page"))
        chunk = items[(page - 1) * limit: page * limit]
        return {"result": {"totalCount": len(items), "page": page, "perPage": limit,
                           "elements": [copy.deepcopy(e) for e in chunk]}}

    def create_library_element(self, body: Any) -> dict:
        if not isinstance(body, dict) or not body.get("name") or not isinstance(body.get("model"), dict):
            raise GrafanaError(400, "bad request data")
        uid = body.get("uid") or secrets.token_hex(7)
        if uid in self.library:
            raise GrafanaError(400, "library element with that uid already exists")
        folder = body.get("folderUid") or ""
        if folder and folder not in self.folders:
            raise GrafanaError(400, "folder not found")
        if any(e["name"] == body["name"] and e["folderUid"] == folder for e in self.library.values()):
            raise GrafanaError(400, "library element with that name already exists")
        e = {"id": next(self._ids), "orgId": 1, "uid": uid, "name": body["name"], "kind": body.get("kind", 1),
             "type": body["model"].get("type", ""), "description": body["model"].get("description", ""),
             "model": {**copy.deepcopy(body["model"]), "libraryPanel": {"uid": uid, "name": body["name"]}},
             "folderUid": folder, "version": 1, "meta": {"folderUid": folder, "connectedDashboards": 0}}
        self.library[uid] = e
        return {"result": copy.deepcopy(e)}

    def patch_library_element(self, uid: str, body: Any) -> dict:
        e = self.library.get(uid)
        if e is None:
            raise GrafanaError(404, "library element could not be found")
        if not isinstance(body, dict) or body.get("version") != e["version"]:
            raise GrafanaError(412, "the library element has been changed by someone else", status="version-mismatch")
        e.update(name=body.get("name") or e["name"], model=copy.deepcopy(body.get("model") or e["model"]),
                 folderUid=body.get("folderUid", e["folderUid"]), version=e["version"] + 1)
        return {"result": copy.deepcopy(e)}

    def _cp_public(self, cp: dict) -> dict:
        out = copy.deepcopy(cp)
        for k in SECURE_SETTINGS.get(cp["type"], ()):
            if out["settings"].get(k):
                out["settings"][k] = REDACTED
        return out

    def save_contact_point(self, body: Any, uid: str | None = None) -> dict:
        if not isinstance(body, dict) or not body.get("name") or not body.get("type") \
                or not isinstance(body.get("settings"), dict):
            raise GrafanaError(400, "invalid contact point: name, type and settings are required")
        uid = uid or body.get("uid") or secrets.token_hex(7)
        if any(REDACTED == v for v in body["settings"].values()):
            raise GrafanaError(400, "invalid contact point: a secure setting is the redacted placeholder")
        cp = {"uid": uid, "name": body["name"], "type": body["type"], "settings": copy.deepcopy(body["settings"]),
              "disableResolveMessage": bool(body.get("disableResolveMessage"))}
        self.contact_points[uid] = cp
        return self._cp_public(cp)

    def put_policies(self, body: Any) -> dict:
        if not isinstance(body, dict) or not body.get("receiver"):
            raise GrafanaError(400, "invalid policy tree: a root receiver is required")
        names = {c["name"] for c in self.contact_points.values()} | {DEFAULT_POLICY["receiver"]}

        def receivers(node: dict):
            if node.get("receiver"):
                yield node["receiver"]
            for child in node.get("routes") or []:
                yield from receivers(child)

        missing = sorted(set(receivers(body)) - names)
        if missing:
            raise GrafanaError(400, f"invalid policy tree: receiver {missing[0]} does not exist")
        self.policies = copy.deepcopy(body)
        return {"message": "policies updated"}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1   # headers and body leave in one write (no 40 ms delayed-ACK stall per request)
    standin: GrafanaStandin

    def log_message(self, *a):
        pass

    def _serve(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                raise GrafanaError(400, "bad request data") from None
            with self.standin.lock:
                self.standin.requests.append((self.command, url.path, body))
                status, payload = self.standin.handle(self.command, url.path, query, body, self.headers)
        except GrafanaError as exc:
            status, payload = exc.status, (UNAUTHORIZED if exc.status == 401 else exc.payload)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _serve


def main() -> None:
    """Run as a process (``python tests/standins/grafana.py --port P [--pidfile F]``) until SIGTERM."""
    import argparse
    import os
    import signal

    p = argparse.ArgumentParser(description="Grafana HTTP API stand-in (in memory; admin:admin)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pidfile")
    args = p.parse_args()
    srv = GrafanaStandin(users={"admin": "admin"}, port=args.port).start()
    if args.pidfile:
        with open(args.pidfile, "w") as fh:
            fh.write(str(os.getpid()))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    stop.wait()
    srv.stop()


if __name__ == "__main__":
    main()
