"""Command line: ``coderz-backup backup | list | config check``.

Exit codes (``interface.md``): backup 0 all passed · 1 some artifacts failed (snapshot
kept, status partial) · 2 nothing usable (bad config/args, lock held, destination
unusable, crash). list / config check: 0 · 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Sequence

from . import __version__
from .config import Config, load, secret_problems
from .errors import CoderzBackupError, ConfigError
from .report import human_size, render_report

EXIT_OK, EXIT_PARTIAL, EXIT_UNUSABLE = 0, 1, 2

DESCRIPTION = """\
Back up every stateful service of the Coderz Stack into dated snapshots
(<dest>/YYYY-MM-DD_HH-MM-SS/, UTC) through the Prefect flow `coderz-backup`.

Config file: --config, else $CODERZ_BACKUP_CONFIG, else /opt/coderz/backup/coderz-backup.toml
(built-in Coderz Stack defaults when absent). Precedence: flag > environment > file > default.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coderz-backup", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"coderz-backup {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    b = sub.add_parser("backup", help="run flow coderz-backup now and print the report",
                       description="Run flow `coderz-backup` now (embedded Prefect API unless PREFECT_API_URL "
                                   "is set) and print the boxed report. Exit 0 all passed, 1 some artifacts "
                                   "failed (snapshot kept, status partial), 2 nothing usable.")
    _common(b)
    b.add_argument("--dest", metavar="D", help="snapshot destination (env CODERZ_BACKUP_DEST; default "
                                               "/opt/coderz/backup/snapshots)")
    b.add_argument("--keep", metavar="N", type=_days, help="keep N days of snapshots, 0 = forever "
                                                           "(env KEEP_DAYS; default 7)")
    b.add_argument("--only", metavar="NAME", action="append",
                   help="back up only this service (config table name); repeatable")
    b.add_argument("--verbose", "-v", action="store_true", help="also show Prefect's own log lines")

    ls = sub.add_parser("list", help="list snapshots, newest first",
                        description="List snapshots, newest first: name, status, size, artifact counts.")
    _common(ls)
    ls.add_argument("--dest", metavar="D", help="snapshot destination")
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    c = sub.add_parser("config", help="configuration commands")
    csub = c.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    csub.required = True
    chk = csub.add_parser("check", help="validate the config and list every problem",
                          description="Validate the config file and list every problem (exit 0 valid, 2 invalid).")
    _common(chk)

    from . import setup as setup_cmd

    setup_cmd.register_cli(sub)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "backup":
            return cmd_backup(args)
        if args.command == "list":
            return cmd_list(args)
        if args.command == "config":
            return cmd_config_check(args)
        if args.command == "setup":
            from . import setup as setup_cmd

            return setup_cmd.run_cli(args)
    except ConfigError as exc:
        print(f"✗ {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except CoderzBackupError as exc:
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
    problems = secret_problems(cfg)
    if problems:
        print(f"✗ {ConfigError(cfg.source, problems)}", file=sys.stderr)
        return EXIT_UNUSABLE
    enabled = cfg.enabled_services()
    print(f"✓ {cfg.source}: valid — dest {cfg.dest}, keep {cfg.keep_days} days, "
          f"{len(enabled)} service(s): {', '.join(enabled)}")
    return EXIT_OK


# -- list -----------------------------------------------------------------------------
def cmd_list(args) -> int:
    from .snapshot import SnapshotStore

    cfg = load(args.config, dest=args.dest)
    store = SnapshotStore(cfg.dest)
    if not store.dest.is_dir():
        print(f"✗ destination {store.dest} does not exist", file=sys.stderr)
        return EXIT_UNUSABLE
    latest = store.latest_name()
    rows = []
    for s in store.list():
        m = s.manifest or {}
        rows.append({"name": s.name, "status": s.status, "latest": s.name == latest,
                     "total_bytes": m.get("total_bytes"), "passed": m.get("passed"),
                     "failed": m.get("failed"), "skipped": m.get("skipped"), "path": str(s.path)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print(f"no snapshots in {store.dest}")
        return EXIT_OK
    print(f"{'SNAPSHOT':<21} {'STATUS':<8} {'SIZE':>6}  {'PASSED':>6} {'FAILED':>6} {'SKIPPED':>7}")
    for r in rows:
        size = human_size(r["total_bytes"]) if r["total_bytes"] is not None else "?"
        mark = "  ← latest" if r["latest"] else ""
        print(f"{r['name']:<21} {r['status']:<8} {size:>6}  {_n(r['passed']):>6} {_n(r['failed']):>6} "
              f"{_n(r['skipped']):>7}{mark}")
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


def _prepare_prefect(verbose: bool) -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    import logging

    import prefect.main  # noqa: F401 - sets up Prefect's logging, adjusted below
    from prefect.client.orchestration import get_client

    # The embedded API starts on first use; start it from this thread before tasks run
    # in worker threads (a race there can orphan a server process).
    with get_client(sync_client=True) as client:
        client.hello()
    if not verbose:
        for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", ""):
            for h in logging.getLogger(name).handlers:
                if type(h).__name__ == "PrefectConsoleHandler":
                    h.setLevel(logging.WARNING)


def cmd_backup(args) -> int:
    cfg: Config = load(args.config, dest=args.dest, keep=args.keep)  # fail fast on bad config
    cfg.enabled_services(args.only)  # unknown --only names → ConfigError, exit 2
    _prepare_prefect(args.verbose)
    from .flows.backup import add_listener, coderz_backup, remove_listener

    progress = _Progress(live=sys.stderr.isatty())
    add_listener(progress)
    try:
        state = coderz_backup(dest=args.dest, keep=args.keep, only=args.only, config=args.config,
                              return_state=True)
    finally:
        remove_listener(progress)
    if progress.summary is None:
        err = state.result(raise_on_failure=False) if state.is_failed() or state.is_crashed() else None
        msg = str(err) if isinstance(err, BaseException) else (state.message or state.name)
        print(f"✗ backup did not run: {msg}", file=sys.stderr)
        return EXIT_UNUSABLE
    s = progress.summary
    print(render_report(s["manifest"]))
    print(f"Snapshot: {s['path']}")
    if s["deleted"]:
        print(f"Rotation: deleted {', '.join(s['deleted'])}")
    if s.get("mail") and s["mail"] != "not configured":
        print(f"Mail: {s['mail']}")
    return {"ok": EXIT_OK, "partial": EXIT_PARTIAL}.get(s["status"], EXIT_UNUSABLE)
