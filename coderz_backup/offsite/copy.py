"""What every off-site target kind shares: how a snapshot is copied, what makes a copy complete,
how one is listed and fetched back.

A remote snapshot is the folder ``<snapshot>/`` on the target holding the snapshot's files, its
``manifest.json`` and ``manifest.json.sig``. :func:`push` writes the artifacts (and
``backup.log``) first, every file checked on arrival against the signed manifest, then the
manifest, then its signature **last**: a folder without the signature is incomplete — never
listed (:func:`complete_snapshots`), fetched, or counted — and the next push starts it over.

:func:`fetch` brings a remote snapshot into a local store: the manifest and its signature
first, which must check (this host's key or a trusted one), then every file the manifest
lists, each compared with its signed size and sha256 as it is downloaded, and only then the
folder gets its snapshot name — a fetch cut short or refused leaves nothing that looks like a
snapshot.

With a target's ``encrypt_to`` every file but the signature is encrypted with age before it
leaves (:mod:`.crypt`); the signed manifest keeps the plaintext sizes and hashes, so ``fetch``
decrypts each file as it downloads it and checks the plaintext against them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CoderzBackupError, OffsiteError, VerifyError
from ..reader import safe_relpath
from ..signing import SIGNATURE_FILE, Authenticity, authenticate
from ..snapshot import IN_PROGRESS_PREFIX, MANIFEST, SNAPSHOT_NAME, SnapshotStore, fsync_dir, read_manifest_bytes
from .base import Target, file_digest
from .crypt import Staging, decrypt_bytes, decrypt_into, is_encrypted

__all__ = ["PushResult", "complete_snapshots", "fetch", "push", "snapshot_files"]

log = logging.getLogger(__name__)

LOG = "backup.log"
CHUNK = 1 << 20
MANIFEST_LIMIT = 8 << 20     # a manifest is a few KB; a bigger one is not read
LOG_LIMIT = 256 << 20        # backup.log is not in the manifest: bounded so a hostile target cannot fill the disk


@dataclass
class PushResult:
    """What one push did."""

    snapshot: str
    files: int = 0
    bytes: int = 0
    duration_s: float = 0.0
    already_there: bool = False
    details: dict = field(default_factory=dict)


def snapshot_files(manifest: dict) -> list[dict]:
    """The file records of a snapshot's ok artifacts (what a complete copy must hold), in order."""
    out = []
    for entry in manifest.get("artifacts", []) or []:
        if entry.get("status") == "ok":
            out += entry.get("files") or [entry]
    return out


def _remote_bytes(target: Target, rel: str, limit: int = MANIFEST_LIMIT + (1 << 20)) -> bytes:
    with target.open(rel) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise OffsiteError(f"off-site {target.name}: {rel} is larger than a manifest can be")
    return data


def push(folder: Path, target: Target, recipients: list | None = None, *, parallel: int = 4) -> PushResult:
    """Copy the finished local snapshot ``folder`` to ``target`` (see the module docstring), up to
    ``parallel`` files at once; with ``recipients`` every file but the signature is encrypted to
    them first (:mod:`.crypt`)."""
    started = time.monotonic()
    name = folder.name
    manifest_raw = read_manifest_bytes(folder)
    if manifest_raw is None or not (folder / SIGNATURE_FILE).is_file():
        raise OffsiteError(f"snapshot {name} has no signed manifest; only finished, signed snapshots are copied")
    signature = (folder / SIGNATURE_FILE).read_bytes()
    manifest = json.loads(manifest_raw)
    result = PushResult(name, details={"encrypted": bool(recipients)})
    if target.exists(f"{name}/{SIGNATURE_FILE}") and target.exists(f"{name}/{MANIFEST}"):
        # the signature binds the manifest: the same signature bytes are the same snapshot (also
        # when the remote manifest is encrypted and this host cannot read it)
        if _remote_bytes(target, f"{name}/{SIGNATURE_FILE}", 64 * 1024) != signature:
            raise OffsiteError(f"off-site {target.name}: holds another snapshot named {name} (its signed manifest "
                               "differs from this one); not overwritten — move it away on the target")
        remote_manifest = _remote_bytes(target, f"{name}/{MANIFEST}")
        if remote_manifest == manifest_raw or is_encrypted(remote_manifest):
            result.already_there = True
            result.duration_s = time.monotonic() - started
            return result
        # this snapshot's signature over a manifest that is not the signed one: a damaged copy
        log.warning("off-site %s: the copy of %s there has a damaged manifest; sending it again", target.name, name)
        result.details["replaced_damaged"] = True
    if target.names(name):
        target.remove(name)   # an earlier push cut short: start it over
    files = [(safe_relpath(rec["path"]), rec["bytes"], rec["sha256"]) for rec in snapshot_files(manifest)]
    if (folder / LOG).is_file():
        files.append((LOG, *file_digest(folder / LOG)))
    # one private folder per push beside the snapshots (removed after, or by the next push when
    # this one was killed): the encrypted files, and the manifest and signature as read above
    with Staging(folder.parent, target.name, recipients or []) as staging:
        tmp = staging.dir
        # the exact bytes that were signed, from one read (not the folder again)
        (Path(tmp) / MANIFEST).write_bytes(manifest_raw)
        (Path(tmp) / SIGNATURE_FILE).write_bytes(signature)

        def send(rel: str, local: Path, size: int, digest: str) -> None:
            if recipients and rel != SIGNATURE_FILE:
                with staging.encrypt(local) as (staged, csize, csha):
                    target.put(f"{name}/{rel}", staged, size=csize, sha256=csha)
            else:
                target.put(f"{name}/{rel}", local, size=size, sha256=digest)

        # the artifacts and the log, several at once (biggest first); the manifest, then its signature, last
        _send_all(send, sorted(((rel, folder / rel, size, digest) for rel, size, digest in files),
                               key=lambda f: -f[2]), parallel)
        send(MANIFEST, Path(tmp) / MANIFEST, len(manifest_raw), hashlib.sha256(manifest_raw).hexdigest())
        send(SIGNATURE_FILE, Path(tmp) / SIGNATURE_FILE, len(signature), hashlib.sha256(signature).hexdigest())
        result.files = len(files) + 2
        result.bytes = sum(f[1] for f in files) + len(manifest_raw) + len(signature)
    result.duration_s = time.monotonic() - started
    return result


def _send_all(send, files: list[tuple], parallel: int) -> None:
    """``send(*f)`` for every file, ``parallel`` at a time; the first failure stops what has not
    started, waits for what has, and is raised."""
    if parallel <= 1 or len(files) <= 1:
        for f in files:
            send(*f)
        return
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="offsite-put") as pool:
        futures = [pool.submit(send, *f) for f in files]
        try:
            for fut in as_completed(futures):
                fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def complete_snapshots(target: Target) -> list[str]:
    """Names of the complete remote snapshots (manifest and signature there), newest first."""
    return sorted((n for n in target.names() if SNAPSHOT_NAME.match(n)
                   and target.exists(f"{n}/{MANIFEST}") and target.exists(f"{n}/{SIGNATURE_FILE}")), reverse=True)


def fetch(target: Target, name: str, dest: Path, *, own_key: str | None, trusted: list[str],
          identities: list | None = None) -> tuple[Path, Authenticity]:
    """Bring the remote snapshot ``name`` into the local store ``dest`` (see the module docstring);
    encrypted files are decrypted with ``identities`` as they are downloaded."""
    if not SNAPSHOT_NAME.match(name):
        raise OffsiteError(f"{name!r} is not a snapshot name (YYYY-MM-DD_HH-MM-SS)")
    if name not in complete_snapshots(target):
        raise OffsiteError(f"off-site {target.name} holds no complete snapshot {name} "
                           f"(see `coderz-backup offsite list {target.name}`)")
    store = SnapshotStore(dest)
    store.prepare()
    final = store.dest / name
    if final.exists():
        raise OffsiteError(f"{final} exists already; fetch into another --dest or move it away")
    with store.lock():
        work = store.dest / f"{IN_PROGRESS_PREFIX}fetch-{name}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(mode=0o700)
        try:
            manifest_raw = decrypt_bytes(_remote_bytes(target, f"{name}/{MANIFEST}"), identities,
                                         where=f"{name}/{MANIFEST}", limit=MANIFEST_LIMIT)
            (work / MANIFEST).write_bytes(manifest_raw)
            (work / SIGNATURE_FILE).write_bytes(decrypt_bytes(
                _remote_bytes(target, f"{name}/{SIGNATURE_FILE}", 64 * 1024), identities,
                where=f"{name}/{SIGNATURE_FILE}", limit=64 * 1024))
            os.chmod(work / MANIFEST, 0o600)
            os.chmod(work / SIGNATURE_FILE, 0o600)
            # the signature first: nothing the manifest names is fetched before it checks
            auth = authenticate(_named(work, name), manifest_raw,
                                own_key=own_key, trusted=trusted)
            manifest = json.loads(manifest_raw)
            for rec in snapshot_files(manifest):   # each checked against its signed size and sha256 as it lands
                _download(target, f"{name}/{safe_relpath(rec['path'])}", work / safe_relpath(rec["path"]),
                          identities, rec)
            if target.exists(f"{name}/{LOG}"):
                _download(target, f"{name}/{LOG}", work / LOG, identities, limit=LOG_LIMIT)
            fsync_dir(work)
            os.rename(work, final)
            fsync_dir(store.dest)
        except (CoderzBackupError, OSError) as exc:
            shutil.rmtree(work, ignore_errors=True)
            if isinstance(exc, OSError):
                raise OffsiteError(f"fetching {name} into {dest} failed: {exc.strerror or exc}") from None
            if isinstance(exc, VerifyError) and not isinstance(exc, OffsiteError):
                raise type(exc)(f"{name} from off-site {target.name} refused, nothing kept: {exc}") from None
            raise
    return final, auth


class _named:
    """The folder being fetched, named as the snapshot it will become (the name the signature
    check uses in its messages)."""

    def __init__(self, folder: Path, name: str):
        self._folder, self.name = folder, name

    def __truediv__(self, other: str) -> Path:
        return self._folder / other


def _download(target: Target, rel: str, dest: Path, identities: list | None, record: dict | None = None, *,
              limit: int | None = None) -> None:
    """Copy ``rel`` into the new file ``dest`` (decrypting an age file), hashing on the way; with
    ``record`` (its manifest entry) a size or sha256 other than the signed one is a VerifyError —
    one read, and never more bytes written than the manifest says."""
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    if record is not None:
        limit = record.get("bytes") if isinstance(record.get("bytes"), int) else 0
    with os.fdopen(fd, "wb") as out, target.open(rel) as src:
        try:
            size, digest = decrypt_into(src, out, identities, limit=limit, where=rel)
        except VerifyError as exc:
            raise VerifyError(f"{record['path'] if record else rel}: {exc}") from None
        out.flush()
        os.fsync(out.fileno())
    if record is not None:
        if size != record.get("bytes"):
            raise VerifyError(f"{record['path']}: {size} bytes fetched, the manifest says {record.get('bytes')}")
        if digest != record.get("sha256"):
            raise VerifyError(f"{record['path']}: sha256 differs from the manifest (the file was changed or damaged)")
