"""Command line: ``coderz-backup backup | list | config check``.

Exit codes (``interface.md``): backup 0 all passed · 1 some artifacts failed (snapshot
kept, status partial) · 2 nothing usable (bad config/args, lock held, destination
unusable, crash). list / config check: 0 · 2 bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from typing import Sequence

from . import __version__
from .config import Config, load, secret_problems
from .errors import CoderzBackupError, ConfigError, OrchestratorError
from .report import human_size, render_report

EXIT_OK, EXIT_PARTIAL, EXIT_UNUSABLE = 0, 1, 2

DESCRIPTION = """\
Back up every stateful service of the Coderz Stack into dated snapshots
(<dest>/YYYY-MM-DD_HH-MM-SS/, UTC) through the Prefect flow `coderz-backup`.

Config file: --config, else $CODERZ_BACKUP_CONFIG, else /opt/coderz/backup/coderz-backup.toml
(built-in Coderz Stack defaults when absent). Precedence: flag > environment > file > default.
"""


def _positive_seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1 second")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coderz-backup", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"coderz-backup {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    b = sub.add_parser("backup", help="run flow coderz-backup now and print the report",
                       description="Run flow `coderz-backup` now and print the boxed report. Prefect API: "
                                   "PREFECT_API_URL (environment or Prefect profile), else a Prefect server "
                                   "answering at 127.0.0.1:4200 (CODERZ_BACKUP_LOCAL_API), else an embedded one. Exit 0 all passed, 1 some artifacts "
                                   "failed (snapshot kept, status partial), 2 nothing usable.")
    _common(b)
    b.add_argument("--dest", metavar="D", help="snapshot destination (env CODERZ_BACKUP_DEST; default "
                                               "/opt/coderz/backup/snapshots)")
    b.add_argument("--keep", metavar="N", type=_days, help="keep N days of snapshots, 0 = forever "
                                                           "(env KEEP_DAYS; default 7)")
    for period, what in (("daily", "days"), ("weekly", "ISO weeks"), ("monthly", "months")):
        b.add_argument(f"--keep-{period}", metavar="N", type=_count, dest=f"keep_{period}",
                       help=f"also keep the newest usable snapshot of each of the last N {what} that have one "
                            f"(env KEEP_{period.upper()}; default 0 = unused)")
    b.add_argument("--only", metavar="NAME", action="append",
                   help="back up only this service (config table name); repeatable")
    b.add_argument("--no-offsite", dest="offsite", action="store_false",
                   help="do not copy this snapshot to the [offsite.*] targets")
    b.add_argument("--verbose", "-v", action="store_true", help="also show Prefect's own log lines")

    ls = sub.add_parser("list", help="list snapshots, newest first",
                        description="List snapshots, newest first: name, status, size, artifact counts.")
    _common(ls)
    ls.add_argument("--dest", metavar="D", help="snapshot destination")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(list=True)

    v = sub.add_parser("verify", help="check every artifact of a snapshot",
                       description="Check a snapshot (default latest): first the signature of its manifest "
                                   "(this host's key or trusted_keys), then every artifact's size and sha256 "
                                   "against the manifest, then its format (gzip, pg_dump trailer, RDB CRC-64, "
                                   "tar members). Exit 0 all verified, 1 a check failed, 2 not found / bad input "
                                   "/ not signed by a trusted key.")
    v.add_argument("snapshot", nargs="?", default="latest", metavar="SNAPSHOT",
                   help="snapshot name YYYY-MM-DD_HH-MM-SS or latest (default)")
    _common(v)
    v.add_argument("--dest", metavar="D", help="snapshot destination")
    v.add_argument("--json", action="store_true", help="machine-readable output")
    v.add_argument("--allow-unsigned", action="store_true",
                   help="accept a snapshot without a signature (made before signed manifests), with a warning")
    v.add_argument("--from", dest="source", metavar="TARGET",
                   help="check the copy on this off-site target instead (fetched into a temporary folder; "
                        "its signature must check, unsigned copies are never accepted)")
    v.add_argument("--identity", metavar="FILE", help="age identity for an encrypted copy (a file, env:NAME "
                   "or prefect-secret:NAME; default: the target's identity key)")

    r = sub.add_parser("restore", help="restore a snapshot (asks to confirm first)",
                       description="Run flow `coderz-restore`: check the snapshot's signature (this host's key "
                                   "or trusted_keys), verify it, show the plan, ask the "
                                   "operator to type the snapshot name (or take --yes), back up the current "
                                   "state into <dest>/safety-backups, then restore: containers that must be "
                                   "down (a service's own, its stop_containers) are stopped, the services "
                                   "restored and health-checked, the containers started again. Restore "
                                   "overwrites current data. Exit 0 restored, 1 some services failed, 2 bad input or verification "
                                   "failed (nothing changed), 3 not approved / timed out (nothing changed).")
    r.add_argument("snapshot", nargs="?", default="latest", metavar="SNAPSHOT",
                   help="snapshot name YYYY-MM-DD_HH-MM-SS or latest (default)")
    r.add_argument("--list", action="store_true", help="list the snapshots to choose from, and exit")
    r.add_argument("--from", dest="source", metavar="TARGET",
                   help="restore a copy from this off-site target (disaster recovery): fetched into the "
                        "destination first — signature, every file's sha256, decrypted with --identity — then "
                        "the usual verified, approved restore")
    r.add_argument("--identity", metavar="FILE", help="age identity for an encrypted off-site copy (a file, "
                   "env:NAME or prefect-secret:NAME; default: the target's identity key)")
    _common(r)
    r.add_argument("--dest", metavar="D", help="snapshot destination")
    r.add_argument("--only", metavar="NAME", action="append", help="restore only this service; repeatable (or a,b)")
    r.add_argument("--yes", action="store_true", help="approve without asking (for scripts)")
    r.add_argument("--no-safety-backup", action="store_true",
                   help="do not back up the current state first (no undo)")
    r.add_argument("--allow-unsigned", action="store_true",
                   help="restore a snapshot without a signature (made before signed manifests); warned about in "
                        "the log, the plan and the report")
    r.add_argument("--timeout", metavar="S", type=_positive_seconds, default=3600,
                   help="give up when not approved within S seconds (default 3600)")
    r.add_argument("--verbose", "-v", action="store_true", help="also show Prefect's own log lines")

    k = sub.add_parser("key", help="this host's snapshot signing key")
    ksub = k.add_subparsers(dest="key_command", metavar="SUBCOMMAND")
    ksub.required = True
    ks = ksub.add_parser("show", help="print the public key (for trusted_keys on another host)",
                         description="Print this host's public signing key (ed25519:…), creating the key on first "
                                     "use. Keep a copy: a replacement host lists it in trusted_keys to restore "
                                     "this host's snapshots.")
    _common(ks)

    c = sub.add_parser("config", help="configuration commands")
    csub = c.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    csub.required = True
    chk = csub.add_parser("check", help="validate the config and list every problem",
                          description="Validate the config file and list every problem (exit 0 valid, 2 invalid).")
    _common(chk)

    d = sub.add_parser("drill", help="restore a snapshot into throwaway instances and compare its content",
                       description="Run flow `coderz-drill`: check the snapshot's signature (as restore does), "
                                   "restore each artifact with the service's own restore code into a throwaway "
                                   "instance of its kind on this host (nothing of production in reach), read its "
                                   "content fingerprint back and compare it with the one the manifest recorded; "
                                   "measure how long each restore took. Scratch instances and files are always "
                                   "removed, also when the drill is killed. Exit 0 all drilled artifacts "
                                   "matched, 1 some mismatched or failed (or nothing could be drilled), "
                                   "2 bad input / not signed by a trusted key.")
    d.add_argument("snapshot", nargs="?", default="latest", metavar="SNAPSHOT",
                   help="snapshot name YYYY-MM-DD_HH-MM-SS or latest (default)")
    _common(d)
    d.add_argument("--dest", metavar="D", help="snapshot destination")
    d.add_argument("--only", metavar="NAME", action="append", help="drill only this service; repeatable (or a,b)")
    d.add_argument("--from", dest="source", metavar="TARGET", help="drill the copy on this off-site target "
                   "(fetched into a temporary folder and checked first)")
    d.add_argument("--identity", metavar="FILE", help="age identity for an encrypted off-site copy")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.add_argument("--verbose", "-v", action="store_true", help="also show Prefect's own log lines")

    from . import install as install_cmd
    from . import offsite_cli
    from . import setup as setup_cmd

    offsite_cli.register_cli(sub)
    setup_cmd.register_cli(sub)
    install_cmd.register_cli(sub)
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="F", help="TOML config file (env CODERZ_BACKUP_CONFIG)")


def _days(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if n < 0:
        raise argparse.ArgumentTypeError("must be 0 (keep forever) or more")
    return n


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError("must be 0 (unused) or more")
    return n


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "only", None):  # repeatable, and "a,b" works too
        args.only = [n.strip() for o in args.only for n in o.split(",") if n.strip()]
    try:
        if args.command == "backup":
            return cmd_backup(args)
        if args.command == "list":
            return cmd_list(args)
        if args.command == "config":
            return cmd_config_check(args)
        if args.command == "key":
            return cmd_key_show(args)
        if args.command == "verify":
            return cmd_verify(args)
        if args.command == "restore":
            return cmd_list(args) if args.list else cmd_restore(args)
        if args.command == "drill":
            return cmd_drill(args)
        if args.command in ("offsite", "fetch"):
            from . import offsite_cli

            return offsite_cli.run_cli(args)
        if args.command == "setup":
            from . import setup as setup_cmd

            return setup_cmd.run_cli(args)
        if args.command == "install":
            from . import install as install_cmd

            return install_cmd.run_cli(args)
    except CoderzBackupError as exc:  # ConfigError included: every problem, with the file name
        print(f"✗ {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    return EXIT_UNUSABLE  # pragma: no cover


# -- config check ---------------------------------------------------------------------
def cmd_config_check(args) -> int:
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        print(f"✗ {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    problems = secret_problems(cfg, offsite=True)
    if getattr(cfg, "offsite", None):
        from .offsite import setup_problems

        problems += setup_problems(cfg)
    if problems:
        print(f"✗ {ConfigError(cfg.source, problems)}", file=sys.stderr)
        return EXIT_UNUSABLE
    enabled = cfg.enabled_services()
    gfs = ", ".join(f"{n} {k}" for k, n in (("daily", cfg.keep_daily), ("weekly", cfg.keep_weekly),
                                            ("monthly", cfg.keep_monthly)) if n)
    print(f"✓ {cfg.source}: valid — dest {cfg.dest}, keep {cfg.keep_days} days{' + ' + gfs if gfs else ''}, "
          f"{len(enabled)} service(s): {', '.join(enabled)}")
    return EXIT_OK


# -- key show -------------------------------------------------------------------------
def cmd_key_show(args) -> int:
    from .signing import load_signer

    cfg = load(args.config)
    created = not cfg.signing_key.startswith("prefect-secret:") and not os.path.exists(cfg.signing_key)
    signer = load_signer(cfg.signing_key)
    print(signer.public_key)
    print(f"({'created now: ' if created else ''}private key {signer.where}; list the line above in "
          "trusted_keys of a host that must restore this host's snapshots)", file=sys.stderr)
    return EXIT_OK


# -- list -----------------------------------------------------------------------------
def cmd_list(args) -> int:
    from .snapshot import SnapshotStore

    cfg = load(args.config, dest=args.dest)
    store = SnapshotStore(cfg.dest)
    as_json = getattr(args, "json", False)
    if not store.dest.is_dir():
        print(f"✗ destination {store.dest} does not exist", file=sys.stderr)
        return EXIT_UNUSABLE
    from .drill import read_record

    latest = store.latest_name()
    rows = []
    for s in store.list():
        m = s.manifest or {}
        d = read_record(s.path)
        rows.append({"name": s.name, "status": s.status, "latest": s.name == latest,
                     "total_bytes": m.get("total_bytes"), "passed": m.get("passed"),
                     "failed": m.get("failed"), "skipped": m.get("skipped"), "path": str(s.path),
                     "drilled": None if d is None else {
                         "at": d.get("drilled_at"), "ok": d.get("ok"), "restore_s": d.get("restore_s"),
                         "matched": d.get("matched"), "mismatched": d.get("mismatched"), "failed": d.get("failed")}})
    if as_json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print(f"no snapshots in {store.dest}")
        return EXIT_OK
    print(f"{'SNAPSHOT':<21} {'STATUS':<8} {'SIZE':>6}  {'PASSED':>6} {'FAILED':>6} {'SKIPPED':>7}  {'DRILLED':<28}")
    for r in rows:
        size = human_size(r["total_bytes"]) if r["total_bytes"] is not None else "?"
        mark = "  ← latest" if r["latest"] else ""
        d = r["drilled"]
        drilled = "—" if d is None else \
            f"{(d['at'] or '?')[:10]} {'ok' if d['ok'] else 'FAILED'} {d['restore_s'] or 0:.1f}s"
        print(f"{r['name']:<21} {r['status']:<8} {size:>6}  {_n(r['passed']):>6} {_n(r['failed']):>6} "
              f"{_n(r['skipped']):>7}  {drilled:<28}".rstrip() + mark)
    return EXIT_OK


def _n(v) -> str:
    return "?" if v is None else str(v)


# -- backup ---------------------------------------------------------------------------
class _Progress:
    """Live progress on a terminal (stderr): one line per finished service."""

    def __init__(self, live: bool):
        self.live = live
        self.summary: dict | None = None
        self.total = 0
        self.done = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, event: str, data: dict) -> None:
        if event == "finished":
            self.summary = data["summary"]
            return
        if not self.live:
            return
        with self._lock:
            if event == "started":
                self.total = len(data["services"])
                print(f"  backing up {self.total} service(s) into {data['snapshot']} …", file=sys.stderr)
            elif event == "attempt" and data["attempt"] > 1:
                print(f"  ↻ {data['name']}: retry, attempt {data['attempt']}", file=sys.stderr)
            elif event == "done":
                self.done += 1
                for r in data["results"]:
                    mark = {"ok": "✓", "failed": "✗"}.get(r.status, "-")
                    size = f" {human_size(r.bytes)}" if r.status == "ok" else ""
                    print(f"  [{self.done}/{self.total}] {mark} {r.path}{size} in {r.duration_s:.1f}s",
                          file=sys.stderr)


@contextlib.contextmanager
def _prefect_session(verbose: bool):
    """The Prefect API for this command (bounded: see coderz_backup.orchestrator), then Prefect."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from .orchestrator import prefect_api

    with prefect_api():
        import logging

        import prefect.main  # noqa: F401 - sets up Prefect's logging, adjusted below

        if not verbose:
            for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", ""):
                for h in logging.getLogger(name).handlers:
                    if type(h).__name__ == "PrefectConsoleHandler":
                        h.setLevel(logging.WARNING)
        import prefect.settings
        from prefect.settings import temporary_settings

        try:
            # No flow-run heartbeats from a CLI run: they only feed Prefect's crashed-run detection,
            # which a CLI run does itself (its 🔴 mail, exit 2), and the heartbeat thread holds every
            # run's end for up to a second. Deployment runs keep Prefect's setting.
            with temporary_settings(updates={prefect.settings.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                yield
        finally:  # ship the last log lines and events while the API is still there
            _drain_prefect()


def _drain_prefect() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=10)


def _mail_orchestrator_down(cfg: Config, reason: str) -> None:
    """The 🔴 mail for a run whose flow could not start: sent here, without Prefect's API."""
    import datetime as dt
    import logging

    from . import mail, notify

    if cfg.email is None:
        return
    log = logging.getLogger("coderz_backup.cli")
    if cfg.email.block:
        print("✗ the failure mail cannot be sent: [email] uses a saved block, and loading it needs the "
              "Prefect API", file=sys.stderr)
        return
    subject, html, text = notify.crash_bodies(dt.datetime.now(dt.timezone.utc), reason, dest=str(cfg.dest))
    sent = mail.send_with_retries(cfg.email, subject, html, text, log)
    print(f"Mail: {'sent: ' + subject if sent else 'failed (see above)'}", file=sys.stderr)


def _monitor_orchestrator_down(cfg: Config, reason: str) -> None:
    """[monitor] for a run whose flow could not start: /fail ping (no run id) and status-2 metrics."""
    from .monitor import RunMonitor

    watch = RunMonitor(cfg.monitor, None, cfg.dest)
    if watch.active:
        watch.failed(f"the backup flow could not start: {reason}")
        for note in watch.notes:
            print(f"Monitor: {note}", file=sys.stderr)


def cmd_backup(args) -> int:
    gfs = {k: getattr(args, k) for k in ("keep_daily", "keep_weekly", "keep_monthly")}
    cfg: Config = load(args.config, dest=args.dest, keep=args.keep, **gfs)  # fail fast on bad config
    services = cfg.enabled_services(args.only)  # unknown --only names → ConfigError, exit 2
    missing = secret_problems(cfg, services)
    if missing:   # before Prefect starts: a backup that cannot log in is not worth 20 s of start-up
        raise ConfigError(cfg.source, missing)
    try:
        with _prefect_session(args.verbose):
            from .flows.backup import add_listener, coderz_backup, remove_listener

            progress = _Progress(live=sys.stderr.isatty())
            add_listener(progress)
            try:
                state = coderz_backup(dest=args.dest, keep=args.keep, only=args.only, config=args.config,
                                      offsite=args.offsite, return_state=True, **gfs)
            finally:
                remove_listener(progress)
    except OrchestratorError as exc:
        print(f"✗ backup did not run: {exc}", file=sys.stderr)
        _mail_orchestrator_down(cfg, str(exc))
        _monitor_orchestrator_down(cfg, str(exc))
        return EXIT_UNUSABLE
    if progress.summary is None:
        err = state.result(raise_on_failure=False) if state.is_failed() or state.is_crashed() else None
        msg = str(err) if isinstance(err, BaseException) else (state.message or state.name)
        print(f"✗ backup did not run: {msg}", file=sys.stderr)
        return EXIT_UNUSABLE
    s = progress.summary
    print(render_report(s["manifest"], s.get("offsite") or []))
    print(f"Snapshot: {s['path']}")
    if s["deleted"]:
        print(f"Rotation: deleted {', '.join(s['deleted'])}")
    if s.get("mail") and s["mail"] != "not configured":
        print(f"Mail: {s['mail']}")
    for note in s.get("monitor") or []:   # [monitor]: ping warnings, where the metrics went
        print(f"Monitor: {note}")
    if s["status"] == "ok" and any(r["status"] == "failed" for r in s.get("offsite") or []):
        return EXIT_PARTIAL   # the local snapshot is fine, a copy of it is missing
    return {"ok": EXIT_OK, "partial": EXIT_PARTIAL}.get(s["status"], EXIT_UNUSABLE)


# -- verify -----------------------------------------------------------------------------
def cmd_verify(args) -> int:
    from .snapshot import SnapshotStore
    from .verify import authenticate_snapshot, verify_snapshot

    cfg = load(args.config, dest=args.dest)
    if args.source:   # an off-site copy: fetched into a private folder, checked there, removed after
        return _verify_offsite(cfg, args)
    snap = SnapshotStore(cfg.dest).get(args.snapshot)
    auth = authenticate_snapshot(snap, cfg, allow_unsigned=args.allow_unsigned)  # refused → exit 2
    return _print_checks(args, snap, auth, verify_snapshot(snap, cfg, authenticity=auth))


def _verify_offsite(cfg, args) -> int:
    import tempfile
    from pathlib import Path

    from . import offsite
    from .errors import VerifyError
    from .offsite_cli import fetch_from, target_config
    from .snapshot import SnapshotStore
    from .verify import authenticate_snapshot, verify_snapshot

    target = offsite.create(args.source, target_config(cfg, args.source))
    with tempfile.TemporaryDirectory(prefix="coderz-verify-") as tmp:
        try:
            folder, _ = fetch_from(cfg, args.source, args.snapshot, Path(tmp), identity=args.identity)
        except VerifyError as exc:   # signature or a file's sha256 refused
            print(f"✗ {exc}", file=sys.stderr)
            return EXIT_PARTIAL
        snap = SnapshotStore(Path(tmp)).get(folder.name)
        auth = authenticate_snapshot(snap, cfg)
        return _print_checks(args, snap, auth, verify_snapshot(snap, cfg, authenticity=auth),
                             where=f"off-site {args.source} ({target.describe()})")


def _print_checks(args, snap, auth, checks, where: str | None = None) -> int:
    if args.json:
        print(json.dumps({"snapshot": snap.name, "ok": all(c.ok for c in checks),
                          "signed": auth.signed, "signing_key": auth.key,
                          "artifacts": [c.as_dict() for c in checks]}, indent=2))
    else:
        print(f"Snapshot {snap.name} ({snap.status}), {where or snap.path}")
        print(f"{'✓' if auth.signed else '⚠'} manifest.json — {auth.describe()}")
        for c in checks:
            print(f"{'✓' if c.ok else '✗'} {c.path} — {c.detail}")
        bad = sum(not c.ok for c in checks)
        print(f"{len(checks) - bad} verified, {bad} failed")
    return EXIT_OK if all(c.ok for c in checks) else EXIT_PARTIAL


# -- drill ------------------------------------------------------------------------------
def cmd_drill(args) -> int:
    from .snapshot import SnapshotStore
    from .verify import authenticate_snapshot

    cfg = load(args.config, dest=args.dest)
    if args.only:
        unknown = [n for n in args.only if n not in cfg.services]
        if unknown:
            raise ConfigError("--only", [f"unknown service {n!r}; configured: {', '.join(cfg.services)}"
                                         for n in unknown])
    if args.source:
        from .offsite_cli import target_config

        target_config(cfg, args.source)   # unknown target: exit 2 before anything starts
    else:
        snap = SnapshotStore(cfg.dest).get(args.snapshot)   # not found: exit 2
        authenticate_snapshot(snap, cfg)                    # not trusted: exit 2
        args.snapshot = snap.name
    box: dict = {}

    def listener(event: str, data: dict) -> None:
        if event == "drill-finished":
            box["summary"] = data["summary"]
        elif event == "drill-result" and not args.json:
            print(f"  {data['service']}: {data['status']}", file=sys.stderr, flush=True)

    try:
        with _prefect_session(args.verbose):
            from .flows.backup import add_listener, remove_listener
            from .flows.drill import coderz_drill

            add_listener(listener)
            try:
                state = coderz_drill(snapshot=args.snapshot, only=args.only, config=args.config, dest=args.dest,
                                     source=args.source, identity=args.identity, return_state=True)
            finally:
                remove_listener(listener)
    except OrchestratorError as exc:
        print(f"✗ drill did not run: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    s = box.get("summary")
    if s is None:
        err = state.result(raise_on_failure=False)
        msg = str(err) if isinstance(err, BaseException) else (state.message or state.name)
        print(f"✗ drill did not run: {msg}", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.json:
        print(json.dumps({k: v for k, v in s.items() if k != "report"}, indent=2))
    else:
        print(s["report"])
        if s.get("mail") and s["mail"] != "not configured":
            print(f"Mail: {s['mail']}")
    return EXIT_OK if s["ok"] else EXIT_PARTIAL


# -- restore ----------------------------------------------------------------------------
EXIT_NOT_APPROVED = 3


def cmd_restore(args) -> int:
    from .snapshot import SnapshotStore

    cfg = load(args.config, dest=args.dest)
    if args.source:
        args.snapshot = _fetch_for_restore(cfg, args)   # refused copy: exit 2, nothing kept, nothing changed
    snap = SnapshotStore(cfg.dest).get(args.snapshot)  # bad names refused before anything else
    from .flows.restore import select_entries
    from .verify import authenticate_snapshot

    authenticate_snapshot(snap, cfg, allow_unsigned=args.allow_unsigned)  # not trusted: exit 2, asked nothing

    select_entries(cfg, snap, args.only)   # bad --only, no manifest, nothing to restore: exit 2, asked nothing
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if not args.yes and not interactive:
        print("✗ restore needs a confirmation: run it on a terminal to type the snapshot name, or pass --yes. "
              "Nothing was changed.", file=sys.stderr)
        return EXIT_NOT_APPROVED
    with _prefect_session(args.verbose):   # OrchestratorError: exit 2, nothing changed
        return _restore_flow(args, snap)


def _fetch_for_restore(cfg, args) -> str:
    """``restore --from``: bring the off-site copy into the destination (or find it already there,
    the very same signed snapshot) and return its name; the restore then runs on it as usual."""
    from . import offsite
    from .errors import VerifyError
    from .offsite_cli import fetch_from, target_config
    from .signing import SIGNATURE_FILE
    from .snapshot import SnapshotStore

    target = offsite.create(args.source, target_config(cfg, args.source))
    name = args.snapshot
    if name == "latest":
        names = offsite.complete_snapshots(target)
        if not names:
            raise ConfigError("--from", [f"off-site {args.source} holds no complete snapshot"])
        name = names[0]
    local = SnapshotStore(cfg.dest).dest / name
    if local.exists():
        with target.open(f"{name}/{SIGNATURE_FILE}") as fh:
            same = (local / SIGNATURE_FILE).is_file() and fh.read(64 * 1024 + 1) == (local / SIGNATURE_FILE).read_bytes()
        if not same:
            raise ConfigError("--from", [f"{local} exists and is not the copy on {args.source}; move it away or "
                                         "restore it without --from"])
        print(f"{name} from {args.source} is already in {cfg.dest} (the same signed snapshot); restoring that copy")
        return name
    try:
        folder, auth = fetch_from(cfg, args.source, name, cfg.dest, identity=args.identity)
    except VerifyError as exc:
        raise VerifyError(f"{exc}; nothing was changed") from None
    print(f"✓ {name} fetched from {args.source} into {folder}: {auth.describe(short=True)}; every file matches "
          "its signed sha256")
    return name


def _restore_flow(args, snap) -> int:
    from .flows.backup import add_listener, remove_listener
    from .flows.restore import coderz_restore

    events: dict = {}
    plan_ready = threading.Event()

    def listener(event: str, data: dict) -> None:
        if event == "restore-plan":
            events["plan"] = data
            plan_ready.set()
        elif event == "restore-refused":
            events["refused"] = data["reason"]
        elif event == "restore-finished":
            events["summary"] = data["summary"]

    add_listener(listener)
    box: dict = {}

    def _run() -> None:
        try:
            box["state"] = coderz_restore(snapshot=snap.name, only=args.only, config=args.config, dest=args.dest,
                                          safety_backup=not args.no_safety_backup,
                                          approval_timeout_s=args.timeout, auto_approve=args.yes,
                                          allow_unsigned=args.allow_unsigned, return_state=True)
        finally:
            plan_ready.set()

    worker = threading.Thread(target=_run, name="coderz-restore", daemon=True)
    worker.start()
    try:
        plan_ready.wait()
        if not args.yes and "plan" in events and worker.is_alive():
            _ask_operator(events["plan"], worker)
        worker.join()
    finally:
        remove_listener(listener)
    state = box.get("state")
    if state is None:
        print("✗ restore did not run", file=sys.stderr)
        return EXIT_UNUSABLE
    if "refused" in events or state.is_cancelled():
        print(f"✗ {events.get('refused') or state.message}", file=sys.stderr)
        return EXIT_NOT_APPROVED
    if "summary" not in events:
        err = state.result(raise_on_failure=False)
        msg = str(err) if isinstance(err, BaseException) else (state.message or state.name)
        print(f"✗ restore did not run: {msg}", file=sys.stderr)
        return EXIT_UNUSABLE
    print(events["summary"]["report"])
    return EXIT_OK if state.is_completed() else EXIT_PARTIAL


def _ask_operator(plan: dict, worker: threading.Thread) -> None:
    """Show the plan, read the typed name, answer the paused flow run (same path as the UI form).

    Never waits longer than the flow does: while the prompt is open the run's own approval
    timeout keeps counting, and once the flow has ended (timed out, failed) the prompt is
    dropped instead of answering a run that no longer waits.
    """
    import select

    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectException
    from prefect.flow_runs import resume_flow_run

    print(plan["plan"])
    run_id = plan["flow_run_id"]
    with get_client(sync_client=True) as client:
        while worker.is_alive() and not client.read_flow_run(run_id).state.is_paused():
            time.sleep(0.2)
    if not worker.is_alive():
        return
    print(f"\nType the snapshot name ({plan['snapshot']}) to restore it, anything else to cancel: ",
          end="", flush=True)
    typed = None
    try:
        while worker.is_alive():
            ready, _, _ = select.select([sys.stdin], [], [], 0.5)
            if ready:
                typed = sys.stdin.readline()
                break
    except KeyboardInterrupt:
        typed = ""
    if typed is None:   # the run stopped waiting (approval timed out): nothing to answer
        print()
        return
    typed = typed.strip()
    try:
        resume_flow_run(run_id, run_input={"approve": typed == plan["snapshot"], "snapshot": typed})
    except PrefectException as exc:   # e.g. it timed out just now: the run's own outcome is reported
        print(f"\n(the restore run no longer waits for an answer: {exc})", file=sys.stderr)
