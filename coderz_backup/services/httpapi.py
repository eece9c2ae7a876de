"""The one HTTP client for the services that talk HTTP: Grafana, Elasticsearch, APISIX
(Admin API), etcd (the v3 gRPC gateway) and Prometheus, for their backups, restores and
health checks.

:class:`HttpApi` builds an ``httpx.Client`` for the config's base URL (``url``; a service
names another field with :attr:`HttpApi.url_field`: ``admin_url``, ``endpoint``) with the
TLS settings of the config (``cacert``, ``verify_tls``: :meth:`HttpApi.tls`, which a
service with other TLS settings overrides), and turns every failure into an
:class:`~coderz_backup.errors.ArtifactError` whose message says what to do: through
:meth:`HttpApi.transport` (unreachable, TLS, timeout), :meth:`HttpApi.refused` (an HTTP
error status; a service overrides it to explain 401/403 in its own terms) and
:meth:`HttpApi.not_json`, each of which a service overrides to say it its way. A health
check turns that error into a RestoreError. :meth:`HttpApi.stream` is a request whose
answer is read as it comes (etcd's snapshot). :func:`credentials` is the login of
Grafana and Elasticsearch: a token, else user + password, else none. Credentials go in
headers or httpx auth objects, never in URLs or messages. :func:`tls_context` is the one
verifying TLS context: Python 3.13+ turns on ``VERIFY_X509_STRICT`` in
``ssl.create_default_context()``, which rejects CAs such as the ``http_ca.crt`` that
Elasticsearch 8 generated for existing clusters (no keyUsage extension); the flag is
cleared, the chain and the host name are still verified.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Container, Iterator
from typing import Any

import httpx

from ..schema import resolve_secret
from ..errors import ArtifactError

__all__ = ["HttpApi", "credentials", "tls_context", "tls_verify"]


def tls_context(cafile: str | None = None) -> ssl.SSLContext:
    """A client context that verifies the chain (against ``cafile``, else the system CAs) and
    the host name, without ``VERIFY_X509_STRICT`` (Python 3.13+ sets it by default; the CA
    that Elasticsearch 8 generated before elastic/elasticsearch#126376 lacks the keyUsage extension it requires)."""
    ctx = ssl.create_default_context(cafile=cafile)
    strict = getattr(ssl, "VERIFY_X509_STRICT", 0)
    if strict and ctx.verify_flags & strict:
        ctx.verify_flags &= ~strict
    return ctx


def tls_verify(name: str, config) -> ssl.SSLContext | bool:
    """httpx ``verify`` for a config with ``url``, ``cacert`` and ``verify_tls``."""
    if config.verify_tls and (config.cacert or config.url.startswith("https://")):
        try:
            return tls_context(config.cacert)
        except (OSError, ssl.SSLError) as exc:
            raise ArtifactError(f"{name}: cannot load cacert {config.cacert}: {exc}") from None
    return config.verify_tls


def credentials(svc, *, token_field: str, scheme: str, token_who: str
                ) -> tuple[dict[str, str], httpx.Auth | None, str | None]:
    """``(headers, auth, who)`` of the first credential the config sets: the secret in
    ``token_field`` (sent as ``Authorization: <scheme> <token>``), else ``user`` +
    ``password`` (basic auth); ``who`` is None when neither is set."""
    c = svc.config
    token = resolve_secret(getattr(c, token_field), what=f"services.{svc.name}.{token_field}")
    if token:
        return {"Authorization": f"{scheme} {token}"}, None, token_who
    if c.user:
        password = resolve_secret(c.password, what=f"services.{svc.name}.password")
        if password is None:
            raise ArtifactError(f"{svc.name}: user {c.user!r} is set but no password; "
                                f"set services.{svc.name}.password")
        return {}, httpx.BasicAuth(c.user, password), f"user {c.user!r}"
    return {}, None, None


class HttpApi:
    """HTTP to one service; see the module docstring."""

    product = "the service"
    #: the config field holding the base URL
    url_field = "url"

    def __init__(self, svc, *, headers: dict[str, str] | None = None, auth: httpx.Auth | None = None,
                 who: str = "", read_timeout: float = 60.0, timeout: httpx.Timeout | float | None = None):
        self.svc = svc
        self.who = who
        self.url: str = getattr(svc.config, self.url_field)
        self.where = f"{self.product} at {self.url}"
        self.client = httpx.Client(base_url=self.url.rstrip("/"), auth=auth, headers=headers, verify=self.tls(),
                                   timeout=httpx.Timeout(30.0, connect=10.0, read=read_timeout)
                                   if timeout is None else timeout)

    def tls(self) -> ssl.SSLContext | bool:
        """httpx ``verify`` from the config (raises ArtifactError for unreadable TLS files)."""
        return tls_verify(self.svc.name, self.svc.config)

    def close(self) -> None:
        self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transport(self, exc: httpx.HTTPError, what: str) -> Exception:
        """The error for a request that got no (complete) answer."""
        if "SSL" in str(exc) or "certificate" in str(exc).lower():
            return ArtifactError(f"{self.where}: TLS failed during {what} ({exc}); set cacert, or verify_tls = false")
        if isinstance(exc, httpx.ConnectError):
            return ArtifactError(f"{self.where} is unreachable ({what}): {exc}; is it running and is url right?")
        if isinstance(exc, httpx.TimeoutException):
            return ArtifactError(f"{self.where}: {what} timed out ({type(exc).__name__})")
        return ArtifactError(f"{self.where}: {what} failed: {type(exc).__name__}: {exc}")

    def refused(self, resp: httpx.Response, what: str) -> Exception:
        """The error for a status outside ``ok`` (services explain 401/403 their way)."""
        return ArtifactError(f"{self.where}: {what} failed (HTTP {resp.status_code})")

    def not_json(self, resp: httpx.Response, what: str) -> Exception:
        """The error for an answer that should be JSON and is not."""
        return ArtifactError(f"{self.where}: {what}: the answer is not JSON (is {self.url} {self.product}?)")

    def call(self, method: str, path: str, *, what: str, ok: Container[int] | None = (200,),
             timeout: float | None = None, **kw: Any) -> httpx.Response:
        """One request; a transport failure or a status outside ``ok`` raises (``ok=None``: any status)."""
        if timeout is not None:
            kw["timeout"] = httpx.Timeout(30.0, connect=10.0, read=timeout)
        try:
            resp = self.client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise self.transport(exc, what) from None
        if ok is not None and resp.status_code not in ok:
            raise self.refused(resp, what)
        return resp

    def parse(self, resp: httpx.Response, what: str) -> Any:
        """The JSON of an answer (:meth:`not_json` when it is not JSON)."""
        try:
            return resp.json()
        except ValueError:
            raise self.not_json(resp, what) from None

    def json(self, method: str, path: str, *, what: str, **kw: Any) -> Any:
        return self.parse(self.call(method, path, what=what, **kw), what)

    @contextlib.contextmanager
    def stream(self, method: str, path: str, *, what: str, **kw: Any) -> Iterator[httpx.Response]:
        """A request whose answer is read while it comes; transport failures (also while the
        caller reads) raise :meth:`transport`. The status is the caller's to check."""
        try:
            with self.client.stream(method, path, **kw) as resp:
                yield resp
        except httpx.HTTPError as exc:
            raise self.transport(exc, what) from None

    def answers(self, path: str, *, timeout: float, ok: Container[int] | None = None) -> bool:
        """Whether a GET of ``path`` gets an answer (with a status in ``ok``) within ``timeout`` seconds."""
        try:
            resp = self.client.get(path, timeout=timeout)
        except httpx.HTTPError:
            return False
        return ok is None or resp.status_code in ok
