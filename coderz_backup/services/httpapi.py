"""The one HTTP client shape for services with a REST API (Grafana, Elasticsearch).

:class:`HttpApi` builds an ``httpx.Client`` for ``config.url`` with the TLS settings of the
config (``cacert``, ``verify_tls``), and turns every failure into an
:class:`~coderz_backup.errors.ArtifactError` whose message says what to do: unreachable,
TLS, timeout, or — through :meth:`HttpApi.refused`, which a service overrides to explain
401/403 in its own terms — an HTTP error status. Credentials go in headers or httpx
auth objects, never in URLs or messages.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from ..errors import ArtifactError

__all__ = ["HttpApi", "tls_verify"]


def tls_verify(name: str, config) -> ssl.SSLContext | bool:
    """httpx ``verify`` for a config with ``url``, ``cacert`` and ``verify_tls``."""
    if config.verify_tls and (config.cacert or config.url.startswith("https://")):
        try:
            return ssl.create_default_context(cafile=config.cacert)
        except (OSError, ssl.SSLError) as exc:
            raise ArtifactError(f"{name}: cannot load cacert {config.cacert}: {exc}") from None
    return config.verify_tls


class HttpApi:
    """HTTP to one service; see the module docstring."""

    product = "the service"

    def __init__(self, svc, *, headers: dict[str, str], auth: httpx.Auth | None, who: str,
                 read_timeout: float = 60.0):
        c = svc.config
        self.svc = svc
        self.who = who
        self.where = f"{self.product} at {c.url}"
        self.client = httpx.Client(base_url=c.url.rstrip("/"), auth=auth, headers=headers,
                                   verify=tls_verify(svc.name, c),
                                   timeout=httpx.Timeout(30.0, connect=10.0, read=read_timeout))

    def close(self) -> None:
        self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transport(self, exc: httpx.HTTPError, what: str) -> ArtifactError:
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

    def call(self, method: str, path: str, *, what: str, ok: tuple[int, ...] = (200,),
             timeout: float | None = None, **kw: Any) -> httpx.Response:
        """One request; a transport failure or a status outside ``ok`` raises."""
        if timeout is not None:
            kw["timeout"] = httpx.Timeout(30.0, connect=10.0, read=timeout)
        try:
            resp = self.client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise self._transport(exc, what) from None
        if resp.status_code not in ok:
            raise self.refused(resp, what)
        return resp

    def json(self, method: str, path: str, *, what: str, **kw: Any) -> Any:
        resp = self.call(method, path, what=what, **kw)
        try:
            return resp.json()
        except ValueError:
            raise ArtifactError(f"{self.where}: {what}: the answer is not JSON (is {self.svc.config.url} "
                                f"{self.product}?)") from None
