"""``coderz-backup`` / ``python -m coderz_backup``: the CLI, started fast.

For the commands that run a Prefect flow (backup, restore, drill) the Prefect API is chosen
first and, when it is the embedded one, its server process is started before anything else is
imported: it boots (mostly Prefect's own server imports) while this process imports the CLI and
Prefect and checks the config. When the command is done, the process leaves with ``os._exit``
after flushing its output and running its exit handlers: the interpreter's teardown of every
module Prefect loaded (about half a second) is skipped — unless a non-daemon thread still runs.
"""

from __future__ import annotations

import sys

_FLOW_COMMANDS = ("backup", "restore", "drill")


def _runs_a_flow(argv: list[str]) -> bool:
    if any(a in ("-h", "--help", "--version") for a in argv):
        return False
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in _FLOW_COMMANDS:
        return False
    return not (command == "restore" and "--list" in argv)


def _leave(code: int) -> None:
    import atexit
    import logging
    import os
    import threading

    if any(t.is_alive() and not t.daemon and t is not threading.main_thread() for t in threading.enumerate()):
        raise SystemExit(code)   # a thread still working: the normal exit waits for it
    try:
        atexit._run_exitfuncs()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:   # noqa: BLE001 - leave the ordinary way, whatever it was
        raise SystemExit(code) from None
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    early = _runs_a_flow(args)
    if early:
        from . import orchestrator

        orchestrator.start_early()
    try:
        if early:
            import prefect.main  # noqa: F401 - while the embedded server boots (the slow part of a start)
        from .cli import main as cli_main

        code = cli_main(args)
    finally:
        if early:
            orchestrator.stop_early()
    if early and "prefect" in sys.modules:
        _leave(code)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
