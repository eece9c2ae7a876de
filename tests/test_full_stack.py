"""Every service kind in one stack: CLI backup → change everything → `restore --yes` → all back.

Real servers where a package exists (PostgreSQL ×2, Redis, Prometheus 2.42, etcd 3.4, a live
SQLite k3s datastore, a configs tree); the stand-ins of tests/standins for Grafana,
Elasticsearch and the APISIX Admin API (which stores its routes in the real etcd).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time

import httpx
import pytest

from etcd_server import EtcdServer
from helpers import run_cli
from standins.apisix import ApisixStandin
from standins.elasticsearch import EsStandin
from standins.grafana import GrafanaStandin

from coderz_backup.sandbox import PrometheusServer
from coderz_backup.waiting import wait_until

GF_AUTH = ("admin", "gf-admin-pw")
ES_AUTH = ("elastic", "es-pw-123")
APISIX_KEY = "apisix-admin-key-0123"


def _gf(url: str, method: str, path: str, body=None):
    r = httpx.request(method, f"{url}{path}", json=body, auth=GF_AUTH, timeout=10)
    assert r.status_code < 300, r.text
    return r.json()


def _es(url: str, method: str, path: str, body=None, content: bytes | None = None):
    headers = {"Content-Type": "application/x-ndjson"} if content is not None else None
    r = httpx.request(method, f"{url}{path}", json=body, content=content, headers=headers, auth=ES_AUTH, timeout=10)
    assert r.status_code < 300, r.text
    return r.json()


def _ax(url: str, method: str, path: str, body=None):
    r = httpx.request(method, f"{url}/apisix/admin{path}", json=body, headers={"X-API-KEY": APISIX_KEY}, timeout=10)
    assert r.status_code < 300, r.text
    return r.json()


@pytest.fixture
def full(stack, redis_server, tmp_path):
    gf = GrafanaStandin(users={GF_AUTH[0]: GF_AUTH[1]}).start()
    es = EsStandin(users={ES_AUTH[0]: ES_AUTH[1]}).start()
    etcd = EtcdServer(tmp_path / "etcd").start()
    ax = ApisixStandin(etcd.url, admin_key=APISIX_KEY).start()
    prom = PrometheusServer(tmp_path / "prom").start()
    k3s = tmp_path / "k3s"
    (k3s / "server" / "db").mkdir(parents=True)
    db = sqlite3.connect(k3s / "server" / "db" / "state.db")
    db.execute("CREATE TABLE kine (id INTEGER PRIMARY KEY, name TEXT, value BLOB)")
    db.executemany("INSERT INTO kine (name, value) VALUES (?, ?)", [(f"/registry/x/{i}", b"v") for i in range(500)])
    db.commit()
    db.close()
    (k3s / "server" / "token").write_text("K10token::server:abc\n")

    # data
    _gf(gf.url, "POST", "/api/folders", {"uid": "ops", "title": "Ops"})
    for i in range(3):
        _gf(gf.url, "POST", "/api/dashboards/db", {"dashboard": {"id": None, "uid": f"d{i}", "title": f"Dash {i}",
                                                                   "panels": [{"id": 1, "type": "graph"}]},
                                                     "folderUid": "ops", "overwrite": False})
    _es(es.url, "PUT", "/logs", {"settings": {"index": {"number_of_shards": "1"}},
                                 "mappings": {"properties": {"msg": {"type": "text"}}}})
    lines = b"".join(b'{"index":{"_index":"logs","_id":"%d"}}\n{"msg":"line %d"}\n' % (i, i) for i in range(1500))
    _es(es.url, "POST", "/_bulk?refresh=true", content=lines)
    _ax(ax.url, "PUT", "/upstreams/1", {"type": "roundrobin", "nodes": {"127.0.0.1:8080": 1}})
    for i in range(1, 13):
        _ax(ax.url, "PUT", f"/routes/{i}", {"uri": f"/api/{i}", "upstream_id": "1"})
    wait_until(lambda: httpx.get(f"{prom.url}/api/v1/query", params={"query": "up"}).json()["data"]["result"],
               timeout=30, interval=0.5, error=lambda _: AssertionError("Prometheus scraped nothing within 30 s"))

    # the data dirs beside the API exports, as on a real host: Grafana's SQLite grafana.db and
    # plugins, an Elasticsearch node's path.data
    gf_data = tmp_path / "grafana-data"
    (gf_data / "plugins" / "my-panel").mkdir(parents=True)
    (gf_data / "plugins" / "my-panel" / "plugin.json").write_text('{"id": "my-panel"}')
    gdb = sqlite3.connect(gf_data / "grafana.db")
    gdb.execute("CREATE TABLE dashboard (id INTEGER PRIMARY KEY, data TEXT)")
    gdb.executemany("INSERT INTO dashboard (data) VALUES (?)", [(f"dash {i}",) for i in range(200)])
    gdb.commit()
    gdb.close()
    es_data = tmp_path / "es-data" / "indices" / "idx" / "0" / "index"
    es_data.mkdir(parents=True)
    (es_data / "_0.cfs").write_bytes(bytes(range(256)) * 4096)
    (es_data / "segments_1").write_bytes(b"segments")
    stack.env.update(T_GF=GF_AUTH[1], T_ES=ES_AUTH[1], T_AX=APISIX_KEY)
    stack.secrets += [GF_AUTH[1], ES_AUTH[1], APISIX_KEY]
    text = stack.config.read_text().replace('[services.configs]', f'''[services.grafana]
kind = "grafana"
url = "{gf.url}"
user = "admin"
password = "env:T_GF"
data_dir = "{gf_data}"

[services.prometheus]
kind = "prometheus"
url = "{prom.url}"
data_dir = "{prom.data}"
stop_command = {json.dumps(prom.stop_command)}
start_command = {json.dumps(prom.start_command)}

[services.elasticsearch]
kind = "elasticsearch"
url = "{es.url}"
user = "elastic"
password = "env:T_ES"
data_dir = "{tmp_path / 'es-data'}"

[services.configs]''') + f'''
[services.etcd-k3s]
kind = "k3s"
data_dir = "{k3s}"
stop_command = ["true"]
start_command = ["true"]

[services.etcd-apisix]
kind = "etcd"
endpoint = "{etcd.url}"

[services.apisix-config]
kind = "apisix"
admin_url = "{ax.url}"
admin_key = "env:T_AX"
'''
    text = text.replace('password = "env:T_REDIS"\n',
                        f'password = "env:T_REDIS"\nstart_command = {json.dumps(redis_server.start_command)}\n')
    stack.config.write_text(text)
    stack.gf, stack.es, stack.etcd, stack.ax, stack.prom, stack.k3s = gf, es, etcd, ax, prom, k3s
    stack.redis = redis_server
    yield stack
    for s in (ax, gf, es):
        s.stop()
    prom.stop()
    etcd.stop()


def test_every_service_comes_back_after_an_approved_restore(full):
    s = full
    res = run_cli(["backup", "--config", str(s.config)], s.env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    # the README's report lines (its "on a real host they show up like this" block)
    for line in ("✓ Grafana dashboards exported: 3 files", "✓ grafana/grafana-data.tar.gz (",
                 "✓ prometheus-snapshot.tar.gz (", "✓ Elasticsearch: 1 index exported",
                 "✓ elasticsearch-data.tar.gz (", "✓ k3s-server-db.tar.gz (", "✓ etcd-apisix.snapshot (",
                 "✓ APISIX config exported (routes, upstreams, services, consumers, global_rules)",
                 "║ ✗ Failed : 0"):
        assert line in out, out
    assert out.index("── 4/8 Grafana") < out.index("── 5/8 Prometheus") < out.index("── 6/8 Elasticsearch") \
        < out.index("── 7/8 Configs + Compose") < out.index("── 8/8 etcd Snapshots")
    t0 = time.time()
    before_prom = httpx.get(f"{s.prom.url}/api/v1/query_range",
                            params={"query": "up", "start": t0 - 300, "end": t0, "step": "1s"}).json()
    before_ts = {v[0] for v in before_prom["data"]["result"][0]["values"]}

    # everything changes
    a, b = s.dbs
    with a.connect() as c:
        c.execute("DELETE FROM flow_run")
    s_redis = s.redis.client()
    s_redis.flushall()
    s.gf.wipe()
    _es(s.es.url, "DELETE", "/logs")
    for i in range(1, 13):
        _ax(s.ax.url, "DELETE", f"/routes/{i}")
    db = sqlite3.connect(s.k3s / "server" / "db" / "state.db")
    db.execute("DELETE FROM kine")
    db.commit()
    db.close()
    conf = next(p for p in s.root.rglob("docker-compose.yml"))
    conf.write_text("changed")
    s.prom.stop()
    shutil.rmtree(s.prom.data)
    s.prom.data.mkdir()
    s.prom.start()

    res = run_cli(["restore", "--yes", "--no-safety-backup", "--only",
                   "postgres-prefect,redis,grafana,prometheus,elasticsearch,configs,etcd-k3s,apisix-config",
                   "--config", str(s.config)], s.env, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    with a.connect() as c:
        assert c.execute("SELECT count(*) FROM flow_run").fetchone()[0] == 3000
    assert s_redis.get("k") == b"v"
    dashboards = _gf(s.gf.url, "GET", "/api/search?type=dash-db")
    assert sorted(d["uid"] for d in dashboards) == ["d0", "d1", "d2"]
    assert all(d.get("folderUid") == "ops" for d in dashboards)
    assert _es(s.es.url, "GET", "/logs/_count")["count"] == 1500
    routes = _ax(s.ax.url, "GET", "/routes")
    assert routes["total"] == 12 and {r["value"]["uri"] for r in routes["list"]} == {f"/api/{i}" for i in range(1, 13)}
    db = sqlite3.connect(s.k3s / "server" / "db" / "state.db")
    assert db.execute("SELECT count(*) FROM kine").fetchone()[0] == 500
    assert conf.read_text() == "services: {}\n"
    after = httpx.get(f"{s.prom.url}/api/v1/query_range",
                      params={"query": "up", "start": t0 - 300, "end": t0, "step": "1s"}).json()
    assert before_ts <= {v[0] for v in after["data"]["result"][0]["values"]}
    log = (s.dest / "latest" / "restore.log").read_text()
    for secret in s.secrets:
        assert secret not in res.stdout + res.stderr + log
