"""The building blocks of the typed configuration that every service kind uses.

- :class:`ServiceBase` — the keys every ``[services.<name>]`` table has; a service kind's
  config model (declared in its own module under :mod:`coderz_backup.services`) extends it.
- :func:`resolve_secret` — secrets are references (a literal, ``env:NAME`` or
  ``prefect-secret:NAME``), kept as :class:`pydantic.SecretStr` and resolved only where used.

:mod:`coderz_backup.config` assembles the whole :class:`~coderz_backup.config.Config` from
these and the kinds' models; this module imports no service, so service modules can import it.
"""

from __future__ import annotations

import os
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from .errors import SecretError
from .runlog import redact

__all__ = ["ServiceBase", "resolve_secret"]


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


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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

    def report_title(self, name: str) -> str:
        """The report section this service's artifacts are listed under (``title``, else the kind's)."""
        return self.title or self.section or name

    def secret_fields(self) -> dict[str, SecretStr | None]:
        return {k: getattr(self, k) for k, f in type(self).model_fields.items() if f.annotation in (SecretStr, SecretStr | None)}
