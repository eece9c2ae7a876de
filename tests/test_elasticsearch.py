"""Elasticsearch service: per-index export, data tarball, ES snapshot, verify, restore.

No Elasticsearch is installable here, so the tests talk to the stand-in of
``tests/standins/elasticsearch.py`` (contracts §2). With ``CODERZ_TEST_REGISTRY`` set
(e.g. ``docker.io``) the same tests run against the official ``elasticsearch:8`` image
through testcontainers (single node, basic auth, host network on a free 127.0.0.1
port); tests that need a stand-in fault are skipped there.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from standins.elasticsearch import EsStandin

from coderz_backup.access import LocalAccess
from coderz_backup.services.elasticsearch import ElasticsearchConfig
from coderz_backup.errors import (
    ArtifactError,
    IncompleteArtifactError,
    PartialBackupError,
    RestoreError,
    VerifyError,
)
from coderz_backup.sandbox import free_port
from coderz_backup.services import REGISTRY, expected_artifacts
from coderz_backup.services.elasticsearch import ElasticsearchService
from helpers import refused_port

REGISTRY_HOST = os.environ.get("CODERZ_TEST_REGISTRY")
ES_IMAGE = "elasticsearch:8.15.3"
PW = "es-test-pw-7741"
NAME = "elasticsearch"
STANDIN_ONLY = pytest.mark.skipif(bool(REGISTRY_HOST), reason="needs a stand-in fault or hook")


class Es:
    """One Elasticsearch (stand-in or container) and REST helpers for the tests."""

    def __init__(self, url: str, *, standin: EsStandin | None = None, api_key: str | None = None):
        self.url, self.standin, self.api_key = url, standin, api_key
        self.http = httpx.Client(base_url=url, auth=("elastic", PW), timeout=60)

    def call(self, method: str, path: str, ok=(200,), **kw):
        r = self.http.request(method, path, **kw)
        assert r.status_code in ok, f"{method} {path}: {r.status_code} {r.text[:500]}"
        return r.json() if r.content else None

    def bulk(self, index: str, docs: list[tuple[str, dict, str | None]]) -> None:
        lines = []
        for doc_id, src, routing in docs:
            meta = {"_index": index, "_id": doc_id, **({"routing": routing} if routing else {})}
            lines += [json.dumps({"index": meta}), json.dumps(src)]
        res = self.call("POST", "/_bulk", content=("\n".join(lines) + "\n").encode(),
                        headers={"Content-Type": "application/x-ndjson"})
        assert res["errors"] is False

    def wipe(self) -> None:
        for index in [*SEED, ".kibana_1", "orders", "junk"]:
            self.call("DELETE", f"/{index}", ok=(200, 404))

    def docs(self, index: str) -> dict[str, dict]:
        """Every document of ``index`` (through a PIT, as a client would read it)."""
        pit = self.call("POST", f"/{index}/_pit", params={"keep_alive": "1m"})["id"]
        out, after = {}, None
        while True:
            body = {"size": 1000, "pit": {"id": pit, "keep_alive": "1m"}, "sort": [{"_shard_doc": "asc"}]}
            if after:
                body["search_after"] = after
            res = self.call("POST", "/_search", json=body)
            pit = res["pit_id"]
            hits = res["hits"]["hits"]
            if not hits:
                break
            for h in hits:
                out[h["_id"]] = {"src": h["_source"], "routing": h.get("_routing")}
            after = hits[-1]["sort"]
        self.call("DELETE", "/_pit", json={"id": pit}, ok=(200, 404))
        return out

    def meta(self, index: str) -> dict:
        return {"mappings": self.call("GET", f"/{index}/_mapping")[index]["mappings"],
                "aliases": self.call("GET", f"/{index}/_alias")[index]["aliases"],
                "shards": self.call("GET", f"/{index}/_settings")[index]["settings"]["index"]["number_of_shards"]}


SEED = {
    "logs-app": ({"properties": {"message": {"type": "text"}, "level": {"type": "keyword"},
                                 "n": {"type": "long"}, "ts": {"type": "date"}}},
                 {"logs": {}, "errors": {"filter": {"term": {"level": "error"}}}}, 1500),
    "users": ({"properties": {"email": {"type": "keyword"}, "age": {"type": "integer"},
                              "tags": {"type": "keyword"}}}, {"people": {"is_write_index": True}}, 1200),
    "metrics": ({"properties": {"host": {"type": "keyword"}, "v": {"type": "double"},
                                "labels": {"type": "object"}}}, {}, 700),
    "empty-index": ({"properties": {"x": {"type": "keyword"}}}, {}, 0),
}


def _doc(index: str, i: int) -> tuple[str, dict, str | None]:
    if index == "logs-app":
        return (f"log-{i}", {"message": f"request {i} → ok ✓", "level": "error" if i % 10 == 0 else "info",
                             "n": i, "ts": f"2026-11-{1 + i % 28:02d}T00:00:00Z"}, None)
    if index == "users":
        return (f"u{i}", {"email": f"user{i}@coderz.dev", "age": 20 + i % 50, "tags": ["a", f"t{i % 7}"]},
                "tenant-a" if i % 3 == 0 else None)
    return (f"m-{i:05d}", {"host": f"node-{i % 5}", "v": i / 7, "labels": {"dc": "fra", "rack": i % 4}}, None)


def seed(es: Es) -> dict[str, dict[str, dict]]:
    es.wipe()
    for index, (mappings, aliases, n) in SEED.items():
        es.call("PUT", f"/{index}", json={"settings": {"index": {"number_of_shards": 1, "number_of_replicas": 0}},
                                           "mappings": mappings, "aliases": aliases})
        docs = [_doc(index, i) for i in range(n)]
        for k in range(0, n, 500):
            es.bulk(index, docs[k:k + 500])
        es.call("POST", f"/{index}/_refresh")
    es.call("PUT", "/.kibana_1", json={"settings": {"index": {"hidden": True, "number_of_replicas": 0}}})
    es.bulk(".kibana_1", [(f"k{i}", {"type": "config"}, None) for i in range(3)])
    es.call("POST", "/.kibana_1/_refresh")
    return {index: es.docs(index) for index in SEED}


# -- fixtures -------------------------------------------------------------------------


def _real_es(registry: str):
    from testcontainers.core.container import DockerContainer

    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
    port, tport = free_port(), free_port()
    container = (DockerContainer(f"{registry}/{ES_IMAGE}", network_mode="host")
                 .with_env("discovery.type", "single-node")
                 .with_env("http.host", "127.0.0.1").with_env("http.port", str(port))
                 .with_env("transport.host", "127.0.0.1").with_env("transport.port", str(tport))
                 .with_env("xpack.security.enabled", "true")
                 .with_env("xpack.security.http.ssl.enabled", "false")
                 .with_env("ELASTIC_PASSWORD", PW)
                 .with_env("path.repo", "/tmp/es-repo")
                 .with_env("ES_JAVA_OPTS", "-Xms512m -Xmx512m"))
    container.start()
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                r = httpx.get(f"{url}/_cluster/health", auth=("elastic", PW), timeout=5)
                if r.status_code == 200 and r.json().get("status") in ("green", "yellow"):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Elasticsearch container not ready on {url}")
            time.sleep(1)
        key = httpx.post(f"{url}/_security/api_key", auth=("elastic", PW), json={"name": "coderz-tests"},
                         timeout=30).json()["encoded"]
        yield Es(url, api_key=key)
    finally:
        container.stop()


@pytest.fixture(scope="module")
def es_server():
    if REGISTRY_HOST:
        yield from _real_es(REGISTRY_HOST)
        return
    srv = EsStandin(users={"elastic": PW}, api_keys=["Y29kZXJ6LWtleS1pZDpzZWNyZXQta2V5LTE="]).start()
    try:
        yield Es(srv.url, standin=srv, api_key="Y29kZXJ6LWtleS1pZDpzZWNyZXQta2V5LTE=")
    finally:
        srv.stop()


@pytest.fixture
def es(es_server):
    """The server with the seed data (4 indices + hidden .kibana_1); ``es.seeded`` holds the documents."""
    if es_server.standin:
        s = es_server.standin
        s.faults.clear()
        s.no_pit = s.no_shard_doc = False
        s.requests.clear()
        s.bulk_sizes.clear()
    es_server.seeded = seed(es_server)
    if es_server.standin:
        es_server.standin.requests.clear()
        es_server.standin.bulk_sizes.clear()
    return es_server


def _svc(es: Es, **over) -> ElasticsearchService:
    data: dict = {"kind": "elasticsearch", "url": es.url, "user": "elastic", "password": SecretStr(PW)}
    data.update(over)
    return ElasticsearchService(NAME, ElasticsearchConfig(**data), LocalAccess())


def _exported(folder: Path, index: str) -> dict[str, dict]:
    path = folder / index / "documents.ndjson.gz"
    out = {}
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            out[d["_id"]] = {"src": d["_source"], "routing": d.get("_routing")}
    return out


# -- tests ------------------------------------------------------------------------------


def test_registered_with_the_product_artifact_names():
    assert REGISTRY["elasticsearch"] is ElasticsearchService
    cfg = ElasticsearchConfig(kind="elasticsearch")
    assert expected_artifacts("elasticsearch", cfg) == ["elasticsearch/", "elasticsearch-data.tar.gz"]


def test_backup_exports_every_visible_index_with_all_documents(es, tmp_path):
    data = tmp_path / "esdata"
    (data / "indices" / "abc" / "0").mkdir(parents=True)
    (data / "node.lock").write_bytes(b"")
    (data / "indices" / "abc" / "0" / "segments_1").write_bytes(os.urandom(4096))
    out = tmp_path / "snap"

    export, tarball = _svc(es, data_dir=str(data)).backup(out)

    assert export.status == "ok" and export.path == "elasticsearch/"
    assert export.summary == "Elasticsearch: 4 indices exported"
    assert ".kibana_1" in export.details["skipped_hidden"]
    assert export.details["indices"] == {"logs-app": 1500, "users": 1200, "metrics": 700, "empty-index": 0}
    root = out / "elasticsearch"
    assert sorted(p.name for p in root.iterdir()) == ["empty-index", "index.json", "logs-app", "metrics", "users"]
    on_disk = sorted(str(p.relative_to(out)) for p in root.rglob("*") if p.is_file())
    assert sorted(f.path for f in export.files) == on_disk
    assert not list(out.rglob(".*partial"))
    for index in ("logs-app", "users", "metrics"):
        assert _exported(root, index) == es.seeded[index]          # every document, routing included
    assert any(d["routing"] == "tenant-a" for d in _exported(root, "users").values())
    assert not (root / "empty-index" / "documents.ndjson.gz").exists()
    assert json.loads((root / "index.json").read_text())["indices"]["empty-index"] == 0
    settings = json.loads((root / "users" / "settings.json").read_text())
    assert settings["index.number_of_shards"] == "1"
    for private in ("index.uuid", "index.creation_date", "index.provided_name", "index.version.created"):
        assert private not in settings
    assert json.loads((root / "logs-app" / "aliases.json").read_text())["errors"]["filter"]
    assert "properties" in json.loads((root / "logs-app" / "mapping.json").read_text())
    assert PW not in json.dumps(export.details) + json.dumps(tarball.details)

    assert tarball.status == "ok" and tarball.path == "elasticsearch-data.tar.gz"
    assert "not crash-consistent" in tarball.details["note"]
    svc = _svc(es)
    assert svc.verify(root) == "4 indices, 3400 documents: JSON and gzip intact, document counts match index.json"
    assert svc.verify(out / "elasticsearch-data.tar.gz") == "gzip and tar intact, 5 entries"


@STANDIN_ONLY
def test_export_pages_through_one_pit_and_closes_it(es, tmp_path):
    _svc(es, page_size=100).backup(tmp_path)
    searches = [p for m, p in es.standin.requests if p == "/_search"]
    # 1500 + 1200 + 700 documents in pages of 100, plus the empty page that ends each index
    assert len(searches) == 15 + 1 + 12 + 1 + 7 + 1 + 1
    assert es.standin.pits == {}     # every PIT deleted (old ids are refused: the newest was always sent)
    assert _exported(tmp_path / "elasticsearch", "logs-app") == es.seeded["logs-app"]


@STANDIN_ONLY
@pytest.mark.parametrize("missing", ["no_pit", "no_shard_doc"])
def test_scroll_fallback_when_the_server_has_no_pit(es, tmp_path, missing):
    setattr(es.standin, missing, True)
    [export, _] = _svc(es, page_size=250).backup(tmp_path)
    assert export.status == "ok"
    assert _exported(tmp_path / "elasticsearch", "users") == es.seeded["users"]
    assert es.standin.scrolls == {} and es.standin.pits == {}


def test_data_dir_unset_means_skipped_tarball(es, tmp_path):
    _, tarball = _svc(es).backup(tmp_path)
    assert tarball.status == "skipped" and "data_dir is not set" in tarball.error
    assert not (tmp_path / "elasticsearch-data.tar.gz").exists()


def test_api_key_auth(es, tmp_path):
    [export, _] = _svc(es, user=None, password=None, api_key=SecretStr(es.api_key)).backup(tmp_path)
    assert export.summary == "Elasticsearch: 4 indices exported"


@pytest.mark.parametrize("creds", [dict(password=SecretStr("wrong-pw-3321")), dict(user=None, password=None),
                                   dict(user=None, password=None, api_key=SecretStr("bm90OmFrZXk="))])
def test_auth_failure_is_clear_and_leaves_nothing(es, tmp_path, creds):
    with pytest.raises(ArtifactError, match=r"authentication failed .*HTTP 401.*security_exception") as err:
        _svc(es, **creds).backup(tmp_path)
    assert "wrong-pw-3321" not in str(err.value) and PW not in str(err.value)
    assert list(tmp_path.iterdir()) == []


@STANDIN_ONLY
def test_missing_read_privilege_is_a_clear_403(es, tmp_path):
    es.standin.users["reader"] = "reader-pw-1"
    es.standin.limited.add("reader")
    with pytest.raises(ArtifactError, match=r"user 'reader' may not open a point in time on index 'empty-index' "
                                            r"\(HTTP 403: security_exception: .*unauthorized.*\); grant"):
        _svc(es, user="reader", password=SecretStr("reader-pw-1")).backup(tmp_path)
    assert list(tmp_path.iterdir()) == []


@STANDIN_ONLY
def test_closed_indices_and_data_streams_are_named_not_silently_dropped(es, tmp_path):
    es.call("PUT", "/archive-2025", json={"settings": {"index": {"number_of_replicas": 0}}})
    es.call("POST", "/archive-2025/_close")
    es.call("PUT", "/.ds-logs-nginx-2026.11.23-000001", json={"settings": {"index": {"hidden": True}}})
    es.standin.data_streams[:] = [{"name": "logs-nginx", "hidden": False},
                                  {"name": "ilm-history-7", "hidden": True, "system": False}]
    try:
        [export, _] = _svc(es).backup(tmp_path)
    finally:
        es.standin.data_streams.clear()
        es.call("DELETE", "/archive-2025")
        es.call("DELETE", "/.ds-logs-nginx-2026.11.23-000001")
    assert export.summary == ("Elasticsearch: 4 indices exported (not exported: closed indices archive-2025; "
                              "data streams logs-nginx)")
    assert export.details["skipped_closed"] == ["archive-2025"]
    assert export.details["data_streams_not_exported"] == ["logs-nginx"]
    assert export.details["skipped_hidden"] == [".ds-logs-nginx-2026.11.23-000001", ".kibana_1"]
    assert not (tmp_path / "elasticsearch" / "archive-2025").exists()


def test_unreachable_server(tmp_path):
    svc = ElasticsearchService(NAME, ElasticsearchConfig(kind="elasticsearch", url=f"http://127.0.0.1:{refused_port()}"),
                               LocalAccess())
    with pytest.raises(ArtifactError, match="is unreachable"):
        svc.backup(tmp_path)
    assert list(tmp_path.iterdir()) == []


@STANDIN_ONLY
@pytest.mark.parametrize("fault,match", [
    ({"search_500_at_page": 3}, r"HTTP 500.*search_phase_execution_exception.*stopped after 200 of 1500"),
    ({"expire_pit_at_page": 2}, r"expired between two pages .*raise keep_alive"),
    ({"shard_failure_at_page": 2}, r"1 of 2 shards failed on page 2 .*partial export"),
])
def test_partial_export_fails_keeps_none_of_it_and_keeps_the_data_tarball(es, tmp_path, fault, match):
    es.standin.faults.update(fault)
    data = tmp_path / "esdata"
    (data / "indices").mkdir(parents=True)
    (data / "node.lock").write_bytes(b"")
    # the first index (empty-index) has no second page; logs-app is next in name order
    with pytest.raises(PartialBackupError, match=match) as err:
        _svc(es, page_size=100, data_dir=str(data)).backup(tmp_path / "snap")
    assert not (tmp_path / "snap" / "elasticsearch").exists()   # nothing of the partial export
    assert list(err.value.failed) == ["elasticsearch/"]
    [tarball] = err.value.results   # the data dir does not depend on the API: kept
    assert tarball.status == "ok" and (tmp_path / "snap" / tarball.path).stat().st_size == tarball.bytes
    assert es.standin.pits == {}
    # restoring that snapshot with the default restore_from = "export" says what to do instead
    with pytest.raises(RestoreError, match='no index export to restore.*restore_from = "volume"'):
        _svc(es, data_dir=str(data)).restore(tmp_path / "snap" / tarball.path)


@STANDIN_ONLY
def test_count_mismatch_is_a_partial_export(es, tmp_path, monkeypatch):
    # a server whose PIT reports one more document than it returns
    orig = es.standin._search

    def lying(body, index):
        status, res = orig(body, index)
        if "total" in res.get("hits", {}):
            res["hits"]["total"]["value"] += 1
        return status, res

    monkeypatch.setattr(es.standin, "_search", lying)
    with pytest.raises(IncompleteArtifactError, match=r"exported 0 documents but the point in time holds 1"):
        _svc(es).backup(tmp_path)
    assert not (tmp_path / "elasticsearch").exists()


def test_round_trip_backup_wipe_restore(es, tmp_path):
    svc = _svc(es, bulk_docs=200, bulk_bytes=64 * 1024)
    svc.backup(tmp_path)
    before = {index: es.meta(index) for index in SEED}
    # wipe: indices gone, one re-created with other data (restore overwrites current data)
    for index in SEED:
        es.call("DELETE", f"/{index}")
    es.call("PUT", "/users", json={"mappings": {"properties": {"other": {"type": "keyword"}}}})
    es.bulk("users", [("stranger", {"other": "x"}, None)])
    assert "deleted if it exists" in svc.restore_target()

    msg = svc.restore(tmp_path / "elasticsearch")

    assert "4 indices restored" in msg and "users (1200)" in msg
    for index in SEED:
        assert es.docs(index) == es.seeded[index], index
        assert es.meta(index) == before[index], index
        settings = es.call("GET", f"/{index}/_settings", params={"flat_settings": "true"})[index]["settings"]
        assert settings["index.number_of_replicas"] == "0"
        assert "index.refresh_interval" not in settings     # back to the default after the load
    assert es.call("GET", "/users/_count")["count"] == 1200
    assert "green" in svc.health() or "yellow" in svc.health()
    if es.standin:
        assert len(es.standin.bulk_sizes) >= 1500 // 200 + 1200 // 200 + 700 // 200
        assert max(es.standin.bulk_sizes) <= 64 * 1024
    # the tarball artifact is not used in export mode
    assert svc.restore(tmp_path / "elasticsearch-data.tar.gz").startswith("not used")


def test_restore_with_replace_false_refuses_an_existing_index(es, tmp_path):
    svc = _svc(es)
    svc.backup(tmp_path)
    es.call("DELETE", "/metrics")
    with pytest.raises(RestoreError, match=r"index 'empty-index' exists .*replace=True") as err:
        svc.restore(tmp_path / "elasticsearch", replace=False)
    assert "logs-app" not in str(err.value)
    # only the missing one, explicitly
    assert "metrics (700)" in svc.restore(tmp_path / "elasticsearch", replace=False, indices=["metrics"])
    assert es.docs("metrics") == es.seeded["metrics"]


def test_bulk_item_errors_name_the_index_and_the_first_errors(es, tmp_path):
    svc = _svc(es)
    svc.backup(tmp_path)
    mapping = tmp_path / "elasticsearch" / "logs-app" / "mapping.json"
    m = json.loads(mapping.read_text())
    m["properties"]["level"] = {"type": "long"}   # "info"/"error" do not parse as long
    mapping.write_text(json.dumps(m))
    with pytest.raises(RestoreError, match=r"index 'logs-app' failed: 1000 of 1000 documents .*"
                                           r"first errors: id 'log-0': document_parsing_exception: .*"
                                           r"failed to parse field \[level\] of type \[long\]"):
        svc.restore(tmp_path / "elasticsearch", indices=["logs-app"])


@STANDIN_ONLY
def test_bulk_rejections_with_429_are_resent(es, tmp_path):
    svc = _svc(es)
    svc.backup(tmp_path)
    es.standin.faults["bulk_429"] = 30
    assert "metrics (700)" in svc.restore(tmp_path / "elasticsearch", indices=["metrics"])
    assert es.docs("metrics") == es.seeded["metrics"]


@STANDIN_ONLY
def test_bulk_body_has_the_final_newline_rule(es):
    r = es.http.post("/_bulk", content=b'{"index":{"_index":"x","_id":"1"}}\n{"a":1}',
                     headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 400 and "terminated by a newline" in r.json()["error"]["reason"]


def test_snapshot_repository_records_the_snapshot(es, tmp_path):
    es.call("PUT", "/_snapshot/coderz-repo", json={"type": "fs", "settings": {"location": "coderz"}})
    [export, _] = _svc(es, snapshot_repository="coderz-repo").backup(tmp_path)
    snap = export.details["snapshot"]
    assert snap["repository"] == "coderz-repo" and snap["state"] == "SUCCESS" and snap["uuid"]
    assert snap["snapshot"].startswith("coderz-") and snap["shards"]["failed"] == 0
    assert snap["indices"] == sorted(SEED)
    got = es.call("GET", f"/_snapshot/coderz-repo/{snap['snapshot']}")["snapshots"][0]
    assert sorted(got["indices"]) == sorted(SEED) and got["include_global_state"] is False
    with pytest.raises(ArtifactError, match="repository 'nope' is not registered"):
        _svc(es, snapshot_repository="nope").backup(tmp_path / "b")
    assert not (tmp_path / "b" / "elasticsearch").exists()


@STANDIN_ONLY
def test_partial_es_snapshot_fails_the_export(es, tmp_path):
    es.call("PUT", "/_snapshot/r", json={"type": "fs", "settings": {"location": "r"}})
    es.standin.faults["snapshot_partial"] = True
    with pytest.raises(ArtifactError, match=r"state 'PARTIAL' with 1 of 4 shards failed: .*disk full"):
        _svc(es, snapshot_repository="r").backup(tmp_path)
    assert not (tmp_path / "elasticsearch").exists()


def test_verify_catches_damage(es, tmp_path):
    data = tmp_path / "esdata"
    data.mkdir()
    (data / "state").write_text("x" * 5000)
    svc = _svc(es, data_dir=str(data))
    svc.backup(tmp_path / "good")
    good = tmp_path / "good" / "elasticsearch"
    docs = good / "users" / "documents.ndjson.gz"
    raw = docs.read_bytes()
    plain = gzip.decompress(raw)

    def damaged(label, fn):
        copy = tmp_path / label / "elasticsearch"
        shutil.copytree(good, copy)
        fn(copy)
        return copy

    users = r"elasticsearch/users/documents\.ndjson\.gz: "
    cases = {  # label: (damage, the check that must fire)
        "truncated": (lambda c: (c / "users" / "documents.ndjson.gz").write_bytes(raw[: len(raw) // 2]),
                      users + r"gzip stream is damaged or truncated \(Compressed file ended"),
        "flipped": (lambda c: (c / "users" / "documents.ndjson.gz").write_bytes(
            raw[:200] + bytes([raw[200] ^ 0xFF]) + raw[201:]),
            users + "gzip stream is damaged or truncated"),   # zlib's message depends on the byte hit
        "line-lost": (lambda c: (c / "users" / "documents.ndjson.gz").write_bytes(
            gzip.compress(plain[: plain.rindex(b"\n", 0, len(plain) - 1) + 1])),
            users + "1199 documents, index.json says 1200"),
        "not-json-line": (lambda c: (c / "users" / "documents.ndjson.gz").write_bytes(
            gzip.compress(b'{"_id":"x","_source":{}}\nnot json\n')), users + "line 2 is not a JSON object"),
        "bad-mapping": (lambda c: (c / "logs-app" / "mapping.json").write_text("{\"properties\": "),
                        r"elasticsearch/logs-app/mapping\.json: not valid JSON"),
        "no-settings": (lambda c: (c / "metrics" / "settings.json").unlink(),
                        r"elasticsearch/metrics/settings\.json: missing"),
        "no-docs": (lambda c: (c / "metrics" / "documents.ndjson.gz").unlink(),
                    r"elasticsearch/metrics/documents\.ndjson\.gz: missing \(700 documents expected\)"),
        "extra-folder": (lambda c: (c / "stray").mkdir(), "elasticsearch: folders not listed in index.json: stray"),
        "evil-name": (lambda c: (c / "index.json").write_text(
            json.dumps({"indices": {**json.loads((good / "index.json").read_text())["indices"], "_all": 0}})),
            r"elasticsearch/index\.json: '_all' is not a valid index name"),
        "no-index-json": (lambda c: (c / "index.json").unlink(), r"elasticsearch/index\.json: missing"),
    }
    for label, (fn, match) in cases.items():
        with pytest.raises(VerifyError, match=match):
            svc.verify(damaged(label, fn))
    # a damaged export is refused before anything changes
    with pytest.raises(RestoreError, match="refusing to restore, nothing changed"):
        svc.restore(tmp_path / "line-lost" / "elasticsearch")
    assert es.docs("users") == es.seeded["users"]
    tar = (tmp_path / "good" / "elasticsearch-data.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(tar[: len(tar) // 2])
    with pytest.raises(VerifyError, match="damaged"):
        svc.verify(tmp_path / "cut.tar.gz")


# -- volume restore against a stand-in process that keeps its state in its data dir ------


@STANDIN_ONLY
def test_volume_restore_replaces_the_data_dir_and_restarts(tmp_path):
    data = tmp_path / "es-data"
    port = free_port()
    pidfile = tmp_path / "es.pid"
    script = Path(__file__).parent / "standins" / "elasticsearch.py"
    start = ["sh", "-c", f"{sys.executable} {script} --port {port} --data-dir {data} >>{tmp_path}/es.log 2>&1 & "
                         f"echo $! > {pidfile}"]
    stop = ["sh", "-c", f"kill $(cat {pidfile})"]
    subprocess.run(start, check=True)
    try:
        es = Es(f"http://127.0.0.1:{port}")
        es.http = httpx.Client(base_url=es.url, timeout=30)   # no auth on this one
        deadline = time.monotonic() + 30
        while True:
            try:
                es.call("GET", "/")
                break
            except (httpx.HTTPError, AssertionError):
                assert time.monotonic() < deadline, (tmp_path / "es.log").read_text()
                time.sleep(0.1)
        es.call("PUT", "/orders", json={"settings": {"index": {"number_of_replicas": 0}}})
        es.bulk("orders", [(f"o{i}", {"n": i}, None) for i in range(50)])
        es.call("POST", "/orders/_refresh")
        svc = ElasticsearchService(NAME, ElasticsearchConfig(
            kind="elasticsearch", url=es.url, data_dir=str(data), restore_from="volume",
            stop_command=stop, start_command=start, health_timeout_s=30), LocalAccess())
        svc.backup(tmp_path / "snap")
        es.call("DELETE", "/orders")
        es.call("PUT", "/junk")
        assert "replaced by the tarball" in svc.restore_target()
        assert svc.restore(tmp_path / "snap" / "elasticsearch").startswith("not used")

        msg = svc.restore(tmp_path / "snap" / "elasticsearch-data.tar.gz")

        assert "old kept at" in msg and "green" in msg
        assert sorted(es.docs("orders")) == sorted(f"o{i}" for i in range(50))
        assert es.call("HEAD", "/junk", ok=(404,)) is None
        olds = list(tmp_path.glob("es-data.coderz-old-*"))
        assert len(olds) == 1 and "junk" in (olds[0] / "state.json").read_text()
    finally:
        if pidfile.exists():
            subprocess.run(["sh", "-c", f"kill $(cat {pidfile}) 2>/dev/null"], check=False)


@STANDIN_ONLY
def test_volume_restore_refuses_while_the_node_runs_without_stop_command(es, tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "f").write_text("x")
    svc = _svc(es, data_dir=str(data), restore_from="volume")
    svc.backup(tmp_path / "snap")
    with pytest.raises(RestoreError, match="is running; set stop_command"):
        svc.restore(tmp_path / "snap" / "elasticsearch-data.tar.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "snap"]


def test_cli_backup_verify_and_restore_through_the_flows(es, tmp_path, cli_env):
    from helpers import run_cli

    dest = tmp_path / "snapshots"
    config = tmp_path / "coderz-backup.toml"
    config.write_text(f'dest = "{dest}"\nretries = 0\n\n[services.{NAME}]\nkind = "elasticsearch"\n'
                      f'url = "{es.url}"\nuser = "elastic"\npassword = "env:T_ES_PW"\n')
    env = dict(cli_env, T_ES_PW=PW)

    res = run_cli(["backup", "--config", str(config)], env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Elasticsearch: 4 indices exported" in res.stdout
    manifest = json.loads((dest / "latest" / "manifest.json").read_text())
    export, tarball = [a for a in manifest["artifacts"] if a["service"] == NAME]
    assert export["status"] == "ok" and len(export["files"]) == 3 * 4 + 3 + 1
    assert tarball["status"] == "skipped"
    assert PW not in (dest / "latest" / "manifest.json").read_text() + res.stdout + res.stderr

    res = run_cli(["verify", "--config", str(config)], env)
    assert res.returncode == 0, res.stdout + res.stderr

    es.call("DELETE", "/users")
    es.call("DELETE", "/logs-app")
    res = run_cli(["restore", "--config", str(config), "--yes", "--no-safety-backup"], env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert es.docs("users") == es.seeded["users"] and es.docs("logs-app") == es.seeded["logs-app"]


# -- TLS with a CA made the way Elasticsearch 8 made http_ca.crt (no keyUsage) ----------


def _es8_style_pki(folder: Path, cn: str = "Elasticsearch security auto-configuration HTTP CA") -> tuple[Path, Path, Path]:
    """(ca.crt, http.crt, http.key): a self-signed CA and a server certificate for 127.0.0.1 with
    the extensions x-pack CertGenUtils.generateSignedCertificate gives them: subject and authority
    key identifiers, basicConstraints (critical on the CA only), no keyUsage, no extendedKeyUsage."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)

    def cert(subject, issuer, key, signer, ca_key_pub, *, ca: bool, san=None):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now)
             .not_valid_after(now + dt.timedelta(days=30))
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key_pub), critical=False)
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=ca))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ca = cert(ca_name, ca_name, ca_key, ca_key, ca_key.public_key(), ca=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    srv = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "es-node")]), ca_name, key, ca_key,
               ca_key.public_key(), ca=False, san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    assert not [e for e in ca.extensions if e.oid == x509.oid.ExtensionOID.KEY_USAGE]
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "http_ca.crt", folder / "http.crt", folder / "http.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest.fixture(scope="module")
def es_tls(tmp_path_factory):
    """The stand-in over https with an ES8-style CA; ``.cacert`` is that CA's file."""
    pytest.importorskip("cryptography")
    ca, crt, key = _es8_style_pki(tmp_path_factory.mktemp("es-pki"))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(crt, key)
    srv = EsStandin(users={"elastic": PW}, tls=server).start()
    try:
        es = Es(srv.url, standin=srv)
        helper = ssl.create_default_context(cafile=str(ca))
        helper.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
        es.http = httpx.Client(base_url=srv.url, auth=("elastic", PW), timeout=60, verify=helper)
        es.cacert = str(ca)
        yield es
    finally:
        srv.stop()


def _py313_defaults(monkeypatch) -> None:
    """ssl.create_default_context as Python 3.13+ has it (VERIFY_X509_STRICT and PARTIAL_CHAIN on),
    so the tests below hold on 3.11/3.12 too; on 3.13+ it changes nothing."""
    real = ssl.create_default_context

    def default(*a, **kw):
        ctx = real(*a, **kw)
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
        return ctx

    monkeypatch.setattr(ssl, "create_default_context", default)


needs_strict_flag = pytest.mark.skipif(not hasattr(ssl, "VERIFY_X509_STRICT"), reason="ssl has no VERIFY_X509_STRICT")


@STANDIN_ONLY
@needs_strict_flag
@pytest.mark.parametrize("defaults", ["this-python", "python-3.13"])
def test_tls_round_trip_with_an_es8_ca_without_key_usage(es_tls, tmp_path, monkeypatch, defaults):
    from coderz_backup.services.httpapi import tls_verify

    if defaults == "python-3.13":
        _py313_defaults(monkeypatch)
    svc = _svc(es_tls, cacert=es_tls.cacert)
    ctx = tls_verify(NAME, svc.config)
    assert isinstance(ctx, ssl.SSLContext)
    assert not ctx.verify_flags & ssl.VERIFY_X509_STRICT          # cleared ...
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED   # ... nothing else relaxed
    seeded = seed(es_tls)

    [export, _] = svc.backup(tmp_path)
    assert export.summary == "Elasticsearch: 4 indices exported"
    for index in SEED:
        es_tls.call("DELETE", f"/{index}")
    assert "4 indices restored" in svc.restore(tmp_path / "elasticsearch")
    assert {index: es_tls.docs(index) for index in SEED} == seeded
    assert "green" in svc.health()


@STANDIN_ONLY
@needs_strict_flag
def test_the_es8_ca_is_the_kind_strict_mode_rejects(es_tls):
    # what Python 3.13's default context does with that CA: proof the CA above is the problematic kind
    strict = ssl.create_default_context(cafile=es_tls.cacert)
    strict.verify_flags |= ssl.VERIFY_X509_STRICT
    if ssl.OPENSSL_VERSION_INFO < (3, 0):
        pytest.skip(f"{ssl.OPENSSL_VERSION} does not check keyUsage on CAs in strict mode")
    with pytest.raises(httpx.ConnectError, match="key usage"):
        httpx.get(f"{es_tls.url}/", verify=strict, auth=("elastic", PW))


@STANDIN_ONLY
def test_tls_still_checks_the_chain_and_the_host_name(es_tls, tmp_path, monkeypatch):
    pytest.importorskip("cryptography")
    _py313_defaults(monkeypatch)
    other_ca, _, _ = _es8_style_pki(tmp_path / "other", cn="some other CA")
    with pytest.raises(ArtifactError, match="TLS failed .*certificate verify failed"):
        _svc(es_tls, cacert=str(other_ca)).backup(tmp_path / "a")
    # the certificate names 127.0.0.1 only: localhost is another host name
    port = es_tls.standin.port
    with pytest.raises(ArtifactError, match="TLS failed .*(hostname|match)"):
        _svc(es_tls, url=f"https://localhost:{port}", cacert=es_tls.cacert).backup(tmp_path / "b")
    assert not (tmp_path / "a").exists() or list((tmp_path / "a").iterdir()) == []


# -- searchable-snapshot (mounted) indices ------------------------------------------------


@STANDIN_ONLY
def test_creating_an_index_with_searchable_snapshot_settings_is_refused(es):
    r = es.http.put("/copy-of-mounted", json={"settings": {
        "index.store.type": "snapshot", "index.store.snapshot.repository_name": "r",
        "index.store.snapshot.snapshot_name": "s", "index.store.snapshot.partial": True}})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "validation_exception"
    assert ("Validation Failed: 1: private index setting [index.store.snapshot.repository_name] can not be set "
            "explicitly;2: private index setting [index.store.snapshot.snapshot_name]") in err["reason"]


@STANDIN_ONLY
def test_mounted_searchable_snapshots_are_skipped_with_a_reason_and_the_rest_round_trips(es, tmp_path, caplog):
    es.call("PUT", "/_snapshot/frozen-repo", json={"type": "fs", "settings": {"location": "frozen"}})
    es.call("PUT", "/_snapshot/frozen-repo/snap-1", params={"wait_for_completion": "true"},
            json={"indices": "metrics,logs-app", "include_global_state": False})
    es.call("POST", "/_snapshot/frozen-repo/snap-1/_mount", params={"wait_for_completion": "true"},
            json={"index": "metrics", "renamed_index": "restored-metrics"})
    es.call("POST", "/_snapshot/frozen-repo/snap-1/_mount",
            params={"wait_for_completion": "true", "storage": "shared_cache"},
            json={"index": "logs-app", "renamed_index": "partial-logs-app"})
    try:
        flat = es.call("GET", "/partial-logs-app/_settings", params={"flat_settings": "true"})[
            "partial-logs-app"]["settings"]
        assert flat["index.store.type"] == "snapshot" and flat["index.store.snapshot.partial"] == "true"
        assert es.call("GET", "/restored-metrics/_count")["count"] == 700    # searchable: it holds data
        svc = _svc(es)
        with caplog.at_level("WARNING"):
            [export, _] = svc.backup(tmp_path)
        assert export.summary == ("Elasticsearch: 4 indices exported (not exported: searchable-snapshot indices "
                                  "partial-logs-app, restored-metrics (mount them from their snapshot repository))")
        skipped = {m["index"]: m for m in export.details["skipped_searchable_snapshots"]}
        assert skipped["partial-logs-app"] == {
            "index": "partial-logs-app", "repository": "frozen-repo", "snapshot": "snap-1",
            "snapshot_index": "logs-app", "partial": True, "reason": skipped["partial-logs-app"]["reason"]}
        assert "mount it again" in skipped["restored-metrics"]["reason"] and not skipped["restored-metrics"]["partial"]
        assert "restored-metrics from frozen-repo/snap-1" in caplog.text and "_mount" in caplog.text
        assert sorted(export.details["indices"]) == sorted(SEED)
        assert not (tmp_path / "elasticsearch" / "restored-metrics").exists()
        assert "restored-metrics" not in svc.fingerprint_live()["indices"]
        for index in SEED:
            es.call("DELETE", f"/{index}")
        msg = svc.restore(tmp_path / "elasticsearch")
        assert "4 indices restored" in msg
        assert {index: es.docs(index) for index in SEED} == es.seeded
        assert es.call("GET", "/partial-logs-app/_count")["count"] == 1500   # left alone
    finally:
        for index in ("restored-metrics", "partial-logs-app"):
            es.call("DELETE", f"/{index}", ok=(200, 404))
        es.standin.repos.pop("frozen-repo", None)


@STANDIN_ONLY
def test_an_older_export_holding_a_searchable_snapshot_index_restores_the_rest(es, tmp_path):
    svc = _svc(es)
    svc.backup(tmp_path)
    root = tmp_path / "elasticsearch"
    # what an export made before the skip held for a mounted index: its private settings
    shutil.copytree(root / "metrics", root / "restored-metrics")
    settings = json.loads((root / "metrics" / "settings.json").read_text())
    settings.update({"index.store.type": "snapshot", "index.store.snapshot.repository_name": "frozen-repo",
                     "index.store.snapshot.snapshot_name": "snap-1", "index.store.snapshot.index_name": "metrics"})
    (root / "restored-metrics" / "settings.json").write_text(json.dumps(settings))
    index = json.loads((root / "index.json").read_text())
    index["indices"]["restored-metrics"] = 700
    (root / "index.json").write_text(json.dumps(index))
    r = es.http.put("/restored-metrics", json={"settings": settings})
    assert r.status_code == 400 and r.json()["error"]["type"] == "validation_exception"   # why it is skipped
    for name in SEED:
        es.call("DELETE", f"/{name}")
    msg = svc.restore(root)
    assert "4 indices restored" in msg
    assert ("searchable-snapshot indices not restored: restored-metrics (mount it from snapshot "
            "frozen-repo/snap-1)") in msg
    assert es.call("HEAD", "/restored-metrics", ok=(404,)) is None
    assert es.docs("metrics") == es.seeded["metrics"]
