"""The offline gate judges only what the held-out cars can support: alert F1 on enough failures,
false alerts against the budget on fewer (components.gate)."""

from __future__ import annotations

import math

import pytest

from components.gate import ALERT_F1, FALSE_ALERTS, NONE, QualityGate


def alerts(f1: float, detected: int, missed: int, false_alerts: int = 0, healthy_car_hours: float = 200.0) -> dict:
    return {"f1": f1, "failures_detected": detected, "failures_missed": missed, "false_alerts": false_alerts,
            "healthy_car_hours": healthy_car_hours}  # fmt: skip


def poisson_tail(k: int, mean: float) -> float:
    """P(X >= k) for X ~ Poisson(mean)."""
    return 1.0 - sum(math.exp(-mean) * mean**i / math.factorial(i) for i in range(k))


@pytest.mark.parametrize("hours", [0.0, 50.0, 200.0, 1000.0, 20_000.0])
def test_the_false_alert_limit_is_the_fewest_a_model_at_the_budget_raises_with_probability_below_one_percent(hours):
    gate = QualityGate(0.8)
    limit = gate.false_alert_limit(hours)
    mean = hours / 1000.0
    assert poisson_tail(limit, mean) < 0.01 <= poisson_tail(limit - 1, mean)


def test_alert_f1_is_judged_against_the_floor_on_enough_failures():
    gate = QualityGate(0.8)
    below = gate.judge(alerts(0.79, 8, 2))
    assert (below["judged"], below["passed"], below["failures"]) == (ALERT_F1, False, 10)
    assert below["reason"] == "alert F1 0.790 on 10 failures is below the floor --min-f1 0.8"
    assert gate.judge(alerts(0.8, 10, 0))["passed"] is True


def test_on_fewer_failures_f1_is_not_judged_and_false_alerts_above_the_budget_fail():
    gate = QualityGate(0.8)
    few = gate.judge(alerts(0.5, 2, 2, false_alerts=2, healthy_car_hours=200.0))  # 2 at 200 car-h: 1.8% at the budget
    assert (few["judged"], few["passed"], few["false_alert_limit"]) == (FALSE_ALERTS, True, 3)
    assert few["reason"].startswith("alert F1 not judged on 4 failures (fewer than 10); 2 false alerts in 200 healthy car-hours < 3")
    noisy = gate.judge(alerts(0.95, 3, 0, false_alerts=3, healthy_car_hours=200.0))
    assert (noisy["judged"], noisy["passed"]) == (FALSE_ALERTS, False)


def test_a_floor_of_zero_gates_nothing():
    record = QualityGate(0.0).judge(alerts(0.0, 0, 50, false_alerts=500))
    assert (record["judged"], record["passed"]) == (NONE, True)
