"""Typed configuration, validated once.

Sources, highest first: command-line flag > environment (``CODERZ_BACKUP_CONFIG``,
``CODERZ_BACKUP_DEST``, ``KEEP_DAYS``, ``KEEP_DAILY``, ``KEEP_WEEKLY``, ``KEEP_MONTHLY``) > TOML config file > built-in defaults (the
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
from typing import Any, Iterable, Literal, Mapping

from pydantic import Field, SecretStr, ValidationError, field_validator

from .errors import ConfigError
from .schema import ServiceBase, _Model, resolve_secret
from .offsite import TargetConfig
from .services import KIND_MODELS, ServiceConfig

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_DEST",
    "DEFAULT_KEEP_DAYS",
    "Config",
    "EmailConfig",
    "MonitorConfig",
    "SizeCheckConfig",
    "ServiceConfig",
    "KIND_MODELS",
    "ServiceBase",
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
# models (a service kind's model lives in its module: coderz_backup/services/<kind>.py)





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


class MonitorConfig(_Model):
    """``[monitor]``: heartbeat pings (healthchecks.io convention), a node_exporter textfile, a Pushgateway."""

    ping_url: SecretStr | None = Field(None, description="heartbeat URL, e.g. https://hc-ping.com/<uuid> (or "
                                       "env:NAME / prefect-secret:NAME): <url>/start when a run starts, <url> "
                                       "when it ended ok, <url>/fail when partial or failed, each with ?rid=<flow "
                                       "run id>; the uuid is a secret, never logged")
    ping_timeout_s: float = Field(10.0, gt=0, le=120, description="give up on one ping (or metrics push) after "
                                  "this long")
    ping_retries: int = Field(1, ge=0, le=5, description="retries of a ping (or metrics push) that got no answer "
                              "or a 5xx")
    textfile: Path | None = Field(None, description="node_exporter textfile (*.prom) rewritten after each run, "
                                  "e.g. /var/lib/prometheus/node-exporter/coderz_backup.prom")
    pushgateway: str | None = Field(None, description="Prometheus Pushgateway base URL, e.g. http://127.0.0.1:9091: "
                                    "after each run the textfile's metrics are PUT to <url>/metrics/job/"
                                    "<pushgateway_job>/instance/<pushgateway_instance>; scrape it with "
                                    "honor_labels: true")
    pushgateway_job: str = Field("coderz_backup", pattern=r"^[A-Za-z0-9_.:-]{1,128}$",
                                 description="the push's job label")
    pushgateway_instance: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$",
                                             description="the push's instance label (default: the host name); "
                                             "set it where the host name changes (containers), or every new "
                                             "name leaves a stale group behind")
    missed_after_h: float = Field(26.0, ge=0.0028, le=24 * 31,
                                  description="`coderz-backup setup`'s missed-run automation: no Completed "
                                  "coderz-backup-daily run for this many hours runs coderz-backup-missed, which "
                                  "mails 🔴 Coderz Backup MISSED (26 = a night plus two hours of slack)")

    @field_validator("ping_url")
    @classmethod
    def _ping_url(cls, v: SecretStr | None) -> SecretStr | None:
        from .monitor import url_problem

        if v is None:
            return v
        raw = v.get_secret_value()
        if raw.startswith(("env:", "prefect-secret:")):
            return v   # checked when resolved, at the run's start (a bad value is a warning there)
        problem = url_problem(raw)
        if problem:
            raise ValueError(problem)   # never repeats the URL: it holds the check's secret
        return v

    @field_validator("pushgateway")
    @classmethod
    def _pushgateway(cls, v: str | None) -> str | None:
        from .monitor import pushgateway_problem

        if v is None:
            return v
        problem = pushgateway_problem(v)
        if problem:
            raise ValueError(problem)
        return v.rstrip("/")

    @field_validator("textfile")
    @classmethod
    def _textfile(cls, v: Path | None) -> Path | None:
        if v is None:
            return v
        if not v.is_absolute():
            raise ValueError("must be an absolute path")
        if v.suffix != ".prom":
            raise ValueError("must end in .prom (node_exporter's textfile collector reads only *.prom files)")
        return v


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
    keep_daily: int = Field(0, ge=0, description="rotation: also keep the newest usable snapshot of each of the "
                            "last N days that have one (0 = unused)")
    keep_weekly: int = Field(0, ge=0, description="rotation: also keep the newest usable snapshot of each of the "
                             "last N ISO weeks that have one (0 = unused)")
    keep_monthly: int = Field(0, ge=0, description="rotation: also keep the newest usable snapshot of each of the "
                              "last N months that have one (0 = unused)")
    retries: int = Field(2, ge=0, le=10, description="retries per service task after the first attempt")
    retry_delay_s: list[float] = Field(default_factory=lambda: [10.0, 30.0], description="delay before each retry")
    email: EmailConfig | None = Field(None, description="alert mail settings; absent = no mail")
    size_check: SizeCheckConfig = Field(default_factory=SizeCheckConfig, description="size checks")
    monitor: MonitorConfig = Field(default_factory=MonitorConfig, description="heartbeat pings and metrics; "
                                   "absent = none")
    services: dict[str, ServiceConfig] = Field(default_factory=dict, description="services, by artifact base name")
    offsite: dict[str, TargetConfig] = Field(default_factory=dict, description="off-site targets, by name: every "
                                             "finished snapshot is copied to each enabled one")
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

    @field_validator("services", "offsite")
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


def secret_problems(config: Config, services: Iterable[str] | None = None, *, offsite: bool = False) -> list[str]:
    """Secret references that cannot be resolved right now: of the enabled services (or of
    ``services``), of the mail, and with ``offsite`` of the enabled off-site targets (a backup
    does not wait for those: its local snapshot is made anyway, the copy fails ⚠️)."""
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
    for name, target in (config.offsite.items() if offsite else ()):
        if not target.enabled:
            continue
        for key, value in target:
            if key == "identity":   # only for reading copies back (fetch, restore --from), never by a backup
                continue
            raw = value.get_secret_value() if isinstance(value, SecretStr) else None
            if raw and raw.startswith("env:") and raw[4:] not in os.environ:
                problems.append(f"offsite.{name}.{key}: environment variable {raw[4:]} is not set")
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
    keep_daily: int | None = None,
    keep_weekly: int | None = None,
    keep_monthly: int | None = None,
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
    for key, var, flag in (("keep_daily", "KEEP_DAILY", keep_daily), ("keep_weekly", "KEEP_WEEKLY", keep_weekly),
                           ("keep_monthly", "KEEP_MONTHLY", keep_monthly)):
        if flag is not None:
            merged[key] = flag
        elif var in env:
            try:
                count = int(env[var])
            except ValueError:
                count = -1
            if count < 0:
                problems.append(f"{var}={env[var]!r}: must be a whole number, 0 or more (0 = unused)")
            else:
                merged[key] = count

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
