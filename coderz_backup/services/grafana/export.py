"""Grafana's API export (see the package docstring for the layout)."""

from __future__ import annotations

import contextlib
import json
import logging
import urllib.parse
from pathlib import Path
from typing import Any

from ...errors import ArtifactError, CoderzBackupError, IncompleteArtifactError
from ...writer import FileRecord, write_stream
from ...fingerprint import normalized
from ..base import ArtifactResult
from .api import GrafanaHTTPError, GrafanaApi
from .layout import (CONTACT_POINTS_FILE, INDEX_FILE, LIBRARY_FILE, POLICIES_FILE, RULE_GROUPS_FILE, SECRETS_NOTE,
                     VIRTUAL_FOLDERS, safe_name, secrets_to_reenter)


log = logging.getLogger("coderz_backup.services.grafana")


class ApiExport:
    """The API export: folders (parents first), dashboards by folder path, datasources, alert rules, the index."""

    def _folders(self, api: GrafanaApi) -> dict[str, dict]:
        """uid → {uid, title, parentUid}, parents before children."""
        out: dict[str, dict] = {}
        queue: list[str | None] = [None]
        while queue:
            parent = queue.pop(0)
            params = {"parentUid": parent} if parent else {}
            where = f"list the folders in {parent}" if parent else "list the folders"
            for f in api.paged("/api/folders", what=where, params=params):
                uid = f.get("uid")
                if not uid or uid in out or uid in VIRTUAL_FOLDERS:
                    continue   # a server without nested folders ignores parentUid and lists the roots again
                out[uid] = {"uid": uid, "title": f.get("title") or uid, "parentUid": parent}
                queue.append(uid)
        return out

    def _add_folder(self, api: GrafanaApi, folders: dict[str, dict], uid: str) -> None:
        """A folder a dashboard is in but the listing did not show (and its parents)."""
        f = api.json("GET", f"/api/folders/{urllib.parse.quote(uid, safe='')}", what=f"read folder {uid}")
        chain = [*(f.get("parents") or []), f]
        parent = None
        for p in chain:
            puid = p.get("uid")
            if puid and puid not in folders:
                folders[puid] = {"uid": puid, "title": p.get("title") or puid,
                                 "parentUid": p.get("parentUid") or parent}
            parent = puid

    def _search(self, api: GrafanaApi) -> list[dict]:
        hits = api.paged("/api/search", what="search dashboards", params={"type": "dash-db"})
        return [h for h in hits if h.get("type", "dash-db") == "dash-db" and h.get("uid")]

    @staticmethod
    def _folder_paths(folders: dict[str, dict]) -> dict[str, str]:
        """uid → relative folder path by safe titles (siblings made unique)."""
        used: dict[tuple[str | None, str], str] = {}
        own: dict[str, str] = {}
        for uid, f in folders.items():
            name = safe_name(f["title"])
            if name.endswith(".json"):
                name += "_"
            key = (f.get("parentUid"), name.lower())
            if key in used and used[key] != uid:
                name = safe_name(f"{f['title']}__{uid}", limit=160)
            used[(f.get("parentUid"), name.lower())] = uid
            own[uid] = name
        paths: dict[str, str] = {}

        def path(uid: str, depth: int = 0) -> str:
            if uid in paths:
                return paths[uid]
            parent = folders[uid].get("parentUid")
            if parent in folders and depth < 64:
                p = f"{path(parent, depth + 1)}/{own[uid]}"
            else:
                p = own[uid]
            paths[uid] = p
            return p

        for uid in folders:
            path(uid)
        return paths

    def _export(self, api: GrafanaApi, into: Path) -> ArtifactResult:
        c = self.config
        version = None
        with contextlib.suppress(CoderzBackupError, AttributeError):
            version = api.json("GET", "/api/health", what="read /api/health").get("version")
        hits = self._search(api)
        folders = self._folders(api)
        for h in hits:
            fuid = h.get("folderUid")
            if fuid and fuid not in folders and fuid not in VIRTUAL_FOLDERS:
                self._add_folder(api, folders, fuid)
        paths = self._folder_paths(folders)
        datasources = self._datasources(api)
        rules: list | None = None
        if c.alert_rules:
            try:
                rules = api.json("GET", "/api/v1/provisioning/alert-rules", what="export the alert rules")
            except GrafanaHTTPError as exc:
                if exc.status == 404:
                    raise ArtifactError(f"{api.where}: the alert-rule provisioning API is not there (HTTP 404); "
                                        "unified alerting is disabled or Grafana is older than 9 — set "
                                        f"services.{self.name}.alert_rules = false to back up without them") from None
                raise
            if not isinstance(rules, list):
                raise ArtifactError(f"{api.where}: the alert-rules answer is not a JSON array")
        groups = self._rule_groups(api, rules) if rules is not None else None
        library = self._library_panels(api)
        contact_points = policies = None
        if c.alert_rules:
            contact_points = api.json("GET", "/api/v1/provisioning/contact-points", what="export the contact points")
            if not isinstance(contact_points, list):
                raise ArtifactError(f"{api.where}: the contact-points answer is not a JSON array")
            policies = api.json("GET", "/api/v1/provisioning/policies", what="export the notification policies")
            if not isinstance(policies, dict):
                raise ArtifactError(f"{api.where}: the notification-policies answer is not a JSON object")

        files: list[FileRecord] = []
        index: dict[str, str] = {}
        base = f"{self.name}/dashboards"
        for n, hit in enumerate(hits, 1):
            uid = hit["uid"]
            title = hit.get("title") or uid
            try:
                obj = api.json("GET", f"/api/dashboards/uid/{urllib.parse.quote(uid, safe='')}",
                               what=f"read dashboard {title!r} (uid {uid})")
            except ArtifactError as exc:
                raise IncompleteArtifactError(
                    f"{self.name}: partial export: search listed {len(hits)} dashboards, {n - 1} exported, then "
                    f"dashboard {title!r} (uid {uid}) could not be read: {exc}") from None
            dash = obj.get("dashboard") if isinstance(obj, dict) else None
            if not isinstance(dash, dict) or dash.get("uid") != uid:
                raise IncompleteArtifactError(f"{self.name}: partial export: dashboard {title!r} (uid {uid}) "
                                              "came back without its model (no dashboard.uid)")
            meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
            fuid = meta.get("folderUid") or hit.get("folderUid") or ""
            obj["meta"] = {**meta, "folderUid": fuid}
            folder = paths.get(fuid) if fuid else None
            rel = f"{base}/{folder}/{safe_name(uid)}.json" if folder else f"{base}/{safe_name(uid)}.json"
            if rel in index.values():
                rel = rel[: -len(".json")] + f"__{n}.json"
            files.append(write_stream(into, rel, [json.dumps(obj, indent=1, ensure_ascii=False).encode()]))
            index[uid] = rel[len(self.name) + 1:]
        folder_list = [{**f, "path": paths[uid]} for uid, f in folders.items()]
        files.append(self._write_json(into, "folders.json", folder_list))
        files.append(self._write_json(into, "datasources.json", datasources))
        if rules is not None:
            files.append(self._write_json(into, "alert-rules.json", rules))
            files.append(self._write_json(into, RULE_GROUPS_FILE, groups))
        if library is not None:
            files.append(self._write_json(into, LIBRARY_FILE, library))
        if contact_points is not None:
            files.append(self._write_json(into, CONTACT_POINTS_FILE, contact_points))
            files.append(self._write_json(into, POLICIES_FILE, policies))
        counts = {"dashboards": len(index), "folders": len(folder_list), "datasources": len(datasources),
                  "alert_rules": len(rules) if rules is not None else None,
                  "rule_groups": len(groups) if groups is not None else None,
                  "library_panels": len(library) if library is not None else None,
                  "contact_points": len(contact_points) if contact_points is not None else None}
        files.append(self._write_json(into, INDEX_FILE, {
            "format": 1, "grafana_version": version, "url": c.url, "org_id": c.org_id,
            "counts": counts, "dashboards": index}))
        details = {"url": c.url, **counts, "grafana_version": version, "datasource_secrets": SECRETS_NOTE}
        need = secrets_to_reenter(datasources, contact_points or [])
        if need:
            details["secrets_to_reenter"] = need
        if rules is None:
            details["alert_rules"] = "not exported (alert_rules = false)"
        return ArtifactResult.from_files(self.name, self.kind, self.export_path, files,
                                         summary=f"Grafana dashboards exported: {len(index)} files",
                                         details=details,
                                         fingerprint=normalized({k: v for k, v in counts.items() if v is not None}))

    @staticmethod
    def _datasources(api: GrafanaApi) -> list[dict]:
        """Each datasource as ``GET /api/datasources/uid/:uid`` answers it: the list
        (``DataSourceListItemDTO``) has no ``secureJsonFields``, ``basicAuthUser`` or ``withCredentials``."""
        listed = api.json("GET", "/api/datasources", what="list the datasources")
        if not isinstance(listed, list):
            raise ArtifactError(f"{api.where}: /api/datasources did not return a JSON array")
        out: list[dict] = []
        for item in listed:
            if not isinstance(item, dict) or not item.get("uid"):
                continue
            got = api.call("GET", f"/api/datasources/uid/{urllib.parse.quote(item['uid'], safe='')}",
                           what=f"read datasource {item.get('name') or item['uid']!r}", ok=(200, 404))
            full = None
            if got.status_code == 200:
                with contextlib.suppress(ValueError):
                    full = got.json()
            # 404: deleted between the list and the read — keep what the list said
            out.append({k: v for k, v in full.items() if k != "secureJsonData"} if isinstance(full, dict) else item)
        return out

    @staticmethod
    def _rule_groups(api: GrafanaApi, rules: list) -> list[dict]:
        """``{folderUid, title, interval}`` of every group the rules are in (creating a rule ignores it)."""
        seen: list[tuple[str, str]] = []
        for r in rules:
            if isinstance(r, dict) and r.get("folderUID") and r.get("ruleGroup"):
                key = (r["folderUID"], r["ruleGroup"])
                if key not in seen:
                    seen.append(key)
        out = []
        for folder, group in seen:
            g = api.json("GET", f"/api/v1/provisioning/folder/{urllib.parse.quote(folder, safe='')}/rule-groups/"
                                f"{urllib.parse.quote(group, safe='')}", what=f"read rule group {group!r}")
            interval = g.get("interval") if isinstance(g, dict) else None
            if not isinstance(interval, int):
                raise ArtifactError(f"{api.where}: rule group {group!r} in folder {folder}: no interval in the answer")
            out.append({"folderUid": folder, "title": group, "interval": interval})
        return out

    @staticmethod
    def _library_panels(api: GrafanaApi) -> list[dict]:
        """Every library panel (``kind=1``), ``GET /api/library-elements`` paged by ``perPage``/``page``."""
        out: list[dict] = []
        page, per = 1, 100
        while True:
            obj = api.json("GET", "/api/library-elements", what="list the library panels",
                           params={"kind": 1, "perPage": per, "page": page})
            res = obj.get("result") if isinstance(obj, dict) else None
            elems = res.get("elements") if isinstance(res, dict) else None
            if not isinstance(elems, list):
                raise ArtifactError(f"{api.where}: /api/library-elements: no result.elements in the answer")
            out.extend(e for e in elems if isinstance(e, dict) and e.get("uid"))
            total = res.get("totalCount")
            if len(elems) < per or (isinstance(total, int) and len(out) >= total) or page > 10000:
                return out
            page += 1

    def fingerprint_live(self) -> dict:
        """``dashboards``, ``folders``, ``datasources`` (and ``alert_rules`` when exported) as the export
        lists them through the API."""
        c = self.config
        with self.http_api(self, read_timeout=min(c.timeout_s, 300.0)) as api:
            hits = self._search(api)
            folders = self._folders(api)
            for h in hits:
                fuid = h.get("folderUid")
                if fuid and fuid not in folders and fuid not in VIRTUAL_FOLDERS:
                    self._add_folder(api, folders, fuid)
            out = {"dashboards": len(hits), "folders": len(folders),
                   "datasources": len(api.json("GET", "/api/datasources", what="list the datasources"))}
            if c.alert_rules:
                rules = api.json("GET", "/api/v1/provisioning/alert-rules", what="list the alert rules")
                out["alert_rules"] = len(rules)
                out["rule_groups"] = len({(r.get("folderUID"), r.get("ruleGroup")) for r in rules
                                          if isinstance(r, dict) and r.get("folderUID") and r.get("ruleGroup")})
                out["contact_points"] = len(api.json("GET", "/api/v1/provisioning/contact-points",
                                                     what="list the contact points"))
            out["library_panels"] = len(self._library_panels(api))
        return normalized(out)

    def _write_json(self, into: Path, fname: str, obj: Any) -> FileRecord:
        return write_stream(into, f"{self.name}/{fname}",
                            [json.dumps(obj, indent=1, ensure_ascii=False).encode()])
