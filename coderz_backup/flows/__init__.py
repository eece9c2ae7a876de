"""Prefect layer: flows and thin task wrappers around the plain service modules."""

import logging

from ..runlog import ExpectedErrorFilter

# Prefect's engine logs "task run failed" with the traceback; for our own errors the message is the news.
for _name in ("prefect.task_runs", "prefect.flow_runs"):
    _logger = logging.getLogger(_name)
    if not any(isinstance(f, ExpectedErrorFilter) for f in _logger.filters):
        _logger.addFilter(ExpectedErrorFilter())
