"""Grafana service: API export (paged search, nested folders), consistent data tarball,
verify, restore (api and volume).

No Grafana is installable here, so the tests talk to the stand-in of
``tests/standins/grafana.py`` (contracts §1). With ``CODERZ_TEST_REGISTRY`` set (e.g.
``docker.io``) the same tests run against the official ``grafana/grafana`` image through
testcontainers (admin:admin basic auth, host network on a free 127.0.0.1 port); tests
that need a stand-in fault or hook are skipped there.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from coderz_backup.tarfile_compat import tarfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from standins.grafana import GrafanaStandin

from coderz_backup.access import LocalAccess
from coderz_backup.services.grafana import GrafanaConfig
from coderz_backup.errors import (
    ArtifactError,
    IncompleteArtifactError,
    PartialBackupError,
    RestoreError,
    VerifyError,
)
from coderz_backup.sandbox import free_port
from coderz_backup.services import REGISTRY, expected_artifacts
from coderz_backup.services.grafana import GrafanaService, safe_name
from helpers import refused_port

REGISTRY_HOST = os.environ.get("CODERZ_TEST_REGISTRY")
GRAFANA_IMAGE = "grafana/grafana:11.3.0"
STANDIN_ONLY = pytest.mark.skipif(bool(REGISTRY_HOST), reason="needs a stand-in fault or hook")
ADMIN_TOKEN = "glsa_coderzAdminToken_0123456789abcdef"
VIEWER_TOKEN = "glsa_coderzViewerToken_0123456789abcd"
DS_SECRET = "prom-basic-auth-secret-4711"
ROOT = Path(__file__).resolve().parent

# uid, title, parentUid
FOLDERS = [
    ("f-infra", "Infra", None),
    ("f-db", "Databases", "f-infra"),
    ("f-pg", "Postgres: prod", "f-db"),
    ("f-apps", "Apps", None),
    ("f-web", "Web", "f-apps"),
    ("f-slash", "Team A/B", None),
]
# uid → folder uid (None = root); 12 dashboards → 3 pages at page_size 5
DASHBOARDS = {
    "d01": None, "d02": None, "d03": "f-infra", "d04": "f-db", "d05": "f-pg", "d06": "f-pg",
    "d07": "f-apps", "d08": "f-web", "d09": "f-web", "d10": "f-slash", "d11": "f-infra", "d12": "f-db",
}


def _dashboard(uid: str) -> dict:
    n = int(uid[1:])
    return {"uid": uid, "title": f"Dashboard {n:02d} – ünïcode", "tags": ["coderz", f"t{n % 3}"],
            "schemaVersion": 39, "timezone": "utc",
            "panels": [{"id": p, "type": "timeseries", "title": f"panel {uid}.{p}",
                        "gridPos": {"h": 8, "w": 12, "x": 0, "y": 8 * p},
                        "targets": [{"refId": "A", "expr": f"up{{job=\"{uid}-{p}\"}}",
                                     "datasource": {"type": "prometheus", "uid": "ds-prom"}}]}
                       for p in range(1, 2 + n % 3)]}


def _rule(uid: str, folder: str) -> dict:
    return {"uid": uid, "title": f"rule {uid}", "folderUID": folder, "ruleGroup": "coderz", "condition": "A",
            "data": [{"refId": "A", "datasourceUid": "__expr__", "relativeTimeRange": {"from": 600, "to": 0},
                      "model": {"refId": "A", "type": "math", "expression": "1 > 0"}}],
            "noDataState": "OK", "execErrState": "Error", "for": "5m",
            "annotations": {"summary": "always firing"}, "labels": {"team": "ops"}, "isPaused": False}


class Gf:
    """One Grafana (stand-in or container) and API helpers for the tests (admin basic auth)."""

    def __init__(self, url: str, *, admin_token: str, viewer_token: str, standin: GrafanaStandin | None = None,
                 user: str = "admin", password: str = "admin"):
        self.url, self.standin = url, standin
        self.admin_token, self.viewer_token = admin_token, viewer_token
        self.user, self.password = user, password
        self.http = httpx.Client(base_url=url, auth=(user, password), timeout=60)

    def call(self, method: str, path: str, ok=(200,), **kw):
        r = self.http.request(method, path, **kw)
        assert r.status_code in ok, f"{method} {path}: {r.status_code} {r.text[:500]}"
        return r.json() if r.content else None

    def seed(self) -> None:
        for uid, title, parent in FOLDERS:
            self.call("POST", "/api/folders", json={"uid": uid, "title": title, **({"parentUid": parent} if parent else {})})
        self.call("POST", "/api/datasources", json={
            "uid": "ds-prom", "name": "Prometheus", "type": "prometheus", "access": "proxy",
            "url": "http://127.0.0.1:9090", "basicAuth": True, "basicAuthUser": "prom",
            "jsonData": {"httpMethod": "POST"}, "secureJsonData": {"basicAuthPassword": DS_SECRET}})
        self.call("POST", "/api/datasources", json={"uid": "ds-loki", "name": "Loki", "type": "loki",
                                                    "access": "proxy", "url": "http://127.0.0.1:3100"})
        for uid, folder in DASHBOARDS.items():
            self.call("POST", "/api/dashboards/db", json={"dashboard": {**_dashboard(uid), "id": None},
                                                          **({"folderUid": folder} if folder else {}),
                                                          "overwrite": False})
        for uid, folder in (("r-disk", "f-infra"), ("r-web", "f-web")):
            self.call("POST", "/api/v1/provisioning/alert-rules", json=_rule(uid, folder), ok=(201,),
                      headers={"X-Disable-Provenance": "true"})

    def folders(self, parent: str | None = None) -> dict[str, tuple]:
        out = {}
        for f in self.call("GET", "/api/folders", params={"parentUid": parent} if parent else {}):
            out[f["uid"]] = (f["title"], parent)
            out.update(self.folders(f["uid"]))
        return out

    def state(self) -> dict:
        """What a user sees: folders, dashboards, datasources, alert rules (by uid)."""
        dashboards = {}
        for hit in self.call("GET", "/api/search", params={"type": "dash-db", "limit": 5000}):
            d = self.call("GET", f"/api/dashboards/uid/{hit['uid']}")
            m = d["dashboard"]
            dashboards[m["uid"]] = {"title": m["title"], "folderUid": d["meta"].get("folderUid") or None,
                                    "panels": m.get("panels"), "tags": m.get("tags")}
        datasources = {d["uid"]: (d["name"], d["type"], d["url"]) for d in self.call("GET", "/api/datasources")}
        rules = {r["uid"]: (r["title"], r["folderUID"], r["ruleGroup"], r["condition"])
                 for r in self.call("GET", "/api/v1/provisioning/alert-rules")}
        return {"folders": self.folders(), "dashboards": dashboards, "datasources": datasources, "rules": rules}

    def wipe(self) -> None:
        if self.standin:
            self.standin.wipe()
            return
        for r in self.call("GET", "/api/v1/provisioning/alert-rules"):
            self.call("DELETE", f"/api/v1/provisioning/alert-rules/{r['uid']}", ok=(200, 204))
        for hit in self.call("GET", "/api/search", params={"type": "dash-db", "limit": 5000}):
            self.call("DELETE", f"/api/dashboards/uid/{hit['uid']}", ok=(200, 404))
        for f in self.call("GET", "/api/folders"):
            self.call("DELETE", f"/api/folders/{f['uid']}", params={"forceDeleteRules": "true"}, ok=(200, 404))
        for d in self.call("GET", "/api/datasources"):
            self.call("DELETE", f"/api/datasources/uid/{d['uid']}", ok=(200, 404))


# -- fixtures -------------------------------------------------------------------------


def _real_grafana(registry: str):
    """The official image on a free 127.0.0.1 port (host network); never pulled here."""
    from testcontainers.core.container import DockerContainer

    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
    port = free_port()
    container = (DockerContainer(f"{registry}/{GRAFANA_IMAGE}", network_mode="host")
                 .with_env("GF_SERVER_HTTP_ADDR", "127.0.0.1")
                 .with_env("GF_SERVER_HTTP_PORT", str(port))
                 .with_env("GF_SECURITY_ADMIN_USER", "admin")
                 .with_env("GF_SECURITY_ADMIN_PASSWORD", "admin")
                 .with_env("GF_ANALYTICS_REPORTING_ENABLED", "false")
                 .with_env("GF_ANALYTICS_CHECK_FOR_UPDATES", "false"))
    container.start()
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                r = httpx.get(f"{url}/api/health", timeout=5)
                if r.status_code == 200 and r.json().get("database") == "ok":
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Grafana container not ready on {url}")
            time.sleep(1)
        tokens = {}
        for role in ("Admin", "Viewer"):
            sa = httpx.post(f"{url}/api/serviceaccounts", auth=("admin", "admin"), timeout=30,
                            json={"name": f"coderz-{role.lower()}", "role": role}).json()
            tokens[role] = httpx.post(f"{url}/api/serviceaccounts/{sa['id']}/tokens", auth=("admin", "admin"),
                                      json={"name": "tests"}, timeout=30).json()["key"]
        yield Gf(url, admin_token=tokens["Admin"], viewer_token=tokens["Viewer"])
    finally:
        container.stop()


@pytest.fixture(scope="module")
def gf_server():
    if REGISTRY_HOST:
        yield from _real_grafana(REGISTRY_HOST)
        return
    srv = GrafanaStandin(users={"admin": "admin"},
                         tokens={ADMIN_TOKEN: "Admin", VIEWER_TOKEN: "Viewer"}).start()
    try:
        yield Gf(srv.url, admin_token=ADMIN_TOKEN, viewer_token=VIEWER_TOKEN, standin=srv)
    finally:
        srv.stop()


@pytest.fixture
def gf(gf_server):
    """The server with the seed data; ``gf.seeded`` holds what a user sees."""
    if gf_server.standin:
        gf_server.standin.faults.clear()
    gf_server.wipe()
    gf_server.seed()
    gf_server.seeded = gf_server.state()
    if gf_server.standin:
        gf_server.standin.requests.clear()
    return gf_server


def _svc(gf: Gf, **over) -> GrafanaService:
    data: dict = {"kind": "grafana", "url": gf.url, "token": SecretStr(gf.admin_token)}
    data.update(over)
    return GrafanaService("grafana", GrafanaConfig(**data), LocalAccess())


def _files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# -- tests ----------------------------------------------------------------------------


def test_registered_with_two_artifacts():
    assert REGISTRY["grafana"] is GrafanaService
    cfg = GrafanaConfig(kind="grafana")
    assert expected_artifacts("grafana", cfg) == ["grafana/dashboards/", "grafana/grafana-data.tar.gz"]


def test_backup_pages_search_and_keeps_folder_structure(gf, tmp_path):
    svc = _svc(gf, page_size=5)
    export, data = svc.backup(tmp_path)

    assert export.status == "ok" and export.path == "grafana/dashboards/"
    assert export.summary == "Grafana dashboards exported: 12 files"
    assert export.details["dashboards"] == 12 and export.details["folders"] == len(FOLDERS)
    assert export.details["datasources"] == 2 and export.details["alert_rules"] == 2
    assert "re-enter" in export.details["datasource_secrets"]
    assert data.status == "skipped" and data.error == "data_dir not set"

    root = tmp_path / "grafana"
    listed = sorted(f.path for f in export.files)
    assert listed == sorted(f"grafana/{p}" for p in _files_under(root))   # every file is in the manifest
    dash = root / "dashboards"
    # folder path by title, nested, file names made safe; root dashboards at the top
    assert (dash / "d01.json").is_file() and (dash / "d02.json").is_file()
    assert (dash / "Infra" / "Databases" / "Postgres_ prod" / "d05.json").is_file()
    assert (dash / "Infra" / "Databases" / "Postgres_ prod" / "d06.json").is_file()
    assert (dash / "Apps" / "Web" / "d09.json").is_file()
    assert (dash / "Team A_B" / "d10.json").is_file()
    assert len(list(dash.rglob("*.json"))) == 12
    saved = json.loads((dash / "Infra" / "Databases" / "d12.json").read_text())
    assert saved["dashboard"]["uid"] == "d12" and saved["meta"]["folderUid"] == "f-db"
    assert saved["dashboard"]["panels"] == _dashboard("d12")["panels"]
    assert json.loads((dash / "d01.json").read_text())["meta"]["folderUid"] == ""

    folders = {f["uid"]: f for f in json.loads((root / "folders.json").read_text())}
    assert {u: (f["title"], f["parentUid"]) for u, f in folders.items()} == {u: (t, p) for u, t, p in FOLDERS}
    order = [f["uid"] for f in json.loads((root / "folders.json").read_text())]
    assert order.index("f-infra") < order.index("f-db") < order.index("f-pg")   # parents first
    rules = json.loads((root / "alert-rules.json").read_text())
    assert {r["uid"] for r in rules} == {"r-disk", "r-web"}
    ds = {d["uid"]: d for d in json.loads((root / "datasources.json").read_text())}
    assert ds["ds-prom"]["secureJsonFields"] == {"basicAuthPassword": True}
    assert not any(DS_SECRET.encode() in (tmp_path / f.path).read_bytes() for f in export.files)
    assert gf.admin_token not in json.dumps(export.as_manifest())
    assert not list(tmp_path.rglob(".*.partial"))

    if gf.standin:   # the search really was paged: pages 1, 2, 3 of 5 (the last one short)
        pages = [r for r in gf.standin.requests if r[1] == "/api/search"]
        assert len(pages) == 3
    assert svc.verify(tmp_path / "grafana" / "dashboards").startswith("12 dashboards")


def test_basic_auth_works_and_bad_credentials_are_named(gf, tmp_path):
    ok = _svc(gf, token=None, user="admin", password=SecretStr(gf.password))
    assert ok.backup(tmp_path / "a")[0].summary == "Grafana dashboards exported: 12 files"

    bad = _svc(gf, token=SecretStr("glsa_wrong_token_value_123"))
    with pytest.raises(ArtifactError) as err:
        bad.backup(tmp_path / "b")
    msg = str(err.value)
    assert "HTTP 401" in msg and "token" in msg and "glsa_wrong_token_value_123" not in msg
    assert not (tmp_path / "b" / "grafana").exists()

    wrong_pw = _svc(gf, token=None, user="admin", password=SecretStr("not-the-password"))
    with pytest.raises(ArtifactError, match="user 'admin' was rejected"):
        wrong_pw.backup(tmp_path / "c")

    viewer = _svc(gf, token=SecretStr(gf.viewer_token))
    with pytest.raises(ArtifactError) as err:
        viewer.backup(tmp_path / "d")
    assert "HTTP 403" in str(err.value) and "lacks permission" in str(err.value) and "Admin role" in str(err.value)
    assert not (tmp_path / "d" / "grafana").exists()

    gone = _svc(gf, url=f"http://127.0.0.1:{refused_port()}")
    with pytest.raises(ArtifactError, match="unreachable"):
        gone.backup(tmp_path / "e")


@STANDIN_ONLY
@pytest.mark.parametrize("status", [500, 404])
def test_dashboard_failing_mid_export_fails_the_backup(gf, tmp_path, status):
    gf.standin.faults["dashboard:d07"] = status
    with pytest.raises(IncompleteArtifactError) as err:
        _svc(gf, page_size=5).backup(tmp_path)
    msg = str(err.value)
    assert "partial export" in msg and "d07" in msg and "search listed 12 dashboards" in msg
    assert f"HTTP {status}" in msg
    assert not (tmp_path / "grafana").exists()   # no dashboards of the failed attempt stay behind


def _make_grafana_db(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE dashboard (id INTEGER PRIMARY KEY, uid TEXT, data TEXT);
        CREATE TABLE dashboard_version (id INTEGER PRIMARY KEY, dashboard_id INTEGER, data TEXT);
    """)
    with db:
        for i in range(3000):
            db.execute("INSERT INTO dashboard (uid, data) VALUES (?, ?)", (f"u{i}", "x" * 800))
            db.execute("INSERT INTO dashboard_version (dashboard_id, data) VALUES (?, ?)", (i + 1, "y" * 800))
    db.close()


def _db_from_tarball(tarball: Path, dest: Path) -> tuple[Path, list[str]]:
    import gzip

    names = []
    with gzip.open(tarball, "rb") as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
        for m in tar:
            names.append(m.name)
            if m.name == "grafana.db":
                (dest / "grafana.db").write_bytes(tar.extractfile(m).read())
    return dest / "grafana.db", names


def test_data_tarball_holds_a_consistent_db_copy_while_it_is_written(gf, tmp_path):
    data_dir = tmp_path / "grafana-data"
    (data_dir / "plugins" / "my-panel").mkdir(parents=True)
    (data_dir / "plugins" / "my-panel" / "plugin.json").write_text('{"id": "my-panel"}')
    (data_dir / "csv").mkdir()
    _make_grafana_db(data_dir / "grafana.db")

    stop = threading.Event()
    written = [0]

    def writer():   # Grafana saving dashboards: one row in each table per transaction
        db = sqlite3.connect(data_dir / "grafana.db", timeout=30)
        while not stop.is_set():
            with db:
                cur = db.execute("INSERT INTO dashboard (uid, data) VALUES (?, ?)", (f"w{written[0]}", "z" * 4000))
                db.execute("INSERT INTO dashboard_version (dashboard_id, data) VALUES (?, ?)",
                           (cur.lastrowid, "v" * 4000))
                db.execute("UPDATE dashboard SET data = ? WHERE id = ?", ("q" * 900, 1 + written[0] % 3000))
            written[0] += 1
        db.close()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        while written[0] < 20:   # the writer is really going before the backup starts
            time.sleep(0.01)
        before = written[0]
        export, data = _svc(gf, data_dir=str(data_dir)).backup(tmp_path / "snap")
        during = written[0] - before
    finally:
        stop.set()
        t.join()
    assert during > 0, "the writer made no progress during the backup (the race was not exercised)"
    assert export.status == "ok" and data.status == "ok" and data.path == "grafana/grafana-data.tar.gz"
    assert data.details["grafana_db_tables"] == 2

    db_path, names = _db_from_tarball(tmp_path / "snap" / data.path, tmp_path)
    assert names[0] == "grafana.db" and names.count("grafana.db") == 1
    assert "plugins/my-panel/plugin.json" in names and "csv" in names
    assert not any(n.startswith("grafana.db-") for n in names)
    copy = sqlite3.connect(db_path)
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    a = copy.execute("SELECT count(*) FROM dashboard").fetchone()[0]
    b = copy.execute("SELECT count(*) FROM dashboard_version").fetchone()[0]
    copy.close()
    assert a == b and a >= 3000 + before   # every transaction is either fully in the copy or not at all
    assert not [p for p in (tmp_path / "snap").rglob(".*") if p.name.startswith(".grafana")]   # temp copy gone
    assert "integrity_check" in _svc(gf).verify(tmp_path / "snap" / data.path)


def test_data_dir_without_grafana_db_fails_the_tarball_and_keeps_the_dashboards(gf, tmp_path):
    (tmp_path / "empty").mkdir()
    svc = _svc(gf, data_dir=str(tmp_path / "empty"))
    with pytest.raises(PartialBackupError, match="no grafana.db in") as err:
        svc.backup(tmp_path / "snap")
    [export] = err.value.results
    assert export.status == "ok" and export.path == "grafana/dashboards/"
    assert list(err.value.failed) == ["grafana/grafana-data.tar.gz"]
    assert "12 dashboards" in svc.verify(tmp_path / "snap" / export.path)   # the export is whole
    # a volume restore of that snapshot has no tarball to use: said, instead of an "ok" that did nothing
    before = gf.state()
    vol = _svc(gf, data_dir=str(tmp_path / "empty"), restore_from="volume")
    with pytest.raises(RestoreError, match='no data-dir tarball to restore.*restore_from = "api"'):
        vol.restore(tmp_path / "snap" / export.path)
    assert gf.state() == before
    assert sorted(p.name for p in (tmp_path / "snap" / "grafana").iterdir() if p.suffix == ".gz") == []


def test_round_trip_backup_wipe_restore_api(gf, tmp_path):
    svc = _svc(gf, page_size=5)
    svc.backup(tmp_path)
    gf.wipe()
    assert gf.state()["dashboards"] == {}

    msg = svc.restore(tmp_path / "grafana" / "dashboards")
    assert "folders: 6 created" in msg and "dashboards: 12 created, 0 updated" in msg
    assert "alert rules: 2 created" in msg and "datasources: 2 created (re-enter their secrets: Prometheus)" in msg
    after = gf.state()
    assert after == gf.seeded   # same uids, titles, folderUids, panels, folder tree, rules, datasources
    if gf.standin:
        saves = [b for m, p, b in gf.standin.requests if p == "/api/dashboards/db"]
        assert len(saves) == 12
        assert all(b["dashboard"]["id"] is None and b["overwrite"] is True and "folderId" not in b for b in saves)
        assert {b["dashboard"]["uid"]: b.get("folderUid") for b in saves} == DASHBOARDS
        posts = [b for m, p, b in gf.standin.requests if p == "/api/folders" and m == "POST"]
        assert [b["uid"] for b in posts].index("f-db") < [b["uid"] for b in posts].index("f-pg")
        ds = gf.standin.datasources["ds-prom"]
        assert ds["secureJsonData"] == {}   # the secret was never exported, so it is not restored either
        assert all(r["provenance"] == "" for r in gf.standin.rules.values())   # still editable in the UI

    again = svc.restore(tmp_path / "grafana" / "dashboards")   # over existing objects: updated, not duplicated
    assert "dashboards: 0 created, 12 updated" in again and "folders: 0 created, 6 already there" in again
    assert "alert rules: 0 created, 2 updated" in again and "datasources: 0 created, 2 already there" in again
    assert gf.state() == gf.seeded
    assert svc.health().endswith("database ok")


@STANDIN_ONLY
def test_restore_412_names_the_dashboard_and_restores_the_rest(gf, tmp_path):
    svc = _svc(gf)
    svc.backup(tmp_path)
    gf.wipe()
    gf.standin.faults["save:d03"] = "version-mismatch"
    with pytest.raises(RestoreError) as err:
        svc.restore(tmp_path / "grafana" / "dashboards")
    msg = str(err.value)
    assert "Dashboard 03" in msg and "d03" in msg and "412 version-mismatch" in msg
    assert "11 created" in msg
    assert set(gf.state()["dashboards"]) == set(DASHBOARDS) - {"d03"}


def test_restore_from_picks_one_artifact(gf, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _make_grafana_db(data_dir / "grafana.db")
    _svc(gf, data_dir=str(data_dir)).backup(tmp_path / "snap")
    tarball = tmp_path / "snap" / "grafana" / "grafana-data.tar.gz"
    before = (data_dir / "grafana.db").read_bytes()
    assert _svc(gf, data_dir=str(data_dir)).restore(tarball) == "not used (restore_from = api)"
    assert (data_dir / "grafana.db").read_bytes() == before and not list(tmp_path.glob("data.coderz-old-*"))
    gf.wipe()
    vol = _svc(gf, data_dir=str(data_dir), restore_from="volume")
    assert vol.restore(tmp_path / "snap" / "grafana" / "dashboards") == "not used (restore_from = volume)"
    assert gf.state()["dashboards"] == {}
    assert "replaced by the tarball" in vol.restore_target()


def test_verify_catches_damaged_export_and_tarball(gf, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _make_grafana_db(data_dir / "grafana.db")
    svc = _svc(gf, data_dir=str(data_dir))
    svc.backup(tmp_path / "snap")
    root = tmp_path / "snap" / "grafana"
    dash = root / "dashboards"
    tarball = root / "grafana-data.tar.gz"
    assert "12 dashboards" in svc.verify(dash) and "integrity_check" in svc.verify(tarball)

    target = dash / "Apps" / "d07.json"
    good = target.read_bytes()
    target.write_bytes(good[: len(good) // 2])
    with pytest.raises(VerifyError, match=r"d07\.json: not valid JSON"):
        svc.verify(dash)
    gf.wipe()
    with pytest.raises(RestoreError, match="refusing to restore, nothing changed"):
        svc.restore(dash)
    assert gf.state()["folders"] == {} and gf.state()["dashboards"] == {}
    obj = json.loads(good)
    del obj["dashboard"]["uid"]
    target.write_text(json.dumps(obj))
    with pytest.raises(VerifyError, match="no dashboard with uid 'd07'"):
        svc.verify(dash)
    target.unlink()
    with pytest.raises(VerifyError, match="d07.json: missing"):
        svc.verify(dash)
    target.write_bytes(good)
    (dash / "Apps" / "stray.json").write_text(json.dumps(obj))
    with pytest.raises(VerifyError, match="13 JSON files"):
        svc.verify(dash)
    (dash / "Apps" / "stray.json").unlink()
    assert svc.verify(dash)

    raw = tarball.read_bytes()
    tarball.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(VerifyError, match="damaged"):
        svc.verify(tarball)

    # a well-formed tarball whose grafana.db is damaged: the integrity check must catch it
    db_bytes = bytearray((data_dir / "grafana.db").read_bytes())
    for off in range(4096 * 3, len(db_bytes), 4096 * 7):
        db_bytes[off + 100: off + 400] = os.urandom(300)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("grafana.db")
        info.size = len(db_bytes)
        tar.addfile(info, io.BytesIO(bytes(db_bytes)))
    tarball.write_bytes(buf.getvalue())
    with pytest.raises(VerifyError, match="grafana.db"):
        svc.verify(tarball)
    with pytest.raises(RestoreError, match="refusing to restore, nothing changed"):
        _svc(gf, data_dir=str(data_dir), restore_from="volume").restore(tarball)


@STANDIN_ONLY
def test_volume_restore_replaces_the_data_dir_with_grafana_stopped(tmp_path):
    """A stand-in *process* plays Grafana: stop_command kills it, start_command starts it again."""
    port = free_port()
    pidfile = tmp_path / "grafana.pid"
    start = ["sh", "-c", (f"setsid {sys.executable} {ROOT / 'standins' / 'grafana.py'} --port {port} "
                          f"--pidfile {pidfile} >/dev/null 2>&1 &")]
    stop = ["sh", "-c", f'kill "$(cat {pidfile})"']
    subprocess.run(start, check=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "stand-in process did not start"
            time.sleep(0.1)
        data_dir = tmp_path / "var-lib-grafana"
        (data_dir / "plugins" / "p1").mkdir(parents=True)
        (data_dir / "plugins" / "p1" / "plugin.json").write_text("{}")
        _make_grafana_db(data_dir / "grafana.db")
        data_dir.chmod(0o750)
        as_root = os.geteuid() == 0
        if as_root:   # Grafana's uid in its image
            for p in [data_dir, *data_dir.rglob("*")]:
                os.chown(p, 472, 472)
        svc = GrafanaService("grafana", GrafanaConfig(kind="grafana", url=url, user="admin",
                                                      password=SecretStr("admin"), data_dir=str(data_dir),
                                                      restore_from="volume", stop_command=stop,
                                                      start_command=start), LocalAccess())
        assert svc._data_tarball(tmp_path / "snap").status == "ok"
        tarball = tmp_path / "snap" / "grafana" / "grafana-data.tar.gz"
        # after the backup: rows added, a plugin removed, a stray file — the restore must undo all of it
        db = sqlite3.connect(data_dir / "grafana.db")
        with db:
            db.execute("DELETE FROM dashboard WHERE id > 10")
        db.close()
        shutil.rmtree(data_dir / "plugins" / "p1")
        (data_dir / "later.txt").write_text("after the backup")
        if as_root:   # the dir's owner now is another uid: the restored files must follow the dir
            os.chown(data_dir, 473, 473)

        msg = svc.restore(tarball)
        assert "restored into" in msg and "database ok" in msg
        db = sqlite3.connect(data_dir / "grafana.db")
        assert db.execute("SELECT count(*) FROM dashboard").fetchone()[0] == 3000
        db.close()
        assert (data_dir / "plugins" / "p1" / "plugin.json").is_file() and not (data_dir / "later.txt").exists()
        assert (data_dir.stat().st_mode & 0o777) == 0o750
        if as_root:
            owners = {(p.stat().st_uid, p.stat().st_gid) for p in [data_dir, *data_dir.rglob("*")]}
            assert owners == {(473, 473)}
        old = list(tmp_path.glob("var-lib-grafana.coderz-old-*"))
        assert len(old) == 1 and (old[0] / "later.txt").is_file()   # the old contents are kept
        assert httpx.get(f"{url}/api/health", timeout=5).json()["database"] == "ok"   # started again
    finally:
        subprocess.run(stop, check=False, capture_output=True)


def test_safe_names():
    assert safe_name("Team A/B") == "Team A_B"
    assert safe_name("..") == "_" and safe_name("") == "_"
    assert safe_name("../../etc") == "_.._etc"


def test_cli_backup_verify_restore_and_a_failed_export_through_the_flows(gf, tmp_path, cli_env):
    from helpers import run_cli

    data_dir = tmp_path / "grafana-data"
    data_dir.mkdir()
    _make_grafana_db(data_dir / "grafana.db")
    dest = tmp_path / "snapshots"
    config = tmp_path / "coderz-backup.toml"
    config.write_text(f'dest = "{dest}"\nretries = 0\n\n[services.grafana]\nkind = "grafana"\n'
                      f'url = "{gf.url}"\ntoken = "env:T_GRAFANA_TOKEN"\ndata_dir = "{data_dir}"\npage_size = 5\n')
    env = dict(cli_env, T_GRAFANA_TOKEN=gf.admin_token)

    res = run_cli(["backup", "--config", str(config)], env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Grafana dashboards exported: 12 files" in res.stdout
    text = (dest / "latest" / "manifest.json").read_text()
    export, tarball = [a for a in json.loads(text)["artifacts"] if a["service"] == "grafana"]
    assert export["status"] == "ok" and export["path"] == "grafana/dashboards/"
    assert len(export["files"]) == 12 + 8 and export["details"]["dashboards"] == 12
    assert tarball["status"] == "ok" and tarball["path"] == "grafana/grafana-data.tar.gz"
    assert gf.admin_token not in text + res.stdout + res.stderr

    res = run_cli(["verify", "--config", str(config)], env)
    assert res.returncode == 0, res.stdout + res.stderr

    gf.wipe()
    res = run_cli(["restore", "--config", str(config), "--yes", "--no-safety-backup"], env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert gf.state() == gf.seeded

    if gf.standin:   # a dashboard failing mid-export: the artifact fails, the report says so
        gf.standin.faults["dashboard:d09"] = 500
        res = run_cli(["backup", "--config", str(config)], env)
        assert res.returncode != 0
        snaps = sorted(p for p in dest.iterdir() if p.is_dir() and p.name[:2] == "20")
        manifest = json.loads((snaps[-1] / "manifest.json").read_text())
        export, tarball = [a for a in manifest["artifacts"] if a["service"] == "grafana"]
        assert export["status"] == "failed" and "partial export" in export["error"] and "d09" in export["error"]
        assert not (snaps[-1] / "grafana" / "dashboards").exists()
        # the data-dir tarball does not depend on the API: it is kept, the snapshot is partial (exit 1)
        assert res.returncode == 1 and manifest["status"] == "partial"
        assert tarball["status"] == "ok" and tarball["error"] is None
        assert (snaps[-1] / tarball["path"]).stat().st_size == tarball["bytes"]
        res = run_cli(["verify", snaps[-1].name, "--config", str(config)], env)
        assert res.returncode == 0, res.stdout + res.stderr   # what a partial snapshot holds verifies
        # restoring it with the default restore_from = "api" cannot work: said, nothing changed
        del gf.standin.faults["dashboard:d09"]
        before, db = gf.state(), (data_dir / "grafana.db").read_bytes()
        res = run_cli(["restore", snaps[-1].name, "--config", str(config), "--yes", "--no-safety-backup"], env,
                      timeout=600)
        assert res.returncode == 1, res.stdout + res.stderr
        assert 'no API export to restore' in res.stdout + res.stderr
        assert 'restore_from = "volume"' in res.stdout + res.stderr
        assert gf.state() == before and (data_dir / "grafana.db").read_bytes() == db


@STANDIN_ONLY
def test_volume_restore_refuses_while_grafana_runs_without_stop_command(gf, tmp_path):
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    _make_grafana_db(data_dir / "grafana.db")
    svc = _svc(gf, data_dir=str(data_dir), restore_from="volume")
    svc.backup(tmp_path / "snap")
    before = (data_dir / "grafana.db").read_bytes()
    with pytest.raises(RestoreError, match="is running; set stop_command"):
        svc.restore(tmp_path / "snap" / "grafana" / "grafana-data.tar.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "snap"]
    assert (data_dir / "grafana.db").read_bytes() == before


def test_damaged_live_db_fails_the_backup_and_leaves_nothing(gf, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _make_grafana_db(data_dir / "grafana.db")
    raw = bytearray((data_dir / "grafana.db").read_bytes())
    for off in range(4096 * 3, len(raw), 4096 * 5):   # scribble over b-tree pages, keep the header
        raw[off + 8: off + 600] = os.urandom(592)
    (data_dir / "grafana.db").write_bytes(bytes(raw))
    with pytest.raises(PartialBackupError, match="grafana.db") as err:
        _svc(gf, data_dir=str(data_dir)).backup(tmp_path / "snap")
    assert "integrity_check" in str(err.value) or "online backup API failed" in str(err.value)
    assert [r.path for r in err.value.results] == ["grafana/dashboards/"]   # the API export is kept
    assert sorted(p.name for p in (tmp_path / "snap").iterdir()) == ["grafana"]   # no temp copy left
    assert not list((tmp_path / "snap" / "grafana").glob("*grafana-data*"))     # no (partial) tarball


@pytest.mark.parametrize("case", ["refused-and-no-db", "refused-no-data-dir"])
def test_each_artifact_reports_its_own_reason_when_the_service_fails(gf, tmp_path, cli_env, case):
    """The report and manifest name what went wrong with each artifact — an API refusal is not
    the reason the tarball failed, and a tarball that was never asked for stays skipped."""
    from helpers import run_cli

    empty = tmp_path / "empty"
    empty.mkdir()
    dest = tmp_path / "snapshots"
    config = tmp_path / "coderz-backup.toml"
    data_dir = f'data_dir = "{empty}"\n' if case == "refused-and-no-db" else ""
    config.write_text(f'dest = "{dest}"\nretries = 0\n\n[services.grafana]\nkind = "grafana"\n'
                      f'url = "{gf.url}"\ntoken = "env:T_GRAFANA_TOKEN"\n{data_dir}')
    res = run_cli(["backup", "--config", str(config)], dict(cli_env, T_GRAFANA_TOKEN="glsa_not_a_valid_token_000"))
    assert res.returncode == 2, res.stdout + res.stderr   # nothing usable
    [snap] = [p for p in dest.iterdir() if p.name[:2] == "20"]
    export, tarball = json.loads((snap / "manifest.json").read_text())["artifacts"]
    assert export["status"] == "failed" and "HTTP 401" in export["error"]
    if case == "refused-and-no-db":
        assert tarball["status"] == "failed" and "no grafana.db in" in tarball["error"]
        assert "401" not in tarball["error"]
        assert "no grafana.db in" in res.stdout and "HTTP 401" in res.stdout
    else:
        assert tarball["status"] == "skipped" and "data_dir not set" in tarball["error"]
    assert "glsa_not_a_valid_token_000" not in res.stdout + res.stderr + (snap / "manifest.json").read_text()


# -- issue 19: behaviour that differs between Grafana versions (stand-in per version) -----------

VERSIONS = ["10.1.5", "10.4.2", "11.3.0"]   # folder conflict 412 / 409; rule conflict 500 / 400 / 409
SLACK_URL = "https://hooks.slack.example/services/T000/B000/coderzSlackSecret42"


@pytest.fixture(params=VERSIONS)
def gfv(request):
    """A stand-in imitating one Grafana version, seeded like ``gf`` plus the objects of finding 4/8."""
    srv = GrafanaStandin(users={"admin": "admin"}, tokens={ADMIN_TOKEN: "Admin"}, version=request.param).start()
    g = Gf(srv.url, admin_token=ADMIN_TOKEN, viewer_token=VIEWER_TOKEN, standin=srv)
    try:
        g.seed()
        g.call("POST", "/api/library-elements", json={
            "uid": "lib-cpu", "name": "CPU", "folderUid": "f-infra", "kind": 1,
            "model": {"type": "timeseries", "title": "CPU busy", "targets": [{"refId": "A", "expr": "cpu"}]}})
        g.call("POST", "/api/dashboards/db", json={"dashboard": {
            "id": None, "uid": "d-lib", "title": "Uses a library panel", "schemaVersion": 39,
            "panels": [{"id": 1, "gridPos": {"h": 8, "w": 12, "x": 0, "y": 0},
                        "libraryPanel": {"uid": "lib-cpu", "name": "CPU"}}]}, "folderUid": "f-infra"})
        g.call("POST", "/api/v1/provisioning/contact-points", ok=(202,), json={
            "uid": "cp-slack", "name": "ops-slack", "type": "slack",
            "settings": {"url": SLACK_URL, "recipient": "#ops"}})
        policy = {"receiver": "grafana-default-email", "group_by": ["alertname"],
                  "routes": [{"receiver": "ops-slack", "object_matchers": [["team", "=", "ops"]]}]}
        g.call("PUT", "/api/v1/provisioning/policies", ok=(202,), json=policy)
        g.call("POST", "/api/v1/provisioning/alert-rules", ok=(201,), headers={"X-Disable-Provenance": "true"},
               json={**_rule("r-slack", "f-apps"), "ruleGroup": "paging",
                     "notification_settings": {"receiver": "ops-slack"}})
        group = g.call("GET", "/api/v1/provisioning/folder/f-infra/rule-groups/coderz")
        g.call("PUT", "/api/v1/provisioning/folder/f-infra/rule-groups/coderz", json={**group, "interval": 300})
        g.policy = policy
        yield g
    finally:
        srv.stop()


def _everything(g: Gf) -> dict:
    """What a user sees, including what the list endpoints of finding 1/4/8 hold."""
    s = g.state()
    s["datasource_users"] = {d["uid"]: (g.call("GET", f"/api/datasources/uid/{d['uid']}").get("basicAuthUser"))
                             for d in g.call("GET", "/api/datasources")}
    s["intervals"] = {(r[1], r[2]): g.call("GET", f"/api/v1/provisioning/folder/{r[1]}/rule-groups/{r[2]}")["interval"]
                      for r in s["rules"].values()}
    libs = g.call("GET", "/api/library-elements", params={"kind": 1})["result"]["elements"]
    s["library"] = {e["uid"]: (e["name"], e["folderUid"], e["model"].get("title")) for e in libs}
    s["contact_points"] = {c["uid"]: (c["name"], c["type"], c["settings"])
                           for c in g.call("GET", "/api/v1/provisioning/contact-points")}
    s["policies"] = g.call("GET", "/api/v1/provisioning/policies")
    return s


def test_round_trip_and_second_restore_on_each_version(gfv, tmp_path):
    before = _everything(gfv)
    assert before["intervals"][("f-infra", "coderz")] == 300 and before["datasource_users"]["ds-prom"] == "prom"
    svc = _svc(gfv)
    svc.backup(tmp_path)
    export = tmp_path / "grafana"
    blob = "".join(p.read_text() for p in export.rglob("*.json"))
    assert SLACK_URL not in blob and DS_SECRET not in blob   # never exported, never invented
    gfv.wipe()

    msg = svc.restore(export / "dashboards")
    assert "folders: 6 created" in msg and "alert rules: 3 created" in msg
    assert "datasources: 2 created (re-enter their secrets: Prometheus)" in msg
    assert "library panels: 1 created" in msg
    # the default email point exists on the fresh server under another uid: updated, not duplicated
    assert "contact points: 1 created, 1 updated (re-enter their secrets: ops-slack (url))" in msg
    assert "notification policies: restored" in msg and SLACK_URL not in msg
    after = _everything(gfv)
    assert after["intervals"] == before["intervals"]            # 5m stays 5m, not every minute
    assert after["datasource_users"] == before["datasource_users"]   # basic-auth user kept
    assert after["library"] == before["library"]
    assert after["dashboards"]["d-lib"]["panels"][0]["libraryPanel"]["uid"] in after["library"]
    assert after["policies"] == gfv.policy
    assert after["contact_points"]["cp-slack"][2] == {"recipient": "#ops"}   # the secret is to be re-entered
    assert {k: v for k, v in after.items() if k != "contact_points"} == \
        {k: v for k, v in before.items() if k != "contact_points"}

    again = svc.restore(export / "dashboards")   # over everything: nothing reported failed on any version
    assert "folders: 0 created, 6 already there" in again and "alert rules: 0 created, 3 updated" in again
    assert "library panels: 0 created, 1 updated" in again and "contact points: 0 created, 2 updated" in again
    assert len(_everything(gfv)["contact_points"]) == len(before["contact_points"]) == 2
    assert _everything(gfv)["intervals"] == before["intervals"]


@pytest.mark.parametrize("version,folder_status,rule_status", [("10.1.5", 412, 500), ("10.4.2", 409, 400),
                                                               ("11.3.0", 409, 409)])
def test_standin_answers_conflicts_as_that_version_does(version, folder_status, rule_status):
    srv = GrafanaStandin(users={"admin": "admin"}, version=version).start()
    try:
        g = Gf(srv.url, admin_token="", viewer_token="", standin=srv)
        assert g.call("GET", "/api/health")["version"] == version
        g.seed()
        assert g.http.post("/api/folders", json={"uid": "f-infra", "title": "Infra"}).status_code == folder_status
        r = g.http.post("/api/v1/provisioning/alert-rules", json=_rule("r-disk", "f-infra"))
        assert r.status_code == rule_status
        listed = g.call("GET", "/api/datasources")
        assert all(not {"secureJsonFields", "basicAuthUser", "withCredentials"} & set(d) for d in listed)
        one = g.call("GET", "/api/datasources/uid/ds-prom")
        assert one["basicAuthUser"] == "prom" and one["secureJsonFields"] == {"basicAuthPassword": True}
    finally:
        srv.stop()


def test_snapshot_from_before_issue_19_still_restores(gf, tmp_path):
    svc = _svc(gf)
    svc.backup(tmp_path)
    export = tmp_path / "grafana"
    for fname in ("rule-groups.json", "library-panels.json", "contact-points.json", "notification-policies.json"):
        (export / fname).unlink()
    index = json.loads((export / "export.json").read_text())
    for key in ("rule_groups", "library_panels", "contact_points"):
        del index["counts"][key]
    (export / "export.json").write_text(json.dumps(index))
    gf.wipe()
    msg = svc.restore(export / "dashboards")
    assert "dashboards: 12 created" in msg and "alert rules: 2 created" in msg and "library panels" not in msg
    assert gf.state() == gf.seeded
