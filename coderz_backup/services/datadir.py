"""A service's data dir as a tarball: the one producer and the one "volume restore" sequence.

:func:`write_tarball` writes a folder reached through the access as one gzip tar artifact
(members relative to the folder; owners, modes and mtimes kept), optionally with local files
first (Grafana's consistent copy of ``grafana.db`` in place of the live one). Used by
Elasticsearch (its data dir), Prometheus (its TSDB snapshot) and Grafana.

:func:`replace_data_dir` puts one back. Used by Prometheus (its TSDB), Grafana and
Elasticsearch (``restore_from = "volume"``):

1. the caller has checked the archive (nothing changed if it is damaged);
2. the service is stopped — its container, or ``stop_command`` — and must stop
   answering within a minute; without a way to stop it while it answers, refused;
3. the current contents are kept: beside the dir as ``<data_dir>.coderz-old-<ts>`` on
   this host, or inside it as ``<data_dir>/.coderz-old-<ts>`` in a container or volume
   (a volume has no sibling of its own);
4. the archive is extracted through the access (every member checked), ownership set to
   the data dir's owner;
5. the service is started and its health awaited.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from ..tarfile_compat import tarfile
import threading
from pathlib import Path
from typing import Callable, Sequence

from ..access import ARCHIVE_ERRORS, CHUNK, tar_writer, Access, DataDirOps, HostFiles, ReplaceCheck, has, require
from ..errors import AccessError, ArtifactError, CoderzBackupError, RestoreError
from ..fingerprint import StreamCounter
from ..reader import ArtifactPath, as_artifact
from ..waiting import wait_until
from ..writer import ArtifactWriter, FileRecord

__all__ = ["move_aside", "replace_data_dir", "write_tarball"]


def write_tarball(access: Access, folder: str, into: Path, relpath: str, *, exclude: Sequence[str] = (),
                  first: Sequence[tuple[tarfile.TarInfo, Path]] = (),
                  counter: StreamCounter | None = None) -> tuple[FileRecord, int]:
    """Write the contents of ``folder`` (through ``access``) as the gzip tar artifact ``relpath``.

    ``first``: (member, local file) pairs written before the folder's contents; ``exclude``:
    top-level names of the folder to leave out. Returns the file record and the number of
    entries. AccessError when the folder cannot be read (the caller says what that means);
    nothing lands under ``relpath`` unless all of it was written. ``counter`` (a
    :class:`~coderz_backup.fingerprint.TarCounter`) is shown the uncompressed tar stream.
    """
    with ArtifactWriter.open(into, relpath, observe=counter.observe if counter else None) as w:
        if not first:
            entries = access.tar_dir(folder, w, exclude=exclude)
            return w.commit(), entries
        entries = 0
        r, w_fd = os.pipe()
        problem: list[BaseException] = []

        def _produce() -> None:   # the folder's tar stream, read back member by member below
            try:
                with os.fdopen(w_fd, "wb", buffering=CHUNK) as wf:
                    access.tar_dir(folder, wf, exclude=exclude)
            except BaseException as exc:  # noqa: BLE001 - raised below
                problem.append(exc)

        producer = threading.Thread(target=_produce, daemon=True)
        producer.start()
        try:
            with tar_writer(w) as tar:
                for info, path in first:
                    with open(path, "rb") as fh:
                        tar.addfile(info, fh)
                    entries += 1
                try:
                    with os.fdopen(r, "rb", buffering=CHUNK) as rf, tarfile.open(fileobj=rf, mode="r|") as src:
                        for member in src:
                            tar.addfile(member, src.extractfile(member) if member.isfile() else None)
                            entries += 1
                except tarfile.ReadError:
                    if not problem:
                        raise
            producer.join()
            if problem:
                exc = problem[0]
                raise exc if isinstance(exc, CoderzBackupError) else AccessError(str(exc))
            return w.commit(), entries
        except OSError as exc:
            raise ArtifactError(f"writing {relpath} failed: {exc.strerror or exc}") from None
        finally:
            producer.join(timeout=30)


def aside_path(access: Access, data_dir: str, stamp: str) -> str:
    """Where :func:`move_aside` keeps the current contents (known before anything moves)."""
    data_dir = data_dir.rstrip("/")
    return f"{data_dir}.coderz-old-{stamp}" if has(access, HostFiles) else f"{data_dir}/.coderz-old-{stamp}"


def move_aside(access: Access, data_dir: str, stamp: str) -> str:
    """Move the current contents of ``data_dir`` aside (the dir itself, its mode and owner stay)."""
    data_dir = data_dir.rstrip("/")
    if has(access, HostFiles):   # a sibling on this host; elsewhere (container, prefix) inside the dir
        old = aside_path(access, data_dir, stamp)
        if os.path.isdir(data_dir):
            st = os.stat(data_dir)
            os.rename(data_dir, old)
            os.mkdir(data_dir, st.st_mode & 0o7777)
            os.chmod(data_dir, st.st_mode & 0o7777)
            with contextlib.suppress(PermissionError):
                os.chown(data_dir, st.st_uid, st.st_gid)
        else:
            os.makedirs(data_dir, mode=0o750)
        return old
    ops = require(access, DataDirOps, f"{access.description} access cannot keep the old data dir aside; "
                  "nothing changed", error=RestoreError)
    old = aside_path(access, data_dir, stamp)
    ops.move_contents(data_dir, old)
    return old


def replace_data_dir(access: Access, artifact: ArtifactPath, *, name: str, product: str, data_dir: str,
                     stop_command: Sequence[str] | None, start_command: Sequence[str] | None,
                     answers: Callable[[], bool], health: Callable[[], str], health_timeout_s: float,
                     already_stopped: bool = False) -> str:
    """Stop, keep the old contents, extract ``artifact`` (gzip tar) into ``data_dir``, start, wait."""
    if has(access, ReplaceCheck):
        try:
            access.check_replaceable(data_dir)
        except CoderzBackupError as exc:
            raise RestoreError(f"{name}: {exc}; nothing changed") from None
    try:
        stopped = access.stop_service(stop_command, timeout=300)
    except CoderzBackupError as exc:
        raise RestoreError(f"{name}: stopping {product} failed, nothing changed: {exc}") from None

    def down() -> bool:
        if not answers():
            return True
        if not stopped and not already_stopped:
            raise RestoreError(f"{name}: {product} is running; set stop_command (or container) so it is down "
                               "before its data dir is replaced; nothing changed")
        return False

    wait_until(down, timeout=60, interval=0.3, error=lambda _: RestoreError(
        f"{name}: {product} still answers 60s after stopping; nothing changed"))
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    # named before the move: a move that fails halfway has already put part of the data there
    kept = f"{aside_path(access, data_dir, stamp)} (and what is still in {data_dir})"
    try:
        kept = move_aside(access, data_dir, stamp)
        with as_artifact(artifact).open() as gz:
            n = access.untar_into(data_dir, iter(lambda: gz.read(CHUNK), b""))
        if has(access, DataDirOps):
            access.chown_like_parent(data_dir)
    except (CoderzBackupError, *ARCHIVE_ERRORS) as exc:
        raise RestoreError(f"{name}: replacing {data_dir} failed ({product} left stopped; the old contents are in "
                           f"{kept}): {exc}") from None
    try:
        started = access.start_service(start_command, timeout=300)
    except CoderzBackupError as exc:
        raise RestoreError(f"{name}: data dir restored ({n} entries, old kept at {kept}) but starting {product} "
                           f"failed: {exc}") from None
    if not started:
        return f"{n} entries restored into {data_dir} (old kept at {kept}); start {product} now (start_command not set)"
    status = wait_until(
        health, timeout=health_timeout_s, interval=0.5, retry=RestoreError,
        error=lambda exc: RestoreError(f"{name}: data dir restored (old kept at {kept}) but {product} is not healthy "
                                       f"{health_timeout_s:.0f}s after the start: {exc}"))
    return f"{n} entries restored into {data_dir} (old kept at {kept}); {status}"
