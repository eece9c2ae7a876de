"""APISIX Admin API → ``<name>/``: every saved object, one JSON file per resource type.

Backup lists each configured resource type (``routes``, ``upstreams``, ``services``,
``consumers``, ``global_rules``, ``ssls``, ``plugin_configs``, ``consumer_groups``,
``stream_routes``, ``protos``, ``secrets``, ``plugin_metadata``) with
``GET {admin_url}/apisix/admin/<type>?page=P&page_size=S`` and writes
``<name>/<type>.json`` page by page through the streaming writer: a JSON array of
``{"id","key","value","createdIndex","modifiedIndex"}`` — enough to ``PUT`` every
object back by id. ``<name>/index.json`` is written last: counts per type, the API
version seen (``X-API-VERSION``), skipped types with their reasons.

The key travels only in the ``X-API-KEY`` header (never ``?api_key=``, which would
land in access logs). Answers, per the Admin API:

- v3 list ``{"total":N,"list":[…]}`` (a page past the end may be ``{}`` or carry
  ``"list":{}``), paged with *both* ``page`` and ``page_size``; we stop when we hold
  ``total`` objects or a page is empty. The v2 shape
  (``{"action":"get","count":N,"node":{"dir":true,"nodes":[…]}}``) has no paging and
  comes in one answer.
- 404 ``{"message":"Key not found"}``: the type's directory is absent — an empty type.
- 404 ``Unsupported resource type`` (an older APISIX), 400 ``stream mode is
  disabled`` and a ``plugin_metadata`` list the version cannot serve (404/400): that
  type is *skipped*, with the reason in index.json; the artifact is still ok.
- 401/403 ``failed to check token``: the key is wrong → ArtifactError.
- 5xx, a cut or unparsable body, ``total`` changing between pages or a collected
  count that differs from ``total``: ArtifactError; files already written for the
  attempt are removed, so a failed export leaves nothing under final names.

Consumer credentials (APISIX ≥ 3.11.0, ``apisix/admin/credentials.lua``, PR #11601) are a
sub-resource of each consumer: after the types above, ``credentials`` lists
``GET /apisix/admin/consumers/<username>/credentials`` (paged like the others; 404 ``Key
not found`` = none) for every exported consumer into ``credentials.json`` (each entry also
names its ``consumer``). Before 3.11 that path is routed to the consumer itself (a GET
answers with the consumer, a DELETE would delete it), so the server is asked first: the
``Server: APISIX/<version>`` header of the Admin API (``apisix/init.lua`` ``http_admin``),
else — ``apisix.enable_server_tokens: false`` sends a bare ``APISIX`` — whether
``GET /apisix/admin/schema/credential`` exists (200 from 3.11, 400 ``not found schema``
before). An older APISIX: ``credentials`` is skipped with the reason (its consumers carry
their auth plugins in ``consumers.json``). Credentials hold secrets (key-auth keys,
basic-auth passwords, jwt secrets) as the Admin API returns them — decrypted when
``data_encryption`` is on; a restore PUTs them in plain and the target encrypts them with
its own keyring. They are never logged.

SSL private keys are never returned by the Admin API; the manifest details say so —
they are in the ``etcd-apisix`` snapshot, which holds the same state.

Restore ``PUT``s every saved value back (``update_time`` dropped: the server resets
it; ``create_time`` kept where the server takes it — APISIX ≥3.7 refuses both with 400
"the property is forbidden: create_time", and then it is dropped for the rest of the
restore) in dependency order — upstreams, services, plugin_configs,
consumer_groups, consumers (``PUT /apisix/admin/consumers`` with ``username`` in the
body), credentials (``PUT /apisix/admin/consumers/<username>/credentials/<id>``; an export
with credentials is refused, before anything is changed, by an APISIX older than 3.11),
ssls (only objects that carry a ``key``; otherwise skipped with a note), protos,
secrets, global_rules, plugin_metadata, then routes and stream_routes. It **stops at
the first refused PUT**: later objects may depend on it (a route on its upstream), and
a stop leaves a state that is easy to describe and to finish by running the restore
again (PUT by id is idempotent). It returns "N created, M replaced" (201 vs 200).
"""

from __future__ import annotations

import json
import logging
import os
import re
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import httpx

from pydantic import Field, SecretStr, field_validator

from ..access import Access
from ..schema import ServiceBase, resolve_secret
from ..errors import ArtifactError, IncompleteArtifactError, RestoreError, VerifyError
from ..reader import ArtifactPath, as_artifact
from ..writer import ArtifactWriter, FileRecord
from ..fingerprint import normalized
from .base import ArtifactResult, BaseService
from .httpapi import HttpApi, tls_context

__all__ = ["CORE_TYPES", "CREDENTIALS_SINCE", "RESTORE_ORDER", "SSL_KEY_NOTE", "ApisixService"]

log = logging.getLogger(__name__)

#: the product document's five, always named in the report line in this order
CORE_TYPES: tuple[str, ...] = ("routes", "upstreams", "services", "consumers", "global_rules")
#: dependencies first: a route may point at an upstream, service, plugin_config …
RESTORE_ORDER: tuple[str, ...] = (
    "upstreams", "services", "plugin_configs", "consumer_groups", "consumers", "credentials", "ssls", "protos",
    "secrets", "global_rules", "plugin_metadata", "routes", "stream_routes",
)
#: the first APISIX with consumer credentials (CHANGELOG 3.11.0, PR #11601)
CREDENTIALS_SINCE = (3, 11)
_SERVER_VERSION = re.compile(r"^APISIX/(\d+)\.(\d+)")
CREDENTIALS_NOTE_OFF = ("not exported: 'credentials' is not in resources; consumers of APISIX >= 3.11 restored from "
                        "this export come back without their credentials (they are in the etcd-apisix snapshot)")
SSL_KEY_NOTE = "not exported by the Admin API; they are in the etcd-apisix snapshot"
INDEX = "index.json"
FORMAT = "coderz-backup/apisix-config/1"
_ERROR_KEEP = 4096


class _Skip(Exception):
    """This resource type cannot be listed on this APISIX; the reason is the message."""


def _error_text(body: bytes) -> str:
    """``error_msg`` (+ ``description``) or ``message`` of an Admin-API error body, else its text."""
    try:
        obj = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:300] or "(empty body)"
    if isinstance(obj, dict):
        msg = obj.get("error_msg") or obj.get("message")
        if msg:
            desc = obj.get("description")
            return f"{msg} ({desc})" if desc else str(msg)
    return json.dumps(obj)[:300]


def _object_id(rtype: str, item: dict) -> str | None:
    """The id to PUT an object back under: the key after ``/<type>/`` (``vault/1`` for secrets)."""
    key = item.get("key")
    if isinstance(key, str) and f"/{rtype}/" in key:
        rest = key.split(f"/{rtype}/", 1)[1]
        if rest:
            return rest
    value = item.get("value")
    if isinstance(value, dict):
        for field in ("id", "username"):
            if isinstance(value.get(field), (str, int)) and str(value[field]):
                return str(value[field])
    return None



#: APISIX Admin-API resource types, in export order (the product document's five first;
#: ``credentials`` — per consumer — always after ``consumers``)
APISIX_RESOURCES: tuple[str, ...] = (
    "routes", "upstreams", "services", "consumers", "global_rules",
    "ssls", "plugin_configs", "consumer_groups", "stream_routes", "protos", "secrets", "plugin_metadata",
    "credentials",
)


class ApisixConfig(ServiceBase):
    """APISIX: every object of the Admin API exported as JSON (one file per resource type)."""

    kind: Literal["apisix"]
    admin_url: str = Field("http://127.0.0.1:9180", description="Admin API base URL (3.x: port 9180, "
                                                                  "deployment.admin.admin_listen)")
    admin_key: SecretStr | None = Field(None, description="Admin API key reference (admin role; a viewer key "
                                                          "can export but not restore); sent as X-API-KEY")
    api_version: Literal["auto", "v3", "v2"] = Field("auto", description="Admin API response format; auto "
                                                     "follows the X-API-VERSION header / response shape")
    page_size: int = Field(500, ge=10, le=500, description="objects per list page (APISIX accepts 10–500)")
    resources: list[str] = Field(default_factory=lambda: list(APISIX_RESOURCES), min_length=1,
                                 description="resource types to export")
    cacert: str | None = Field(None, description="CA bundle to verify an https admin_url")
    verify_tls: bool = Field(True, description="verify the Admin API's TLS certificate")
    section: ClassVar[str] = "etcd Snapshots"
    order: ClassVar[int] = 80

    @field_validator("resources")
    @classmethod
    def _known_resources(cls, v: list[str]) -> list[str]:
        bad = [r for r in v if r not in APISIX_RESOURCES]
        if bad:
            raise ValueError(f"unknown APISIX resource type(s) {', '.join(bad)}; "
                             f"known: {', '.join(APISIX_RESOURCES)}")
        if len(set(v)) != len(v):
            raise ValueError("resource types are listed more than once")
        if "credentials" in v and "consumers" not in v:
            raise ValueError("'credentials' are listed per consumer: add 'consumers' to resources too")
        return v


class _Admin(HttpApi):
    """HTTP to the Admin API; the key travels in the ``X-API-KEY`` header only."""

    product = "APISIX Admin API"
    url_field = "admin_url"

    def __init__(self, svc: ApisixService):
        super().__init__(svc, headers={"Accept": "application/json"}, timeout=httpx.Timeout(60.0, connect=10.0))
        key = resolve_secret(svc.config.admin_key, what=f"services.{svc.name}.admin_key")
        if key:
            self.client.headers["X-API-KEY"] = key  # header only: ?api_key= would land in access logs

    def tls(self) -> ssl.SSLContext | bool:
        """The project's one TLS policy (httpapi.tls_context: chain and host name verified, no
        VERIFY_X509_STRICT) for an https admin_url or a cacert."""
        c = self.svc.config
        if c.verify_tls and (c.cacert or c.admin_url.startswith("https://")):
            try:
                return tls_context(c.cacert)
            except (OSError, ssl.SSLError) as exc:
                raise ArtifactError(f"{self.svc.name}: cannot load cacert {c.cacert}: {exc}") from None
        return c.verify_tls

    def transport(self, exc: httpx.HTTPError, what: str) -> ArtifactError:
        if isinstance(exc, httpx.ConnectError):
            if "SSL" in str(exc) or "certificate" in str(exc).lower():
                return ArtifactError(f"{self.where}: TLS handshake failed ({exc}); check cacert/verify_tls")
            return ArtifactError(f"{self.where} is unreachable ({exc}); is the Admin API enabled and listening "
                                 "there (3.x: deployment.admin.admin_listen, port 9180)?")
        if isinstance(exc, httpx.TimeoutException):
            return ArtifactError(f"{self.where}: {what} timed out ({type(exc).__name__})")
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
            return IncompleteArtifactError(f"{self.where}: {what}: the answer was cut off "
                                           f"({type(exc).__name__}: {exc})")
        return ArtifactError(f"{self.where}: {what}: {type(exc).__name__}: {exc}")

    def refused(self, resp: httpx.Response, what: str, err: type[Exception] = ArtifactError) -> Exception:
        status, text = resp.status_code, _error_text(resp.content[:_ERROR_KEEP])
        if status == 401 or (status == 403 and "check token" in text):
            return err(f"{self.where}: admin_key rejected: {text}; check services.{self.svc.name}.admin_key")
        if status == 403:
            return err(f"{self.where}: {what} forbidden (HTTP 403): {text}; is this host in "
                       "deployment.admin.allow_admin?")
        return err(f"{self.where}: {what} failed (HTTP {status}): {text}")


class ApisixService(BaseService):
    kind: ClassVar[str] = "apisix"
    config_model: ClassVar[type[ApisixConfig]] = ApisixConfig
    artifact_names: ClassVar[tuple[str, ...]] = ("{name}/",)
    config: ApisixConfig

    def __init__(self, name: str, config: ApisixConfig, access: Access):
        super().__init__(name, config, access)

    @property
    def folder(self) -> str:
        return f"{self.name}/"

    @property
    def where(self) -> str:
        return f"APISIX Admin API at {self.config.admin_url}"

    # -- backup ---------------------------------------------------------------
    def backup(self, into: Path) -> list[ArtifactResult]:
        """Every object of every configured resource type, one JSON file per type, and the index."""
        started = time.monotonic()
        into = Path(into)
        written: list[FileRecord] = []
        try:
            with _Admin(self) as client:
                state: dict[str, Any] = {"api_version": None, "usernames": []}
                counts: dict[str, int] = {}
                skipped: dict[str, str] = {}
                credentials_note = CREDENTIALS_NOTE_OFF
                for rtype in self._export_order():
                    try:
                        if rtype == "credentials":
                            rec, n, credentials_note = self._export_credentials(client, into, state)
                        else:
                            rec, n = self._export_type(client, into, rtype, state)
                    except _Skip as why:
                        if rtype == "credentials":
                            credentials_note = f"not exported: {why}"
                        skipped[rtype] = str(why)
                        log.info("%s: %s skipped: %s", self.name, rtype, why)
                        continue
                    written.append(rec)
                    counts[rtype] = n
                index = {
                    "format": FORMAT,
                    "admin_url": self.config.admin_url,
                    "api_version": state["api_version"] or "unknown",
                    "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "types": {t: {"file": f"{t}.json", "count": n} for t, n in counts.items()},
                    "skipped": skipped,
                    "ssl_private_keys": SSL_KEY_NOTE, "consumer_credentials": credentials_note,
                }
                written.append(self._write_json(into, INDEX, index))
        except BaseException:
            self._discard(into, written)
            raise
        extra = [t for t in APISIX_RESOURCES if t not in CORE_TYPES and counts.get(t)]
        summary = f"APISIX config exported ({', '.join([*CORE_TYPES, *extra])})"
        total = sum(counts.values())
        log.info("%s: %d objects in %d types exported in %.1fs (%s)", self.name, total, len(counts),
                 time.monotonic() - started, ", ".join(f"{t}={n}" for t, n in counts.items()))
        return [ArtifactResult.from_files(
            self.name, self.kind, self.folder, written, summary=summary,
            details={"admin_url": self.config.admin_url, "api_version": index["api_version"],
                     "counts": counts, "skipped": skipped, "ssl_private_keys": SSL_KEY_NOTE,
                     "consumer_credentials": credentials_note},
            fingerprint=normalized(dict(counts)))]

    def fingerprint_live(self) -> dict:
        """Objects per configured resource type, listed through the Admin API as the export lists them
        (a type this APISIX does not have is left out, as in the export)."""
        counts: dict[str, int] = {}
        with _Admin(self) as client:
            state: dict[str, Any] = {"api_version": None}
            usernames: list[str] = []
            for rtype in self._export_order():
                try:
                    if rtype == "credentials":
                        self._credentials_supported(client)
                        counts[rtype] = sum(1 for u in usernames for _ in self._credential_items(client, u, state))
                        continue
                    n = 0
                    for item in self._items(client, rtype, state):
                        n += 1
                        if rtype == "consumers" and isinstance(item, dict):
                            usernames.append(_object_id(rtype, item) or "")
                    counts[rtype] = n
                except _Skip:
                    continue
        return normalized(counts)

    def _export_order(self) -> list[str]:
        """The configured types, ``credentials`` last (it lists the exported consumers')."""
        types = [t for t in self.config.resources if t != "credentials"]
        return types + (["credentials"] if "credentials" in self.config.resources else [])

    def _credentials_supported(self, client: _Admin) -> str:
        """Whether this APISIX has consumer credentials (≥3.11.0): the version in the ``Server``
        header, else whether the credential schema exists. Returns what told it; raises _Skip
        when it has none (before 3.11 ``/consumers/<u>/credentials`` *is* the consumer)."""
        what = "GET /apisix/admin/schema/credential"
        resp = client.call("GET", "/apisix/admin/schema/credential", what=what, ok=None)
        server = resp.headers.get("Server", "")
        m = _SERVER_VERSION.match(server)
        if m:
            if (int(m[1]), int(m[2])) >= CREDENTIALS_SINCE:
                return server
            raise _Skip(f"this APISIX ({server}) has no consumer credentials (they arrived in 3.11.0); "
                        "its consumers carry their auth plugins in consumers.json")
        if resp.status_code == 200:
            return "the Admin API has the credential schema"
        text = _error_text(resp.content[:_ERROR_KEEP])
        if resp.status_code in (400, 404) and ("not found schema" in text or "Unsupported resource type" in text):
            raise _Skip(f"this APISIX has no consumer credentials ({what}: HTTP {resp.status_code}: {text}; they "
                        "arrived in 3.11.0); its consumers carry their auth plugins in consumers.json")
        raise client.refused(resp, what)

    def _credential_items(self, client: _Admin, username: str, state: dict) -> Iterator[dict]:
        """The credentials of one consumer, each checked to be one (not the consumer itself)."""
        rtype = f"consumers/{quote(username, safe='')}/credentials"
        for item in self._items(client, rtype, state):
            key = item.get("key") if isinstance(item, dict) else None
            if not isinstance(key, str) or f"/consumers/{username}/credentials/" not in key \
                    or not isinstance(item.get("value"), dict):
                raise IncompleteArtifactError(f"{self.where}: GET /apisix/admin/{rtype}: answered with something "
                                              f"that is not a credential of {username!r} (key {key!r})")
            yield item

    def _export_credentials(self, client: _Admin, into: Path, state: dict) -> tuple[FileRecord, int, str]:
        """``credentials.json``: every exported consumer's credentials (secrets inside: never logged)."""
        how = self._credentials_supported(client)
        n = 0
        with ArtifactWriter.open(into, f"{self.folder}credentials.json") as w:
            w.write(b"[")
            for username in state["usernames"]:
                for item in self._credential_items(client, username, state):
                    cid = _object_id("credentials", item)
                    if not cid:
                        raise IncompleteArtifactError(f"{self.where}: credentials of {username!r}: cannot tell "
                                                      f"the id of {item.get('key')!r}")
                    saved = {"id": cid, "consumer": username, "key": item["key"], "value": item["value"],
                             "createdIndex": item.get("createdIndex"), "modifiedIndex": item.get("modifiedIndex")}
                    w.write((",\n" if n else "\n").encode() + json.dumps(saved, ensure_ascii=False).encode())
                    n += 1
            w.write(b"\n]\n")
            rec = w.commit()
        note = (f"{n} exported in credentials.json ({how}); they hold secrets (key-auth keys, basic-auth passwords, "
                "jwt secrets) as the Admin API returns them")
        return rec, n, note

    def _discard(self, into: Path, written: list[FileRecord]) -> None:
        """Remove what this failed attempt committed: nothing incomplete stays under final names."""
        for rec in written:
            try:
                os.unlink(into / rec.path)
            except FileNotFoundError:
                pass
        try:
            (into / self.name).rmdir()
        except OSError:
            pass

    def _write_json(self, into: Path, fname: str, obj: Any) -> FileRecord:
        data = (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()
        with ArtifactWriter.open(into, f"{self.folder}{fname}") as w:
            w.write(data)
            return w.commit()

    def _seen_version(self, resp: httpx.Response, state: dict, shape: str | None) -> None:
        """Record (and check against the config) the API version of an answer: header, else body shape."""
        header = resp.headers.get("X-API-VERSION")
        seen = header or shape
        if seen is None:
            return
        want = self.config.api_version
        if want != "auto" and seen != want:
            raise ArtifactError(f"{self.where} answers with Admin API {seen} but api_version = {want!r} is "
                                f"configured; set services.{self.name}.api_version to \"auto\" or {seen!r}")
        if state["api_version"] is None:
            state["api_version"] = header or f"{shape} (no X-API-VERSION header; from the response shape)"

    def _get_page(self, client: _Admin, rtype: str, page: int | None) -> tuple[httpx.Response, Any]:
        """One list answer as (response, parsed JSON) or None for an empty type; raises _Skip/ArtifactError."""
        path = f"/apisix/admin/{rtype}"
        params = {"page": page, "page_size": self.config.page_size} if page is not None else None
        what = f"GET {path}" + (f" page {page}" if page is not None else "")
        resp = client.call("GET", path, params=params, what=what, ok=None)
        body = resp.content
        status = resp.status_code
        if status == 200:
            try:
                return resp, json.loads(body)
            except ValueError:
                raise IncompleteArtifactError(f"{self.where}: {what}: the answer is not complete JSON "
                                              f"({len(body)} bytes); cut off?") from None
        text = _error_text(body[:_ERROR_KEEP])
        if status == 404 and text == "Key not found":
            return resp, None  # the type's directory is absent in etcd: nothing saved
        if status == 404 and "Unsupported resource type" in text:
            raise _Skip(f"not supported by this APISIX (HTTP 404: {text})")
        if status == 400 and "stream mode is disabled" in text:
            raise _Skip(f"stream mode is off (HTTP 400: {text})")
        if rtype == "plugin_metadata" and status in (400, 404):
            raise _Skip(f"this APISIX cannot list plugin_metadata (HTTP {status}: {text}); "
                        "it is in the etcd-apisix snapshot")
        raise client.refused(resp, what)

    def _items(self, client: _Admin, rtype: str, state: dict) -> Iterator[dict]:
        """Every object of one type, page by page, checked against ``total``."""
        page = None if self.config.api_version == "v2" else 1
        total: int | None = None
        got = 0
        while True:
            resp, body = self._get_page(client, rtype, page)
            where = f"{self.where}: GET /apisix/admin/{rtype}" + (f" page {page}" if page else "")
            if body is None:
                self._seen_version(resp, state, None)
                if total:
                    raise IncompleteArtifactError(f"{where}: the type vanished while exporting "
                                                  f"({got} of {total} read); run the backup again")
                return
            if not isinstance(body, dict):
                raise IncompleteArtifactError(f"{where}: unexpected answer {json.dumps(body)[:200]}")
            if "node" in body:  # v2: everything in one answer, no paging
                self._seen_version(resp, state, "v2")
                node = body["node"] if isinstance(body["node"], dict) else {}
                nodes = node.get("nodes") or []
                if isinstance(nodes, dict):
                    nodes = list(nodes.values())
                nodes = [n for n in nodes if not (isinstance(n, dict) and n.get("value") == "init_dir")]
                count = body.get("count")
                if isinstance(count, int) and count != len(nodes):
                    raise IncompleteArtifactError(f"{where}: count says {count} but {len(nodes)} objects came")
                for item in nodes:
                    yield item
                return
            if not body:  # {} : a page past the end
                self._seen_version(resp, state, "v3")
                items: list = []
            else:
                self._seen_version(resp, state, "v3")
                if "total" not in body or "list" not in body:
                    raise IncompleteArtifactError(f"{where}: answer has neither total/list (v3) nor node (v2): "
                                                  f"{json.dumps(body)[:200]}")
                items = body["list"] or []
                if isinstance(items, dict):  # cjson encodes an empty Lua table as {}
                    items = list(items.values())
                page_total = body["total"]
                if not isinstance(page_total, int):
                    raise IncompleteArtifactError(f"{where}: total is not a number: {page_total!r}")
                if total is None:
                    total = page_total
                elif page_total != total:
                    raise IncompleteArtifactError(
                        f"{where}: total changed from {total} to {page_total} while paging (the config was "
                        "edited during the export); run the backup again")
            for item in items:
                got += 1
                yield item
            if page is None or not items or (total is not None and got >= total):
                break
            page += 1
        if total is not None and got != total:
            raise IncompleteArtifactError(f"{where}: collected {got} objects but total says {total}; "
                                          "run the backup again")

    def _export_type(self, client: _Admin, into: Path, rtype: str, state: dict) -> tuple[FileRecord, int]:
        n = 0
        with ArtifactWriter.open(into, f"{self.folder}{rtype}.json") as w:
            w.write(b"[")
            for item in self._items(client, rtype, state):
                if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
                    raise IncompleteArtifactError(f"{self.where}: {rtype}: an object without a value: "
                                                  f"{json.dumps(item)[:200]}")
                oid = _object_id(rtype, item)
                if not oid:
                    raise IncompleteArtifactError(f"{self.where}: {rtype}: cannot tell the id of "
                                                  f"{item.get('key')!r}")
                saved = {"id": oid, "key": item.get("key"), "value": item["value"],
                         "createdIndex": item.get("createdIndex"), "modifiedIndex": item.get("modifiedIndex")}
                if rtype == "consumers":
                    state.setdefault("usernames", []).append(oid)
                w.write((",\n" if n else "\n").encode() + json.dumps(saved, ensure_ascii=False).encode())
                n += 1
            w.write(b"\n]\n")
            return w.commit(), n

    # -- verify ---------------------------------------------------------------
    def _load(self, artifact: ArtifactPath) -> tuple[dict, dict[str, list[dict]]]:
        """index.json and every type file, checked; raises VerifyError."""
        artifact = as_artifact(artifact)
        try:
            index = json.loads((artifact / INDEX).read_text())
        except FileNotFoundError:
            raise VerifyError(f"{artifact.name}: {INDEX} is missing (the export did not finish)") from None
        except (ValueError, OSError) as exc:
            raise VerifyError(f"{artifact.name}/{INDEX}: not valid JSON ({exc})") from None
        if not isinstance(index, dict) or not isinstance(index.get("types"), dict):
            raise VerifyError(f"{artifact.name}/{INDEX}: no 'types' table")
        data: dict[str, list[dict]] = {}
        for rtype, entry in index["types"].items():
            if rtype not in APISIX_RESOURCES or not isinstance(entry, dict):
                raise VerifyError(f"{artifact.name}/{INDEX}: unknown resource type {rtype!r}")
            fname = f"{rtype}.json"
            try:
                items = json.loads((artifact / fname).read_text())
            except FileNotFoundError:
                raise VerifyError(f"{artifact.name}/{fname}: listed in {INDEX} but missing") from None
            except (ValueError, OSError) as exc:
                raise VerifyError(f"{artifact.name}/{fname}: not valid JSON ({exc})") from None
            if not isinstance(items, list):
                raise VerifyError(f"{artifact.name}/{fname}: not a JSON list")
            if len(items) != entry.get("count"):
                raise VerifyError(f"{artifact.name}/{fname}: {len(items)} objects but {INDEX} says "
                                  f"{entry.get('count')}")
            for i, item in enumerate(items):
                if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"] \
                        or not isinstance(item.get("value"), dict):
                    raise VerifyError(f"{artifact.name}/{fname}: object #{i + 1} has no id or no value")
            data[rtype] = items
        consumers = {o["id"] for o in data.get("consumers", [])}
        for i, item in enumerate(data.get("credentials", [])):
            owner = item.get("consumer")
            if not isinstance(owner, str) or not owner:
                raise VerifyError(f"{artifact.name}/credentials.json: object #{i + 1} names no consumer")
            if "consumers" in data and owner not in consumers:
                raise VerifyError(f"{artifact.name}/credentials.json: credential {item['id']!r} belongs to consumer "
                                  f"{owner!r}, which is not in consumers.json")
        extra = sorted(p.name for p in artifact.iterdir() if p.name != INDEX and p.name.removesuffix(".json")
                       not in data)
        if extra:
            raise VerifyError(f"{artifact.name}: files not listed in {INDEX}: {', '.join(extra)}")
        return index, data

    def verify(self, artifact: ArtifactPath | Path) -> str:
        artifact = as_artifact(artifact)
        index, data = self._load(artifact)
        total = sum(len(v) for v in data.values())
        skipped = f", {len(index.get('skipped') or {})} skipped" if index.get("skipped") else ""
        return f"{total} objects in {len(data)} types, counts match {INDEX}, every object has an id{skipped}"

    # -- restore --------------------------------------------------------------
    def restore_target(self) -> str:
        return (f"APISIX objects on {self.config.admin_url} with the saved ids are created or replaced "
                "(PUT by id); objects that are not in the backup are left alone; SSL certificates are not "
                "restored (their private keys are only in the etcd-apisix snapshot)")

    def health(self) -> str:
        try:
            with _Admin(self) as client:
                resp = client.call("GET", "/apisix/admin/routes", what="GET /apisix/admin/routes", ok=None)
        except ArtifactError as exc:
            raise RestoreError(str(exc)) from None
        text = _error_text(resp.content[:_ERROR_KEEP])
        if resp.status_code == 404 and text == "Key not found":
            return "Admin API answers, key accepted, no routes"
        if resp.status_code != 200:
            raise client.refused(resp, "GET /apisix/admin/routes", RestoreError)
        try:
            body = resp.json()
        except ValueError:
            raise RestoreError(f"{self.where}: GET /apisix/admin/routes returned no JSON") from None
        n = body.get("total", body.get("count", "?")) if isinstance(body, dict) else "?"
        return f"Admin API answers ({resp.headers.get('X-API-VERSION', 'v2?')}), {n} route(s)"

    def restore(self, artifact: ArtifactPath | Path, **_: object) -> str:
        """PUT every saved object back, dependencies first; stop at the first refusal."""
        artifact = as_artifact(artifact)
        try:
            index, data = self._load(artifact)
        except VerifyError as exc:
            raise RestoreError(f"{self.name}: refusing to restore, nothing changed: {exc}") from None
        created = replaced = 0
        notes: list[str] = []
        try:
            client = _Admin(self)
        except ArtifactError as exc:
            raise RestoreError(str(exc)) from None
        dropped = {"update_time"}   # + create_time once the server says it is forbidden (APISIX ≥3.7)
        with client:
            if data.get("credentials"):
                try:
                    self._credentials_supported(client)
                except _Skip as why:
                    raise RestoreError(f"{self.name}: refusing to restore, nothing changed: the export has "
                                       f"{len(data['credentials'])} consumer credential(s) but {why}; restore into "
                                       "APISIX >= 3.11 (or use the etcd-apisix snapshot)") from None
                except ArtifactError as exc:
                    raise RestoreError(f"{self.name}: refusing to restore, nothing changed: {exc}") from None
            for rtype in RESTORE_ORDER:
                ssl_skipped = 0
                for item in data.get(rtype, []):
                    value = {k: v for k, v in item["value"].items() if k not in dropped}
                    if rtype == "ssls" and not value.get("key"):
                        ssl_skipped += 1
                        continue
                    label = f"{rtype}/{item['id']}"
                    if rtype == "consumers":
                        value.setdefault("username", item["id"])
                        path = "/apisix/admin/consumers"
                    elif rtype == "credentials":
                        label = f"credentials/{item['consumer']}/{item['id']}"
                        path = (f"/apisix/admin/consumers/{quote(item['consumer'], safe='')}/credentials/"
                                f"{quote(item['id'], safe='')}")
                    else:
                        path = f"/apisix/admin/{rtype}/{item['id']}"
                    done = f"{created} created, {replaced} replaced before it"
                    try:
                        resp = client.call("PUT", path, json=value, what="PUT", ok=None)
                        if (resp.status_code == 400 and "create_time" in value
                                and b"forbidden" in resp.content and b"create_time" in resp.content):
                            dropped.add("create_time")
                            log.info("%s: the Admin API refuses create_time (APISIX ≥3.7): restoring without "
                                     "it (the server sets it)", self.name)
                            value.pop("create_time")
                            resp = client.call("PUT", path, json=value, what="PUT", ok=None)
                    except ArtifactError as exc:
                        raise RestoreError(f"{self.name}: PUT {label}: {exc}; stopped ({done})") from None
                    if resp.status_code == 201:
                        created += 1
                    elif 200 <= resp.status_code < 300:
                        replaced += 1
                    else:
                        cause = client.refused(resp, f"PUT {path}")
                        raise RestoreError(
                            f"{self.name}: restore stopped at {label}: {cause}; {done}, later "
                            "objects not restored (fix the cause and run the restore again: PUT by id is "
                            "idempotent)")
                if ssl_skipped:
                    notes.append(f"{ssl_skipped} ssl(s) skipped: the export has no private keys "
                                 "(restore them from the etcd-apisix snapshot)")
        skipped = index.get("skipped") or {}
        if skipped:
            notes.append("not in the export: " + ", ".join(sorted(skipped)))
        msg = f"{created} created, {replaced} replaced"
        log.info("%s: restore into %s: %s%s", self.name, self.config.admin_url, msg,
                 "".join(f"; {n}" for n in notes))
        return msg + "".join(f"; {n}" for n in notes)

