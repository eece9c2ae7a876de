"""Service kinds and their registry.

A service kind lives in one module (``services/<kind>.py``): its config model (a
:class:`~coderz_backup.schema.ServiceBase` with ``kind: Literal["<kind>"]``, the report
section and order, the smallest plausible artifact), and its service class implementing
:class:`~coderz_backup.services.base.Service` with ``config_model`` pointing at that model.
:data:`KINDS` below is the one line per kind that registers it; everything else — the
registry, the config union the TOML is validated against, the kind → model table — is
derived from it. Adding a kind (say MySQL) is a new module, its line here, its tests and docs.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from ..access import access_for
from ..errors import ConfigError
from ..schema import ServiceBase
from .apisix import ApisixService
from .base import ArtifactResult, Service
from .configs import ConfigsService
from .elasticsearch import ElasticsearchService
from .etcd import EtcdService
from .grafana import GrafanaService
from .k3s import K3sService
from .postgres import PostgresService
from .prometheus import PrometheusService
from .redis import RedisService

__all__ = ["KINDS", "KIND_MODELS", "REGISTRY", "ArtifactResult", "Service", "ServiceConfig", "create",
           "expected_artifacts"]

#: every service kind this version supports (config-file order of the product document)
KINDS: tuple[type, ...] = (
    PostgresService,
    RedisService,
    ConfigsService,
    GrafanaService,
    PrometheusService,
    ElasticsearchService,
    EtcdService,
    K3sService,
    ApisixService,
)

#: kind → service class
REGISTRY: dict[str, type] = {cls.kind: cls for cls in KINDS}

#: kind → config model
KIND_MODELS: dict[str, type[ServiceBase]] = {cls.kind: cls.config_model for cls in KINDS}

#: one ``[services.<name>]`` table: the kind's model, chosen by its ``kind`` key
ServiceConfig = Annotated[Union[tuple(KIND_MODELS.values())], Field(discriminator="kind")]  # type: ignore[valid-type]


def create(name: str, config) -> Service:
    """The service object for a config table (its access chosen from the config)."""
    cls = REGISTRY.get(config.kind)
    if cls is None:
        raise ConfigError(f"services.{name}", [f"kind {config.kind!r} is not supported by this version"])
    return cls(name=name, config=config, access=access_for(config))


def expected_artifacts(name: str, config) -> list[str]:
    """Artifact paths of a service (known before it runs, so a failure is reported per artifact)."""
    return REGISTRY[config.kind](name=name, config=config, access=None).artifacts()
