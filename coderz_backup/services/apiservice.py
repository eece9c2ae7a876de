"""What Grafana and Elasticsearch share: an export through the HTTP API plus a data-dir tarball.

:class:`ApiService` is their skeleton; each module keeps what is product-specific (the
export itself, the tarball, verify, the API restore, health):

- :meth:`ApiService.backup` produces the export (a folder artifact, through the service's
  :class:`~coderz_backup.services.httpapi.HttpApi` subclass :attr:`ApiService.http_api`)
  and the tarball independently with :func:`~coderz_backup.services.base.backup_each`:
  one failing keeps the other; nothing of a failed export stays on disk.
- :meth:`ApiService._restore_chosen` is the ``restore_from`` dispatch: the artifact that
  ``restore_from`` names is restored, the other answers "not used"; a snapshot without
  the chosen one (it failed during that backup) is refused, naming the setting that
  restores from the one there is.
- :meth:`ApiService._restore_volume` checks the tarball and replaces the data dir with it
  (:func:`~coderz_backup.services.datadir.replace_data_dir`).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Callable, ClassVar

from ..errors import PartialBackupError, RestoreError, VerifyError
from ..reader import ArtifactPath, as_artifact
from .base import ArtifactResult, BaseService, backup_each
from .datadir import replace_data_dir
from .httpapi import HttpApi

__all__ = ["ApiService"]

log = logging.getLogger(__name__)


class ApiService(BaseService):
    """An HTTP API export (``export_path``) and a data-dir tarball (``tarball_path``)."""

    #: the product's name in messages ("Grafana at <url>")
    product: ClassVar[str]
    #: the HTTP client of the export
    http_api: ClassVar[type[HttpApi]]
    #: the export's read timeout: the config's ``timeout_s``, at most this
    export_read_timeout: ClassVar[float]
    #: the ``restore_from`` value that restores the export (the other one is "volume")
    export_from: ClassVar[str]
    #: the export in messages ("API export")
    export_kind: ClassVar[str]

    @property
    def export_path(self) -> str:
        raise NotImplementedError

    @property
    def tarball_path(self) -> str:
        raise NotImplementedError

    def artifacts(self) -> list[str]:
        return [self.export_path, self.tarball_path]

    # -- backup -------------------------------------------------------------
    def backup(self, into: Path) -> list[ArtifactResult]:
        """The API export and the data-dir tarball, each on its own: the export is kept when
        the data dir cannot be read, and the tarball when the API refuses."""
        into = Path(into)
        shutil.rmtree(into / self.name, ignore_errors=True)   # a failed earlier attempt's leftovers
        try:
            return backup_each(self.name, [(self.export_path, lambda: self._export_artifact(into)),
                                           (self.tarball_path, lambda: self._data_tarball(into))])
        except BaseException as exc:
            if not isinstance(exc, PartialBackupError):
                shutil.rmtree(into / self.name, ignore_errors=True)
            raise

    def _export_artifact(self, into: Path) -> ArtifactResult:
        started = time.monotonic()
        try:
            with self.http_api(self, read_timeout=min(self.config.timeout_s, self.export_read_timeout)) as api:
                res = self._export(api, into)
        except BaseException:
            shutil.rmtree(into / self.name, ignore_errors=True)  # nothing of a failed export stays
            raise
        res.duration_s = time.monotonic() - started
        log.info("%s: %s in %.1fs", self.name, res.summary, res.duration_s)
        return res

    def _export(self, api: HttpApi, into: Path) -> ArtifactResult:
        raise NotImplementedError

    def _data_tarball(self, into: Path) -> ArtifactResult:
        raise NotImplementedError

    # -- restore ------------------------------------------------------------
    def _restore_chosen(self, artifact: ArtifactPath | Path, restore_export: Callable[[ArtifactPath], str], *,
                       already_stopped: bool) -> str:
        """Restore ``artifact`` if ``restore_from`` chose it (the export with ``restore_export``)."""
        artifact = as_artifact(artifact)
        c = self.config
        name = self.name
        if artifact.is_dir():
            if c.restore_from != self.export_from:
                if not (artifact.parent / Path(self.tarball_path).name).is_file():   # its tarball failed
                    raise RestoreError(f"{name}: this snapshot has no data-dir tarball to restore (it failed "
                                       f"or was skipped during the backup), only the {self.export_kind}; set "
                                       f"restore_from = \"{self.export_from}\" in [services.{name}] to restore "
                                       f"from it. Nothing of {name} changed")
                return self._not_used("data-dir tarball")
            return restore_export(artifact)
        if c.restore_from != "volume":
            if not (artifact.parent / Path(self.export_path).name).is_dir():   # its export failed
                raise RestoreError(f"{name}: this snapshot has no {self.export_kind} to restore (it failed during "
                                   f"the backup), only {artifact.name}; set restore_from = \"volume\" in "
                                   f"[services.{name}] to restore from it. Nothing of {name} changed")
            return self._not_used(self.export_kind)
        return self._restore_volume(artifact, already_stopped=already_stopped)

    def _not_used(self, instead: str) -> str:
        """The answer for the artifact ``restore_from`` did not choose (``instead`` is restored)."""
        return f"not used (restore_from = {self.config.restore_from}: the {instead} is restored instead)"

    def _restore_volume(self, artifact: ArtifactPath, *, already_stopped: bool) -> str:
        """Check the tarball, then replace the data dir with it (stop, keep the old, extract, start, wait)."""
        c = self.config
        try:
            self._verify_tarball(artifact)
        except VerifyError as exc:
            raise RestoreError(f"{self.name}: refusing to restore, nothing changed: {exc}") from None
        if not c.data_dir:
            raise RestoreError(f"{self.name}: set data_dir to restore the data-dir tarball; nothing changed")
        return replace_data_dir(self.access, artifact, name=self.name, product=f"{self.product} at {c.url}",
                                data_dir=c.data_dir, stop_command=c.stop_command, start_command=c.start_command,
                                answers=self._answers, health=self.health, health_timeout_s=c.health_timeout_s,
                                already_stopped=already_stopped)

    def _verify_tarball(self, artifact: ArtifactPath) -> str:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError
