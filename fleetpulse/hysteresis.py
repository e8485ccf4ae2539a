"""Per-car alert hysteresis: turn per-reading anomaly flags into a status ok / warning / failing.

One rule for the whole product: the training pipeline's evaluate step calibrates the threshold and
reports its metrics through it, and the serving transformer applies it to the live stream, so the
figures a model is published with are the figures the alerts it raises will have.

Rule (per car, in stream order): keep the flags of the last ``n`` readings; ``k_warning`` of them over
threshold raises ok -> warning, ``k_failing`` raises to failing (from ok or warning); ``m``
consecutive clean readings clear back to ok and forget the window. One noisy reading never alerts,
and a failing car does not flap between failing and warning while it recovers.

State is three numpy arrays indexed by car. A batch is applied vectorised for the cars that cannot
change status (status ok and no reading over threshold in the batch: the common case); only the
other cars' readings go through the per-reading loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OK, WARNING, FAILING = 0, 1, 2
STATUS_NAMES = ("ok", "warning", "failing")


@dataclass(frozen=True)
class Rule:
    n: int = 10
    k_warning: int = 3
    k_failing: int = 6
    m: int = 5

    def __post_init__(self):
        if not (1 <= self.k_warning <= self.k_failing <= self.n <= 62 and self.m >= 1):
            raise ValueError(f"hysteresis needs 1 <= k_warning <= k_failing <= n <= 62 and m >= 1, got {self}")


def step(rule: Rule, status: int, bits: int, clean: int, over: bool) -> tuple[int, int, int]:
    """One reading: (status, window bits, clean streak) -> the same after the reading."""
    bits = ((bits << 1) | int(over)) & ((1 << rule.n) - 1)
    clean = 0 if over else clean + 1
    if status != OK and clean >= rule.m:
        return OK, 0, clean
    count = bits.bit_count()
    if count >= rule.k_failing:
        status = FAILING
    elif count >= rule.k_warning and status == OK:
        status = WARNING
    return status, bits, clean


class Hysteresis:
    """Status, window bits and clean streak for every car index."""

    def __init__(self, rule: Rule, size: int = 1024):
        self.rule = rule
        self.status = np.zeros(size, np.int8)
        self.bits = np.zeros(size, np.int64)
        self.clean = np.zeros(size, np.int64)

    def ensure(self, size: int) -> None:
        if size > len(self.status):
            grow = max(size, 2 * len(self.status)) - len(self.status)
            self.status = np.concatenate([self.status, np.zeros(grow, np.int8)])
            self.bits = np.concatenate([self.bits, np.zeros(grow, np.int64)])
            self.clean = np.concatenate([self.clean, np.zeros(grow, np.int64)])

    def set(self, car: int, status: int, bits: int, clean: int) -> None:
        self.status[car], self.bits[car], self.clean[car] = status, bits, clean

    def apply(self, cars: np.ndarray, over: np.ndarray, timeline: np.ndarray | None = None) -> list[tuple[int, int, int]]:
        """Apply readings (car index and over-threshold flag per reading, stream order).

        Returns the status changes as (reading index, previous status, new status), in order. With
        ``timeline`` (int8 [len(cars)]), also writes each reading's status after it was applied.
        """
        if len(cars) == 0:
            return []
        size = len(self.status)
        counts = np.bincount(cars, minlength=size)
        overs = np.bincount(cars, weights=over, minlength=size)
        slow = (overs > 0) | (self.status != OK)
        fast = np.flatnonzero((counts > 0) & ~slow)
        if len(fast):
            shift = counts[fast]
            mask = (1 << self.rule.n) - 1
            self.bits[fast] = np.where(shift >= self.rule.n, 0, (self.bits[fast] << np.minimum(shift, 62)) & mask)
            self.clean[fast] += shift
        changes = []
        rule, status, bits, clean = self.rule, self.status, self.bits, self.clean
        slow_readings = np.flatnonzero(slow[cars])
        if timeline is not None:
            timeline[:] = OK  # a fast car's status cannot change within the batch
        for i in slow_readings.tolist():
            c = int(cars[i])
            old = int(status[c])
            new, b, k = step(rule, old, int(bits[c]), int(clean[c]), bool(over[i]))
            status[c], bits[c], clean[c] = new, b, k
            if timeline is not None:
                timeline[i] = new
            if new != old:
                changes.append((i, old, new))
        return changes


def status_timeline(flags: np.ndarray, cars: np.ndarray, rule: Rule = Rule()) -> np.ndarray:
    """Status after every reading (int8, OK / WARNING / FAILING) for readings in stream order.

    ``cars`` are small integer car indices; every car starts ``ok``. This is what evaluation scores
    against ground truth: the transformer's alerts, replayed offline.
    """
    cars = np.asarray(cars, np.int64)
    hyst = Hysteresis(rule, int(cars.max()) + 1 if len(cars) else 1)
    out = np.zeros(len(cars), np.int8)
    hyst.apply(cars, np.asarray(flags, bool), out)
    return out
