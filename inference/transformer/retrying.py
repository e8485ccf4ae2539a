"""How the transformer waits on a dependency: fleetpulse.retry, backoff capped at ``retry_max_s``, each
retry counted (metric and run summary), reported, and told to the health check; unbounded unless a
deadline is given, and bounded by the stop deadline once a stop is asked for."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import KafkaException
from pymongo.errors import PyMongoError

from fleetpulse.errors import FleetPulseError
from fleetpulse.retry import Backoff, retry
from inference.transformer.health import Health
from inference.transformer.metrics import RunSummary

T = TypeVar("T")

DEPENDENCY_ERRORS = (PyMongoError, KafkaException)


class StopRequested(FleetPulseError):
    """A stop was asked for and its deadline has passed while a dependency was still failing."""


class Retries:
    def __init__(self, summary: RunSummary, progress: Callable[[str], None], max_delay_s: float, deadline_s: float | None = None,
                 health: Health | None = None):
        self.summary = summary
        self.progress = progress
        self.max_delay_s = max_delay_s
        self.deadline_s = deadline_s  # None: retry until the dependency answers
        self.health = health
        self._stop_at: float | None = None
        self._woken = threading.Event()

    def call(self, dependency: str, fn: Callable[[], T], retry_on: tuple[type[BaseException], ...] = DEPENDENCY_ERRORS,
             initial_s: float = 0.2, message: Callable[[BaseException, float], str] | None = None) -> T:
        """``fn()`` until it returns, waiting out the exceptions in ``retry_on``."""
        def report(exc: BaseException, delay: float) -> None:
            self.summary.count_retry(dependency)
            line = message(exc, delay) if message else f"{dependency}: {type(exc).__name__}: {str(exc)[:160]}; retrying in {delay:.1f}s"
            self.progress(line)
            if self.health is not None:
                self.health.retrying(dependency, line)

        backoff = Backoff(min(initial_s, self.max_delay_s), self.max_delay_s, deadline_s=self.deadline_s)
        if self.health is None:
            return retry(fn, retry_on, backoff, report, sleep=lambda delay: self._sleep(dependency, delay))
        self.health.calling(dependency)
        try:
            result = retry(fn, retry_on, backoff, report, sleep=lambda delay: self._sleep(dependency, delay))
        finally:
            self.health.returned(dependency)
        self.health.recovered(dependency)
        return result

    # ---- stop ----------------------------------------------------------------------------------

    def stop_within(self, seconds: float) -> None:
        """From now on every wait ends by ``seconds`` from now: a retry still failing then raises StopRequested."""
        if self._stop_at is None:
            self._stop_at = time.monotonic() + seconds
        self._woken.set()

    @property
    def stopping(self) -> bool:
        return self._stop_at is not None

    def remaining(self) -> float | None:
        """Seconds left before the stop deadline (None: no stop asked for)."""
        return None if self._stop_at is None else self._stop_at - time.monotonic()

    def check_stop(self, waiting_for: str = "a dependency") -> None:
        left = self.remaining()
        if left is not None and left <= 0:
            raise StopRequested(f"stop deadline passed while waiting for {waiting_for}")

    def _sleep(self, dependency: str, delay: float) -> None:
        self.check_stop(dependency)
        left = self.remaining()
        self._woken.wait(delay if left is None else min(delay, left))
