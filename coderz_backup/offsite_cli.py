"""The off-site commands: ``offsite list``, ``offsite push`` and ``fetch`` (plain Python, no Prefect).

``backup`` copies every finished snapshot to the enabled targets on its own; these commands
look at the targets, send a snapshot again, and bring one back (disaster recovery on a new
host: ``fetch`` checks the signature with ``trusted_keys`` and every file's sha256).
"""

from __future__ import annotations

import argparse
import json
import sys

from . import offsite
from .config import load
from .errors import ConfigError, CoderzBackupError, VerifyError
from .snapshot import SnapshotStore

__all__ = ["add_identity_arg", "fetch_from", "register_cli", "run_cli", "target_config"]


def register_cli(sub) -> None:
    o = sub.add_parser("offsite", help="off-site copies: list the targets' snapshots, send one again")
    osub = o.add_subparsers(dest="offsite_command", metavar="SUBCOMMAND")
    osub.required = True
    ol = osub.add_parser("list", help="complete remote snapshots per target",
                         description="List the complete snapshots (manifest and signature present) on each "
                                     "off-site target, newest first. Exit 0, 2 bad input or a target unreachable.")
    ol.add_argument("target", nargs="?", metavar="TARGET", help="only this target ([offsite.TARGET])")
    ol.add_argument("--config", metavar="F", help="TOML config file (env CODERZ_BACKUP_CONFIG)")
    ol.add_argument("--json", action="store_true", help="machine-readable output")
    op = osub.add_parser("push", help="(re)send a snapshot to the off-site targets",
                         description="Copy a finished snapshot (default latest) to every enabled off-site target, "
                                     "or to --target. A complete copy already there is left alone. Exit 0 sent, "
                                     "1 a target failed, 2 bad input.")
    op.add_argument("snapshot", nargs="?", default="latest", metavar="SNAPSHOT",
                    help="snapshot name YYYY-MM-DD_HH-MM-SS or latest (default)")
    op.add_argument("--target", metavar="T", action="append", help="only this target; repeatable")
    op.add_argument("--config", metavar="F", help="TOML config file (env CODERZ_BACKUP_CONFIG)")
    op.add_argument("--dest", metavar="D", help="snapshot destination")
    f = sub.add_parser("fetch", help="download and verify a snapshot from an off-site target",
                       description="Bring a snapshot back from an off-site target into --dest (default the "
                                   "snapshot destination): its manifest's signature must check (this host's key "
                                   "or trusted_keys), then every file its size and sha256; only then it gets its "
                                   "name (nothing is kept otherwise). Exit 0 fetched, 1 verification failed, "
                                   "2 bad input or target unreachable.")
    f.add_argument("snapshot", metavar="SNAPSHOT", help="snapshot name YYYY-MM-DD_HH-MM-SS")
    f.add_argument("--from", dest="source", metavar="TARGET", required=True, help="the off-site target")
    f.add_argument("--config", metavar="F", help="TOML config file (env CODERZ_BACKUP_CONFIG)")
    f.add_argument("--dest", metavar="D", help="where to put it (default: the snapshot destination)")
    add_identity_arg(f)


def add_identity_arg(parser) -> None:
    parser.add_argument("--identity", metavar="FILE", help="age identity for an encrypted copy: a file of "
                        "AGE-SECRET-KEY-1… lines, env:NAME or prefect-secret:NAME (default: the target's "
                        "identity key)")


def _targets(cfg, names: list[str] | None, *, enabled_only: bool):
    if names:
        unknown = [n for n in names if n not in cfg.offsite]
        if unknown:
            raise ConfigError("--target", [f"unknown off-site target {n!r}; configured: "
                                           f"{', '.join(cfg.offsite) or 'none'}" for n in unknown])
        return {n: cfg.offsite[n] for n in names}
    chosen = {n: t for n, t in cfg.offsite.items() if t.enabled or not enabled_only}
    if not chosen:
        raise ConfigError(cfg.source, ["no off-site target is configured ([offsite.NAME] tables)"])
    return chosen


def run_cli(args: argparse.Namespace) -> int:
    cfg = load(args.config, dest=getattr(args, "dest", None))
    if args.command == "fetch":
        return _fetch(cfg, args)
    if args.offsite_command == "list":
        return _list(cfg, args)
    return _push(cfg, args)


def _list(cfg, args) -> int:
    out: dict[str, list[str]] = {}
    for name, tcfg in _targets(cfg, [args.target] if args.target else None, enabled_only=False).items():
        target = offsite.create(name, tcfg)
        out[name] = offsite.complete_snapshots(target)   # OffsiteError (unreachable) → exit 2
        if not args.json:
            print(f"{name} ({target.describe()}): {len(out[name])} snapshot(s)")
            for snap in out[name]:
                print(f"  {snap}")
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


def _push(cfg, args) -> int:
    snap = SnapshotStore(cfg.dest).get(args.snapshot)
    failed = 0
    for name, tcfg in _targets(cfg, args.target, enabled_only=True).items():
        target = offsite.create(name, tcfg)
        try:
            res = offsite.push(snap.path, target, tcfg.recipients(), parallel=tcfg.parallel_files)
        except CoderzBackupError as exc:
            failed += 1
            print(f"✗ {name}: {exc}", file=sys.stderr)
            continue
        if res.already_there:
            print(f"✓ {name}: {snap.name} is already on {target.describe()}")
        else:
            print(f"✓ {name}: {snap.name} sent to {target.describe()} ({res.files} files, {res.bytes} bytes, "
                  f"{res.duration_s:.1f}s)")
    return 1 if failed else 0


def _fetch(cfg, args) -> int:
    from pathlib import Path

    dest = Path(args.dest) if args.dest else cfg.dest
    try:
        final, auth = fetch_from(cfg, args.source, args.snapshot, dest, identity=args.identity)
    except VerifyError as exc:   # the copy is there but does not check: refused, nothing kept
        print(f"✗ {exc}", file=sys.stderr)
        return 1
    print(f"✓ {args.snapshot} fetched from {args.source} into {final}: {auth.describe(short=True)}; "
          "every file matches its signed sha256")
    return 0


def fetch_from(cfg, source: str, snapshot: str, dest, *, identity: str | None = None):
    """``fetch`` of ``snapshot`` ("latest" = the target's newest complete one) from target ``source``
    into the store ``dest``: (folder, Authenticity). ConfigError for an unknown target; VerifyError
    when the copy does not check (nothing kept)."""
    from .verify import own_public_key

    target_cfg = target_config(cfg, source)
    target = offsite.create(source, target_cfg)
    if snapshot == "latest":
        names = offsite.complete_snapshots(target)
        if not names:
            raise ConfigError("--from", [f"off-site {source} holds no complete snapshot"])
        snapshot = names[0]
    return offsite.fetch(target, snapshot, dest, own_key=own_public_key(cfg), trusted=cfg.trusted_keys,
                         identities=offsite.identities(source, target_cfg, identity))


def target_config(cfg, name: str):
    if name not in cfg.offsite:
        raise ConfigError("--from", [f"unknown off-site target {name!r}; configured: "
                                     f"{', '.join(cfg.offsite) or 'none'}"])
    return cfg.offsite[name]
