"""The snapshot store: dated folders under the destination.

Layout (``interface.md``)::

    <dest>/
      2026-03-06_03-00-00/          finished snapshot (UTC start time), 0700
        postgres-prefect.sql.gz     artifacts, 0600
        manifest.json               written last, before the rename
        backup.log
      latest -> 2026-03-06_03-00-00 relative symlink, swapped atomically
      .in-progress-2026-03-07_03-00-00/   a run still going (or killed)
      .coderz-backup.lock           flock held for the whole run

A run builds its snapshot under ``.in-progress-<name>`` and renames it to ``<name>``
only once its manifest is written, so nothing that ``list``, ``latest``, rotation or
restore looks at can be a half-written snapshot. Only folder names matching
:data:`SNAPSHOT_NAME` are snapshots. The lock is an ``flock`` — the kernel releases it
when a run is killed, so a stale lock file never blocks the next run, and the next run
removes the killed run's in-progress folder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import LockHeldError, SnapshotNotFoundError, StoreError

__all__ = [
    "SNAPSHOT_NAME",
    "DELETING_PREFIX",
    "fsync_dir",
    "IN_PROGRESS_PREFIX",
    "SAFETY_DIR",
    "stores_around",
    "SnapshotStore",
    "SnapshotInfo",
    "InProgress",
    "snapshot_name",
    "parse_snapshot_name",
]

SNAPSHOT_NAME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}_[0-9]{2}-[0-9]{2}-[0-9]{2}$")
NAME_FORMAT = "%Y-%m-%d_%H-%M-%S"
IN_PROGRESS_PREFIX = ".in-progress-"
DELETING_PREFIX = ".deleting-"   # rotation renames a snapshot to this before removing it
LOCK_NAME = ".coderz-backup.lock"
LATEST = "latest"
MANIFEST = "manifest.json"
SAFETY_DIR = "safety-backups"   # <dest>/safety-backups: a restore's safety backups, a store of its own


def stores_around(snapshot_dir: Path) -> list[Path]:
    """The snapshot stores a snapshot folder being written lives in: its destination, and for a
    safety backup also the destination that holds ``safety-backups`` (never to be archived)."""
    dest = Path(snapshot_dir).parent
    return [dest, dest.parent] if dest.name == SAFETY_DIR else [dest]


def snapshot_name(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime(NAME_FORMAT)


def parse_snapshot_name(name: str) -> dt.datetime | None:
    """The UTC time a snapshot name stands for, or None when it is not a snapshot name."""
    if not SNAPSHOT_NAME.match(name):
        return None
    try:
        return dt.datetime.strptime(name, NAME_FORMAT).replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


@dataclass
class SnapshotInfo:
    """A finished snapshot. ``manifest`` is parsed from exactly ``manifest_bytes``, the bytes
    whose signature :func:`coderz_backup.signing.authenticate` checks (read once, so what is
    checked is what is used)."""

    name: str
    path: Path
    manifest: dict | None
    manifest_bytes: bytes | None = None

    @property
    def status(self) -> str:
        if self.manifest is None:
            return "unknown"
        return str(self.manifest.get("status", "unknown"))

    @property
    def when(self) -> dt.datetime:
        t = parse_snapshot_name(self.name)
        assert t is not None
        return t


@dataclass
class InProgress:
    name: str
    path: Path


class SnapshotStore:
    """Snapshots under one destination folder."""

    def __init__(self, dest: Path | str):
        self.dest = Path(dest)

    # -- preparation and lock -----------------------------------------------
    def prepare(self) -> None:
        """Create the destination if needed and prove it is writable."""
        if self.dest.exists() and not self.dest.is_dir():
            raise StoreError(f"destination {self.dest} is a file, not a folder; choose another with --dest")
        try:
            self.dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StoreError(f"destination {self.dest} cannot be created: {exc.strerror}; "
                             "choose another with --dest or fix its permissions") from None
        if not self.dest.is_dir():
            raise StoreError(f"destination {self.dest} is not a folder")
        latest = self.dest / LATEST
        if latest.exists() and not latest.is_symlink():
            # found before the run, not after a finished snapshot could not be linked
            raise StoreError(f"{latest} is a real {'folder' if latest.is_dir() else 'file'}, not the link this tool "
                             "keeps there; move it away (nothing was written)")
        probe = self.dest / f".write-test-{os.getpid()}"
        try:
            with open(probe, "wb") as fh:
                fh.write(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StoreError(f"destination {self.dest} is not writable: {exc.strerror}; "
                             "choose another with --dest or fix its permissions") from None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the destination lock for the block; LockHeldError if another run has it."""
        path = self.dest / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open lock file {path}: {exc.strerror}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown process"
                raise LockHeldError(
                    f"another backup run is using {self.dest} ({holder}); "
                    "wait for it to finish — two runs never overlap"
                ) from None
            os.ftruncate(fd, 0)
            started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the flock

    def clean_stale(self) -> list[str]:
        """Remove in-progress folders of runs that died, and snapshots whose deletion was cut
        short (call with the lock held)."""
        removed = []
        for entry in self.dest.iterdir():
            if entry.name.startswith((IN_PROGRESS_PREFIX, DELETING_PREFIX)) and entry.is_dir() \
                    and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return removed

    # -- building a snapshot --------------------------------------------------
    def begin(self, now: dt.datetime | None = None) -> InProgress:
        """Start a new snapshot folder under its in-progress name."""
        when = (now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0)
        name = snapshot_name(when)
        while (self.dest / name).exists() or (self.dest / f"{IN_PROGRESS_PREFIX}{name}").exists():
            when += dt.timedelta(seconds=1)
            name = snapshot_name(when)
        path = self.dest / f"{IN_PROGRESS_PREFIX}{name}"
        try:
            path.mkdir(mode=0o700)
        except OSError as exc:
            raise StoreError(f"cannot create {path}: {exc.strerror}") from None
        os.chmod(path, 0o700)
        return InProgress(name, path)

    def finish(self, snap: InProgress, manifest: dict, *, make_latest: bool, signer=None) -> Path:
        """Write the manifest (and its signature), rename to the final name, and (optionally)
        move ``latest``."""
        data = manifest_bytes(manifest)
        write_bytes_atomic(snap.path / MANIFEST, data)
        if signer is not None:
            from .signing import SIGNATURE_FILE

            write_bytes_atomic(snap.path / SIGNATURE_FILE, signer.signature_document(data))
        fsync_dir(snap.path)
        final = self.dest / snap.name
        os.rename(snap.path, final)
        fsync_dir(self.dest)
        if make_latest:
            self.point_latest(snap.name)
        return final

    def point_latest(self, name: str) -> None:
        """Swap ``latest`` to ``name`` atomically (symlink + rename)."""
        tmp = self.dest / f".latest-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(name, tmp)
        link = self.dest / LATEST
        if link.exists() and not link.is_symlink():
            tmp.unlink()
            raise StoreError(f"{link} exists and is not a symlink; move it away so `latest` can be kept")
        os.replace(tmp, link)
        fsync_dir(self.dest)

    # -- reading --------------------------------------------------------------
    def list(self) -> list[SnapshotInfo]:
        """Finished snapshots, newest first."""
        if not self.dest.is_dir():
            return []
        out = []
        for entry in self.dest.iterdir():
            if parse_snapshot_name(entry.name) and entry.is_dir() and not entry.is_symlink():
                out.append(_info(entry))
        out.sort(key=lambda s: s.name, reverse=True)
        return out

    def latest_name(self) -> str | None:
        link = self.dest / LATEST
        if not link.is_symlink():
            return None
        target = os.readlink(link).rstrip("/")
        if os.path.isabs(target):  # e.g. made by hand with `ln -sfn /abs/path latest`
            if os.path.realpath(os.path.dirname(target)) != os.path.realpath(self.dest):
                return None
            target = os.path.basename(target)
        return target if parse_snapshot_name(target) and (self.dest / target).is_dir() else None

    def get(self, name: str) -> SnapshotInfo:
        """A finished snapshot by name (``latest`` allowed); refuses anything else."""
        if name == LATEST:
            resolved = self.latest_name()
            if resolved is None:
                link = self.dest / LATEST
                if link.is_symlink():
                    raise SnapshotNotFoundError(
                        f"{link} points to {os.readlink(link)!r}, which is not a snapshot of {self.dest} "
                        "(changed by hand?); name the snapshot instead (coderz-backup list)")
                raise SnapshotNotFoundError(f"{self.dest} has no `latest` snapshot yet")
            name = resolved
        if not parse_snapshot_name(name):
            raise SnapshotNotFoundError(
                f"{name!r} is not a snapshot name (expected YYYY-MM-DD_HH-MM-SS, e.g. 2026-03-06_03-00-00)"
            )
        path = self.dest / name
        if not path.is_dir() or path.is_symlink():
            raise SnapshotNotFoundError(f"no snapshot {name} in {self.dest}")
        return _info(path)


MAX_MANIFEST_BYTES = 64 << 20   # a manifest lists files; anything bigger is not one of ours


def _info(folder: Path) -> SnapshotInfo:
    raw = read_manifest_bytes(folder)
    return SnapshotInfo(folder.name, folder, _parse_manifest(raw), raw)


def read_manifest_bytes(folder: Path) -> bytes | None:
    """The bytes of ``folder/manifest.json`` (not through a link), or None."""
    try:
        fd = os.open(folder / MANIFEST, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_MANIFEST_BYTES + 1)
    return data if len(data) <= MAX_MANIFEST_BYTES else None


def _parse_manifest(raw: bytes | None) -> dict | None:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):   # RecursionError: a crafted file of nested brackets
        return None
    return data if isinstance(data, dict) else None


def manifest_bytes(manifest: dict) -> bytes:
    """The manifest as written (and signed)."""
    return (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bound_record(folder: Path, name: str, record: dict) -> None:
    """A record beside the manifest of ``folder`` (``post-snapshot.json``, ``drill.json``), bound to
    that manifest by its sha256: the signed manifest itself never changes."""
    signed = read_manifest_bytes(folder) or b""
    record = {"snapshot": folder.name, "manifest_sha256": hashlib.sha256(signed).hexdigest(), **record}
    write_bytes_atomic(folder / name, (json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode())


def read_bound_record(folder: Path, name: str, limit: int = 1 << 20) -> dict | None:
    """The record ``name`` of ``folder`` when it belongs to its current manifest, else None (there is
    none, it is unreadable — a symlink, not JSON, nested brackets — or left from another manifest)."""
    try:
        fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(limit)
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):   # RecursionError: a crafted file of nested brackets
        return None
    signed = read_manifest_bytes(folder) or b""
    if not isinstance(record, dict) or record.get("manifest_sha256") != hashlib.sha256(signed).hexdigest():
        return None
    return record
