"""Prometheus → ``<name>-snapshot.tar.gz``: a TSDB snapshot, streamed out of the data dir.

Backup:

1. ``POST {url}/api/v1/admin/tsdb/snapshot`` (head block included unless ``skip_head``).
   Prometheus hard-links its blocks into ``<data_dir>/snapshots/<name>/`` — cheap, and
   consistent. With the admin API off (2.42 answers 500 ``errorType: unavailable``,
   "admin APIs disabled") the artifact fails with the flag to add:
   ``--web.enable-admin-api``.
2. That folder is streamed through the access layer (a local folder, or
   ``get_archive`` out of the container) into a gzip tar whose members are relative to
   the snapshot folder (``01H…/meta.json``, ``01H…/index``, ``01H…/chunks/000001``).
3. The snapshot folder is **always** deleted from the data dir afterwards — also when
   the tar step failed — so snapshots never pile up next to the TSDB.
4. The written tarball is read back: it must hold at least one block, each with a
   parseable ``meta.json`` (ulid, minTime, maxTime); otherwise the file is removed and
   the artifact fails. The manifest details name the snapshot, its blocks and the time
   range they cover.

Restore (no API exists for it): the archive is checked first (nothing changed if it
is damaged), then :func:`~coderz_backup.services.datadir.replace_data_dir`: Prometheus is
stopped (its container, or ``stop_command``; refused while it still answers), the
current TSDB contents are kept aside (``<data_dir>.coderz-old-<ts>`` here, inside the
data dir in a container — Prometheus ignores folders that are not block ULIDs), the
snapshot's blocks are extracted (``wal/`` and ``chunks_head/`` never come from a
snapshot), ownership is set to the data dir's owner, Prometheus is started and
``/-/ready`` awaited.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from ..tarfile_compat import tarfile
import time
from pathlib import Path
from typing import ClassVar, Literal

import httpx

from pydantic import Field

from ..access import ARCHIVE_ERRORS, CHUNK, HostFiles, SeenMembers, check_member, has
from ..fingerprint import NotDrillable, TarCounter, safely
from ..errors import AccessError, ArtifactError, CoderzBackupError, IncompleteArtifactError, RestoreError, VerifyError
from ..reader import ArtifactPath, as_artifact
from ..schema import ServiceBase
from .base import ArtifactResult, BaseService
from .datadir import replace_data_dir, write_tarball
from .httpapi import HttpApi

__all__ = ["PrometheusService", "read_blocks"]

log = logging.getLogger(__name__)

SNAPSHOT_NAME = re.compile(r"^[0-9A-Za-z-]{1,80}$")
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def read_blocks(artifact: ArtifactPath, *, allow_empty: bool = False) -> dict[str, dict]:
    """Parse a snapshot tarball to the end; return ``{ulid: meta}``. Raises VerifyError.

    A snapshot without any block is refused unless ``allow_empty`` (an empty TSDB).
    """
    metas: dict[str, bytes] = {}
    dirs: set[str] = set()
    seen = SeenMembers()
    try:
        with as_artifact(artifact).open() as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
            for member in tar:
                name = member.name[2:] if member.name.startswith("./") else member.name
                if name.startswith("/") or ".." in name.split("/"):
                    raise VerifyError(f"{artifact.name}: unsafe member {member.name!r}")
                try:   # the same member check the restore applies (untar_into): verify == restore
                    check_member(member, "/restore-check", seen)
                except tarfile.FilterError as exc:
                    raise VerifyError(f"{artifact.name}: unsafe member: {exc}") from None
                top = name.split("/")[0]
                if ULID.match(top):
                    dirs.add(top)
                if member.isfile() and name == f"{top}/meta.json":
                    f = tar.extractfile(member)
                    metas[top] = f.read(1 << 20)
                elif member.isfile():
                    f = tar.extractfile(member)
                    while f and f.read(CHUNK):
                        pass
    except ARCHIVE_ERRORS as exc:
        raise VerifyError(f"{artifact.name}: archive is damaged ({exc})") from None
    return blocks_of(artifact.name, metas, dirs, allow_empty=allow_empty)


def blocks_of(what: str, metas: dict[str, bytes], dirs: set[str], *, allow_empty: bool) -> dict[str, dict]:
    """``{ulid: meta}`` from the ``<ULID>/meta.json`` contents of a snapshot and its top-level
    names (``dirs``; those that are no ULID are ignored). Raises VerifyError: a block without
    its meta.json, a meta.json that is none, no block at all unless ``allow_empty``."""
    blocks: dict[str, dict] = {}
    for top, raw in metas.items():
        name = f"{top}/meta.json"
        try:
            meta = json.loads(raw)
            blocks[top] = {"minTime": int(meta["minTime"]), "maxTime": int(meta["maxTime"]),
                           "ulid": meta["ulid"], "samples": (meta.get("stats") or {}).get("numSamples"),
                           "series": (meta.get("stats") or {}).get("numSeries")}
        except (ValueError, KeyError, TypeError) as exc:
            raise VerifyError(f"{what}: {name} is not a block meta.json ({exc})") from None
    dirs = {d for d in dirs if ULID.match(d)}
    missing = sorted(dirs - set(blocks))
    if missing:
        raise VerifyError(f"{what}: block(s) without meta.json: {', '.join(missing)}")
    if not blocks and not allow_empty:
        raise VerifyError(f"{what}: no TSDB block in the snapshot")
    return blocks


def _is_block_meta(name: str) -> bool:
    top, _, rest = name.partition("/")   # as read_blocks takes it: <top>/meta.json
    return rest == "meta.json" and bool(top)


def blocks_fingerprint(blocks: dict[str, dict]) -> dict:
    """``blocks``, ``series`` and ``samples`` (summed over the blocks' meta.json stats), ``min_time`` /
    ``max_time`` (ms) of ``{ulid: meta}`` as :func:`read_blocks` gives it."""
    out = {"blocks": len(blocks), "series": sum(int(b.get("series") or 0) for b in blocks.values()),
           "samples": sum(int(b.get("samples") or 0) for b in blocks.values())}
    if blocks:
        out["min_time"] = min(b["minTime"] for b in blocks.values())
        out["max_time"] = max(b["maxTime"] for b in blocks.values())
    return out


def _ts(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")



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


class _Api(HttpApi):
    """HTTP to Prometheus (no credentials, no TLS settings)."""

    product = "Prometheus"

    def tls(self) -> bool:
        return True

    def transport(self, exc: httpx.HTTPError, what: str) -> ArtifactError:
        return ArtifactError(f"{self.where} is unreachable ({type(exc).__name__}: {exc})")


class PrometheusService(BaseService):
    kind: ClassVar[str] = "prometheus"
    config_model: ClassVar[type[PrometheusConfig]] = PrometheusConfig
    artifact_names: ClassVar[tuple[str, ...]] = ("{name}-snapshot.tar.gz",)

    @property
    def artifact_path(self) -> str:
        return self.artifacts()[0]

    def _where(self) -> str:
        return f"Prometheus at {self.config.url}"

    # -- backup ---------------------------------------------------------------
    def _take_snapshot(self) -> str:
        c = self.config
        with _Api(self, timeout=min(c.timeout_s, 600.0)) as api:
            resp = api.call("POST", "/api/v1/admin/tsdb/snapshot", what="take a TSDB snapshot", ok=None,
                            params={"skip_head": "true"} if c.skip_head else None)
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code != 200 or body.get("status") != "success":
            err = body.get("error") or resp.text[:200].strip() or f"HTTP {resp.status_code}"
            if body.get("errorType") == "unavailable" or "admin APIs disabled" in str(err):
                raise ArtifactError(f"{self._where()}: the TSDB admin API is disabled ({err}); start Prometheus "
                                    "with --web.enable-admin-api")
            raise ArtifactError(f"{self._where()}: snapshot failed: HTTP {resp.status_code}: {err}")
        name = str((body.get("data") or {}).get("name") or "")
        if not SNAPSHOT_NAME.match(name):
            raise ArtifactError(f"{self._where()}: unexpected snapshot answer {resp.text[:200]!r}")
        return name

    def backup(self, into: Path) -> list[ArtifactResult]:
        """A TSDB snapshot (admin API) streamed out of the data dir as a gzip tar, then removed from it."""
        c = self.config
        if not c.data_dir:
            raise ArtifactError(f"{self.name}: set data_dir to Prometheus' --storage.tsdb.path (as seen from here, "
                                "or inside its container): the snapshot is written there and streamed out of it")
        started = time.monotonic()
        empty_before = self._head_series() == 0 and not c.skip_head
        name = self._take_snapshot()
        snap_dir = f"{c.data_dir.rstrip('/')}/snapshots/{name}"
        # the blocks' meta.json are read from the tar stream as it is written: no second pass
        counter = TarCounter(keep=_is_block_meta)
        try:
            rec, entries = write_tarball(self.access, snap_dir, into, self.artifact_path, counter=counter)
        except AccessError as exc:
            raise ArtifactError(f"{self.name}: cannot read snapshot {name} from {snap_dir} via "
                                f"{self.access.description}: {exc} (is data_dir the TSDB path?)") from None
        finally:
            try:
                self.access.remove_tree(snap_dir)
            except CoderzBackupError as exc:
                log.warning("%s: could not delete %s from the data dir: %s", self.name, snap_dir, exc)
        final = Path(into) / self.artifact_path
        try:
            # no block at all is fine only for a Prometheus that holds no data yet
            if counter.result() is not None:
                metas = {name.split("/", 1)[0]: body for name, body in counter.kept.items()}
                blocks = blocks_of(self.artifact_path, metas, counter.tops, allow_empty=empty_before)
            else:   # the stream could not be followed: read the written tarball back instead
                blocks = read_blocks(final, allow_empty=empty_before)
        except VerifyError as exc:
            final.unlink(missing_ok=True)
            raise IncompleteArtifactError(f"{self.name}: snapshot {name}: {exc}") from None
        details = {"snapshot": name, "blocks": len(blocks), "entries": entries, "skip_head": c.skip_head}
        if blocks:
            details["min_time"] = _ts(min(b["minTime"] for b in blocks.values()))
            details["max_time"] = _ts(max(b["maxTime"] for b in blocks.values()))
        else:
            details["note"] = "Prometheus held no samples yet (no series in its head block)"
        log.info("%s: snapshot %s, %d block(s) %s … %s, %d bytes in %.1fs", self.name, name, len(blocks),
                 details.get("min_time", "-"), details.get("max_time", "-"), rec.bytes, time.monotonic() - started)
        fingerprint = safely(f"{self.name}: fingerprint", lambda: blocks_fingerprint(blocks))
        return [ArtifactResult.from_files(self.name, self.kind, self.artifact_path, [rec], details=details,
                                          fingerprint=fingerprint)]

    # -- fingerprint (restore drills) ----------------------------------------
    def fingerprint_live(self, data_dir: str | None = None) -> dict:
        """The persisted blocks of the TSDB on disk (``data_dir``, default the config's): each
        ``<ULID>/meta.json``, as :func:`blocks_fingerprint` sums them. Samples still only in the head
        (``wal/``, ``chunks_head/``) are not in it: read a restored data dir before Prometheus has run
        on it for long (it compacts blocks and, after ~2h, writes new ones from the head)."""
        folder = data_dir or self.config.data_dir
        if not folder or not has(self.access, HostFiles):
            raise NotDrillable(f"{self.name}: the TSDB is read from data_dir on this host (not drillable via "
                               f"{self.access.description} yet)")
        blocks = {}
        for entry in sorted(os.listdir(folder)):
            meta_path = os.path.join(folder, entry, "meta.json")
            if ULID.match(entry) and os.path.isfile(meta_path):   # <ULID>.tmp-for-deletion: not a block
                with open(meta_path, "rb") as fh:
                    meta = json.loads(fh.read(1 << 20))
                stats = meta.get("stats") or {}
                blocks[entry] = {"minTime": int(meta["minTime"]), "maxTime": int(meta["maxTime"]),
                                 "samples": stats.get("numSamples"), "series": stats.get("numSeries")}
        return blocks_fingerprint(blocks)

    def _head_series(self) -> int | None:
        """Series in the head block, from /api/v1/status/tsdb (None when Prometheus does not say)."""
        try:
            with _Api(self, timeout=10) as api:
                body = api.json("GET", "/api/v1/status/tsdb", what="read the TSDB status", ok=None)
            return int(body["data"]["headStats"]["numSeries"])
        except (ArtifactError, ValueError, KeyError, TypeError):
            return None

    # -- verify ---------------------------------------------------------------
    def verify(self, artifact: ArtifactPath | Path) -> str:
        """gzip and tar intact, every block has its meta.json; the time range covered."""
        artifact = as_artifact(artifact)
        blocks = read_blocks(artifact, allow_empty=True)   # backup() refused an empty one unless the TSDB was
        if not blocks:
            return "gzip and tar intact, no TSDB block (Prometheus held no samples when it was taken)"
        lo = min(b["minTime"] for b in blocks.values())
        hi = max(b["maxTime"] for b in blocks.values())
        return f"gzip and tar intact, {len(blocks)} TSDB block(s) with meta.json, {_ts(lo)} … {_ts(hi)}"

    # -- restore --------------------------------------------------------------
    def restore_target(self) -> str:
        c = self.config
        how = (f"its container {c.container} is stopped and started" if c.container else
               f"stopped with {' '.join(c.stop_command) if c.stop_command else '(stop_command not set: it must be down)'}"
               f" and started with {' '.join(c.start_command) if c.start_command else '(start_command not set)'}")
        data_dir = (c.data_dir or "(data_dir not set)").rstrip("/")
        kept = (f"inside it as {data_dir}/.coderz-old-<ts>" if c.container or c.volume or c.exec_prefix
                else f"beside it as {data_dir}.coderz-old-<ts>")
        return (f"the TSDB in {data_dir} is replaced by the snapshot's blocks (the current contents are kept "
                f"{kept}); Prometheus {how}")

    def _answers(self) -> bool:
        with _Api(self, timeout=3) as api:
            return api.answers("/-/healthy", timeout=3, ok=(200,))

    def health(self) -> str:
        try:
            with _Api(self, timeout=10) as api:
                resp = api.client.get("/-/ready")
        except httpx.HTTPError as exc:
            raise RestoreError(f"{self.name}: {self._where()} is unreachable: {exc}") from None
        if resp.status_code != 200:
            raise RestoreError(f"{self.name}: {self._where()} is not ready (HTTP {resp.status_code})")
        return "ready"

    def restore(self, artifact: ArtifactPath | Path, *, already_stopped: bool = False, **_: object) -> str:
        """Replace the TSDB with the snapshot's blocks (Prometheus stopped, old data kept aside)."""
        artifact = as_artifact(artifact)
        c = self.config
        try:
            blocks = read_blocks(as_artifact(artifact), allow_empty=True)
        except VerifyError as exc:
            raise RestoreError(f"{self.name}: refusing to restore, nothing changed: {exc}") from None
        if not c.data_dir:
            raise RestoreError(f"{self.name}: set data_dir (the TSDB path) to restore; nothing changed")
        detail = replace_data_dir(self.access, as_artifact(artifact), name=self.name, product=self._where(),
                                  data_dir=c.data_dir, stop_command=c.stop_command, start_command=c.start_command,
                                  answers=self._answers, health=self.health, health_timeout_s=c.health_timeout_s,
                                  already_stopped=already_stopped)
        log.info("%s: %d block(s) restored: %s", self.name, len(blocks), detail)
        return f"{len(blocks)} block(s) restored: {detail}"
