"""The pipeline's offline quality gate, in one place: what a version must show on its held-out cars
before publish may put it on a channel.

The gate judges the alert figures (the serving hysteresis replayed over the report half of the
held-out cars: components.evaluate), and only what those cars can support:
- alert F1 against the floor (``--min-f1``), once the report half has ``min_failures`` labelled
  failure episodes. On fewer, one failure caught late or missed moves F1 by more than 0.1: measured
  in `demo --lifecycle`, a retrain on 30 s of stream had 3-5 failing cars there and the same model
  that later caught 95% of the live failures with no false alert was judged 0.75-0.79 in two runs of
  four and refused. The shadow trial (fleetpulse.promotion) judges recall on the live stream with
  the same minimum.
- on fewer failures, false alerts instead: the healthy car-hours are there whatever the failures.
  A version fails when it raised more false alerts than a model at the product's budget (1 per
  1,000 car-hours) would raise there with probability ``significance`` (Poisson), so a version that
  alerts on healthy cars is refused however few failures the window holds.
A floor of 0 gates nothing (`fleetpulse train --min-f1 0`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fleetpulse.promotion import PromotionRule

ALERT_F1, FALSE_ALERTS, NONE = "alert_f1", "false_alerts", "none"


@dataclass(frozen=True)
class QualityGate:
    min_f1: float
    min_failures: int = PromotionRule.min_episodes
    false_alert_budget: float = PromotionRule.false_alert_budget  # per 1,000 healthy car-hours
    significance: float = 0.01

    def false_alert_limit(self, healthy_car_hours: float) -> int:
        """The fewest false alerts a model at the budget raises in ``healthy_car_hours`` with
        probability below ``significance``: that many or more fail the gate."""
        mean = self.false_alert_budget * healthy_car_hours / 1000.0
        k, term = 0, math.exp(-mean)
        tail = 1.0  # P(X >= k)
        while tail >= self.significance:
            tail -= term
            k += 1
            term *= mean / k
        return k

    def judge(self, alerts: dict) -> dict:
        """The gate record for the alert figures ``alerts`` (fleetpulse.evaluation's figures under the
        hysteresis): metric, min, value, passed, and what was judged on what, in ``reason``."""
        f1 = float(alerts["f1"])
        failures = int(alerts["failures_detected"]) + int(alerts["failures_missed"])
        false_alerts, hours = int(alerts["false_alerts"]), float(alerts["healthy_car_hours"])
        record = {"metric": ALERT_F1, "min": self.min_f1, "value": f1, "failures": failures, "min_failures": self.min_failures,
                  "false_alerts": false_alerts, "healthy_car_hours": hours}  # fmt: skip
        if self.min_f1 <= 0:
            return {**record, "judged": NONE, "passed": True, "reason": "no floor (--min-f1 0): nothing judged"}
        if failures >= self.min_failures:
            passed = f1 >= self.min_f1
            reason = f"alert F1 {f1:.3f} on {failures} failures {'reaches' if passed else 'is below'} the floor --min-f1 {self.min_f1:g}"
            return {**record, "judged": ALERT_F1, "passed": passed, "reason": reason}
        limit = self.false_alert_limit(hours)
        passed = false_alerts < limit
        reason = (f"alert F1 not judged on {failures} failures (fewer than {self.min_failures}); {false_alerts} false alerts "
                  f"in {hours:,.0f} healthy car-hours {'<' if passed else '>='} {limit}, what a model at "
                  f"{self.false_alert_budget:g} per 1,000 car-hours reaches with probability < {self.significance:g}")  # fmt: skip
        return {**record, "judged": FALSE_ALERTS, "passed": passed, "false_alert_limit": limit, "reason": reason}
