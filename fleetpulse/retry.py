"""One retry rule for every loop that waits on a dependency: exponential backoff, capped, with an
optional deadline after which the caller gives up instead of retrying forever."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Backoff:
    """Delays ``initial``, x``factor`` each attempt, never above ``maximum``; ``deadline_s`` bounds the
    whole wait (None = no bound). ``reset()`` after a success starts the next outage from ``initial``."""

    def __init__(self, initial: float = 0.2, maximum: float = 5.0, factor: float = 2.0, deadline_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        if initial <= 0 or maximum < initial or factor < 1:
            raise ValueError("backoff needs 0 < initial <= maximum and factor >= 1")
        self.initial, self.maximum, self.factor, self.deadline_s = initial, maximum, factor, deadline_s
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        self._next = self.initial
        self.attempts = 0
        self._started = self._clock()

    def next_delay(self) -> float:
        """The delay to wait before the next attempt (and count one attempt)."""
        delay = self._next
        self._next = min(self._next * self.factor, self.maximum)
        self.attempts += 1
        return delay

    def expired(self) -> bool:
        """True once the deadline (if any) has passed since the last reset."""
        return self.deadline_s is not None and self._clock() - self._started >= self.deadline_s


def retry(
    fn: Callable[[], T],
    retry_on: tuple[type[BaseException], ...],
    backoff: Backoff | None = None,
    on_retry: Callable[[BaseException, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` until it returns. On an exception in ``retry_on``, call ``on_retry(exc, delay)`` and
    sleep; once the backoff's deadline has passed, re-raise the last exception instead."""
    backoff = backoff or Backoff()
    while True:
        try:
            return fn()
        except retry_on as exc:
            if backoff.expired():
                raise
            delay = backoff.next_delay()
            if on_retry is not None:
                on_retry(exc, delay)
            sleep(delay)
