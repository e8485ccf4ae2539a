"""The one retry rule: exponential, capped, bounded by a deadline when one is given."""

from __future__ import annotations

import pytest

from fleetpulse.retry import Backoff, retry


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_delays_double_up_to_the_cap_and_reset_starts_over():
    b = Backoff(initial=0.2, maximum=1.0)
    assert [b.next_delay() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    b.reset()
    assert b.next_delay() == 0.2 and b.attempts == 1


def test_retry_returns_the_first_success_and_reports_each_failure():
    clock, seen = FakeClock(), []
    outcomes = iter([ConnectionError("a"), ConnectionError("b"), "ok"])

    def flaky():
        out = next(outcomes)
        if isinstance(out, Exception):
            raise out
        return out

    result = retry(flaky, (ConnectionError,), Backoff(clock=clock), on_retry=lambda e, d: seen.append((str(e), d)), sleep=clock.sleep)
    assert result == "ok"
    assert seen == [("a", 0.2), ("b", 0.4)]
    assert clock.now == pytest.approx(0.6)


def test_retry_gives_up_after_the_deadline_with_the_last_error():
    clock = FakeClock()

    def down():
        raise TimeoutError(f"down at {clock.now:.1f}")

    with pytest.raises(TimeoutError):
        retry(down, (TimeoutError,), Backoff(initial=1.0, maximum=1.0, deadline_s=3.0, clock=clock), sleep=clock.sleep)
    assert clock.now == pytest.approx(3.0)


def test_errors_outside_retry_on_are_not_retried():
    calls = []

    def broken():
        calls.append(1)
        raise ValueError("bad input is not an outage")

    with pytest.raises(ValueError):
        retry(broken, (ConnectionError,), sleep=lambda s: None)
    assert calls == [1]
