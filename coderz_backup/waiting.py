"""The one "wait until it answers, with a deadline" loop.

:func:`wait_until` calls a probe until it succeeds or the deadline passes. It is used for
servers coming up (the embedded Prefect API, the sandbox's servers), services coming back
after a restore (health checks) and services or processes going away (a stop before a
data dir is replaced). What a failed try means, and the error for the deadline, stay with
the caller: the probe raises one of ``retry`` (the reason kept for the error) or returns a
falsy value; any other exception ends the wait at once.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

__all__ = ["wait_until"]

T = TypeVar("T")


def wait_until(probe: Callable[[], T], *, timeout: float, interval: float,
               retry: type[BaseException] | tuple[type[BaseException], ...] = (),
               error: Callable[[BaseException | None], BaseException] | None = None) -> T:
    """The first truthy result of ``probe()``, tried every ``interval`` seconds for ``timeout`` seconds.

    A try fails when the probe raises one of ``retry`` or returns a falsy value. Once a try
    fails after the deadline, ``error(last)`` is raised — ``last`` is the exception of the last
    failed try, ``None`` when it returned a falsy value — or :class:`TimeoutError` without
    ``error``.
    """
    deadline = time.monotonic() + timeout
    while True:
        last: BaseException | None = None
        try:
            result = probe()
        except retry as exc:
            last = exc
        else:
            if result:
                return result
        if time.monotonic() > deadline:
            if error is None:
                raise TimeoutError(f"not ready within {timeout:g}s") from None
            raise error(last) from None
        time.sleep(interval)
