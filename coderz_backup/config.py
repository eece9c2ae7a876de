"""Typed configuration, validated once.

Sources, highest first: command-line flag > environment (``CODERZ_BACKUP_CONFIG``,
``CODERZ_BACKUP_DEST``, ``KEEP_DAYS``) > TOML config file > built-in defaults (the
Coderz Stack of the product document). :func:`load` returns a :class:`Config` or raises
:class:`~coderz_backup.errors.ConfigError` listing *every* problem, prefixed by the
file name.

Secrets are references: a literal, ``env:NAME`` or ``prefect-secret:NAME`` (a Prefect
Secret block). They are kept as :class:`pydantic.SecretStr` so they never show in a
repr, and are resolved only where they are used (:func:`resolve_secret`).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Iterable, Literal, Mapping, Union

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from .errors import ConfigError, SecretError
from .runlog import redact

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_DEST",
    "DEFAULT_KEEP_DAYS",
    "Config",
    "EmailConfig",
    "SizeCheckConfig",
    "ServiceConfig",
    "KIND_MODELS",
    "PostgresConfig",
    "RedisConfig",
    "ConfigsConfig",
    "load",
    "resolve_secret",
    "secret_problems",
]

DEFAULT_CONFIG_PATH = Path("/opt/coderz/backup/coderz-backup.toml")
DEFAULT_DEST = Path("/opt/coderz/backup/snapshots")
DEFAULT_SIGNING_KEY = "/opt/coderz/backup/keys/signing.key"
DEFAULT_KEEP_DAYS = 7

SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


# ---------------------------------------------------------------------------
# secrets


def resolve_secret(ref: SecretStr | None, *, what: str = "secret") -> str | None:
    """Turn a secret reference into its value.

    ``env:NAME`` reads the environment, ``prefect-secret:NAME`` loads a Prefect
    Secret block, anything else is the literal value. Raises SecretError naming
    the reference (never the value) when it cannot be resolved.
    """
    if ref is None:
        return None
    value = _resolve(ref.get_secret_value(), what)
    redact(value)
    return value


def _resolve(raw: str, what: str) -> str:
    if raw.startswith("env:"):
        name = raw[4:]
        value = os.environ.get(name)
        if value is None:
            raise SecretError(f"{what}: environment variable {name} is not set")
        return value
    if raw.startswith("prefect-secret:"):
        name = raw[len("prefect-secret:"):]
        try:
            from prefect.blocks.system import Secret

            return str(Secret.load(name, _sync=True).get())
        except Exception as exc:  # noqa: BLE001 - mapped into our tree
            raise SecretError(
                f"{what}: Prefect Secret block {name!r} could not be loaded "
                f"({type(exc).__name__}); create it with "
                f"`Secret(value=...).save({name!r})` or in the Prefect UI"
            ) from None
    return raw


# ---------------------------------------------------------------------------
# models


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmailConfig(_Model):
    """SMTP settings for alert mails (used by the e-mail task)."""

    smtp_host: str = Field("127.0.0.1", description="SMTP server host")
    smtp_port: int = Field(25, ge=1, le=65535, description="SMTP server port")
    smtp_type: Literal["INSECURE", "SSL", "STARTTLS"] = Field("INSECURE", description="connection security")
    username: str | None = Field(None, description="SMTP user; leave unset when the server has no AUTH")
    password: SecretStr | None = Field(None, description="SMTP password reference")
    from_: str = Field("backup@coderz.local", alias="from", description="sender address")
    to: list[str] = Field(default_factory=list, description="recipients")
    block: str | None = Field(None, description="name of a saved prefect-email EmailServerCredentials block")
    retries: int = Field(2, ge=0, le=10, description="retries when sending fails")
    retry_delay_s: list[float] = Field(default_factory=lambda: [5.0, 15.0], description="delay before each retry")
    timeout_s: float = Field(60.0, gt=0, le=3600, description="give up on one send attempt after this long (a "
                                                              "server that accepts and never answers cannot hang the run)")


class ServiceBase(_Model):
    """Keys every service table has."""

    kind: str
    enabled: bool = Field(True, description="back this service up")
    container: str | None = Field(None, description="reach the service through this Docker container: commands "
                                                     "run in it (exec), files are copied out of it")
    volume: str | None = Field(None, description="named Docker volume holding the data dir (read through a "
                                                  "helper container when no container is set)")
    volume_path: str | None = Field(None, description="where `volume` is mounted in the service container "
                                                       "(default: the data_dir)")
    helper_image: str | None = Field(None, description="image for helper containers (default: the service "
                                                        "container's own image); never pulled")
    stop_containers: list[str] = Field(default_factory=list, description="Docker containers that use this "
                                       "service (e.g. the app on a database): stopped during its restore, started after")
    exec_prefix: list[str] | None = Field(None, description="run commands behind this prefix, e.g. "
                                                             '["kubectl", "exec", "-i", "-n", "apisix", "apisix-etcd-0", "--"]')
    title: str | None = Field(None, description="section title in the report")
    timeout_s: float = Field(3600.0, gt=0, description="give up on one attempt after this many seconds")
    min_bytes: int | None = Field(None, ge=1, description="an artifact smaller than this fails the size check "
                                                           "(default per kind)")

    #: smallest plausible artifact of this kind (a complete but empty dump is bigger)
    default_min_bytes: ClassVar[int] = 1

    #: section of the product document's report this kind belongs to (None = own title)
    section: ClassVar[str | None] = None
    #: order of sections in the report (the product document's order)
    order: ClassVar[int] = 50

    def secret_fields(self) -> dict[str, SecretStr | None]:
        return {k: getattr(self, k) for k, f in type(self).model_fields.items() if f.annotation in (SecretStr, SecretStr | None)}


class PostgresConfig(ServiceBase):
    """A PostgreSQL database dumped with pg_dump (plain SQL, gzip)."""

    kind: Literal["postgres"]
    host: str = Field("127.0.0.1", description="server host")
    port: int = Field(5432, ge=1, le=65535, description="server port")
    user: str = Field(..., description="role used for pg_dump and restore")
    password: SecretStr | None = Field(None, description="password reference (env:NAME recommended)")
    database: str = Field(..., description="database to dump")
    pg_dump: str = Field("pg_dump", description="pg_dump executable")
    psql: str = Field("psql", description="psql executable (restore)")
    default_min_bytes: ClassVar[int] = 64
    order: ClassVar[int] = 10


class RedisConfig(ServiceBase):
    """Redis: BGSAVE, then the RDB file (from data_dir, or over the replication protocol)."""

    kind: Literal["redis"]
    host: str = Field("127.0.0.1", description="server host")
    port: int = Field(6379, ge=1, le=65535, description="server port")
    username: str | None = Field(None, description="ACL user (needs SYNC/REPLCONF for the network path)")
    password: SecretStr | None = Field(None, description="password reference")
    data_dir: str | None = Field(None, description="server's data dir as seen from this host; unset = fetch over the network")
    start_command: list[str] | None = Field(None, description="argv that starts the server again after a restore")
    save_timeout_s: float = Field(600.0, gt=0, description="how long to wait for BGSAVE")
    section: ClassVar[str] = "Redis"
    default_min_bytes: ClassVar[int] = 18
    order: ClassVar[int] = 20


class ConfigsConfig(ServiceBase):
    """A tar of configuration trees (configs + compose files)."""

    kind: Literal["configs"]
    paths: list[str] = Field(default_factory=lambda: ["/opt/coderz/configs"], min_length=1, description="files/folders to archive")
    exclude: list[str] = Field(default_factory=list, description="glob patterns (matched on each path's name and its full path) to leave out")
    restore_root: str = Field("/", description="restore extracts the archived absolute paths under this root")
    section: ClassVar[str] = "Configs + Compose"
    default_min_bytes: ClassVar[int] = 64
    order: ClassVar[int] = 70

    @field_validator("paths")
    @classmethod
    def _absolute(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if not p.startswith("/")]
        if bad:
            raise ValueError(f"paths must be absolute: {', '.join(bad)}")
        return v


class GrafanaConfig(ServiceBase):
    """Grafana: dashboards, folders, datasources and alert rules over the HTTP API + a data-dir tarball."""

    kind: Literal["grafana"]
    url: str = Field("http://127.0.0.1:3000", description="Grafana base URL (http:// or https://)")
    token: SecretStr | None = Field(None, description="service-account token reference, sent as Bearer "
                                                      "(Admin role: datasources and alert rules need it)")
    user: str | None = Field(None, description="basic-auth user (used when no token is set)")
    password: SecretStr | None = Field(None, description="basic-auth password reference (env:NAME recommended)")
    org_id: int | None = Field(None, ge=1, description="organisation to back up (X-Grafana-Org-Id); "
                                                        "unset = the user's/token's current org")
    data_dir: str | None = Field(None, description="Grafana data dir holding grafana.db (e.g. /var/lib/grafana) "
                                                   "as seen from this host; unset = no data-dir tarball")
    page_size: int = Field(1000, ge=1, le=5000, description="search hits / folders per page")
    alert_rules: bool = Field(True, description="export and restore alert rules (provisioning API); set false "
                                                "when unified alerting is disabled")
    restore_from: Literal["api", "volume"] = Field("api", description="api: re-create folders, dashboards, "
                                                   "alert rules (and missing datasources) over the HTTP API; "
                                                   "volume: replace the data dir with the tarball (Grafana stopped)")
    stop_command: list[str] | None = Field(None, description="argv that stops Grafana before a volume restore "
                                                             "(not needed with container)")
    start_command: list[str] | None = Field(None, description="argv that starts Grafana after a volume restore")
    health_timeout_s: float = Field(120.0, gt=0, description="wait this long for /api/health after a volume restore")
    cacert: str | None = Field(None, description="CA bundle to verify an https url")
    verify_tls: bool = Field(True, description="verify the server certificate of an https url")
    section: ClassVar[str] = "Grafana"
    order: ClassVar[int] = 40


class PrometheusConfig(ServiceBase):
    """Prometheus: a TSDB snapshot through the admin API, streamed out of the data dir."""

    kind: Literal["prometheus"]
    url: str = Field("http://127.0.0.1:9090", description="Prometheus base URL (started with --web.enable-admin-api)")
    data_dir: str | None = Field(None, description="--storage.tsdb.path as seen from here (or inside `container`)")
    skip_head: bool = Field(False, description="leave out samples still in the in-memory head block")
    stop_command: list[str] | None = Field(None, description="argv that stops Prometheus before a restore "
                                                             "(not needed with container)")
    start_command: list[str] | None = Field(None, description="argv that starts Prometheus after a restore")
    health_timeout_s: float = Field(120.0, gt=0, description="wait this long for /-/ready after a restore")
    #: the module checks the blocks itself; an empty TSDB gives a valid ~45-byte tarball
    default_min_bytes: ClassVar[int] = 32
    section: ClassVar[str] = "Prometheus"
    order: ClassVar[int] = 50


class ElasticsearchConfig(ServiceBase):
    """Elasticsearch: a per-index export over REST (+ data-dir tarball, + optional snapshot API)."""

    kind: Literal["elasticsearch"]
    url: str = Field("http://127.0.0.1:9200", description="REST URL of a node (http:// or https://)")
    user: str | None = Field(None, description="basic-auth user (e.g. elastic)")
    password: SecretStr | None = Field(None, description="basic-auth password reference (env:NAME recommended)")
    api_key: SecretStr | None = Field(None, description="API key reference: the `encoded` value of the "
                                                        "create-API-key call, sent as `ApiKey <encoded>` "
                                                        "(wins over user/password)")
    cacert: str | None = Field(None, description="CA bundle to verify an https URL (8.x: config/certs/http_ca.crt)")
    verify_tls: bool = Field(True, description="verify the server certificate of an https URL")
    data_dir: str | None = Field(None, description="node data dir (path.data) as seen through the access; "
                                                   "unset = no data-dir tarball")
    page_size: int = Field(1000, ge=1, le=10000, description="documents per search page of the export")
    keep_alive: str = Field("2m", pattern=r"^[0-9]+(ms|s|m|h|d)$",
                            description="point-in-time / scroll keep-alive between two pages")
    bulk_docs: int = Field(1000, ge=1, description="restore: at most this many documents per _bulk request")
    bulk_bytes: int = Field(5 * 1024 * 1024, ge=1024, description="restore: at most this many bytes per _bulk request")
    replicas: int | None = Field(0, ge=0, description="restore: number_of_replicas of re-created indices "
                                                      "(0 suits a single node; unset = as exported)")
    snapshot_repository: str | None = Field(None, description="also take an ES snapshot of the exported indices "
                                                              "into this registered repository")
    restore_from: Literal["export", "volume"] = Field("export", description="export: re-create indices and "
                                                      "bulk-load the documents; volume: replace the data dir "
                                                      "with the tarball (node stopped)")
    stop_command: list[str] | None = Field(None, description="argv that stops Elasticsearch before a volume restore "
                                                             "(not needed with container)")
    start_command: list[str] | None = Field(None, description="argv that starts Elasticsearch after a volume restore")
    health_timeout_s: float = Field(180.0, gt=0, description="wait this long for green/yellow after a volume restore")
    section: ClassVar[str] = "Elasticsearch"
    order: ClassVar[int] = 60


class EtcdConfig(ServiceBase):
    """An etcd v3 member: a snapshot over the gRPC gateway (or ``etcdctl snapshot save``)."""

    kind: Literal["etcd"]
    endpoint: str = Field("http://127.0.0.1:2379", description="client URL of one member (http:// or https://)")
    user: str | None = Field(None, description="etcd user (auth enabled); the gateway has no CN-based auth")
    password: SecretStr | None = Field(None, description="password reference (env:NAME recommended)")
    method: Literal["gateway", "etcdctl"] = Field("gateway", description="gateway: HTTP v3 gRPC gateway; "
                                                   "etcdctl: `etcdctl snapshot save`")
    cacert: str | None = Field(None, description="CA bundle to verify an https endpoint")
    cert: str | None = Field(None, description="client certificate (TLS transport)")
    key: str | None = Field(None, description="client certificate key (TLS transport)")
    etcdctl: str = Field("etcdctl", description="etcdctl executable (etcdctl method; restore when etcdutl is absent)")
    etcdutl: str = Field("etcdutl", description="etcdutl executable: restores with `etcdutl snapshot restore` when "
                                                "it is present where the restore runs (etcd ≥3.5; 3.6 has only it)")
    data_dir: str | None = Field(None, description="member data dir as seen from this host (in-place restore)")
    name: str | None = Field(None, description="member name (--name) used when restoring")
    peer_url: str | None = Field(None, description="member peer URL (--initial-advertise-peer-urls) for restore")
    stop_command: list[str] | None = Field(None, description="argv that stops etcd before an in-place restore")
    start_command: list[str] | None = Field(None, description="argv that starts etcd after an in-place restore")
    section: ClassVar[str] = "etcd Snapshots"
    default_min_bytes: ClassVar[int] = 512 + 32
    order: ClassVar[int] = 80


class K3sConfig(ServiceBase):
    """k3s: `k3s etcd-snapshot save` (embedded etcd) or a consistent copy of the SQLite datastore."""

    kind: Literal["k3s"]
    mode: Literal["auto", "etcd-snapshot", "sqlite"] = Field("auto", description="auto: etcd-snapshot when "
                                                             "server/db/etcd exists, else sqlite")
    data_dir: str = Field("/var/lib/rancher/k3s", description="k3s data dir (--data-dir)")
    k3s: str = Field("k3s", description="k3s executable (run through the access: host, container or exec_prefix)")
    snapshot_tmp_dir: str = Field("/tmp", description="where `etcd-snapshot save --dir` writes before the copy "
                                                      "(a fresh sub-folder, deleted afterwards)")
    stop_command: list[str] | None = Field(None, description='argv that stops k3s before a restore, e.g. '
                                                              '["systemctl", "stop", "k3s"]')
    start_command: list[str] | None = Field(None, description="argv that starts k3s after a restore")
    health_command: list[str] | None = Field(None, description="argv that checks k3s after a restore, e.g. "
                                                               '["k3s", "kubectl", "get", "--raw", "/readyz"]')
    default_min_bytes: ClassVar[int] = 512
    section: ClassVar[str] = "etcd Snapshots"
    order: ClassVar[int] = 80


#: APISIX Admin-API resource types, in export order (the product document's five first)
APISIX_RESOURCES: tuple[str, ...] = (
    "routes", "upstreams", "services", "consumers", "global_rules",
    "ssls", "plugin_configs", "consumer_groups", "stream_routes", "protos", "secrets", "plugin_metadata",
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
        return v


ServiceConfig = Annotated[
    Union[
        PostgresConfig,
        RedisConfig,
        ConfigsConfig,
        GrafanaConfig,
        PrometheusConfig,
        ElasticsearchConfig,
        EtcdConfig,
        K3sConfig,
        ApisixConfig,
    ],
    Field(discriminator="kind"),
]


#: config model of each service kind
KIND_MODELS: dict[str, type[ServiceBase]] = {
    m.model_fields["kind"].annotation.__args__[0]: m
    for m in (PostgresConfig, RedisConfig, ConfigsConfig, GrafanaConfig, PrometheusConfig,
              ElasticsearchConfig, EtcdConfig, K3sConfig, ApisixConfig)
}


def default_services() -> dict[str, dict[str, Any]]:
    """The Coderz Stack of the product document, in its order."""
    return {
        "postgres-prefect": {"kind": "postgres", "title": "PostgreSQL — Prefect DB", "user": "prefect",
                             "password": "env:PG_PREFECT_PASSWORD", "database": "prefect"},
        "postgres-coderapi": {"kind": "postgres", "title": "PostgreSQL — CoderAPI DB", "user": "coderapi",
                              "password": "env:PG_CODERAPI_PASSWORD", "database": "coderapi"},
        "redis": {"kind": "redis"},
        "grafana": {"kind": "grafana", "token": "env:GRAFANA_TOKEN", "data_dir": "/var/lib/grafana"},
        "prometheus": {"kind": "prometheus", "data_dir": "/prometheus"},
        "elasticsearch": {"kind": "elasticsearch", "user": "elastic", "password": "env:ELASTIC_PASSWORD",
                          "data_dir": "/usr/share/elasticsearch/data"},
        "configs": {"kind": "configs", "paths": ["/opt/coderz/configs"]},
        "etcd-k3s": {"kind": "k3s"},
        "etcd-apisix": {"kind": "etcd"},
        "apisix-config": {"kind": "apisix", "admin_key": "env:APISIX_ADMIN_KEY"},
    }


#: ``docker = true`` with the built-in services: where each one runs in the Coderz Stack
DOCKER_DEFAULTS: dict[str, dict[str, Any]] = {
    "postgres-prefect": {"container": "coderz-postgres"},
    "postgres-coderapi": {"container": "coderz-postgres"},
    "redis": {"container": "coderz-redis", "data_dir": "/data"},
    "grafana": {"container": "coderz-grafana"},
    "prometheus": {"container": "coderz-prometheus"},
    "elasticsearch": {"container": "coderz-elasticsearch"},
    "etcd-apisix": {"method": "etcdctl",
                    "exec_prefix": ["kubectl", "exec", "-i", "-n", "apisix", "apisix-etcd-0", "--"]},
}


class SizeCheckConfig(_Model):
    """Checks on sizes: room before the run, plausibility after it."""

    margin: float = Field(1.2, ge=1.0, description="need free space of previous snapshot size × margin before a run")
    min_free_bytes: int = Field(0, ge=0, description="always keep at least this much free on the destination")
    max_shrink: float = Field(0.5, gt=0, le=1, description="flag an artifact that shrank by more than this "
                                                          "fraction against the previous ok snapshot")
    shrink_floor_bytes: int = Field(64 * 1024, ge=0, description="ignore shrinkage of artifacts smaller than this "
                                                                 "in the previous snapshot")


class Config(_Model):
    """The whole configuration."""

    dest: Path = Field(DEFAULT_DEST, description="folder holding the dated snapshots")
    keep_days: int = Field(DEFAULT_KEEP_DAYS, ge=0, description="rotation: keep this many days, 0 = forever")
    retries: int = Field(2, ge=0, le=10, description="retries per service task after the first attempt")
    retry_delay_s: list[float] = Field(default_factory=lambda: [10.0, 30.0], description="delay before each retry")
    email: EmailConfig | None = Field(None, description="alert mail settings; absent = no mail")
    size_check: SizeCheckConfig = Field(default_factory=SizeCheckConfig, description="size checks")
    services: dict[str, ServiceConfig] = Field(default_factory=dict, description="services, by artifact base name")
    docker: bool = Field(False, description="the built-in default services run as the Coderz Stack's Docker "
                                           "containers (coderz-postgres, coderz-redis, …); no effect on "
                                           "[services.*] tables you write yourself")
    signing_key: str = Field(DEFAULT_SIGNING_KEY, description="this host's Ed25519 signing key: a file "
                             "(created on first use, mode 0600; env CODERZ_BACKUP_SIGNING_KEY) or "
                             "prefect-secret:NAME; never on the backup medium")
    trusted_keys: list[str] = Field(default_factory=list, description="public keys (ed25519:…) of other hosts "
                                    "whose snapshots this host accepts; its own key always")
    source: str = Field("<defaults>", description="where this config came from (for messages)")

    @field_validator("trusted_keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        from .signing import parse_public_key

        for key in v:
            parse_public_key(key)   # ValueError says what is wrong with it
        return v

    @field_validator("services")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = [n for n in v if not SERVICE_NAME.match(n)]
        if bad:
            raise ValueError(
                "service names must be lowercase letters, digits, '.', '_' or '-' "
                f"(they become file names): {', '.join(bad)}"
            )
        return v

    def enabled_services(self, only: list[str] | None = None) -> dict[str, ServiceConfig]:
        """Enabled services in report order; ``only`` selects by name (unknown → ConfigError)."""
        if only:
            unknown = [n for n in only if n not in self.services]
            if unknown:
                raise ConfigError(
                    "--only",
                    [f"unknown service {n!r}; configured: {', '.join(self.services)}" for n in unknown],
                )
        items = [
            (n, s) for n, s in self.services.items()
            if (n in only if only else s.enabled)
        ]
        position = {n: i for i, n in enumerate(self.services)}
        items.sort(key=lambda item: (item[1].order, position[item[0]]))
        return dict(items)


# ---------------------------------------------------------------------------
# loading


def _format_loc(loc: tuple[Any, ...], data: Mapping[str, Any]) -> str:
    parts = list(loc)
    # discriminated unions insert the tag ("postgres") after the service name
    if len(parts) >= 3 and parts[0] == "services":
        svc = data.get("services", {}).get(parts[1], {})
        if isinstance(svc, Mapping) and parts[2] == svc.get("kind"):
            del parts[2]
    return ".".join(str(p) for p in parts) or "(top level)"


def _problems_from(exc: ValidationError, data: Mapping[str, Any]) -> list[str]:
    out = []
    for err in exc.errors(include_input=False, include_url=False):
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "union_tag_invalid":
            msg = f"unknown kind; expected one of {err.get('ctx', {}).get('expected_tags', '')}"
        elif err["type"] == "union_tag_not_found":
            msg = "missing key 'kind'"
        out.append(f"{_format_loc(err['loc'], data)}: {msg}")
    return out


def secret_problems(config: Config, services: Iterable[str] | None = None) -> list[str]:
    """Secret references that cannot be resolved right now: of the enabled services (or of
    ``services``), and of the mail."""
    problems = []
    wanted = set(services) if services is not None else None
    for name, svc in config.services.items():
        if (not svc.enabled) if wanted is None else name not in wanted:
            continue
        for key, ref in svc.secret_fields().items():
            if ref is not None and ref.get_secret_value().startswith("env:"):
                var = ref.get_secret_value()[4:]
                if var not in os.environ:
                    problems.append(f"services.{name}.{key}: environment variable {var} is not set")
    if config.email and config.email.password is not None:
        raw = config.email.password.get_secret_value()
        if raw.startswith("env:") and raw[4:] not in os.environ:
            problems.append(f"email.password: environment variable {raw[4:]} is not set")
    return problems


def _raw_secret_problems(data: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """Unset ``env:`` references in the not-yet-validated tables (enabled services, email)."""
    out = []
    tables = [(f"services.{n}", t) for n, t in (data.get("services") or {}).items()
              if isinstance(t, Mapping) and t.get("enabled", True) is not False]
    if isinstance(data.get("email"), Mapping):
        tables.append(("email", data["email"]))
    for where, table in tables:
        for key, value in table.items():
            if isinstance(value, str) and value.startswith("env:") and value[4:] not in env:
                out.append(f"{where}.{key}: environment variable {value[4:]} is not set")
    return out


def load(
    config_path: str | Path | None = None,
    *,
    dest: str | Path | None = None,
    keep: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Load and validate the configuration with the documented precedence."""
    env = os.environ if env is None else env
    explicit = config_path or env.get("CODERZ_BACKUP_CONFIG")
    path = Path(explicit) if explicit else DEFAULT_CONFIG_PATH
    source = str(path)
    data: dict[str, Any] = {}
    if path.exists() or explicit:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(source, ["config file not found"]) from None
        except PermissionError:
            raise ConfigError(source, ["config file is not readable (permission denied)"]) from None
        except IsADirectoryError:
            raise ConfigError(source, ["is a directory, not a config file"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, [f"not valid TOML: {exc}"]) from None
    else:
        source = "<built-in defaults>"

    problems: list[str] = []
    merged: dict[str, Any] = dict(data)
    merged.pop("source", None)
    if not merged.get("services"):
        merged["services"] = default_services()
        if merged.get("docker") is True:
            for name, extra in DOCKER_DEFAULTS.items():
                merged["services"][name] = {**merged["services"][name], **extra}

    if env.get("CODERZ_BACKUP_DEST"):
        merged["dest"] = env["CODERZ_BACKUP_DEST"]
    if env.get("CODERZ_BACKUP_SIGNING_KEY"):
        merged["signing_key"] = env["CODERZ_BACKUP_SIGNING_KEY"]
    if dest is not None:
        merged["dest"] = str(dest)
    if "KEEP_DAYS" in env and keep is None:
        try:
            days = int(env["KEEP_DAYS"])
        except ValueError:
            days = -1
        if days < 0:
            problems.append(f"KEEP_DAYS={env['KEEP_DAYS']!r}: must be a whole number of days, 0 or more "
                            "(0 = keep forever)")
        else:
            merged["keep_days"] = days
    if keep is not None:
        merged["keep_days"] = keep

    services = merged.get("services")
    if isinstance(services, Mapping):
        # checked here too: the model's own check does not run when a service table is invalid
        problems.extend(f"services.{n}: service names must be lowercase letters, digits, '.', '_' or '-' "
                        "(they become file names)" for n in services if not SERVICE_NAME.match(str(n)))
    try:
        config = Config.model_validate({**merged, "source": source})
    except ValidationError as exc:
        problems.extend(p for p in _problems_from(exc, merged) if not (p.startswith("services: ") and "service names must" in p))
        problems.extend(_raw_secret_problems(merged, env))  # failing anyway: every problem at once
        raise ConfigError(source, problems) from None
    if problems:
        raise ConfigError(source, problems)
    return config
