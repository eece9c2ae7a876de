"""Service modules and their registry.

``REGISTRY`` maps a config ``kind`` to the class implementing the service contract
(:class:`~coderz_backup.services.base.Service`). Kinds that the config accepts but this
version cannot back up yet are listed in ``PLANNED``; their artifacts are reported as
skipped with that reason, never silently dropped.
"""

from __future__ import annotations

from ..access import access_for
from ..errors import ConfigError
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

__all__ = ["REGISTRY", "PLANNED", "ArtifactResult", "Service", "create", "expected_artifacts"]

REGISTRY: dict[str, type] = {
    PostgresService.kind: PostgresService,
    RedisService.kind: RedisService,
    ConfigsService.kind: ConfigsService,
    EtcdService.kind: EtcdService,
    K3sService.kind: K3sService,
    PrometheusService.kind: PrometheusService,
    ApisixService.kind: ApisixService,
    ElasticsearchService.kind: ElasticsearchService,
    GrafanaService.kind: GrafanaService,
}

#: accepted by the config, not yet implemented: kind → artifact names from the product document
PLANNED: dict[str, list[str]] = {
}


def create(name: str, config) -> Service:
    """The service object for a config table (its access chosen from the config)."""
    cls = REGISTRY.get(config.kind)
    if cls is None:
        raise ConfigError(f"services.{name}", [f"kind {config.kind!r} is not supported by this version"])
    return cls(name=name, config=config, access=access_for(config))


def expected_artifacts(name: str, config) -> list[str]:
    """Artifact paths of a service, also for kinds not implemented yet."""
    cls = REGISTRY.get(config.kind)
    if cls is not None:
        return cls(name=name, config=config, access=None).artifacts()
    return [p.format(name=name) for p in PLANNED.get(config.kind, [f"{name}"])]
