"""APISIX Admin-API export/verify/restore against an Admin API that stores its objects in a real etcd 3.4.

By default the Admin API is the stand-in of ``tests/standins/apisix.py`` (no APISIX is
installable here); with ``CODERZ_TEST_REGISTRY`` set (e.g. ``docker.io``) the same tests
run against the official ``apache/apisix`` image through testcontainers, on the same
real etcd. Tests that need the stand-in's fault hooks are skipped then.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import shutil
import ssl
import time
from pathlib import Path

import httpx
import pytest
from etcd_server import EtcdServer
from pydantic import SecretStr
from standins.apisix import ApisixStandin

from coderz_backup.access import LocalAccess
from coderz_backup.config import load
from coderz_backup.services.apisix import ApisixConfig
from coderz_backup.services.etcd import EtcdConfig
from coderz_backup.errors import (
    ArtifactError,
    IncompleteArtifactError,
    RestoreError,
    VerifyError,
)
from coderz_backup.sandbox import free_port
from coderz_backup.services import REGISTRY, create, expected_artifacts
from coderz_backup.services.apisix import CREDENTIALS_NOTE_OFF, SSL_KEY_NOTE, ApisixService
from coderz_backup.services.etcd import EtcdService
from helpers import refused_port

pytestmark = pytest.mark.skipif(not shutil.which("etcd"), reason="etcd-server not installed (scripts/setup.sh)")

REGISTRY_HOST = os.environ.get("CODERZ_TEST_REGISTRY")
APISIX_IMAGE = "apache/apisix:3.9.1-debian"
ADMIN_KEY = "adm-key-7f3c9e1d5b"
VIEWER_KEY = "view-key-2a8e4c6f0d"
CRED_KEY = "jack-cred-key-5e1b93"          # secrets inside consumer credentials (APISIX ≥3.11)
CRED_PASSWORD = "jack-basic-pw-c04d7a"
NAME = "apisix-config"
CORE = "routes, upstreams, services, consumers, global_rules"

needs_standin = pytest.mark.skipif(bool(REGISTRY_HOST), reason="uses the stand-in's fault hooks")


# -- the Admin API under test: stand-in, or the official image -----------------------------


class RealApisix:
    """The official image on the host network, bound to free 127.0.0.1 ports, using our etcd."""

    def __init__(self, etcd_url: str, base: Path, *, stream_mode: bool = False, api_version: str = "v3"):
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # read when testcontainers is imported
        os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
        from testcontainers.core.container import DockerContainer

        self.admin_key, self.viewer_key = ADMIN_KEY, VIEWER_KEY
        self.port = free_port()
        stream = (f"  stream_proxy:\n    tcp:\n      - addr: \"127.0.0.1:{free_port()}\"\n" if stream_mode else "")
        conf = Path(base) / "config.yaml"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            "apisix:\n"
            f"  node_listen: {free_port()}\n"
            "  enable_admin: true\n"
            "  enable_control: false\n"
            f"  proxy_mode: {'http&stream' if stream_mode else 'http'}\n"
            f"{stream}"
            "  status:\n"
            f"    ip: 127.0.0.1\n    port: {free_port()}\n"
            "deployment:\n"
            "  role: traditional\n"
            "  role_traditional:\n    config_provider: etcd\n"
            "  admin:\n"
            "    admin_key_required: true\n"
            "    admin_key:\n"
            f"      - name: admin\n        key: {ADMIN_KEY}\n        role: admin\n"
            f"      - name: viewer\n        key: {VIEWER_KEY}\n        role: viewer\n"
            "    allow_admin:\n      - 127.0.0.0/24\n"
            f"    admin_listen:\n      ip: 127.0.0.1\n      port: {self.port}\n"
            f"    admin_api_version: {api_version}\n"
            "  etcd:\n"
            f"    host:\n      - \"{etcd_url}\"\n"
            "    prefix: /apisix\n")
        conf.chmod(0o644)
        self.container = (DockerContainer(f"{REGISTRY_HOST}/{APISIX_IMAGE}", network_mode="host")
                          .with_volume_mapping(str(conf), "/usr/local/apisix/conf/config.yaml", "ro"))
        self.container.start()
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/apisix/admin/routes", headers={"X-API-KEY": ADMIN_KEY},
                             timeout=2).status_code in (200, 404):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("APISIX did not answer within 120s:\n" + self.container.get_logs()[1].decode()[-3000:])
            time.sleep(0.5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.container.stop()


@pytest.fixture
def make_apisix(tmp_path_factory):
    """Factory: an Admin API on the etcd at ``etcd_url`` (stand-in, or the official image)."""
    started = []

    def _make(etcd_url: str, **opts):
        if REGISTRY_HOST:
            api = RealApisix(etcd_url, tmp_path_factory.mktemp("apisix"),
                             **{k: v for k, v in opts.items() if k in ("stream_mode", "api_version")})
        else:
            api = ApisixStandin(etcd_url, admin_key=ADMIN_KEY, viewer_key=VIEWER_KEY, **opts).start()
        started.append(api)
        return api

    yield _make
    for api in started:
        api.stop()


@pytest.fixture
def etcd(tmp_path_factory):
    srv = EtcdServer(tmp_path_factory.mktemp("etcd")).start()
    yield srv
    srv.stop()


@pytest.fixture
def apisix(etcd, make_apisix):
    return make_apisix(etcd.url)


# -- helpers ------------------------------------------------------------------------------


def admin(api, method: str, path: str, body=None, key: str = ADMIN_KEY) -> httpx.Response:
    return httpx.request(method, f"{api.url}/apisix/admin/{path}", json=body, headers={"X-API-KEY": key}, timeout=30)


def put(api, path: str, body: dict) -> dict:
    r = admin(api, "PUT", path, body)
    assert r.status_code in (200, 201), r.text
    return r.json()


def _cert() -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api.coderz.local")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("api.coderz.local")]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


PROTO = ('syntax = "proto3"; package helloworld; service Greeter { rpc SayHello (HelloRequest) returns '
         '(HelloReply) {} } message HelloRequest { string name = 1; } message HelloReply { string message = 1; }')


def fill(api, *, routes: int = 25, stream: bool = False) -> dict[str, int]:
    """A small but complete gateway config through the Admin API; returns the expected counts."""
    nodes = {"10.0.0.1:8080": 1}
    put(api, "upstreams/1", {"type": "roundrobin", "nodes": nodes, "name": "backend"})
    put(api, "upstreams/2", {"type": "chash", "key": "remote_addr", "nodes": {"10.0.0.2:8080": 1}})
    put(api, "services/s1", {"upstream_id": "1", "plugins": {"limit-count": {"count": 100, "time_window": 60}}})
    put(api, "plugin_configs/pc1", {"plugins": {"cors": {}}})
    put(api, "consumer_groups/g1", {"plugins": {"limit-count": {"count": 10, "time_window": 60}}})
    put(api, "consumers", {"username": "jack", "group_id": "g1", "plugins": {"key-auth": {"key": "jack-key"}}})
    put(api, "consumers", {"username": "jill", "plugins": {"key-auth": {"key": "jill-key"}}})
    if has_credentials(api):  # APISIX ≥3.11: jack's further keys as credentials, one auth plugin each
        put(api, "consumers/jack/credentials/jack-key-2", {"plugins": {"key-auth": {"key": CRED_KEY}},
                                                          "desc": "second key"})
        put(api, "consumers/jack/credentials/jack-basic",
            {"plugins": {"basic-auth": {"username": "jack", "password": CRED_PASSWORD}}})
    cert, key = _cert()
    put(api, "ssls/1", {"cert": cert, "key": key, "snis": ["api.coderz.local"]})
    put(api, "global_rules/1", {"plugins": {"prometheus": {}}})
    put(api, "protos/1", {"content": PROTO})
    put(api, "secrets/vault/1", {"uri": "http://127.0.0.1:8200", "prefix": "kv/apisix", "token": "vault-tok"})
    put(api, "plugin_metadata/http-logger", {"log_format": {"host": "$host", "client_ip": "$remote_addr"}})
    for i in range(1, routes + 1):
        route: dict = {"uri": f"/api/v{i}/*", "methods": ["GET"], "name": f"r{i}"}
        if i % 3 == 0:
            route["service_id"] = "s1"
        else:
            route["upstream_id"] = "1" if i % 2 else "2"
        if i == 5:
            route["plugin_config_id"] = "pc1"
        put(api, f"routes/{i}", route)
    counts = {"routes": routes, "upstreams": 2, "services": 1, "consumers": 2, "global_rules": 1, "ssls": 1,
              "plugin_configs": 1, "consumer_groups": 1, "protos": 1, "secrets": 1, "plugin_metadata": 1}
    if stream:
        put(api, "stream_routes/1", {"upstream_id": "1", "server_port": 9100})
        counts["stream_routes"] = 1
    if has_credentials(api):
        counts["credentials"] = 2
    return counts


def has_credentials(api) -> bool:
    """Whether the Admin API under test has consumer credentials (a stand-in ≥3.11; the image is 3.9)."""
    return bool(getattr(api, "credentials", False))


def credentials_of(api, username: str) -> dict[str, dict]:
    """The consumer's credentials as the Admin API lists them: id → plugins."""
    r = admin(api, "GET", f"consumers/{username}/credentials")
    if r.status_code == 404:
        return {}
    assert r.status_code == 200, r.text
    return {o["value"]["id"]: o["value"]["plugins"] for o in r.json()["list"]}


def svc(api, **over) -> ApisixService:
    data: dict = {"kind": "apisix", "admin_url": api.url, "admin_key": SecretStr(ADMIN_KEY), "page_size": 10}
    data.update(over)
    return ApisixService(NAME, ApisixConfig(**data), LocalAccess())


def files(out: Path) -> dict[str, list[dict]]:
    folder = out / NAME
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json") if p.name != "index.json"}


def comparable(exported: dict[str, list[dict]]) -> dict[str, dict[str, dict]]:
    """Objects by type and id, without update_time (a restore resets it)."""
    return {t: {o["id"]: {k: v for k, v in o["value"].items() if k != "update_time"} for o in objs}
            for t, objs in exported.items()}


# -- tests ----------------------------------------------------------------------------------


def test_registered_with_the_product_artifact_name_and_defaults():
    assert REGISTRY["apisix"] is ApisixService
    assert expected_artifacts(NAME, ApisixConfig(kind="apisix")) == ["apisix-config/"]
    cfg = load(env={}).services[NAME]  # the built-in Coderz Stack
    assert cfg.admin_url == "http://127.0.0.1:9180" and cfg.page_size == 500 and cfg.api_version == "auto"
    assert cfg.resources[:5] == CORE.split(", ") and "plugin_metadata" in cfg.resources
    with pytest.raises(ValueError, match=r"page_size\n  Input should be greater than or equal to 10"):
        ApisixConfig(kind="apisix", page_size=5)
    with pytest.raises(ValueError, match="'credentials' are listed per consumer: add 'consumers' to resources too"):
        ApisixConfig(kind="apisix", resources=["routes", "credentials"])
    with pytest.raises(ValueError, match="unknown APISIX resource"):
        ApisixConfig(kind="apisix", resources=["routes", "route"])


def test_export_pages_every_type_into_its_own_file(etcd, apisix, tmp_path):
    counts = fill(apisix)
    out = tmp_path / "snap"
    service = svc(apisix)

    [res] = service.backup(out)

    assert res.status == "ok" and res.path == "apisix-config/"
    assert res.summary == ("APISIX config exported (routes, upstreams, services, consumers, global_rules, "
                           "ssls, plugin_configs, consumer_groups, protos, secrets, plugin_metadata"
                           + (", credentials)" if has_credentials(apisix) else ")"))
    assert res.details["ssl_private_keys"] == SSL_KEY_NOTE
    if has_credentials(apisix):
        assert res.details["consumer_credentials"].startswith("2 exported in credentials.json (APISIX/3.11.0)")
    assert res.details["counts"] == counts
    assert "stream mode is off" in res.details["skipped"]["stream_routes"]
    on_disk = sorted(p.name for p in (out / NAME).iterdir())
    assert on_disk == sorted([f"{t}.json" for t in counts] + ["index.json"])  # no .partial, no stream_routes
    assert sorted(f.path for f in res.files) == [f"apisix-config/{n}" for n in on_disk]
    assert res.bytes == sum((out / NAME / n).stat().st_size for n in on_disk)

    index = json.loads((out / NAME / "index.json").read_text())
    assert index["api_version"] == "v3"
    assert {t: e["count"] for t, e in index["types"].items()} == counts
    assert "stream mode is disabled" in index["skipped"]["stream_routes"]

    data = files(out)
    assert [o["id"] for o in data["routes"]] == [str(i) for i in range(1, 26)]  # all pages, in order
    assert {o["id"] for o in data["consumers"]} == {"jack", "jill"}
    assert [o["id"] for o in data["secrets"]] == ["vault/1"]
    assert [o["id"] for o in data["plugin_metadata"]] == ["http-logger"]
    if has_credentials(apisix):  # per consumer, with the secrets as the Admin API returns them
        assert {(o["consumer"], o["id"]): o["value"]["plugins"] for o in data["credentials"]} == {
            ("jack", "jack-key-2"): {"key-auth": {"key": CRED_KEY}},
            ("jack", "jack-basic"): {"basic-auth": {"username": "jack", "password": CRED_PASSWORD}}}
        assert [o["key"] for o in data["credentials"]][0].startswith("/apisix/consumers/jack/credentials/")
        assert not any("credentials/" in o["key"] for o in data["consumers"])
    assert "key" not in data["ssls"][0]["value"] and data["ssls"][0]["value"]["snis"] == ["api.coderz.local"]
    # the export describes the state in etcd: same values, revisions as createdIndex/modifiedIndex
    for obj in data["routes"]:
        [kv] = etcd.call("/kv/range", {"key": base64.b64encode(obj["key"].encode()).decode()})["kvs"]
        assert obj["value"] == json.loads(base64.b64decode(kv["value"]))
        assert (obj["createdIndex"], obj["modifiedIndex"]) == (int(kv["create_revision"]), int(kv["mod_revision"]))

    assert service.verify(out / NAME) == (f"{sum(counts.values())} objects in {len(counts)} types, counts match "
                                          "index.json, every object has an id, 1 skipped")
    blob = json.dumps(res.as_manifest())
    assert ADMIN_KEY not in blob and CRED_KEY not in blob and CRED_PASSWORD not in blob
    if isinstance(apisix, ApisixStandin):  # paging with both params, key only in the header
        pages = [p for m, p in apisix.requests if p.startswith("/apisix/admin/routes?")]
        assert pages == [f"/apisix/admin/routes?page={n}&page_size=10" for n in (1, 2, 3)]
        assert not any("api_key" in p for _, p in apisix.requests)
        assert [p for m, p in apisix.requests if m == "GET" and "/credentials" in p] == [
            f"/apisix/admin/consumers/{u}/credentials?page=1&page_size=10" for u in ("jack", "jill")]
    assert res.fingerprint == counts and service.fingerprint_live() == counts  # a drill compares these


def test_an_exact_multiple_of_the_page_size_and_empty_types(etcd, apisix, tmp_path):
    for i in range(1, 21):
        put(apisix, f"routes/{i}", {"uri": f"/x{i}", "upstream": {"type": "roundrobin", "nodes": {"10.0.0.9:80": 1}}})
    [res] = svc(apisix).backup(tmp_path)
    assert res.details["counts"]["routes"] == 20
    assert res.details["counts"]["upstreams"] == 0 and res.details["counts"]["secrets"] == 0  # Key not found → empty
    assert res.summary == f"APISIX config exported ({CORE})"
    assert files(tmp_path)["upstreams"] == []


def test_wrong_or_missing_key_fails_clearly_and_leaves_nothing(apisix, tmp_path):
    put(apisix, "routes/1", {"uri": "/a", "upstream": {"type": "roundrobin", "nodes": {"10.0.0.9:80": 1}}})
    with pytest.raises(ArtifactError, match=r"admin_key rejected: failed to check token \(wrong apikey\)") as err:
        svc(apisix, admin_key=SecretStr("not-the-key-4411")).backup(tmp_path)
    assert "not-the-key-4411" not in str(err.value) and "services.apisix-config.admin_key" in str(err.value)
    with pytest.raises(ArtifactError, match=r"admin_key rejected: failed to check token \(missing apikey\)"):
        svc(apisix, admin_key=None).backup(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_admin_api_says_so(tmp_path):
    with pytest.raises(ArtifactError, match="unreachable.*Admin API enabled"):
        svc(type("X", (), {"url": f"http://127.0.0.1:{refused_port()}"})).backup(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_viewer_key_exports_but_restore_stops_at_the_first_refusal(apisix, tmp_path):
    fill(apisix, routes=3)
    [res] = svc(apisix, admin_key=SecretStr(VIEWER_KEY)).backup(tmp_path)
    assert res.status == "ok" and res.details["counts"]["routes"] == 3
    with pytest.raises(RestoreError, match=r"stopped at upstreams/1: .*admin_key rejected.*invalid method for "
                                           r"role viewer.*0 created, 0 replaced before it") as err:
        svc(apisix, admin_key=SecretStr(VIEWER_KEY)).restore(tmp_path / NAME)
    assert VIEWER_KEY not in str(err.value)


WIPE_ORDER = ("routes", "consumers", "services", "plugin_configs", "consumer_groups", "upstreams", "ssls",
              "global_rules", "protos", "secrets", "plugin_metadata")


def wipe(api, objects: dict[str, dict]) -> None:
    """Delete every exported object through the API, dependants first (a consumer takes its credentials)."""
    for rtype in WIPE_ORDER:
        for oid in objects.get(rtype, {}):
            r = admin(api, "DELETE", f"{rtype}/{oid}")
            assert r.status_code == 200, r.text


def without(objs: dict[str, dict], *fields: str) -> dict[str, dict]:
    return {t: {i: {k: v for k, v in o.items() if k not in fields} for i, o in by_id.items()}
            for t, by_id in objs.items()}


@needs_standin
@pytest.mark.parametrize("version", ["3.6.0", "3.7.0", "3.11.0"])
def test_round_trip_through_the_admin_api_per_version(etcd, make_apisix, tmp_path, version):
    """3.6 keeps create_time; 3.7+ refuses it in a PUT (the restore goes on without it); 3.11+ has
    consumer credentials, which come back with their keys; before 3.11 nothing touches
    /consumers/<u>/credentials (there it is the consumer itself) and no consumer is lost."""
    api = make_apisix(etcd.url, version=version)
    counts = fill(api)
    service = svc(api)
    [res] = service.backup(tmp_path / "a")
    before = comparable(files(tmp_path / "a"))
    jack_before = admin(api, "GET", "consumers/jack").json()["value"]
    if version == "3.11.0":
        assert set(before["credentials"]) == {"jack-key-2", "jack-basic"}
        assert credentials_of(api, "jack") == {"jack-key-2": {"key-auth": {"key": CRED_KEY}},
                                               "jack-basic": {"basic-auth": {"username": "jack",
                                                                             "password": CRED_PASSWORD}}}
    else:
        assert "credentials" not in counts and "credentials" not in before
        assert res.details["skipped"]["credentials"] == (
            f"this APISIX (APISIX/{version}) has no consumer credentials (they arrived in 3.11.0); its consumers "
            "carry their auth plugins in consumers.json")
        assert res.details["consumer_credentials"].startswith(f"not exported: this APISIX (APISIX/{version})")
        # never asked the path that is the consumer itself before 3.11
        assert not any("/credentials" in path for _, path in api.requests)

    wipe(api, before)
    if version == "3.11.0":
        assert credentials_of(api, "jack") == {}  # deleting a consumer deletes its credentials (3.11+)
    [empty] = service.backup(tmp_path / "empty")
    assert sum(empty.details["counts"].values()) == 0

    msg = service.restore(tmp_path / "a" / NAME)

    restorable = sum(counts.values()) - counts["ssls"]
    not_exported = "stream_routes" if version == "3.11.0" else "credentials, stream_routes"
    assert msg == (f"{restorable} created, 0 replaced; 1 ssl(s) skipped: the export has no private keys (restore "
                   f"them from the etcd-apisix snapshot); not in the export: {not_exported}")
    service.backup(tmp_path / "b")
    after = comparable(files(tmp_path / "b"))
    assert after.pop("ssls") == {}  # certificates need their keys: only the etcd snapshot has them
    before.pop("ssls")
    if version == "3.6.0":
        assert after == before  # same ids and values, create_time kept, update_time aside
    else:
        assert all("create_time" in o for objs in before.values() for o in objs.values())
        assert without(after, "create_time") == without(before, "create_time")  # the server set create_time anew
    jack_after = admin(api, "GET", "consumers/jack").json()["value"]
    assert jack_after["plugins"] == jack_before["plugins"] and jack_after["group_id"] == "g1"
    if version == "3.11.0":  # jack's credentials are back, with their secrets, through the Admin API
        assert credentials_of(api, "jack") == {"jack-key-2": {"key-auth": {"key": CRED_KEY}},
                                               "jack-basic": {"basic-auth": {"username": "jack",
                                                                             "password": CRED_PASSWORD}}}
        assert admin(api, "GET", "consumers/jack/credentials/jack-key-2").json()["value"]["desc"] == "second key"
    else:
        assert not any("/credentials" in path for _, path in api.requests)
    assert service.health() == "Admin API answers (v3), 25 route(s)"

    # running it again replaces, creates nothing
    assert service.restore(tmp_path / "a" / NAME).startswith(f"0 created, {restorable} replaced;")


def test_round_trip_through_the_admin_api(etcd, apisix, tmp_path):
    """The default Admin API under test (the stand-in at 3.11, or the official image)."""
    counts = fill(apisix)
    service = svc(apisix)
    service.backup(tmp_path / "a")
    before = comparable(files(tmp_path / "a"))
    wipe(apisix, before)
    msg = service.restore(tmp_path / "a" / NAME)
    restorable = sum(counts.values()) - counts["ssls"]
    assert msg.startswith(f"{restorable} created, 0 replaced; 1 ssl(s) skipped")
    service.backup(tmp_path / "b")
    after = comparable(files(tmp_path / "b"))
    assert after.pop("ssls") == {}
    before.pop("ssls")
    assert without(after, "create_time") == without(before, "create_time")


@needs_standin
@pytest.mark.parametrize(("version", "exported"), [("3.11.0", True), ("3.9.1", False)])
def test_without_a_version_in_the_server_header_the_credential_schema_decides(etcd, make_apisix, tmp_path,
                                                                             version, exported):
    """apisix.enable_server_tokens: false sends a bare ``Server: APISIX``; then the credential
    schema tells (GET /apisix/admin/schema/credential: 200 from 3.11, 400 before)."""
    api = make_apisix(etcd.url, version=version, server_tokens=False)
    fill(api, routes=2)
    [res] = svc(api).backup(tmp_path)
    if exported:
        assert res.details["counts"]["credentials"] == 2
        assert res.details["consumer_credentials"].startswith(
            "2 exported in credentials.json (the Admin API has the credential schema)")
    else:
        assert "credentials" not in res.details["counts"]
        assert res.details["skipped"]["credentials"] == (
            "this APISIX has no consumer credentials (GET /apisix/admin/schema/credential: HTTP 400: not found "
            "schema: credential; they arrived in 3.11.0); its consumers carry their auth plugins in consumers.json")
        assert not any("/credentials" in path for _, path in api.requests)


@needs_standin
def test_an_export_with_credentials_is_refused_by_an_older_apisix_before_anything_changes(
        etcd, make_apisix, tmp_path, tmp_path_factory):
    src = make_apisix(etcd.url, version="3.11.0")
    fill(src, routes=2)
    svc(src).backup(tmp_path)
    other = EtcdServer(tmp_path_factory.mktemp("etcd-old")).start()
    try:
        old = make_apisix(other.url, version="3.9.1")
        with pytest.raises(RestoreError, match=r"refusing to restore, nothing changed: the export has 2 consumer "
                                               r"credential\(s\) but this APISIX \(APISIX/3\.9\.1\) has no consumer "
                                               r"credentials.*restore into APISIX >= 3\.11"):
            svc(old).restore(tmp_path / NAME)
        assert [m for m, _ in old.requests if m != "GET"] == []  # not one PUT
    finally:
        other.stop()


@needs_standin
def test_an_older_export_without_credentials_still_restores(etcd, make_apisix, tmp_path):
    """Snapshots made before credentials were exported have no credentials.json and no index entry."""
    api = make_apisix(etcd.url, version="3.11.0")
    counts = fill(api, routes=3)
    svc(api).backup(tmp_path)
    folder = tmp_path / NAME
    (folder / "credentials.json").unlink()
    index = json.loads((folder / "index.json").read_text())
    del index["types"]["credentials"]
    index["consumer_credentials"] = ("not exported: APISIX >= 3.7 keeps consumer credentials under "
                                     "/apisix/admin/consumers/<username>/credentials")  # the old wording
    (folder / "index.json").write_text(json.dumps(index))
    service = svc(api)
    assert service.verify(folder).startswith(f"{sum(counts.values()) - 2} objects in {len(counts) - 1} types")
    admin(api, "DELETE", "routes/3")
    msg = service.restore(folder)
    assert msg.startswith(f"1 created, {sum(counts.values()) - 2 - 1 - counts['ssls']} replaced;")
    assert admin(api, "GET", "routes/3").json()["value"]["name"] == "r3"
    assert set(credentials_of(api, "jack")) == {"jack-key-2", "jack-basic"}  # left alone, not deleted


@needs_standin
def test_credential_secrets_never_reach_logs_errors_or_the_manifest(etcd, make_apisix, tmp_path, caplog):
    api = make_apisix(etcd.url, version="3.11.0")
    fill(api, routes=2)
    service = svc(api)
    caplog.set_level(logging.DEBUG)
    [res] = service.backup(tmp_path)
    admin(api, "DELETE", "consumers/jack")
    assert service.restore(tmp_path / NAME).startswith("3 created")  # jack and his two credentials
    # a refused credential PUT names the credential and APISIX's error, not its secrets
    creds = json.loads((tmp_path / NAME / "credentials.json").read_text())
    creds[1]["value"]["plugins"]["not-an-auth-plugin"] = {"key": CRED_KEY}
    (tmp_path / NAME / "credentials.json").write_text(json.dumps(creds))
    with pytest.raises(RestoreError, match=r"restore stopped at credentials/jack/jack-basic: .*HTTP 400.*at most 1 "
                                           r"properties") as err:
        service.restore(tmp_path / NAME)
    seen = caplog.text + json.dumps(res.as_manifest()) + str(err.value)
    assert CRED_KEY not in seen and CRED_PASSWORD not in seen


@needs_standin
def test_credentials_left_out_of_resources_are_not_fetched_and_the_manifest_says_so(etcd, make_apisix, tmp_path):
    api = make_apisix(etcd.url, version="3.11.0")
    fill(api, routes=2)
    others = [t for t in ApisixConfig(kind="apisix").resources if t != "credentials"]
    [res] = svc(api, resources=others).backup(tmp_path)
    assert "credentials" not in res.details["counts"] and "credentials" not in res.details["skipped"]
    assert res.details["consumer_credentials"] == CREDENTIALS_NOTE_OFF
    assert not (tmp_path / NAME / "credentials.json").exists()
    assert not any("/credentials" in path for m, path in api.requests if m == "GET")


def test_stand_in_before_3_11_routes_the_credentials_path_to_the_consumer(etcd, make_apisix):
    """Why the product asks the version first: before 3.11 (apisix/admin/init.lua) the
    credentials path *is* the consumer — a GET returns it, a DELETE deletes it."""
    if REGISTRY_HOST:
        pytest.skip("the stand-in's version switch")
    api = make_apisix(etcd.url, version="3.10.0")
    put(api, "consumers", {"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}})
    r = admin(api, "GET", "consumers/jack/credentials")
    assert r.status_code == 200 and r.json()["value"]["username"] == "jack"
    assert admin(api, "DELETE", "consumers/jack/credentials/whatever").status_code == 200
    assert admin(api, "GET", "consumers/jack").status_code == 404


def _es8_like_ca(d: Path) -> tuple[Path, Path, Path]:
    """A CA without the keyUsage extension (as Elasticsearch 8 generated them) and a server cert for 127.0.0.1."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Elasticsearch security auto-configuration HTTP CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
          .not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)   # no KeyUsage
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "apisix")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    d.mkdir(parents=True, exist_ok=True)
    paths = d / "ca.pem", d / "server.pem", d / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@needs_standin
def test_https_admin_api_with_a_ca_without_key_usage_uses_the_shared_tls_policy(etcd, tmp_path, monkeypatch):
    """The Admin API's TLS goes through httpapi.tls_context: VERIFY_X509_STRICT (Python 3.13's default)
    would reject this CA; the chain and the host name are still verified."""
    ca, cert, key = _es8_like_ca(tmp_path / "pki")
    api = ApisixStandin(etcd.url, admin_key=ADMIN_KEY, tls=(str(cert), str(key))).start()
    try:
        assert api.url.startswith("https://127.0.0.1:")
        put_tls = httpx.put(f"{api.url}/apisix/admin/routes/1", headers={"X-API-KEY": ADMIN_KEY},
                            verify=ssl.create_default_context(cafile=str(ca)),
                            json={"uri": "/a", "upstream": {"type": "roundrobin", "nodes": {"10.0.0.9:80": 1}}})
        assert put_tls.status_code == 201
        strict = ssl.create_default_context(cafile=str(ca))
        strict.verify_flags |= ssl.VERIFY_X509_STRICT
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{api.url}/apisix/admin/routes", verify=strict)  # what 3.13's default would do

        [res] = svc(api, cacert=str(ca)).backup(tmp_path / "ok")
        assert res.details["counts"]["routes"] == 1
        # Python 3.13+ turns VERIFY_X509_STRICT on in create_default_context(); this Python may not,
        # so do what 3.13 does and check the export still verifies (the chain, against this CA)
        default = ssl.create_default_context

        def like_python_3_13(*a, **kw):
            ctx = default(*a, **kw)
            ctx.verify_flags |= ssl.VERIFY_X509_STRICT
            return ctx

        monkeypatch.setattr(ssl, "create_default_context", like_python_3_13)
        [res] = svc(api, cacert=str(ca)).backup(tmp_path / "ok-3.13")
        assert res.details["counts"]["routes"] == 1
        monkeypatch.undo()
        with pytest.raises(ArtifactError, match="TLS handshake failed.*CERTIFICATE_VERIFY_FAILED"):
            svc(api).backup(tmp_path / "untrusted")  # https without the CA: the system CAs do not know it
        [res] = svc(api, verify_tls=False).backup(tmp_path / "unverified")
        assert res.details["counts"]["routes"] == 1
    finally:
        api.stop()


def test_restore_stops_at_the_first_refused_put_and_says_what_was_done(etcd, tmp_path, make_apisix, tmp_path_factory):
    src = make_apisix(etcd.url, stream_mode=True)
    counts = fill(src, routes=4, stream=True)
    [res] = svc(src).backup(tmp_path)
    assert "consumer_groups, stream_routes, protos" in res.summary
    other = EtcdServer(tmp_path_factory.mktemp("etcd-target")).start()
    try:
        target = make_apisix(other.url, stream_mode=False)
        done = sum(counts.values()) - counts["ssls"] - counts["stream_routes"]
        with pytest.raises(RestoreError, match=rf"stopped at stream_routes/1: .*HTTP 400.*stream mode is disabled.*"
                                               rf"{done} created, 0 replaced before it"):
            svc(target).restore(tmp_path / NAME)
        # everything before the refusal is in place, dependencies included
        assert admin(target, "GET", "routes/4").json()["value"]["uri"] == "/api/v4/*"
    finally:
        other.stop()


def test_v2_admin_api_shape(etcd, make_apisix, tmp_path):
    api = make_apisix(etcd.url, api_version="v2")
    fill(api, routes=12)
    [res] = svc(api).backup(tmp_path / "a")
    assert res.details["api_version"] == "v2" and res.details["counts"]["routes"] == 12
    assert [o["id"] for o in files(tmp_path / "a")["routes"]] == sorted((str(i) for i in range(1, 13)), key=str)
    counts = res.details["counts"]
    assert svc(api).verify(tmp_path / "a" / NAME) == (
        f"{sum(counts.values())} objects in {len(counts)} types, counts match index.json, every object has an id, "
        "1 skipped")
    if has_credentials(api):  # the v2 shape of the credentials list too
        assert {o["id"] for o in files(tmp_path / "a")["credentials"]} == {"jack-key-2", "jack-basic"}
    with pytest.raises(ArtifactError, match=r"answers with Admin API v2 but api_version = 'v3'"):
        svc(api, api_version="v3").backup(tmp_path / "b")
    assert not (tmp_path / "b" / NAME).exists()
    [res2] = svc(api, api_version="v2").backup(tmp_path / "c")
    assert res2.details["counts"] == res.details["counts"]


def test_round_trip_through_an_etcd_snapshot(etcd, apisix, make_apisix, tmp_path):
    fill(apisix)
    svc(apisix).backup(tmp_path / "api")
    snap_dir = tmp_path / "snap"
    etcd_svc = EtcdService("etcd-apisix", EtcdConfig(kind="etcd", endpoint=etcd.url), LocalAccess())
    etcd_svc.backup(snap_dir)

    new = EtcdServer(tmp_path / "new-etcd", name="restored")
    data = tmp_path / "new-etcd" / "restored-data"
    etcd_svc.restore(snap_dir / "etcd-apisix.snapshot", data_dir=str(data), name=new.name, peer_url=new.peer_url)
    new.data = data
    new.start()
    try:
        api2 = make_apisix(new.url)
        svc(api2).backup(tmp_path / "api2")
        # the same objects with the same revisions: both paths describe one state
        assert files(tmp_path / "api2") == files(tmp_path / "api")
        # …and the snapshot holds what the Admin API never shows: the certificate's private key
        [kv] = new.call("/kv/range", {"key": base64.b64encode(b"/apisix/ssls/1").decode()})["kvs"]
        stored_key = json.loads(base64.b64decode(kv["value"])).get("key", "")
        assert stored_key and (REGISTRY_HOST or "PRIVATE KEY" in stored_key)  # APISIX stores it encrypted
    finally:
        new.stop()


@needs_standin
@pytest.mark.parametrize("fault", ["500", "cut", "edited-while-paging"])
def test_server_faults_fail_and_leave_no_files(apisix, etcd, tmp_path, fault):
    fill(apisix)
    if fault == "edited-while-paging":
        def _delete_first(rtype, page):
            if rtype == "routes" and page == 1:
                apisix.etcd.delete("/apisix/routes/1")
        apisix.after_list = _delete_first
        match, kind = "total changed from 25 to 24 while paging", IncompleteArtifactError
    elif fault == "500":
        apisix.faults["consumers"] = "500"
        match, kind = r"GET /apisix/admin/consumers page 1 failed \(HTTP 500\): failed to fetch data from etcd", ArtifactError
    else:
        apisix.faults["services"] = "cut"
        match, kind = "cut off", IncompleteArtifactError
    with pytest.raises(kind, match=match):
        svc(apisix).backup(tmp_path)
    assert list(tmp_path.iterdir()) == []  # routes.json etc. of this attempt removed again


@needs_standin
def test_older_apisix_types_are_skipped_with_reasons(etcd, make_apisix, tmp_path):
    old = make_apisix(etcd.url, supported=("routes", "services", "upstreams", "consumers", "ssls", "global_rules",
                                           "plugin_configs", "stream_routes", "protos", "plugin_metadata"),
                      plugin_metadata_list=False, init_dirs=("routes", "upstreams"), version="2.15.3")
    put(old, "upstreams/1", {"type": "roundrobin", "nodes": {"10.0.0.1:80": 1}})
    put(old, "routes/1", {"uri": "/a", "upstream_id": "1"})
    [res] = svc(old).backup(tmp_path)
    skipped = res.details["skipped"]
    assert set(skipped) == {"consumer_groups", "secrets", "plugin_metadata", "stream_routes", "credentials"}
    assert skipped["secrets"] == "not supported by this APISIX (HTTP 404: Unsupported resource type: secrets)"
    assert skipped["plugin_metadata"] == ("this APISIX cannot list plugin_metadata (HTTP 400: missing plugin name); "
                                          "it is in the etcd-apisix snapshot")
    assert skipped["credentials"].startswith("this APISIX (APISIX/2.15.3) has no consumer credentials")
    assert res.details["counts"]["protos"] == 0 and res.details["counts"]["services"] == 0  # dir absent: empty
    assert res.summary == f"APISIX config exported ({CORE})"
    assert svc(old).verify(tmp_path / NAME) == ("2 objects in 8 types, counts match index.json, every object has "
                                                "an id, 5 skipped")


def test_verify_and_restore_reject_damaged_exports(apisix, tmp_path):
    fill(apisix, routes=3)
    service = svc(apisix)
    service.backup(tmp_path / "good")
    good = tmp_path / "good" / NAME

    def damaged(label: str, change) -> Path:
        d = tmp_path / label / NAME
        shutil.copytree(good, d)
        change(d)
        return d

    def drop_route(d):
        routes = json.loads((d / "routes.json").read_text())
        (d / "routes.json").write_text(json.dumps(routes[:-1]))

    def no_id(d):
        routes = json.loads((d / "routes.json").read_text())
        del routes[0]["id"]
        (d / "routes.json").write_text(json.dumps(routes))

    def orphan_credential(d):
        creds = json.loads((d / "credentials.json").read_text())
        creds[0]["consumer"] = "nobody"
        (d / "credentials.json").write_text(json.dumps(creds))

    def unowned_credential(d):
        creds = json.loads((d / "credentials.json").read_text())
        del creds[1]["consumer"]
        (d / "credentials.json").write_text(json.dumps(creds))

    cases = {
        "count": (drop_route, "2 objects but index.json says 3"),
        "orphan-credential": (orphan_credential, "credential 'jack-key-2' belongs to consumer 'nobody', which is "
                                                 "not in consumers.json"),
        "unowned-credential": (unowned_credential, r"credentials.json: object #2 names no consumer"),
        "no-id": (no_id, "object #1 has no id"),
        "cut": (lambda d: (d / "upstreams.json").write_bytes((d / "upstreams.json").read_bytes()[:40]),
                "upstreams.json: not valid JSON"),
        "no-index": (lambda d: (d / "index.json").unlink(), "index.json is missing"),
        "missing-file": (lambda d: (d / "secrets.json").unlink(), "secrets.json: listed in index.json but missing"),
        "extra-file": (lambda d: (d / "stray.json").write_text("[]"), "not listed in index.json: stray.json"),
    }
    for label, (change, match) in cases.items():
        with pytest.raises(VerifyError, match=match):
            service.verify(damaged(label, change))
    with pytest.raises(RestoreError, match="refusing to restore, nothing changed.*has no id"):
        service.restore(tmp_path / "no-id" / NAME)
    assert service.verify(good) == ("17 objects in 12 types, counts match index.json, every object has an id, "
                                    "1 skipped")


def test_restore_target_and_health_wording(apisix):
    service = svc(apisix)
    assert "PUT by id" in service.restore_target() and "etcd-apisix snapshot" in service.restore_target()
    assert service.health() == "Admin API answers (v3), 0 route(s)"
    with pytest.raises(RestoreError, match="admin_key rejected"):
        svc(apisix, admin_key=SecretStr("nope-1234")).health()


def test_created_through_the_registry_and_flow_factory(apisix, tmp_path):
    put(apisix, "routes/1", {"uri": "/a", "upstream": {"type": "roundrobin", "nodes": {"10.0.0.9:80": 1}}})
    os.environ["T_APISIX_KEY"] = ADMIN_KEY
    try:
        cfg = ApisixConfig(kind="apisix", admin_url=apisix.url, admin_key=SecretStr("env:T_APISIX_KEY"))
        service = create(NAME, cfg)
        assert service.artifacts() == ["apisix-config/"]
        [res] = service.backup(tmp_path)
        assert res.details["counts"]["routes"] == 1
    finally:
        del os.environ["T_APISIX_KEY"]


def test_cli_backup_verify_and_restore_through_the_flows(apisix, tmp_path, cli_env):
    from helpers import run_cli

    counts = fill(apisix, routes=12)
    dest = tmp_path / "snapshots"
    config = tmp_path / "coderz-backup.toml"
    config.write_text(f'dest = "{dest}"\nretries = 0\n\n[services.{NAME}]\nkind = "apisix"\n'
                      f'admin_url = "{apisix.url}"\nadmin_key = "env:T_APISIX_KEY"\npage_size = 10\n')
    env = dict(cli_env, T_APISIX_KEY=ADMIN_KEY)

    res = run_cli(["backup", "--config", str(config)], env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert ("APISIX config exported (routes, upstreams, services, consumers, global_rules, ssls, plugin_configs, "
            "consumer_groups, protos, secrets, plugin_metadata, credentials)") in res.stdout
    manifest = json.loads((dest / "latest" / "manifest.json").read_text())
    [art] = [a for a in manifest["artifacts"] if a["service"] == NAME]
    assert art["status"] == "ok" and art["details"]["counts"] == counts
    assert art["details"]["ssl_private_keys"] == SSL_KEY_NOTE
    assert ADMIN_KEY not in (dest / "latest" / "manifest.json").read_text() + res.stdout + res.stderr

    res = run_cli(["verify", "--config", str(config)], env)
    assert res.returncode == 0, res.stdout + res.stderr

    for oid in range(1, 13):
        assert admin(apisix, "DELETE", f"routes/{oid}").status_code == 200
    res = run_cli(["restore", "--config", str(config), "--yes", "--no-safety-backup"], env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "12 created, 13 replaced; 1 ssl(s) skipped" in res.stdout  # the deleted routes came back
    assert admin(apisix, "GET", "routes/12").json()["value"]["uri"] == "/api/v12/*"
