"""Prefect layer: flows and thin task wrappers around the plain service modules."""

import logging

from ..errors import CoderzBackupError
from ..runlog import ExpectedErrorFilter

ENGINE_EXIT = "Engine execution exited with unexpected exception"


def api_log_handlers() -> list[logging.Handler]:
    """Send our own log records to the Prefect API too (the run's log in the UI)."""
    try:
        from prefect.logging.handlers import APILogHandler

        return [APILogHandler()]
    except Exception:  # noqa: BLE001
        return []


class OutcomeFilter(logging.Filter):
    """Drop the engine's "unexpected exception" record for a run that ended as we decided.

    A flow run executed by a worker ends in ``prefect.engine``, which turns the final state back
    into an exception and logs it with its traceback: a restore we Cancelled (nothing changed)
    logs ``CancelledRun``, a partial backup logs its :class:`RunFailed`. The run's state and our
    own log lines already say what happened; anything else keeps its traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from prefect.exceptions import CancelledRun

        exc = record.exc_info[1] if record.exc_info else None
        return not (record.msg == ENGINE_EXIT and isinstance(exc, (CancelledRun, CoderzBackupError)))


# Prefect's engine logs "task run failed" with the traceback; for our own errors the message is the news.
for _name in ("prefect.task_runs", "prefect.flow_runs"):
    _logger = logging.getLogger(_name)
    for _cls in (OutcomeFilter, ExpectedErrorFilter):
        if not any(isinstance(f, _cls) for f in _logger.filters):
            _logger.addFilter(_cls())
