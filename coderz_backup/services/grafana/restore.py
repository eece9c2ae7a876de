"""Grafana's API restore (``restore_from = "api"``)."""

from __future__ import annotations

import contextlib
import logging
import re
import urllib.parse
from typing import Any

from ...errors import ArtifactError, RestoreError, VerifyError
from ...reader import ArtifactPath
from .api import GrafanaApi, error_message
from .layout import INDEX_FILE, DATASOURCE_FIELDS


log = logging.getLogger("coderz_backup.services.grafana")


class ApiRestore:
    """The API restore: folders, missing datasources, dashboards, alert rules (restore_from = "api")."""

    def _restore_api(self, dash_dir: ArtifactPath) -> str:
        root = dash_dir.parent
        try:
            self._verify_export(dash_dir)
        except VerifyError as exc:
            raise RestoreError(f"{self.name}: refusing to restore, nothing changed: {exc}") from None
        index = self._read_json(root / INDEX_FILE, INDEX_FILE, RestoreError)
        folders = self._read_json(root / "folders.json", "folders.json", RestoreError)
        datasources = self._read_json(root / "datasources.json", "datasources.json", RestoreError)
        rules = (self._read_json(root / "alert-rules.json", "alert-rules.json", RestoreError)
                 if self.config.alert_rules and (root / "alert-rules.json").exists() else [])
        problems: list[str] = []
        report: list[str] = []
        try:
            with GrafanaApi(self, read_timeout=120.0) as api:
                report.append(self._restore_folders(api, folders, problems))
                report.append(self._restore_datasources(api, datasources, problems))
                report.append(self._restore_dashboards(api, root, index["dashboards"], problems))
                if self.config.alert_rules:
                    report.append(self._restore_rules(api, rules, problems))
        except ArtifactError as exc:   # transport / auth: nothing more can be done
            raise RestoreError(f"{self.name}: {exc} (restored so far: {'; '.join(report) or 'nothing'})") from None
        done = "; ".join(report)
        if problems:
            raise RestoreError(f"{self.name}: restore incomplete, {len(problems)} problem(s): "
                               f"{' | '.join(problems[:10])} (restored: {done})")
        return done

    @staticmethod
    def _parents_first(folders: list[dict]) -> list[dict]:
        by_uid = {f["uid"]: f for f in folders if isinstance(f, dict) and f.get("uid")}
        out: list[dict] = []
        placed: set[str] = set()

        def place(f: dict, depth: int = 0) -> None:
            if f["uid"] in placed:
                return
            parent = f.get("parentUid")
            if parent in by_uid and depth < 64:
                place(by_uid[parent], depth + 1)
            placed.add(f["uid"])
            out.append(f)

        for f in by_uid.values():
            place(f)
        return out

    def _restore_folders(self, api: GrafanaApi, folders: list[dict], problems: list[str]) -> str:
        created = existing = 0
        for f in self._parents_first(folders):
            uid, title = f["uid"], f.get("title") or f["uid"]
            body = {"uid": uid, "title": title}
            if f.get("parentUid"):
                body["parentUid"] = f["parentUid"]
            resp = api.call("POST", "/api/folders", json=body, what=f"create folder {title!r}",
                            ok=(200, 400, 404, 409, 412))
            if resp.status_code == 200:
                created += 1
                continue
            if resp.status_code == 409:
                got = api.call("GET", f"/api/folders/{urllib.parse.quote(uid, safe='')}",
                               what=f"read folder {title!r}", ok=(200, 404))
                if got.status_code == 200:
                    existing += 1
                    try:
                        cur = got.json()
                    except ValueError:
                        cur = {}
                    if cur.get("title") != title:
                        upd = api.call("PUT", f"/api/folders/{urllib.parse.quote(uid, safe='')}",
                                       json={"title": title, "overwrite": True}, what=f"rename folder {uid}",
                                       ok=(200, 400, 409, 412))
                        if upd.status_code != 200:
                            problems.append(f"folder {title!r} (uid {uid}) exists as {cur.get('title')!r} and "
                                            f"could not be renamed: {error_message(upd.content)}")
                    continue
                problems.append(f"folder {title!r} (uid {uid}): another folder with that title already exists "
                                f"under the same parent (HTTP 409: {error_message(resp.content)}); rename or delete it "
                                "and restore again")
                continue
            problems.append(f"folder {title!r} (uid {uid}) not created (HTTP {resp.status_code}: "
                            f"{error_message(resp.content)})")
        return f"folders: {created} created, {existing} already there"

    def _restore_datasources(self, api: GrafanaApi, datasources: list[dict], problems: list[str]) -> str:
        created: list[str] = []
        existing = 0
        for ds in datasources:
            if not isinstance(ds, dict) or not ds.get("uid"):
                continue
            name = ds.get("name") or ds["uid"]
            got = api.call("GET", f"/api/datasources/uid/{urllib.parse.quote(ds['uid'], safe='')}",
                           what=f"read datasource {name!r}", ok=(200, 404))
            if got.status_code == 200:
                existing += 1
                continue
            body = {k: ds[k] for k in DATASOURCE_FIELDS if k in ds}
            resp = api.call("POST", "/api/datasources", json=body, what=f"create datasource {name!r}",
                            ok=(200, 400, 409))
            if resp.status_code == 200:
                created.append(name)
            elif resp.status_code == 409:
                problems.append(f"datasource {name!r} (uid {ds['uid']}): a datasource with that name but another "
                                "uid exists; dashboards using this uid will not find it — rename one of them")
            else:
                problems.append(f"datasource {name!r} not created (HTTP 400: {error_message(resp.content)})")
        need = [ds.get("name") for ds in datasources if isinstance(ds, dict) and ds.get("name") in created
                and any((ds.get("secureJsonFields") or {}).values())]
        secrets = f" (re-enter their secrets: {', '.join(need)})" if need else ""
        return f"datasources: {len(created)} created{secrets}, {existing} already there"

    def _restore_dashboards(self, api: GrafanaApi, root: ArtifactPath, table: dict[str, str], problems: list[str]) -> str:
        created = updated = provisioned = 0
        for uid, rel in table.items():
            obj = self._read_json(root / rel, rel, RestoreError)
            dash = dict(obj["dashboard"])
            meta = obj.get("meta") or {}
            title = dash.get("title") or uid
            if meta.get("provisioned"):
                provisioned += 1   # Grafana re-creates it from its provisioning file (the configs backup)
                continue
            dash["id"] = None
            body: dict[str, Any] = {"dashboard": dash, "overwrite": True, "message": "restored by coderz-backup"}
            if meta.get("folderUid"):
                body["folderUid"] = meta["folderUid"]
            qid = urllib.parse.quote(uid, safe="")
            before = api.call("GET", f"/api/dashboards/uid/{qid}", what=f"look up dashboard {title!r}",
                              ok=(200, 404))
            resp = api.call("POST", "/api/dashboards/db", json=body, what=f"save dashboard {title!r}",
                            ok=(200, 400, 404, 412))
            if resp.status_code == 412:
                err = api.refused(resp, "save")
                hint = {"version-mismatch": "it was changed on the server meanwhile",
                        "name-exists": "another dashboard with this title is in the same folder; rename or delete it",
                        "plugin-dashboard": "it belongs to a plugin; remove or update it through the plugin"
                        }.get(err.reason, "")
                problems.append(f"dashboard {title!r} (uid {uid}) refused (HTTP 412 {err.reason}: {err.text})"
                                + (f": {hint}" if hint else ""))
                continue
            if resp.status_code != 200:
                problems.append(f"dashboard {title!r} (uid {uid}) refused (HTTP {resp.status_code}: "
                                f"{error_message(resp.content)})")
                continue
            got_uid = None
            with contextlib.suppress(ValueError, AttributeError):
                got_uid = resp.json().get("uid")
            if got_uid and got_uid != uid:
                problems.append(f"dashboard {title!r} was saved over the same-title dashboard uid {got_uid}, not "
                                f"as uid {uid}; links to /d/{uid} will not work — rename one and restore again")
            if before.status_code == 200:
                updated += 1
            else:
                created += 1
        skipped = f", {provisioned} provisioned left to their provisioning files" if provisioned else ""
        return f"dashboards: {created} created, {updated} updated{skipped}"

    def _restore_rules(self, api: GrafanaApi, rules: list[dict], problems: list[str]) -> str:
        created = updated = 0
        headers = {"X-Disable-Provenance": "true"}
        for rule in rules:
            if not isinstance(rule, dict):
                continue
            uid = rule.get("uid")
            title = rule.get("title") or uid
            body = {k: v for k, v in rule.items() if k not in ("id", "updated", "provenance")}
            resp = api.call("POST", "/api/v1/provisioning/alert-rules", json=body, headers=headers,
                            what=f"create alert rule {title!r}", ok=(201, 400, 409))
            if resp.status_code == 201:
                created += 1
                continue
            text = error_message(resp.content)
            if uid and (resp.status_code == 409 or re.search(r"exist|conflict|unique", text, re.IGNORECASE)):
                upd = api.call("PUT", f"/api/v1/provisioning/alert-rules/{urllib.parse.quote(uid, safe='')}",
                               json=body, headers=headers, what=f"update alert rule {title!r}", ok=(200, 400, 404))
                if upd.status_code == 200:
                    updated += 1
                    continue
                text = error_message(upd.content)
            problems.append(f"alert rule {title!r} (uid {uid}) refused (HTTP {resp.status_code}: {text})")
        return f"alert rules: {created} created, {updated} updated"
