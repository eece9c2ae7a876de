"""``coderz-backup install [--prefix DIR]``: the product document's files, where it says they are.

    <prefix>/opt/coderz/backup/backup.sh                  runs `coderz-backup backup`
    <prefix>/opt/coderz/backup/restore.sh                 runs `coderz-backup restore`
    <prefix>/opt/coderz/backup/coderz-backup.toml         commented config (mode 0600)
    <prefix>/opt/coderz/configs/prefect/flows/prefect.yaml   `prefect --no-prompt deploy --all` from there
    <prefix>/opt/coderz/configs/prefect/flows/backup_flow.py the deployment's entrypoint

The files ship in the package (``coderz_backup/install_files/``). The scripts call the
coderz-backup that ran ``install`` by its absolute path. What was written is recorded in
``<prefix>/opt/coderz/backup/.coderz-install.json`` (sha256 per file): a re-run rewrites only
files still exactly as installed, and leaves a file that was edited, or that was there before
install, alone and says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import CoderzBackupError

FILES_DIR = Path(__file__).resolve().parent / "install_files"
RECORD_NAME = ".coderz-install.json"


class InstallError(CoderzBackupError):
    """The files cannot be installed there."""

    def __init__(self, where: str, problems: list[str]):
        super().__init__(f"{where}: " + "; ".join(problems))


@dataclass(frozen=True)
class Planned:
    rel: str          # path under the prefix, e.g. opt/coderz/backup/backup.sh
    content: bytes
    mode: int


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)   # a JSON string is a valid TOML basic string


def _command() -> list[str]:
    """The coderz-backup that runs now: the console script that was started, else the one next to
    the interpreter, else ``python -m coderz_backup`` with this interpreter."""
    started = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    for script in ((started.absolute() if started and started.name == "coderz-backup" else None),
                   Path(sys.executable).with_name("coderz-backup")):
        if script is not None and script.is_file() and os.access(script, os.X_OK):
            return [str(script)]
    return [sys.executable, "-m", "coderz_backup"]


def plan(prefix: Path, command: list[str] | None = None) -> list[Planned]:
    backup = prefix / "opt" / "coderz" / "backup"
    config = backup / "coderz-backup.toml"
    cmd = " ".join(shlex.quote(c) for c in (command or _command()))

    def text(name: str) -> str:
        return (FILES_DIR / name).read_text(encoding="utf-8")

    def script(name: str) -> bytes:
        return text(name).replace("@CONFIG@", shlex.quote(str(config))).replace("@COMMAND@", cmd).encode()

    toml = (text("coderz-backup.toml")
            .replace("@CONFIG@", str(config))
            .replace("@DEST@", _toml_str(str(backup / "snapshots")))
            .replace("@SIGNING_KEY@", _toml_str(str(backup / "keys" / "signing.key")))
            .replace("@CONFIGS_DIR@", _toml_str(str(prefix / "opt" / "coderz" / "configs"))))
    flows = "opt/coderz/configs/prefect/flows"
    return [
        Planned("opt/coderz/backup/backup.sh", script("backup.sh"), 0o755),
        Planned("opt/coderz/backup/restore.sh", script("restore.sh"), 0o755),
        Planned("opt/coderz/backup/coderz-backup.toml", toml.encode(), 0o600),
        Planned(f"{flows}/prefect.yaml", (FILES_DIR / "prefect.yaml").read_bytes(), 0o644),
        Planned(f"{flows}/backup_flow.py", (FILES_DIR / "backup_flow.py").read_bytes(), 0o644),
    ]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically: a temp file in the same folder, then rename (never a half-written script)."""
    tmp = path.with_name(f".{path.name}.coderz-install-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def install(prefix: str | Path = "/", command: list[str] | None = None) -> list[tuple[str, Path]]:
    """Lay the files out under ``prefix``; returns (action, path) per file.

    Actions: installed, updated, unchanged, kept-edited, kept-existing.
    """
    root = Path(prefix).expanduser()
    if not root.is_absolute():
        root = Path.cwd() / root
    if not root.is_dir():
        raise InstallError(str(root), ["--prefix must be an existing folder"])
    files = plan(root, command)
    record_path = root / "opt" / "coderz" / "backup" / RECORD_NAME
    record: dict[str, str] = {}
    if record_path.exists():
        try:
            record = dict(json.loads(record_path.read_text())["files"])
        except (ValueError, KeyError, TypeError):
            raise InstallError(str(record_path), ["not a coderz-backup install record (invalid JSON); "
                                                  "move it away to install afresh"]) from None
    results: list[tuple[str, Path]] = []
    path = root
    try:
        for f in files:
            path = root / f.rel
            new = _sha(f.content)
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() and not path.is_symlink():
                _write(path, f.content, f.mode)
                record[f.rel] = new
                results.append(("installed", path))
                continue
            if path.is_symlink() or not path.is_file():
                results.append(("kept-existing", path))
                continue
            current = _sha(path.read_bytes())
            if current == new:   # exactly what install writes: from now on, ours
                record[f.rel] = new
                results.append(("unchanged", path))
            elif record.get(f.rel) == current:   # still as we wrote it: update
                _write(path, f.content, f.mode)
                record[f.rel] = new
                results.append(("updated", path))
            elif f.rel in record:
                results.append(("kept-edited", path))
            else:
                results.append(("kept-existing", path))
    except OSError as exc:   # a folder in the way, read-only, full: say where; keep what was written
        if any(action in ("installed", "updated") for action, _ in results):
            _save_record(record_path, record)
        where = f": {exc.filename}" if exc.filename and str(exc.filename) != str(path) else ""
        raise InstallError(str(path), [f"cannot install: {exc.strerror or exc}{where}"]) from None
    try:
        _save_record(record_path, record)
    except OSError as exc:
        raise InstallError(str(record_path), [f"cannot write the install record: {exc.strerror or exc}"]) from None
    return results


def _save_record(record_path: Path, record: dict[str, str]) -> None:
    record_path.parent.mkdir(parents=True, exist_ok=True)
    _write(record_path, (json.dumps({"version": 1, "files": record}, indent=2, sort_keys=True) + "\n").encode(),
           0o644)


_SAY = {
    "installed": "✓ installed   {}",
    "updated": "✓ updated     {}",
    "unchanged": "  unchanged   {}",
    "kept-edited": "! kept        {} (edited since install; the new version was not written)",
    "kept-existing": "! kept        {} (was there before install; not written)",
}


def next_steps(root: Path) -> str:
    backup = root / "opt" / "coderz" / "backup"
    flows = root / "opt" / "coderz" / "configs" / "prefect" / "flows"
    config = backup / "coderz-backup.toml"
    return "\n".join([
        "Next steps:",
        f"  1. Edit {config}: services, secrets (env:NAME), [email]; then",
        f"     coderz-backup config check --config {config}",
        f"  2. A backup now:   bash {backup / 'backup.sh'} --keep 14",
        f"     Snapshots:      bash {backup / 'restore.sh'} --list",
        "  3. Scheduled (03:00 UTC), with PREFECT_API_URL set to your Prefect server:",
        "     coderz-backup setup                      # work pool `coderz-backup`, once",
        f"     cd {flows}",
        "     prefect --no-prompt deploy --all",
        f"     CODERZ_BACKUP_CONFIG={config} prefect worker start --pool coderz-backup",
        "     prefect deployment run coderz-backup/coderz-backup-daily   # a run now",
    ])


def register_cli(sub) -> None:
    i = sub.add_parser("install", help="lay out /opt/coderz/backup/{backup.sh,restore.sh,coderz-backup.toml} "
                                       "and the Prefect flow folder",
                       description="Install the product document's files under PREFIX: "
                                   "opt/coderz/backup/backup.sh, restore.sh, coderz-backup.toml and "
                                   "opt/coderz/configs/prefect/flows/{prefect.yaml,backup_flow.py}. "
                                   "Idempotent: a file edited since it was installed is never overwritten.")
    i.add_argument("--prefix", metavar="DIR", default="/", help="install under DIR (default /)")


def run_cli(args) -> int:
    root = Path(args.prefix).expanduser()
    results = install(root)
    for action, path in results:
        print(_SAY[action].format(path))
    if not root.is_absolute():
        root = Path.cwd() / root
    print()
    print(next_steps(root))
    return 0
