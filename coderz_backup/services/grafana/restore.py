"""Grafana's API restore (``restore_from = "api"``)."""

from __future__ import annotations

import contextlib
import logging
import urllib.parse
from typing import Any

from ...errors import ArtifactError, RestoreError, VerifyError
from ...reader import ArtifactPath
from .api import GrafanaApi, error_message
from .layout import (CONTACT_POINTS_FILE, DATASOURCE_FIELDS, INDEX_FILE, LIBRARY_FILE, POLICIES_FILE, REDACTED,
                     RULE_GROUPS_FILE)


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
        def optional(fname: str, default: Any) -> Any:   # files a snapshot from before issue 19 lacks
            return self._read_json(root / fname, fname, RestoreError) if (root / fname).exists() else default

        alerting = self.config.alert_rules
        groups = optional(RULE_GROUPS_FILE, []) if alerting else []
        library = optional(LIBRARY_FILE, None)
        contact_points = optional(CONTACT_POINTS_FILE, None) if alerting else None
        policies = optional(POLICIES_FILE, None) if alerting else None
        problems: list[str] = []
        report: list[str] = []
        try:
            with GrafanaApi(self, read_timeout=120.0) as api:
                report.append(self._restore_folders(api, folders, problems))
                report.append(self._restore_datasources(api, datasources, problems))
                if library is not None:   # before the dashboards that use them
                    report.append(self._restore_library(api, library, problems))
                report.append(self._restore_dashboards(api, root, index["dashboards"], problems))
                if contact_points is not None:   # before policies and rules that name them
                    report.append(self._restore_contact_points(api, contact_points, problems))
                if policies is not None:
                    report.append(self._restore_policies(api, policies, problems))
                if alerting:
                    report.append(self._restore_rules(api, rules, problems))
                    if groups:
                        report.append(self._restore_groups(api, groups, problems))
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
            # an existing uid answers 409 from 10.3 but 412 version-mismatch on 10.0-10.2: ask, do not guess
            got = api.call("GET", f"/api/folders/{urllib.parse.quote(uid, safe='')}",
                           what=f"read folder {title!r}", ok=(200, 404))
            if got.status_code == 200 or resp.status_code in (409, 412):
                if got.status_code == 200:   # whatever the POST answered, the uid is there
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
                                f"under the same parent (HTTP {resp.status_code}: {error_message(resp.content)}); rename or delete it "
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
            # re-creating an existing uid answers 500, 400 or 409 depending on the version: look it up first
            qid = urllib.parse.quote(uid, safe="") if uid else ""
            exists = bool(uid) and api.call("GET", f"/api/v1/provisioning/alert-rules/{qid}",
                                            what=f"look up alert rule {title!r}", ok=(200, 404)).status_code == 200
            if exists:
                resp = api.call("PUT", f"/api/v1/provisioning/alert-rules/{qid}", json=body, headers=headers,
                                what=f"update alert rule {title!r}", ok=(200, 400, 404, 409))
            else:
                resp = api.call("POST", "/api/v1/provisioning/alert-rules", json=body, headers=headers,
                                what=f"create alert rule {title!r}", ok=(201, 400, 409))
            if resp.status_code in (200, 201):
                if exists:
                    updated += 1
                else:
                    created += 1
                continue
            problems.append(f"alert rule {title!r} (uid {uid}) refused (HTTP {resp.status_code}: "
                            f"{error_message(resp.content)})")
        return f"alert rules: {created} created, {updated} updated"

    def _restore_groups(self, api: GrafanaApi, groups: list[dict], problems: list[str]) -> str:
        """Each group's evaluation interval (creating a rule ignores it): GET the group, PUT it back with
        the exported interval — the PUT replaces the group, so its current rules are sent unchanged."""
        done = 0
        for g in groups:
            if not isinstance(g, dict) or not g.get("folderUid") or not g.get("title") \
                    or not isinstance(g.get("interval"), int):
                continue
            path = (f"/api/v1/provisioning/folder/{urllib.parse.quote(g['folderUid'], safe='')}/rule-groups/"
                    f"{urllib.parse.quote(g['title'], safe='')}")
            got = api.call("GET", path, what=f"read rule group {g['title']!r}", ok=(200, 404))
            if got.status_code != 200:
                problems.append(f"rule group {g['title']!r} (folder {g['folderUid']}) is not there after the rules "
                                f"were restored; its interval {g['interval']}s was not set")
                continue
            try:
                cur = got.json()
            except ValueError:
                cur = {}
            if cur.get("interval") == g["interval"]:
                done += 1
                continue
            body = {**cur, "interval": g["interval"]}
            upd = api.call("PUT", path, json=body, headers={"X-Disable-Provenance": "true"},
                           what=f"set the interval of rule group {g['title']!r}", ok=(200, 400, 404))
            if upd.status_code == 200:
                done += 1
            else:
                problems.append(f"rule group {g['title']!r}: interval {g['interval']}s not set (HTTP "
                                f"{upd.status_code}: {error_message(upd.content)})")
        return f"rule groups: {done} intervals set"

    def _restore_library(self, api: GrafanaApi, elements: list[dict], problems: list[str]) -> str:
        created = updated = 0
        for e in elements:
            if not isinstance(e, dict) or not e.get("uid") or not isinstance(e.get("model"), dict):
                continue
            uid, name = e["uid"], e.get("name") or e["uid"]
            qid = urllib.parse.quote(uid, safe="")
            model = {k: v for k, v in e["model"].items() if k != "libraryPanel"}
            folder = e.get("folderUid") or (e.get("meta") or {}).get("folderUid") or ""
            got = api.call("GET", f"/api/library-elements/{qid}", what=f"look up library panel {name!r}",
                           ok=(200, 404))
            if got.status_code == 200:
                version = None
                with contextlib.suppress(ValueError, AttributeError):
                    version = got.json()["result"]["version"]
                resp = api.call("PATCH", f"/api/library-elements/{qid}", what=f"update library panel {name!r}",
                                json={"name": name, "model": model, "kind": e.get("kind", 1), "folderUid": folder,
                                      "version": version}, ok=(200, 400, 404, 412))
                if resp.status_code == 200:
                    updated += 1
                    continue
            else:
                resp = api.call("POST", "/api/library-elements", what=f"create library panel {name!r}",
                                json={"uid": uid, "name": name, "model": model, "kind": e.get("kind", 1),
                                      "folderUid": folder}, ok=(200, 400, 404, 409))
                if resp.status_code == 200:
                    created += 1
                    continue
            problems.append(f"library panel {name!r} (uid {uid}) refused (HTTP {resp.status_code}: "
                            f"{error_message(resp.content)})")
        return f"library panels: {created} created, {updated} updated"

    def _restore_contact_points(self, api: GrafanaApi, points: list[dict], problems: list[str]) -> str:
        """Contact points; a setting exported as ``[REDACTED]`` is left out (never invented) and listed."""
        created = updated = 0
        need: list[str] = []
        listed = api.json("GET", "/api/v1/provisioning/contact-points", what="list the contact points")
        listed = [c for c in listed if isinstance(c, dict) and c.get("uid")] if isinstance(listed, list) else []
        have = {c["uid"] for c in listed}
        # the same integration under another uid (e.g. the default email point every install generates): update it
        by_name = {(c.get("name"), c.get("type")): c["uid"] for c in listed}
        headers = {"X-Disable-Provenance": "true"}
        for cp in points:
            if not isinstance(cp, dict) or not cp.get("uid"):
                continue
            settings = cp.get("settings") if isinstance(cp.get("settings"), dict) else {}
            redacted = sorted(k for k, v in settings.items() if v == REDACTED)
            body = {k: cp[k] for k in ("uid", "name", "type", "disableResolveMessage") if k in cp}
            body["settings"] = {k: v for k, v in settings.items() if v != REDACTED}
            name = cp.get("name") or cp["uid"]
            target = cp["uid"] if cp["uid"] in have else by_name.get((cp.get("name"), cp.get("type")))
            if target:
                body["uid"] = target
                resp = api.call("PUT", f"/api/v1/provisioning/contact-points/{urllib.parse.quote(target, safe='')}",
                                json=body, headers=headers, what=f"update contact point {name!r}",
                                ok=(200, 202, 400, 404))
            else:
                resp = api.call("POST", "/api/v1/provisioning/contact-points", json=body, headers=headers,
                                what=f"create contact point {name!r}", ok=(200, 202, 400, 409))
            if resp.status_code in (200, 202):
                updated += bool(target)
                created += not target
                if redacted:
                    need.append(f"{name} ({', '.join(redacted)})")
                continue
            problems.append(f"contact point {name!r} (uid {cp['uid']}) refused (HTTP {resp.status_code}: "
                            f"{error_message(resp.content)})"
                            + (f"; its secret settings {', '.join(redacted)} were not exported" if redacted else ""))
        secrets = f" (re-enter their secrets: {'; '.join(need)})" if need else ""
        return f"contact points: {created} created, {updated} updated{secrets}"

    def _restore_policies(self, api: GrafanaApi, policies: dict, problems: list[str]) -> str:
        if not isinstance(policies, dict) or not policies.get("receiver"):
            return "notification policies: none exported"
        body = {k: v for k, v in policies.items() if k != "provenance"}
        resp = api.call("PUT", "/api/v1/provisioning/policies", json=body, headers={"X-Disable-Provenance": "true"},
                        what="restore the notification policies", ok=(200, 202, 400))
        if resp.status_code in (200, 202):
            return "notification policies: restored"
        problems.append(f"notification policies refused (HTTP {resp.status_code}: {error_message(resp.content)})")
        return "notification policies: not restored"
