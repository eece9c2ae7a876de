"""Verify a snapshot: first the manifest's signature (:func:`authenticate_snapshot`), then every
artifact's bytes and sha256 against the manifest, then its own format checks (gzip + pg_dump
trailer, RDB CRC-64, safe tar members …)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import KIND_MODELS, Config
from .errors import CoderzBackupError, VerifyError
from .services import REGISTRY
from .signing import Authenticity, authenticate, load_signer
from .snapshot import SnapshotInfo
from .writer import sha256_file

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


def verify_artifact(snap: SnapshotInfo, entry: dict, cfg: Config | None = None) -> str:
    """Raise VerifyError unless the artifact matches the manifest and passes its format check."""
    path = snap.path / entry["path"]
    files = entry.get("files") or []
    targets = [(snap.path / f["path"], f) for f in files] if files else [(path, entry)]
    for file_path, rec in targets:
        if not file_path.is_file() or file_path.is_symlink():
            raise VerifyError(f"{rec['path']}: missing from {snap.path}")
        size, digest = sha256_file(file_path)
        if size != rec.get("bytes"):
            raise VerifyError(f"{rec['path']}: {size} bytes on disk, the manifest says {rec.get('bytes')}")
        if digest != rec.get("sha256"):
            raise VerifyError(f"{rec['path']}: sha256 differs from the manifest (the file was changed or damaged)")
    svc = _service_for(entry, cfg)
    if svc is None:
        return "sha256 matches the manifest (no format check for this kind in this version)"
    return f"sha256 ok; {svc.verify(path)}"


def verify_snapshot(snap: SnapshotInfo, cfg: Config | None = None, only: list[str] | None = None, *,
                    authenticity: Authenticity) -> list[ArtifactCheck]:
    """Check every ok artifact of ``snap`` (or those of the ``only`` services). ``authenticity``
    is what :func:`authenticate_snapshot` returned for it: no artifact is looked at before."""
    if not isinstance(authenticity, Authenticity):
        raise TypeError("verify_snapshot needs the snapshot's Authenticity (authenticate_snapshot first)")
    if snap.manifest is None:
        raise VerifyError(f"{snap.path}: manifest.json is missing or unreadable")
    out = []
    for entry in snap.manifest.get("artifacts", []):
        if entry.get("status") != "ok" or (only and entry["service"] not in only):
            continue
        try:
            out.append(ArtifactCheck(entry["service"], entry["path"], True, verify_artifact(snap, entry, cfg)))
        except CoderzBackupError as exc:
            out.append(ArtifactCheck(entry["service"], entry["path"], False, str(exc)))
        except OSError as exc:
            out.append(ArtifactCheck(entry["service"], entry["path"], False, f"{entry['path']}: {exc.strerror}"))
    return out
