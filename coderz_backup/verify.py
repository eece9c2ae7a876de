"""Verify a snapshot: first the manifest's signature (:func:`authenticate_snapshot`), then every
artifact's bytes and sha256 against the manifest, then its own format checks (gzip + pg_dump
trailer, RDB CRC-64, safe tar members …)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import KIND_MODELS, Config
from .errors import CoderzBackupError, VerifyError
from .services import REGISTRY
from .reader import SnapshotReader
from .signing import Authenticity, authenticate, load_signer
from .snapshot import SnapshotInfo

__all__ = ["ArtifactCheck", "authenticate_snapshot", "own_public_key", "verify_artifact", "verify_snapshot"]


def own_public_key(cfg: Config) -> str | None:
    """This host's public key, or None when it has no signing key yet (nothing it signed exists)."""
    from pathlib import Path

    if not cfg.signing_key.startswith("prefect-secret:") and not Path(cfg.signing_key).exists():
        return None
    return load_signer(cfg.signing_key, create=False).public_key


def authenticate_snapshot(snap: SnapshotInfo, cfg: Config, *, allow_unsigned: bool = False) -> Authenticity:
    """The signature check every reader of a snapshot starts with (SignatureError: refused)."""
    return authenticate(snap.path, snap.manifest_bytes, own_key=own_public_key(cfg), trusted=cfg.trusted_keys,
                        allow_unsigned=allow_unsigned)


@dataclass
class ArtifactCheck:
    service: str
    path: str
    ok: bool
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


def _service_for(entry: dict, cfg: Config | None):
    """The service object able to check ``entry`` (configured one, else a bare one of its kind)."""
    cls = REGISTRY.get(entry.get("kind", ""))
    if cls is None:
        return None
    svc_cfg = cfg.services.get(entry["service"]) if cfg else None
    if svc_cfg is None or svc_cfg.kind != entry["kind"]:
        svc_cfg = KIND_MODELS[entry["kind"]].model_construct(kind=entry["kind"])
    return cls(name=entry["service"], config=svc_cfg, access=None)


def verify_artifact(snap: SnapshotInfo, entry: dict, cfg: Config | None = None,
                    reader: SnapshotReader | None = None) -> str:
    """Raise VerifyError unless the artifact matches the manifest and passes its format check.

    Every file is read once, through the reader: first its presence and size (nothing read),
    then the service's format check reading the decoded bytes (sha256 compared at each file's
    end), then the sha256 of any file the check did not read. A format error on bytes that
    differ from the manifest is reported as that difference."""
    reader = reader or SnapshotReader(snap.path, snap.manifest or {})
    reader.presence(entry)
    svc = _service_for(entry, cfg)
    if svc is None:
        reader.check(entry)
        return "sha256 matches the manifest (no format check for this kind in this version)"
    try:
        detail = svc.verify(reader.artifact(entry))
    except VerifyError:
        reader.check(entry, again=False)   # changed bytes are the cause to report
        raise
    reader.check(entry, again=False)
    return f"sha256 ok; {detail}"


def verify_snapshot(snap: SnapshotInfo, cfg: Config | None = None, only: list[str] | None = None, *,
                    authenticity: Authenticity) -> list[ArtifactCheck]:
    """Check every ok artifact of ``snap`` (or those of the ``only`` services). ``authenticity``
    is what :func:`authenticate_snapshot` returned for it: no artifact is looked at before."""
    if not isinstance(authenticity, Authenticity):
        raise TypeError("verify_snapshot needs the snapshot's Authenticity (authenticate_snapshot first)")
    if snap.manifest is None:
        raise VerifyError(f"{snap.path}: manifest.json is missing or unreadable")
    out = []
    reader = SnapshotReader(snap.path, snap.manifest)
    for entry in snap.manifest.get("artifacts", []):
        if entry.get("status") != "ok" or (only and entry["service"] not in only):
            continue
        try:
            out.append(ArtifactCheck(entry["service"], entry["path"], True,
                                     verify_artifact(snap, entry, cfg, reader)))
        except CoderzBackupError as exc:
            out.append(ArtifactCheck(entry["service"], entry["path"], False, str(exc)))
        except OSError as exc:
            out.append(ArtifactCheck(entry["service"], entry["path"], False, f"{entry['path']}: {exc.strerror}"))
    return out
