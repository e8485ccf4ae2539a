"""The demo's detection quality: each car's alerting status rebuilt from the alert records the
transformer wrote, scored against ground truth event by event (fleetpulse.evaluation)."""

from __future__ import annotations

import numpy as np

from devtools.demo.collect import EventLog, alerting
from fleetpulse.evaluation import Quality, label, quality
from fleetpulse.ground_truth import TruthRecord


def evaluate(log: EventLog, alerts: list[dict], truth: list[TruthRecord]) -> Quality:
    return quality(alerting(log, alerts), label(log.car, log.ts_ms, truth))


def log_for(cars: dict[str, int], partition: int = 0) -> EventLog:
    """Events 0..n-1 per car, interleaved, with ts = 1000 * event index and increasing offsets."""
    rows = []
    n_max = max(cars.values())
    for i in range(n_max):
        for car, n in cars.items():
            if i < n:
                rows.append((car, i))
    car = np.array([r[0] for r in rows], dtype=object)
    seq = np.array([r[1] for r in rows])
    return EventLog(car=car, partition=np.full(len(rows), partition), offset=np.arange(len(rows)), ts_ms=seq * 1000)


def alert(car: str, status: str, offset: int) -> dict:
    return {"car_id": car, "status": status, "source_partition": 0, "source_offset": offset}


def offset_of(log: EventLog, car: str, seq: int) -> int:
    return int(log.offset[(log.car == car) & (log.ts_ms == seq * 1000)][0])


def test_a_failure_caught_three_events_after_onset_and_a_quiet_healthy_car():
    log = log_for({"a": 100, "b": 100})
    truth = [
        TruthRecord("a", "healthy", 0, 0.0, 0, 10.0),
        TruthRecord("a", "overheating", 50_000, 1.0, 50, 10.0),
        TruthRecord("b", "healthy", 0, 0.0, 0, 10.0),
    ]
    alerts = [alert("a", "warning", offset_of(log, "a", 52)), alert("a", "failing", offset_of(log, "a", 53))]
    ev = evaluate(log, alerts, truth)
    assert ev.delays == (2,)
    assert (ev.counts.tp, ev.counts.fn, ev.counts.fp) == (48, 2, 0)
    assert ev.false_alerts == 0 and ev.missed == 0
    assert ev.per_mode["overheating"].recall == 0.96
    assert abs(ev.car_hours - 200 * 10 / 3600) < 1e-9


def test_a_raise_on_a_healthy_car_is_a_false_alert_and_a_clear_ends_it():
    log = log_for({"b": 100})
    truth = [TruthRecord("b", "healthy", 0, 0.0, 0, 10.0)]
    alerts = [alert("b", "warning", 10), alert("b", "ok", 15), alert("b", "warning", 40), alert("b", "ok", 41)]
    ev = evaluate(log, alerts, truth)
    assert ev.false_alerts == 2
    assert ev.counts.fp == 6 and ev.counts.tp == 0
    assert abs(ev.false_alerts_per_1000_car_hours - 1000 * 2 / (100 * 10 / 3600)) < 1e-6


def test_a_failing_car_never_flagged_is_missed():
    log = log_for({"a": 20})
    truth = [TruthRecord("a", "healthy", 0, 0.0, 0, 10.0), TruthRecord("a", "shock_absorber", 5000, 1.0, 5, 10.0)]
    ev = evaluate(log, [], truth)
    assert ev.missed == 1 and ev.counts.recall == 0.0 and ev.median_detection_delay is None


def test_a_status_holds_from_the_event_that_caused_it_until_the_cars_next_alert():
    log = log_for({"a": 10, "b": 10})  # interleaved: a's events at even offsets
    alerts = [alert("a", "warning", offset_of(log, "a", 3)), alert("a", "failing", offset_of(log, "a", 5)),
              alert("a", "ok", offset_of(log, "a", 8)), alert("b", "warning", offset_of(log, "b", 9))]  # fmt: skip
    status = alerting(log, alerts)
    assert status[log.car == "a"].tolist() == [False] * 3 + [True] * 5 + [False] * 2
    assert status[log.car == "b"].tolist() == [False] * 9 + [True]
