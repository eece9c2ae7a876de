"""A stand-in for the APISIX Admin API (CONTRACTS.md §3) that keeps its objects in a real etcd.

No APISIX is installable here, so the tests talk to this server; the same tests run
against the official image when ``CODERZ_TEST_REGISTRY`` is set. Like APISIX it stores
every object in etcd v3 through the v3 gRPC gateway, under ``<prefix>/<type>/<id>``
(JSON values, ``create_time``/``update_time``), and reports ``createdIndex`` /
``modifiedIndex`` as etcd's ``create_revision`` / ``mod_revision`` — so an etcd
snapshot of that etcd and an Admin-API export describe the same state.

What it follows from the contract:

- the key as ``X-API-KEY`` header, ``?api_key=`` or ``x_api_key`` cookie; roles
  ``admin`` and ``viewer`` (a viewer may only GET); 401
  ``{"error_msg":"failed to check token","description":…}``;
- ``X-API-VERSION: v3`` (or ``v2``) on every answer; v3 single/list shapes and the v2
  ``action``/``node`` shapes (``api_version="v2"``);
- paging only when both ``page`` and ``page_size`` are given; ``page_size`` outside
  10–500 → 400 plain text; items sorted by ``createdIndex``; ``total`` before paging;
  a page past the end has ``"list":{}`` (cjson's empty table);
- 404 ``{"message":"Key not found"}`` when the type's directory is absent in etcd (the
  stand-in writes ``init_dir`` placeholders for ``init_dirs`` at start, as
  ``apisix init_etcd`` does); 404 ``Unsupported resource type: X``;
  ``stream_routes`` → 400 unless ``stream_mode``;
- ssls GET without the private ``key``; consumer lists without credential entries;
  consumers ``PUT /apisix/admin/consumers`` with ``username`` in the body;
  ``secrets`` ids ``<manager>/<id>``; ``plugin_metadata`` keyed by plugin name;
- PUT → 201 new / 200 replaced, ``create_time`` kept when given, ``update_time``
  reset; references (``upstream_id``, ``service_id``, ``plugin_config_id``,
  ``group_id``) must exist, as APISIX checks on PUT; DELETE.

Per ``version`` (the APISIX it imitates, default 3.11.0):

- ``Server: APISIX/<version>`` on every answer (``server_tokens=False``: ``APISIX``,
  as ``apisix.enable_server_tokens: false``); ``GET /apisix/admin/schema/<name>``
  → 200 for the schemas of that version, else 400 ``not found schema: <name>``;
- ≥ 3.7: PUT with ``create_time``/``update_time`` → 400 ``the property is forbidden``;
- ≥ 3.11: consumer credentials at ``/apisix/admin/consumers/<u>/credentials[/<id>]``,
  stored at ``<prefix>/consumers/<u>/credentials/<id>``: list (paged; 404 ``Key not
  found`` when the consumer has none), GET, PUT (one auth plugin, the consumer must
  exist, 404 ``consumer not found``), DELETE; deleting a consumer deletes its
  credentials;
- < 3.11: that path is the consumer itself (the sub-path is ignored, as
  ``apisix/admin/init.lua`` routed it): GET answers with the consumer, PUT is a
  consumer PUT, DELETE deletes the consumer.

Test hooks (not APISIX behaviour): ``faults[type] = "500" | "cut"`` for list GETs
(``type`` as in the path: ``consumers/jack/credentials``),
``after_list(type, page)`` called after each list answer, ``plugin_metadata_list=False``
for versions that cannot list plugin_metadata.
"""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import threading
import time
from collections.abc import Callable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

__all__ = ["RESOURCES", "ApisixStandin"]

RESOURCES = ("routes", "services", "upstreams", "consumers", "ssls", "global_rules", "plugin_configs",
             "consumer_groups", "stream_routes", "protos", "plugin_metadata", "secrets")
#: dirs ``apisix init_etcd`` creates (protos and secrets are left out: they give 404 Key not found)
INIT_DIRS = ("routes", "upstreams", "services", "consumers", "ssls", "global_rules", "plugin_metadata",
             "plugin_configs", "consumer_groups", "stream_routes")
#: reference field → resource type it must exist in, checked on PUT
REFERENCES = {"upstream_id": "upstreams", "service_id": "services", "plugin_config_id": "plugin_configs",
              "group_id": "consumer_groups"}
REF_NAMES = {"upstream_id": "upstream", "service_id": "service", "plugin_config_id": "plugin config",
             "group_id": "consumer group"}
#: auth plugins (``type = 'auth'`` in apisix/plugins/*.lua), the only ones a credential may carry
AUTH_PLUGINS = ("key-auth", "basic-auth", "jwt-auth", "hmac-auth", "ldap-auth", "wolf-rbac", "openid-connect",
                "authz-keycloak", "authz-casdoor", "cas-auth", "forward-auth", "multi-auth")
#: a few of ``core.schema``'s names (apisix/schema_def.lua); ``credential`` only from 3.11.0
SCHEMAS = ("route", "service", "upstream", "consumer", "ssl", "global_rule", "plugin_config", "consumer_group",
           "stream_route", "proto", "plugins")


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _prefix_end(key: bytes) -> bytes:
    return key[:-1] + bytes([key[-1] + 1])


class _Etcd:
    """The few v3-gateway calls the Admin API makes."""

    def __init__(self, url: str):
        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=10)

    def call(self, path: str, body: dict) -> dict:
        r = self.client.post(f"/v3{path}", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"etcd {path}: HTTP {r.status_code}: {r.text[:300]}")
        return r.json()

    def range(self, key: str, *, prefix: bool = False) -> list[dict]:
        k = key.encode()
        body = {"key": _b64(k)}
        if prefix:
            body["range_end"] = _b64(_prefix_end(k))
        return self.call("/kv/range", body).get("kvs", [])

    def put(self, key: str, value: bytes) -> bool:
        """Store; True when the key was new."""
        res = self.call("/kv/put", {"key": _b64(key.encode()), "value": _b64(value), "prev_kv": True})
        return "prev_kv" not in res

    def delete(self, key: str) -> int:
        return int(self.call("/kv/deleterange", {"key": _b64(key.encode())}).get("deleted", 0))


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


class ApisixStandin:
    """The Admin API on a free 127.0.0.1 port, storing objects in the etcd at ``etcd_url``."""

    def __init__(self, etcd_url: str, *, admin_key: str, viewer_key: str | None = None,
                 stream_mode: bool = False, api_version: str = "v3", prefix: str = "/apisix",
                 supported: tuple[str, ...] = RESOURCES, plugin_metadata_list: bool = True,
                 init_dirs: tuple[str, ...] = INIT_DIRS, version: str = "3.11.0", server_tokens: bool = True,
                 tls: tuple[str, str] | None = None):
        self.etcd = _Etcd(etcd_url)
        self.tls = tls  # (certfile, keyfile): the Admin API over https (deployment.admin.https_admin)
        self.version = version
        self.server_header = f"APISIX/{version}" if server_tokens else "APISIX"
        # APISIX ≥3.7 (resource.lua check_forbidden_properties): PUT/POST with create_time or update_time → 400
        self.forbid_time_fields = _version(version) >= (3, 7)
        # APISIX ≥3.11.0 (PR #11601, apisix/admin/credentials.lua): consumer credentials
        self.credentials = _version(version) >= (3, 11)
        self.keys = {admin_key: "admin", **({viewer_key: "viewer"} if viewer_key else {})}
        self.admin_key, self.viewer_key = admin_key, viewer_key
        self.stream_mode = stream_mode
        self.api_version = api_version
        self.prefix = prefix.rstrip("/")
        self.supported = supported
        self.plugin_metadata_list = plugin_metadata_list
        self.init_dirs = init_dirs
        self.faults: dict[str, str] = {}
        self.after_list: Callable[[str, int | None], None] | None = None
        self.requests: list[tuple[str, str]] = []   # (method, raw path with query) seen
        self._server: _Server | None = None
        self.lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> ApisixStandin:
        for d in self.init_dirs:  # like `apisix init_etcd`: placeholders only where missing
            key = f"{self.prefix}/{d}"
            if not self.etcd.range(key):
                self.etcd.put(key, b"init_dir")
        self._server = _Server(("127.0.0.1", 0), self._handler())
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*self.tls)
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.etcd.client.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    # -- storage ----------------------------------------------------------------
    def _node(self, res: str, kv: dict) -> dict:
        value = json.loads(base64.b64decode(kv.get("value", "")))
        if res == "ssls" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in ("key", "keys")}  # never returned
        return {"key": base64.b64decode(kv["key"]).decode(), "value": value,
                "createdIndex": int(kv["create_revision"]), "modifiedIndex": int(kv["mod_revision"])}

    def _list(self, res: str) -> list[dict] | None:
        """Objects of a type (None when its directory is absent in etcd)."""
        dir_key = f"{self.prefix}/{res}"
        kvs = self.etcd.range(dir_key, prefix=True)
        if not kvs:
            return None
        out = []
        for kv in kvs:
            key = base64.b64decode(kv["key"]).decode()
            if not key.startswith(dir_key + "/") or base64.b64decode(kv.get("value", "")) == b"init_dir":
                continue
            if res == "consumers" and "/credentials/" in key:
                continue
            out.append(self._node(res, kv))
        return out

    def _exists(self, res: str, oid: str) -> bool:
        return bool(self.etcd.range(f"{self.prefix}/{res}/{oid}"))

    def _credential_list(self, username: str) -> list[dict] | None:
        kvs = self.etcd.range(f"{self.prefix}/consumers/{username}/credentials/", prefix=True)
        return [self._node("credentials", kv) for kv in kvs] or None

    # -- HTTP ---------------------------------------------------------------------
    def _handler(self):
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = -1   # headers and body in one write (no 40 ms delayed-ACK stall per request)

            def log_message(self, *a):
                pass

            def version_string(self) -> str:  # the Server header send_response writes
                return standin.server_header

            def _send(self, status: int, body: Any, *, text: bool = False) -> None:
                data = body.encode() if text else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("X-API-VERSION", standin.api_version)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _cut(self, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-API-VERSION", standin.api_version)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True

            def _token(self, query: dict) -> str | None:
                if self.headers.get("X-API-KEY"):
                    return self.headers["X-API-KEY"]
                if query.get("api_key"):
                    return query["api_key"][0]
                cookie = SimpleCookie(self.headers.get("Cookie") or "")
                return cookie["x_api_key"].value if "x_api_key" in cookie else None

            def _dispatch(self, method: str) -> None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                standin.requests.append((method, self.path))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                segs = [s for s in parts.path.split("/") if s]
                if segs[:2] != ["apisix", "admin"] or len(segs) < 3:
                    return self._send(404, {"error_msg": "404 Route Not Found"})
                token = self._token(query)
                if token is None:
                    return self._send(401, {"error_msg": "failed to check token", "description": "missing apikey"})
                role = standin.keys.get(token)
                if role is None:
                    return self._send(401, {"error_msg": "failed to check token", "description": "wrong apikey"})
                if role == "viewer" and method != "GET":
                    return self._send(401, {"error_msg": "failed to check token",
                                            "description": "invalid method for role viewer"})
                res, oid = segs[2], "/".join(segs[3:]) or None
                if res == "schema" and method == "GET":
                    name = oid or ""
                    if name in SCHEMAS or (name == "credential" and standin.credentials):
                        return self._send(200, {"type": "object", "properties": {}})
                    return self._send(400, {"error_msg": f"not found schema: {name}"})
                if res == "consumers" and len(segs) >= 5 and segs[4] == "credentials":
                    if standin.credentials:  # init.lua ≥3.11: the credentials resource
                        with standin.lock:
                            return self._credentials(method, segs[3], segs[5] if len(segs) > 5 else None, body,
                                                     query)
                    oid = segs[3]  # before 3.11: /consumers/<u>/<anything> is consumer <u>
                if res == "stream_routes" and not standin.stream_mode:
                    return self._send(400, {"error_msg": "stream mode is disabled, can not add stream routes"})
                if res not in standin.supported:
                    return self._send(404, {"error_msg": f"Unsupported resource type: {res}"})
                with standin.lock:
                    if method == "GET":
                        return self._get(res, oid, query)
                    if method == "PUT":
                        return self._put(res, oid, body)
                    if method == "DELETE":
                        return self._delete(res, oid)
                return self._send(405, {"error_msg": f"{method} is not implemented by the stand-in"})

            def _get(self, res: str, oid: str | None, query: dict) -> None:
                v2 = standin.api_version == "v2"
                if oid is not None:
                    kvs = standin.etcd.range(f"{standin.prefix}/{res}/{oid}")
                    if not kvs:
                        return self._send(404, {"message": "Key not found"})
                    node = standin._node(res, kvs[0])
                    return self._send(200, {"action": "get", "node": node} if v2 else node)
                if res == "plugin_metadata" and not standin.plugin_metadata_list:
                    return self._send(400, {"error_msg": "missing plugin name"})
                self._send_list(res, standin._list(res), query)

            def _send_list(self, res: str, items: list[dict] | None, query: dict) -> None:
                v2 = standin.api_version == "v2"
                fault = standin.faults.get(res)
                if fault == "500":
                    return self._send(500, {"error_msg": "failed to fetch data from etcd: timeout"})
                if items is None:
                    return self._send(404, {"message": "Key not found"})
                page = None
                if v2:
                    body: dict = {"action": "get", "count": len(items),
                                  "node": {"dir": True, "key": f"{standin.prefix}/{res}", "nodes": items}}
                else:
                    body = {"total": len(items), "list": items}
                    page, size = query.get("page", [None])[0], query.get("page_size", [None])[0]
                    page = _number(page)
                    size = _number(size)
                    if page is not None and size is not None:
                        if size < 10 or size > 500:
                            return self._send(400, "page_size must be between 10 and 500", text=True)
                        page = max(page, 1)
                        items.sort(key=lambda n: n["createdIndex"])
                        chunk = items[(page - 1) * size: page * size]
                        body["list"] = chunk if chunk else {}  # cjson: an empty table is {}
                    else:
                        page = None
                if fault == "cut":
                    self._cut(body)
                else:
                    self._send(200, body)
                if standin.after_list:
                    standin.after_list(res, page)

            def _put(self, res: str, oid: str | None, raw: bytes) -> None:
                try:
                    conf = json.loads(raw or b"null")
                except ValueError as exc:
                    return self._send(400, {"error_msg": f"invalid request body: {exc}"})
                if not isinstance(conf, dict):
                    return self._send(400, {"error_msg": "invalid request body: not a JSON object"})
                if standin.forbid_time_fields:
                    for field in ("create_time", "update_time"):
                        if field in conf:
                            return self._send(400, {"error_msg": f"the property is forbidden: {field}"})
                if res == "consumers":
                    if not conf.get("username"):
                        return self._send(400, {"error_msg": "invalid configuration: property \"username\" "
                                                             "is required"})
                    if oid is not None and oid != conf["username"]:
                        return self._send(400, {"error_msg": "wrong username"})
                    oid = conf["username"]
                else:
                    if oid is None:
                        return self._send(400, {"error_msg": f"missing {res} id"})
                    if res == "secrets" and oid.count("/") != 1:
                        return self._send(400, {"error_msg": "no secret id"})
                    if "id" in conf and str(conf["id"]) != oid:
                        return self._send(400, {"error_msg": f"wrong {res} id"})
                    conf["id"] = oid
                if res == "routes" and not (conf.get("uri") or conf.get("uris")):
                    return self._send(400, {"error_msg": "invalid configuration: value should match only one "
                                                         "schema, but matches none"})
                for field, target in REFERENCES.items():
                    ref = conf.get(field)
                    if ref is not None and not standin._exists(target, str(ref)):
                        return self._send(400, {"error_msg": f"failed to fetch {REF_NAMES[field]} info by "
                                                             f"{REF_NAMES[field]} id [{ref}], response code: 404"})
                now = int(time.time())
                conf.setdefault("create_time", now)
                conf["update_time"] = now
                key = f"{standin.prefix}/{res}/{oid}"
                new = standin.etcd.put(key, json.dumps(conf).encode())
                out = {"key": key, "value": conf}
                if res == "ssls":
                    out["value"] = {k: v for k, v in conf.items() if k not in ("key", "keys")}
                if standin.api_version == "v2":
                    out = {"action": "set", "node": out}
                self._send(201 if new else 200, out)

            def _credentials(self, method: str, username: str, cid: str | None, raw: bytes, query: dict) -> None:
                base = f"{standin.prefix}/consumers/{username}/credentials"
                if method == "GET":
                    if cid is None:
                        return self._send_list(f"consumers/{username}/credentials",
                                               standin._credential_list(username), query)
                    kvs = standin.etcd.range(f"{base}/{cid}")
                    if not kvs:
                        return self._send(404, {"message": "Key not found"})
                    node = standin._node("credentials", kvs[0])
                    return self._send(200, {"action": "get", "node": node} if standin.api_version == "v2" else node)
                if method == "DELETE":
                    if cid is None:
                        return self._send(400, {"error_msg": "missing credential id"})
                    if not standin.etcd.delete(f"{base}/{cid}"):
                        return self._send(404, {"message": "Key not found"})
                    return self._send(200, {"deleted": "1", "key": f"{base}/{cid}"})
                if method != "PUT":
                    return self._send(405, {"error_msg": f"not supported `{method}` method for credential"})
                try:
                    conf = json.loads(raw or b"null")
                except ValueError as exc:
                    return self._send(400, {"error_msg": f"invalid request body: {exc}"})
                if not isinstance(conf, dict):
                    return self._send(400, {"error_msg": "missing configurations"})
                if cid is None and conf.get("id") is None:
                    return self._send(400, {"error_msg": "missing credential id"})
                cid = cid or str(conf["id"])
                if "id" in conf and str(conf["id"]) != cid:
                    return self._send(400, {"error_msg": "wrong credential id"})
                for field in ("create_time", "update_time"):
                    if field in conf:
                        return self._send(400, {"error_msg": f"the property is forbidden:  {field}"})
                plugins = conf.get("plugins") or {}
                if not isinstance(plugins, dict) or len(plugins) > 1:
                    return self._send(400, {"error_msg": "invalid configuration: property \"plugins\" validation "
                                                         "failed: expect object to have at most 1 properties"})
                for name in plugins:
                    if name not in AUTH_PLUGINS:
                        return self._send(400, {"error_msg": "only supports auth type plugins in consumer credential"})
                if not standin._exists("consumers", username):
                    return self._send(404, {"error_msg": "consumer not found"})
                conf["id"] = cid
                now = int(time.time())
                conf["create_time"] = now
                conf["update_time"] = now
                prev = standin.etcd.range(f"{base}/{cid}")
                if prev:  # inject_conf_with_prev_conf: create_time stays
                    conf["create_time"] = json.loads(base64.b64decode(prev[0]["value"])).get("create_time", now)
                new = standin.etcd.put(f"{base}/{cid}", json.dumps(conf).encode())
                self._send(201 if new else 200, {"key": f"{base}/{cid}", "value": conf})

            def _delete(self, res: str, oid: str | None) -> None:
                if oid is None:
                    return self._send(400, {"error_msg": f"missing {res} id"})
                key = f"{standin.prefix}/{res}/{oid}"
                if res == "consumers" and standin.credentials:  # ≥3.11: rmdir <key>/credentials/ first
                    for kv in standin.etcd.range(f"{key}/credentials/", prefix=True):
                        standin.etcd.delete(base64.b64decode(kv["key"]).decode())
                if not standin.etcd.delete(key):
                    return self._send(404, {"message": "Key not found"})
                body = {"deleted": "1", "key": key}
                self._send(200, {"action": "delete", "node": body} if standin.api_version == "v2" else body)

            def do_GET(self):
                self._dispatch("GET")

            def do_PUT(self):
                self._dispatch("PUT")

            def do_DELETE(self):
                self._dispatch("DELETE")

            def do_POST(self):
                self._dispatch("POST")

            def do_PATCH(self):
                self._dispatch("PATCH")

        return Handler


def _number(text: str | None) -> int | None:
    """Lua's tonumber for a query arg (None when absent or not a number)."""
    if text is None:
        return None
    try:
        return int(float(text))
    except ValueError:
        return None
