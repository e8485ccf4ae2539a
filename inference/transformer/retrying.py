"""How the transformer waits on a dependency: fleetpulse.retry, backoff capped at ``retry_max_s``, each
retry counted (metric and run summary) and reported; unbounded unless a deadline is given."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import KafkaException
from pymongo.errors import PyMongoError

from fleetpulse.retry import Backoff, retry
from inference.transformer.metrics import RunSummary

T = TypeVar("T")

DEPENDENCY_ERRORS = (PyMongoError, KafkaException)


class Retries:
    def __init__(self, summary: RunSummary, progress: Callable[[str], None], max_delay_s: float, deadline_s: float | None = None):
        self.summary = summary
        self.progress = progress
        self.max_delay_s = max_delay_s
        self.deadline_s = deadline_s  # None: retry until the dependency answers

    def call(self, dependency: str, fn: Callable[[], T], retry_on: tuple[type[BaseException], ...] = DEPENDENCY_ERRORS,
             initial_s: float = 0.2, message: Callable[[BaseException, float], str] | None = None) -> T:
        """``fn()`` until it returns, waiting out the exceptions in ``retry_on``."""
        def report(exc: BaseException, delay: float) -> None:
            self.summary.count_retry(dependency)
            self.progress(message(exc, delay) if message else f"{dependency}: {type(exc).__name__}: {str(exc)[:160]}; retrying in {delay:.1f}s")

        backoff = Backoff(min(initial_s, self.max_delay_s), self.max_delay_s, deadline_s=self.deadline_s)
        return retry(fn, retry_on, backoff, report)
