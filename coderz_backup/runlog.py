"""The run log: ``backup.log`` in the snapshot, UTC timestamps, secrets redacted.

Every secret value resolved during a run is registered with :func:`redact`; a filter
on every handler this module attaches replaces it with ``***`` — a last line of
defence, since secrets are never put into messages on purpose.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Iterator

__all__ = ["redact", "ExpectedErrorFilter", "RedactingFilter", "run_log", "LOGGER_NAMES"]

LOGGER_NAMES = ("coderz_backup", "prefect.flow_runs", "prefect.task_runs")

_secrets: set[str] = set()
_lock = threading.Lock()


def redact(value: str | None) -> None:
    """Register a secret value so log handlers mask it."""
    if value and len(value) >= 3:
        with _lock:
            _secrets.add(value)


def scrub(text: str) -> str:
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, "***")
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = scrub(msg)
        if clean != msg or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            text = scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info, record.exc_text = None, text
        return True


class ExpectedErrorFilter(logging.Filter):
    """Drop the traceback from a record about one of our own errors.

    A CoderzBackupError's message already says what failed and what to do; the traceback
    Prefect's engine attaches to "task run failed" records is noise to an operator at 03:00.
    Any other exception keeps its traceback (that one is a bug to report).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from .errors import CoderzBackupError

        if record.exc_info and isinstance(record.exc_info[1], CoderzBackupError):
            record.exc_info, record.exc_text = None, None
        return True


class UTCFormatter(logging.Formatter):
    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__("%(asctime)sZ %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")


@contextlib.contextmanager
def run_log(path: Path, *, extra_handlers: list[logging.Handler] = ()) -> Iterator[logging.Handler]:
    """Send our loggers (and Prefect's run loggers) to ``path`` for the block."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    stream = os.fdopen(fd, "a", encoding="utf-8")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(UTCFormatter())
    handler.setLevel(logging.INFO)
    handler.addFilter(RedactingFilter())
    handlers = [handler, *extra_handlers]
    for h in extra_handlers:
        h.addFilter(RedactingFilter())
    ours = logging.getLogger("coderz_backup")
    old_level = ours.level
    if ours.level == logging.NOTSET or ours.level > logging.INFO:
        ours.setLevel(logging.INFO)
    added: list[tuple[logging.Logger, logging.Handler]] = []
    for name in LOGGER_NAMES:
        logger = logging.getLogger(name)
        for h in handlers:
            if not (name == "coderz_backup" or h is handler):
                continue
            if h is not handler and any(type(x) is type(h) for x in logger.handlers):
                continue  # an enclosing run log already sends there (a safety backup inside a restore)
            logger.addHandler(h)
            added.append((logger, h))
    try:
        yield handler
    finally:
        for logger, h in added:
            logger.removeHandler(h)
        ours.setLevel(old_level)
        handler.close()
        stream.close()
