"""An in-memory stand-in for the Elasticsearch 8.x REST API (contracts §2), stdlib only.

It models what the backup/restore client relies on, with the real status codes and
error body shape ``{"error":{"root_cause":[…],"type":…,"reason":…},"status":N}``:

- ``GET /``, ``GET /_cluster/health``, ``GET /_cat/indices?format=json`` (every value a
  string; hidden indices only with ``expand_wildcards`` ``all``/``hidden``; closed ones
  only with ``all``/``closed``), ``GET /_data_stream``;
- ``HEAD|PUT|DELETE /<idx>`` (private settings → 400 as ES words it, an existing index →
  400 ``resource_already_exists_exception``), ``GET /<idx>/_mapping|_settings|_alias``,
  ``PUT /<idx>/_settings`` (dynamic settings only);
- ``POST /<idx>/_pit`` / ``POST /_search`` with ``pit`` + ``search_after`` on
  ``_shard_doc`` (a new ``pit_id`` per answer, the previous one no longer valid; an index
  in the path with ``pit`` → 400) / ``DELETE /_pit``; scroll (``_doc``) + clear scroll;
- ``POST /_bulk`` (x-ndjson, the final newline required, per-item errors: a ``_source``
  that is not an object, a value that does not parse as its mapped numeric type, a
  write block), ``POST /<idx>/_refresh`` (with ``refresh_interval: -1`` documents are
  invisible until a refresh), ``GET /<idx>/_count``;
- ``PUT /_snapshot/<repo>`` and ``PUT /_snapshot/<repo>/<snap>?wait_for_completion=true`` (the
  snapshot keeps a copy of its indices), ``POST /_snapshot/<repo>/<snap>/_mount`` (a searchable
  snapshot index: ``index.store.type: snapshot``, the private ``index.store.snapshot.*`` settings;
  creating an index with those is refused with 400 ``validation_exception``);
- basic and ``ApiKey`` auth with the ES 401 body;
- https with a given server context (``tls=``), as 8.x serves by default.

Faults for tests are set in ``EsStandin.faults`` (see :meth:`EsStandin._fault`).
Run as a process (``python tests/standins/elasticsearch.py --port P --data-dir D``) it
keeps its state in ``D/state.json`` — a data dir that a volume restore can replace.
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import http.server
import itertools
import json
import os
import secrets
import ssl
import threading
import time
import urllib.parse
from typing import Any

VERSION = "8.15.3"
PRIVATE = ("index.uuid", "index.creation_date", "index.version.created", "index.history.uuid",
           "index.routing.allocation.initial_recovery.", "index.resize.", "index.version.")
DYNAMIC = ("index.number_of_replicas", "index.refresh_interval", "index.blocks.", "index.max_result_window",
           "index.auto_expand_replicas")
#: searchable snapshots: the index.store.snapshot.* settings registered with Property.PrivateIndex
SNAPSHOT_PRIVATE = {f"index.store.snapshot.{k}" for k in (
    "repository_name", "repository_uuid", "snapshot_name", "snapshot_uuid", "index_name", "index_uuid", "partial")}
NUMERIC = {"long", "integer", "short", "byte", "double", "float"}


class EsError(Exception):
    def __init__(self, status: int, type_: str, reason: str, **extra: Any):
        super().__init__(reason)
        self.status, self.type, self.reason, self.extra = status, type_, reason, extra

    def body(self) -> dict:
        cause = {"type": self.type, "reason": self.reason, **self.extra}
        root = self.extra.get("caused_by") if self.type == "search_phase_execution_exception" else None
        return {"error": {"root_cause": [root or {k: v for k, v in cause.items() if k != "caused_by"}], **cause},
                "status": self.status}


def _flat(obj: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _nest(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for k, v in flat.items():
        cur = out
        *parts, last = k.split(".")
        for p in parts:
            cur = cur.setdefault(p, {})
        cur[last] = v
    return out


def _str(v: Any) -> Any:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return [_str(x) for x in v]
    return v if v is None else str(v)


class Index:
    def __init__(self, name: str, settings: dict[str, Any], mappings: dict, aliases: dict):
        self.name = name
        self.settings = settings
        self.mappings = mappings
        self.aliases = aliases
        self.docs: dict[str, dict] = {}         # id → {"src", "routing", "seq", "visible"}
        self.closed = False

    @property
    def hidden(self) -> bool:
        return self.settings.get("index.hidden") == "true"

    def visible_docs(self) -> list[tuple[int, str, dict]]:
        return sorted((d["seq"], i, d) for i, d in self.docs.items() if d["visible"])

    def to_state(self) -> dict:
        return {"settings": self.settings, "mappings": self.mappings, "aliases": self.aliases,
                "docs": self.docs, "closed": self.closed}

    @classmethod
    def from_state(cls, name: str, s: dict) -> Index:
        ix = cls(name, s["settings"], s["mappings"], s["aliases"])
        ix.docs, ix.closed = s["docs"], s["closed"]
        return ix


class EsStandin:
    """The server state plus a ThreadingHTTPServer on 127.0.0.1 (``start()``/``stop()``)."""

    def __init__(self, *, users: dict[str, str] | None = None, api_keys: list[str] | None = None,
                 port: int = 0, state_file: str | None = None, repos_root: str | None = None,
                 tls: ssl.SSLContext | None = None):
        self.tls = tls                            # a server context: serve https (xpack.security.http.ssl)
        self.users = users or {}
        self.api_keys = set(api_keys or [])
        self.port = port
        self.state_file = state_file
        self.lock = threading.RLock()
        self.indices: dict[str, Index] = {}
        self.pits: dict[str, dict] = {}          # current pit id → {"index", "docs", "pages"}
        self.scrolls: dict[str, dict] = {}
        self.repos: dict[str, dict] = {}         # repo → {"settings", "snapshots": {name: info}}
        self.faults: dict[str, Any] = {}
        self.requests: list[tuple[str, str]] = []   # (method, path) log for tests
        self.bulk_sizes: list[int] = []
        self.no_pit = False
        self.no_shard_doc = False
        self.data_streams: list[dict] = []       # GET /_data_stream entries ({"name", "hidden", …})
        self.limited: set[str] = set()            # users without the read privilege (403 on _pit/_search)
        self._seq = itertools.count(1)
        self._httpd: http.server.ThreadingHTTPServer | None = None
        if state_file and os.path.exists(state_file):
            self._load()

    # -- life cycle ------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> EsStandin:
        srv = self

        class Handler(_Handler):
            standin = srv

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        if self.tls:   # the handshake runs in accept(); a refused one is dropped (OSError) by socketserver
            self._httpd.socket = self.tls.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()

    def _save(self) -> None:
        if not self.state_file:
            return
        state = {"indices": {n: ix.to_state() for n, ix in self.indices.items()}, "repos": self.repos}
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(state, fh)
        os.replace(tmp, self.state_file)

    def _load(self) -> None:
        with open(self.state_file) as fh:
            state = json.load(fh)
        self.indices = {n: Index.from_state(n, s) for n, s in state["indices"].items()}
        self.repos = state.get("repos", {})
        seqs = [d["seq"] for ix in self.indices.values() for d in ix.docs.values()]
        self._seq = itertools.count(max(seqs, default=0) + 1)

    # -- auth --------------------------------------------------------------------------
    def check_auth(self, header: str | None, path: str) -> str | None:
        self._user = None
        if not self.users and not self.api_keys:
            return
        www = {"WWW-Authenticate": ['Basic realm="security" charset="UTF-8"', "ApiKey"]}
        if not header:
            raise EsError(401, "security_exception", f"missing authentication credentials for REST request [{path}]",
                          header=www)
        scheme, _, value = header.partition(" ")
        if scheme == "ApiKey":
            if value in self.api_keys:
                return
            raise EsError(401, "security_exception", "unable to authenticate with provided credentials and "
                          "anonymous access is not allowed for this request", header=www)
        if scheme == "Basic":
            try:
                user, _, pw = base64.b64decode(value).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, pw = "", None
            if self.users.get(user) == pw:
                self._user = user
                return
            raise EsError(401, "security_exception", f"unable to authenticate user [{user}] for REST request [{path}]",
                          header=www)
        raise EsError(401, "security_exception", f"missing authentication credentials for REST request [{path}]",
                      header=www)

    # -- helpers -------------------------------------------------------------------------
    def _index(self, name: str) -> Index:
        ix = self.indices.get(name)
        if ix is None:
            raise EsError(404, "index_not_found_exception", f"no such index [{name}]", index=name,
                          **{"resource.type": "index_or_alias", "resource.id": name})
        return ix

    def _fault(self, name: str) -> Any:
        """Faults: search_500_at_page=N, expire_pit_at_page=N, shard_failure_at_page=N, bulk_429=N (items)."""
        return self.faults.get(name)

    @staticmethod
    def _settings_body(settings: Any) -> dict[str, Any]:
        flat = _flat(settings or {})
        out = {}
        for k, v in flat.items():
            key = k if k.startswith("index.") else f"index.{k}"
            out[key] = _str(v)
        return out

    def create_index(self, name: str, body: dict) -> dict:
        if name in self.indices:
            uuid = self.indices[name].settings["index.uuid"]
            raise EsError(400, "resource_already_exists_exception", f"index [{name}/{uuid}] already exists",
                          index_uuid=uuid, index=name)
        if name != name.lower() or name.startswith(("_", "-", "+")) or any(c in name for c in '\\/*?"<>| ,#:'):
            raise EsError(400, "invalid_index_name_exception", f"Invalid index name [{name}]", index=name)
        settings = self._settings_body(body.get("settings"))
        for k in settings:
            if k == "index.provided_name":
                raise EsError(400, "illegal_argument_exception",
                              f"unknown setting [{k}] please check that any required plugins are installed, or "
                              "check the breaking changes documentation for removed settings")
        private = [k for k in settings if k.startswith(PRIVATE) or k in SNAPSHOT_PRIVATE]
        if private:   # MetadataCreateIndexService: a ValidationException listing every one
            raise EsError(400, "validation_exception", "Validation Failed: " + "".join(
                f"{i}: private index setting [{k}] can not be set explicitly;" for i, k in enumerate(private, 1)))
        mappings = body.get("mappings") or {}
        for field, spec in (mappings.get("properties") or {}).items():
            if not isinstance(spec, dict) or spec.get("type", "object") not in NUMERIC | {
                    "keyword", "text", "date", "boolean", "object", "nested", "ip"}:
                raise EsError(400, "mapper_parsing_exception", f"No handler for type [{spec.get('type')}] declared "
                              f"on field [{field}]")
        full = {"index.number_of_shards": "1", "index.number_of_replicas": "1",
                "index.routing.allocation.include._tier_preference": "data_content", **settings,
                "index.uuid": secrets.token_urlsafe(16)[:22], "index.creation_date": str(int(time.time() * 1000)),
                "index.provided_name": name, "index.version.created": "8512000"}
        self.indices[name] = Index(name, full, copy.deepcopy(mappings), copy.deepcopy(body.get("aliases") or {}))
        self._save()
        return {"acknowledged": True, "shards_acknowledged": True, "index": name}

    # -- request routing --------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, str], body: bytes, ctype: str,
               user: str | None = None) -> tuple[int, Any]:
        with self.lock:
            self.requests.append((method, path))
            parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/") if p]
            js = None
            if body and not (parts and parts[-1] == "_bulk"):
                try:
                    js = json.loads(body)
                except ValueError:
                    raise EsError(400, "parse_exception", "request body or source parameter is required"
                                  if not body.strip() else "Failed to parse content to map") from None
            if not parts:
                return 200, {"name": "standin-node", "cluster_name": "coderz-standin", "cluster_uuid": "c0d3rz",
                             "version": {"number": VERSION, "build_flavor": "default", "build_type": "docker",
                                         "lucene_version": "9.11.1", "minimum_wire_compatibility_version": "7.17.0",
                                         "minimum_index_compatibility_version": "7.0.0"},
                             "tagline": "You Know, for Search"}
            head = parts[0]
            if head == "_cluster" and parts[1:] == ["health"]:
                return 200, self._health()
            if head == "_cat" and parts[1:] == ["indices"]:
                return self._cat(query)
            if head == "_data_stream":
                expand = query.get("expand_wildcards", "open")
                return 200, {"data_streams": [d for d in self.data_streams
                                              if not d.get("hidden") or expand in ("all", "hidden")]}
            if head == "_search":
                if parts[1:] == ["scroll"]:
                    return self._scroll_next(method, js or {})
                return self._search(js or {}, index=None)
            if head == "_pit" and method == "DELETE":
                pid = (js or {}).get("id")
                if pid in self.pits:
                    del self.pits[pid]
                    return 200, {"succeeded": True, "num_freed": 1}
                return 404, {"succeeded": False, "num_freed": 0}
            if head == "_bulk":
                return self._bulk(body, ctype, query, default_index=None)
            if head == "_snapshot":
                return self._snapshot(method, parts[1:], query, js or {})
            if head.startswith("_"):
                raise EsError(400, "illegal_argument_exception", f"no handler for [{method} {path}]")
            name, rest = head, parts[1:]
            if not rest:
                if method == "HEAD":
                    return (200 if name in self.indices else 404), None
                if method == "PUT":
                    return 200, self.create_index(name, js or {})
                if method == "DELETE":
                    self._index(name)
                    del self.indices[name]
                    self._save()
                    return 200, {"acknowledged": True}
                if method == "GET":
                    ix = self._index(name)
                    return 200, {name: {"aliases": ix.aliases, "mappings": ix.mappings,
                                        "settings": _nest(ix.settings)}}
            op = rest[0]
            if op == "_bulk":
                return self._bulk(body, ctype, query, default_index=name)
            ix = self._index(name)
            if op == "_mapping" and method == "GET":
                return 200, {name: {"mappings": ix.mappings}}
            if op == "_settings" and method == "GET":
                s = ix.settings
                if rest[1:]:   # GET /<idx>/_settings/<names>: comma-separated names or wildcards
                    s = {k: v for k, v in s.items() if any(fnmatch.fnmatchcase(k, p) for p in rest[1].split(","))}
                s = s if query.get("flat_settings") == "true" else _nest(s)
                return 200, {name: {"settings": s}}
            if op == "_settings" and method == "PUT":
                return self._put_settings(ix, js or {})
            if op in ("_alias", "_aliases") and method == "GET":
                return 200, {name: {"aliases": ix.aliases}}
            if op == "_pit" and method == "POST":
                if user in self.limited:
                    raise EsError(403, "security_exception", f"action [indices:data/read/open_point_in_time] is "
                                  f"unauthorized for user [{user}] with effective roles [monitoring_user] on "
                                  f"indices [{name}], this action is granted by the index privileges [read,all]")
                return self._open_pit(ix, query)
            if op == "_close" and method == "POST":
                ix.closed = True
                self._save()
                return 200, {"acknowledged": True, "shards_acknowledged": True, "indices": {name: {"closed": True}}}
            if op == "_search":
                if "pit" in (js or {}):
                    raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: [indices] "
                                  "cannot be used with point in time. Do not specify any index with point in time.;")
                if "scroll" in query:
                    return self._scroll_start(ix, query, js or {})
                return self._search(js or {}, index=ix)
            if op == "_refresh":
                for d in ix.docs.values():
                    d["visible"] = True
                self._save()
                return 200, {"_shards": {"total": 2, "successful": 1, "failed": 0}}
            if op == "_count":
                return 200, {"count": len(ix.visible_docs()),
                             "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}
            raise EsError(400, "illegal_argument_exception", f"no handler for [{method} {path}]")

    def _health(self) -> dict:
        open_ix = [ix for ix in self.indices.values() if not ix.closed]
        yellow = any(ix.settings.get("index.number_of_replicas", "1") != "0" for ix in open_ix)
        unassigned = sum(int(ix.settings.get("index.number_of_replicas", "1")) for ix in open_ix)
        return {"cluster_name": "coderz-standin", "status": "yellow" if yellow else "green", "timed_out": False,
                "number_of_nodes": 1, "number_of_data_nodes": 1, "active_primary_shards": len(open_ix),
                "active_shards": len(open_ix), "relocating_shards": 0, "initializing_shards": 0,
                "unassigned_shards": unassigned, "delayed_unassigned_shards": 0, "number_of_pending_tasks": 0,
                "number_of_in_flight_fetch": 0, "task_max_waiting_in_queue_millis": 0,
                "active_shards_percent_as_number": 100.0 if not yellow else 50.0}

    def _cat(self, query: dict[str, str]) -> tuple[int, Any]:
        expand = set((query.get("expand_wildcards") or "all").split(","))
        if "all" in expand:
            expand = {"open", "closed", "hidden"}
        rows = []
        for name in sorted(self.indices):
            ix = self.indices[name]
            if ix.hidden and "hidden" not in expand:
                continue
            if ix.closed and "closed" not in expand or not ix.closed and "open" not in expand:
                continue
            n = len(ix.visible_docs())
            rows.append({"health": "yellow" if ix.settings.get("index.number_of_replicas") != "0" else "green",
                         "status": "close" if ix.closed else "open", "index": name, "uuid": ix.settings["index.uuid"],
                         "pri": ix.settings["index.number_of_shards"], "rep": ix.settings["index.number_of_replicas"],
                         "docs.count": None if ix.closed else str(n), "docs.deleted": "0",
                         "store.size": str(200 * n + 225), "pri.store.size": str(200 * n + 225),
                         "dataset.size": str(200 * n + 225)})
        if query.get("format") != "json":
            return 200, "\n".join(" ".join(str(v) for v in r.values()) for r in rows) + "\n"
        if query.get("h"):
            cols = query["h"].split(",")
            rows = [{c: r.get(c) for c in cols} for r in rows]
        return 200, rows

    def _put_settings(self, ix: Index, body: dict) -> tuple[int, Any]:
        flat = self._settings_body(body.get("settings", body) if "settings" in body else body)
        flat = {k: v for k, v in flat.items()}
        for k in flat:
            if not k.startswith(DYNAMIC):
                raise EsError(400, "illegal_argument_exception", f"Can't update non dynamic settings [[{k}]] for "
                              f"open indices [[{ix.name}/{ix.settings['index.uuid']}]]")
        for k, v in flat.items():
            if v is None:
                ix.settings.pop(k, None)
            else:
                ix.settings[k] = v
        self._save()
        return 200, {"acknowledged": True}

    # -- search --------------------------------------------------------------------------
    def _new_pit_id(self) -> str:
        return base64.urlsafe_b64encode(secrets.token_bytes(24)).decode()

    def _open_pit(self, ix: Index, query: dict[str, str]) -> tuple[int, Any]:
        if self.no_pit:
            return 400, {"error": f"no handler found for uri [/{ix.name}/_pit] and method [POST]", "status": 400}
        if "keep_alive" not in query:
            raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: [keep_alive] is not specified;")
        pid = self._new_pit_id()
        self.pits[pid] = {"index": ix.name, "docs": ix.visible_docs(), "pages": 0}
        return 200, {"id": pid, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}

    def _hit(self, index: str, seq: int, doc_id: str, d: dict, sort: list) -> dict:
        h = {"_index": index, "_id": doc_id, "_score": None, "_source": copy.deepcopy(d["src"]), "sort": sort}
        if d.get("routing") is not None:
            h["_routing"] = d["routing"]
        return h

    def _search(self, body: dict, index: Index | None) -> tuple[int, Any]:
        if "pit" not in body:
            if index is None:
                raise EsError(400, "illegal_argument_exception", "this stand-in only searches with pit or scroll")
            docs = index.visible_docs()[: body.get("size", 10)]
            return 200, {"took": 1, "timed_out": False, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                         "hits": {"total": {"value": len(index.visible_docs()), "relation": "eq"}, "max_score": 1.0,
                                  "hits": [self._hit(index.name, s, i, d, []) for s, i, d in docs]}}
        pid = (body.get("pit") or {}).get("id")
        pit = self.pits.get(pid)
        if pit is None:
            raise EsError(404, "search_context_missing_exception", f"No search context found for id [{pid}]")
        if body.get("from", 0) not in (0, -1):
            raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: using [from] is not "
                          "allowed in a scroll context;")
        sort = body.get("sort")
        if self.no_shard_doc:   # 7.10/7.11: PIT exists, _shard_doc does not
            raise EsError(400, "search_phase_execution_exception", "all shards failed", phase="query",
                          caused_by={"type": "query_shard_exception",
                                     "reason": "No mapping found for [_shard_doc] in order to sort on"})
        if sort != [{"_shard_doc": "asc"}] and sort != ["_shard_doc"]:
            raise EsError(400, "illegal_argument_exception", f"this stand-in sorts on _shard_doc only, got {sort}")
        pit["pages"] += 1
        page = pit["pages"]
        if self._fault("search_500_at_page") == page:
            raise EsError(500, "search_phase_execution_exception", "all shards failed")
        if self._fault("expire_pit_at_page") == page:
            del self.pits[pid]
            raise EsError(404, "search_context_missing_exception", f"No search context found for id [{pid}]")
        after = body.get("search_after")
        start = 0
        if after is not None:
            start = next((i for i, (s, _, _) in enumerate(pit["docs"]) if s > after[0]), len(pit["docs"]))
        size = body.get("size", 10)
        chunk = pit["docs"][start:start + size]
        shards = {"total": 1, "successful": 1, "skipped": 0, "failed": 0}
        if self._fault("shard_failure_at_page") == page:
            shards = {"total": 2, "successful": 1, "skipped": 0, "failed": 1,
                      "failures": [{"shard": 1, "index": pit["index"], "reason": {
                          "type": "node_not_connected_exception", "reason": "[node-2] disconnected"}}]}
        new = self._new_pit_id()
        del self.pits[pid]
        self.pits[new] = pit
        hits: dict[str, Any] = {"max_score": None,
                                "hits": [self._hit(pit["index"], s, i, d, [s]) for s, i, d in chunk]}
        if body.get("track_total_hits") is True:
            hits["total"] = {"value": len(pit["docs"]), "relation": "eq"}
        elif body.get("track_total_hits") is not False:
            hits["total"] = {"value": min(len(pit["docs"]), 10000),
                             "relation": "eq" if len(pit["docs"]) <= 10000 else "gte"}
        return 200, {"pit_id": new, "took": 2, "timed_out": False, "_shards": shards, "hits": hits}

    def _scroll_start(self, ix: Index, query: dict, body: dict) -> tuple[int, Any]:
        sid = base64.urlsafe_b64encode(secrets.token_bytes(18)).decode()
        self.scrolls[sid] = {"index": ix.name, "docs": ix.visible_docs(), "pos": 0, "size": body.get("size", 10)}
        return self._scroll_page(sid)

    def _scroll_page(self, sid: str) -> tuple[int, Any]:
        sc = self.scrolls[sid]
        chunk = sc["docs"][sc["pos"]:sc["pos"] + sc["size"]]
        sc["pos"] += len(chunk)
        return 200, {"_scroll_id": sid, "took": 1, "timed_out": False,
                     "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                     "hits": {"total": {"value": len(sc["docs"]), "relation": "eq"}, "max_score": None,
                              "hits": [self._hit(sc["index"], s, i, d, [s]) for s, i, d in chunk]}}

    def _scroll_next(self, method: str, body: dict) -> tuple[int, Any]:
        sid = body.get("scroll_id")
        if method == "DELETE":
            freed = 1 if self.scrolls.pop(sid, None) else 0
            return (200 if freed else 404), {"succeeded": bool(freed), "num_freed": freed}
        if sid not in self.scrolls:
            raise EsError(404, "search_context_missing_exception", f"No search context found for id [{sid}]")
        return self._scroll_page(sid)

    # -- bulk ------------------------------------------------------------------------------
    def _bulk(self, body: bytes, ctype: str, query: dict, default_index: str | None) -> tuple[int, Any]:
        base = (ctype or "").split(";")[0].strip()
        if base not in ("application/x-ndjson", "application/json"):
            return 406, {"error": f"Content-Type header [{ctype}] is not supported", "status": 406}
        if not body.endswith(b"\n"):
            raise EsError(400, "illegal_argument_exception", "The bulk request must be terminated by a newline [\\n]")
        lines = body.split(b"\n")[:-1]
        items = []
        errors = False
        i = 0
        self.bulk_sizes.append(len(body))
        while i < len(lines):
            action = json.loads(lines[i])
            (op, meta), = action.items()
            src_line = lines[i + 1] if op != "delete" else None
            i += 1 if op == "delete" else 2
            name = meta.get("_index") or default_index
            res = {"_index": name, "_id": meta.get("_id")}
            try:
                res.update(self._bulk_item(op, name, meta, src_line))
            except EsError as exc:
                errors = True
                res.update(status=exc.status, error={"type": exc.type, "reason": exc.reason, **exc.extra})
            items.append({op: res})
        self._save()
        return 200, {"took": 3, "errors": errors, "items": items}

    def _bulk_item(self, op: str, name: str, meta: dict, src_line: bytes | None) -> dict:
        left = self.faults.get("bulk_429", 0)
        if left:
            self.faults["bulk_429"] = left - 1
            raise EsError(429, "es_rejected_execution_exception", "rejected execution of coordinating operation")
        if name not in self.indices:
            self.create_index(name, {})
        ix = self.indices[name]
        if ix.settings.get("index.blocks.write") == "true":
            raise EsError(403, "cluster_block_exception", f"index [{name}] blocked by: [FORBIDDEN/8/index write (api)];")
        doc_id = meta.get("_id") or secrets.token_urlsafe(15)
        if op == "delete":
            found = ix.docs.pop(doc_id, None)
            return {"result": "deleted" if found else "not_found", "status": 200 if found else 404}
        try:
            src = json.loads(src_line)
        except ValueError:
            src = None
        if not isinstance(src, dict):
            raise EsError(400, "mapper_parsing_exception", "failed to parse",
                          caused_by={"type": "not_x_content_exception",
                                     "reason": "Compressor detection can only be called on some xcontent bytes "
                                               "or compressed xcontent bytes"})
        for field, spec in (ix.mappings.get("properties") or {}).items():
            if spec.get("type") in NUMERIC and field in src:
                try:
                    float(src[field])
                except (TypeError, ValueError):
                    raise EsError(400, "document_parsing_exception",
                                  f"[1:{len(field) + 4}] failed to parse field [{field}] of type [{spec['type']}] in "
                                  f"document with id '{doc_id}'. Preview of field's value: '{src[field]}'") from None
        if op == "create" and doc_id in ix.docs:
            raise EsError(409, "version_conflict_engine_exception",
                          f"[{doc_id}]: version conflict, document already exists (current version [1])")
        created = doc_id not in ix.docs
        ix.docs[doc_id] = {"src": src, "routing": meta.get("routing"), "seq": next(self._seq),
                           "visible": ix.settings.get("index.refresh_interval") != "-1"}
        return {"_version": 1, "result": "created" if created else "updated", "status": 201 if created else 200,
                "_shards": {"total": 2, "successful": 1, "failed": 0}, "_seq_no": 0, "_primary_term": 1}

    def _mount(self, repo_name: str, repo: dict, snap: str, query: dict, body: dict) -> tuple[int, Any]:
        """POST /_snapshot/<repo>/<snap>/_mount: a searchable-snapshot index with the settings
        TransportMountSearchableSnapshotAction (8.x) gives it; storage full_copy or shared_cache."""
        info = repo["snapshots"].get(snap)
        if info is None:
            raise EsError(404, "snapshot_missing_exception", f"[{repo_name}:{snap}] is missing")
        source = body.get("index")
        content = repo.get("contents", {}).get(snap, {}).get(source)
        if content is None:
            raise EsError(404, "index_not_found_exception", f"index [{source}] not found in repository [{repo_name}]")
        name = body.get("renamed_index") or source
        if name in self.indices:
            raise EsError(500, "snapshot_restore_exception", f"[{repo_name}:{snap}/{info['uuid']}] cannot restore "
                          f"index [{name}] because an open index with same name already exists in the cluster.")
        partial = query.get("storage", "full_copy") == "shared_cache"
        settings = {k: v for k, v in content["settings"].items()
                    if not k.startswith(("index.routing.allocation.include.", "index.routing.allocation.require.",
                                         "index.routing.allocation.exclude."))}
        settings.update({
            "index.number_of_replicas": "0", "index.auto_expand_replicas": "false",
            "index.shard.check_on_startup": "false",
            "index.routing.allocation.include._tier_preference": "data_frozen" if partial
            else "data_cold,data_warm,data_hot",
            **self._settings_body(body.get("index_settings")),
            "index.store.snapshot.repository_uuid": repo.setdefault("uuid", secrets.token_urlsafe(16)[:22]),
            "index.store.snapshot.repository_name": repo_name, "index.store.snapshot.snapshot_name": snap,
            "index.store.snapshot.snapshot_uuid": info["uuid"], "index.store.snapshot.index_name": source,
            "index.store.snapshot.index_uuid": secrets.token_urlsafe(16)[:22],
            "index.store.type": "snapshot", "index.blocks.write": "true",
            "index.allocation.existing_shards_allocator": "searchable_snapshot_allocator",
            "index.recovery.type": "snapshot_prewarm",
            "index.uuid": secrets.token_urlsafe(16)[:22], "index.provided_name": name})
        if partial:
            settings.update({"index.store.snapshot.partial": "true",
                             "index.routing.allocation.disk.watermark.ignore": "true",
                             "index.shard_limit.group": "frozen"})
        ix = Index(name, settings, copy.deepcopy(content["mappings"]), {})
        ix.docs = copy.deepcopy(content["docs"])
        self.indices[name] = ix
        self._save()
        shards = {"total": 1, "failed": 0, "successful": 1}
        if query.get("wait_for_completion") != "true":
            return 200, {"accepted": True}
        return 200, {"snapshot": {"snapshot": snap, "indices": [name], "shards": shards}}

    # -- snapshots --------------------------------------------------------------------------
    def _snapshot(self, method: str, parts: list[str], query: dict, body: dict) -> tuple[int, Any]:
        if len(parts) == 1 and method == "PUT":
            if body.get("type") != "fs" or not (body.get("settings") or {}).get("location"):
                raise EsError(400, "repository_exception", f"[{parts[0]}] missing location")
            self.repos[parts[0]] = {"settings": body, "snapshots": {}}
            self._save()
            return 200, {"acknowledged": True}
        repo = self.repos.get(parts[0]) if parts else None
        if repo is None:
            raise EsError(404, "repository_missing_exception", f"[{parts[0] if parts else ''}] missing")
        if len(parts) == 2 and method == "PUT":
            snap = parts[1]
            if snap in repo["snapshots"]:
                raise EsError(400, "invalid_snapshot_name_exception",
                              f"[{parts[0]}:{snap}] Invalid snapshot name [{snap}], snapshot with the same name "
                              "already exists")
            names = [n for n in (body.get("indices") or "").split(",") if n]
            for n in names:
                self._index(n)
            info = {"snapshot": snap, "uuid": secrets.token_urlsafe(16)[:22], "repository": parts[0],
                    "version_id": 8512000, "version": VERSION, "indices": names, "data_streams": [],
                    "include_global_state": body.get("include_global_state", True), "state": "SUCCESS",
                    "metadata": body.get("metadata"), "failures": [], "feature_states": [],
                    "shards": {"total": len(names), "failed": 0, "successful": len(names)}}
            if self.faults.get("snapshot_partial"):
                info.update(state="PARTIAL", failures=[{"index": names[0], "shard_id": 0,
                                                        "reason": "IndexShardSnapshotFailedException[disk full]"}],
                            shards={"total": len(names), "failed": 1, "successful": len(names) - 1})
            repo["snapshots"][snap] = info
            repo.setdefault("contents", {})[snap] = {n: copy.deepcopy(self.indices[n].to_state()) for n in names}
            self._save()
            if query.get("wait_for_completion") != "true":
                return 200, {"accepted": True}
            return 200, {"snapshot": info}
        if len(parts) == 3 and parts[2] == "_mount" and method == "POST":
            return self._mount(parts[0], repo, parts[1], query, body)
        if len(parts) == 2 and method == "GET":
            info = repo["snapshots"].get(parts[1])
            if info is None:
                raise EsError(404, "snapshot_missing_exception", f"[{parts[0]}:{parts[1]}] is missing")
            return 200, {"snapshots": [info], "total": 1, "remaining": 0}
        raise EsError(400, "illegal_argument_exception", "unsupported snapshot call")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1   # headers and body leave in one write (no 40 ms delayed-ACK stall per request)
    standin: EsStandin

    def log_message(self, *a):
        pass

    def _serve(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            with self.standin.lock:
                self.standin.check_auth(self.headers.get("Authorization"), url.path)
                user = self.standin._user
            status, payload = self.standin.handle(self.command, url.path, query, body,
                                                  self.headers.get("Content-Type", ""), user)
        except EsError as exc:
            status, payload = exc.status, exc.body()
            if status == 401:
                self._send(status, payload, extra={"WWW-Authenticate": 'Basic realm="security" charset="UTF-8"'})
                return
        self._send(status, payload)

    def _send(self, status: int, payload: Any, extra: dict | None = None) -> None:
        data = b"" if payload is None else (payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if not isinstance(payload, str) else "text/plain")
        self.send_header("X-elastic-product", "Elasticsearch")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve


def main() -> None:
    import argparse
    import signal

    p = argparse.ArgumentParser(description="Elasticsearch stand-in (persists into DATA_DIR/state.json)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--data-dir", required=True)
    args = p.parse_args()
    os.makedirs(args.data_dir, exist_ok=True)
    srv = EsStandin(port=args.port, state_file=os.path.join(args.data_dir, "state.json")).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    stop.wait()
    srv.stop()


if __name__ == "__main__":
    main()
