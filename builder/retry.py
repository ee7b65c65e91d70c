"""Polling with a deadline.

Readiness checks against a booting VM (QMP socket, sshd, units, ports) are all
"try until it works or the deadline passes". Centralising that loop keeps the
timeouts explicit and makes every timeout say *what* was awaited and *why* the
last attempt failed, instead of a bare ``TimeoutError`` after minutes of
waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from builder.errors import AuroraError

T = TypeVar("T")


class RetryTimeout(AuroraError, TimeoutError):
    """The deadline passed before ``fn`` returned a truthy value (one line at the CLI;
    still a TimeoutError for callers that catch that)."""

    def __init__(
        self,
        what: str,
        timeout: float,
        attempts: int,
        last_error: BaseException | None,
    ) -> None:
        self.what = what
        self.timeout = timeout
        self.attempts = attempts
        self.last_error = last_error
        msg = f"timed out after {timeout:g}s ({attempts} attempts) waiting for {what}"
        if last_error is not None:
            msg += f"; last error: {type(last_error).__name__}: {last_error}"
        super().__init__(msg)


def retry(
    fn: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.5,
    what: str,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> T:
    """Call ``fn`` until it returns something truthy, and return that value.

    Exceptions listed in ``retry_on`` count as "not yet" and are remembered
    for the timeout message; any other exception propagates at once, which is
    how callers fail fast (e.g. a unit that entered ``failed``). ``fn`` is
    always tried at least once, even with a zero timeout.
    """
    deadline = time.monotonic() + timeout
    attempts = 0
    last_error: BaseException | None = None
    while True:
        attempts += 1
        try:
            result = fn()
        except retry_on as exc:
            last_error = exc
        else:
            if result:
                return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RetryTimeout(what, timeout, attempts, last_error)
        time.sleep(min(interval, remaining))
