"""The lifecycle demo's figures: each false alert belongs to the model that raised it, per group of
cars (on the rollout's firmware or not), and recall is over the failing events each model scored."""

from __future__ import annotations

import numpy as np

from devtools.demo.collect import EventLog, alerting
from devtools.demo.lifecycle import lifecycle_figures
from fleetpulse.evaluation import label
from fleetpulse.ground_truth import HEALTHY, TruthRecord

OTA = 2100.0


def fleet(events: int = 100) -> EventLog:
    """Cars a (updated at event 20), b (never updated), c (failing from event 50); one event per second each."""
    cars, seq = np.meshgrid(np.array(["a", "b", "c"], dtype=object), np.arange(events), indexing="ij")
    order = np.argsort(seq.ravel(), kind="stable")
    car, seq = cars.ravel()[order], seq.ravel()[order]
    firmware = np.where((car == "a") & (seq >= 20), OTA, 2000.0).astype(np.float32)
    return EventLog(car=car, partition=np.zeros(len(car), np.int32), offset=np.arange(len(car)), ts_ms=seq * 1000, column=firmware)


def alert(log: EventLog, car: str, seq: int, status: str, version: str) -> dict:
    offset = int(log.offset[(log.car == car) & (log.ts_ms == seq * 1000)][0])
    return {"car_id": car, "status": status, "source_partition": 0, "source_offset": offset, "model_version": version}


def test_v1s_false_alert_on_an_updated_car_is_v1s_and_v2_clearing_it_adds_none_while_it_catches_the_failure():
    log = fleet()
    truth = [TruthRecord(c, HEALTHY, 0, 0.0, 0, 10.0) for c in "abc"] + [TruthRecord("c", "overheating", 50_000, 1.0, 50, 10.0)]
    alerts = [alert(log, "a", 22, "failing", "1"),  # v1 flags the updated car
              alert(log, "a", 60, "ok", "2"),  # v2 takes over at event 60 and clears it
              alert(log, "c", 62, "failing", "2")]  # v2 catches the failure two events in  # fmt: skip
    states = alerting(log, alerts)
    labels = label(log.car, log.ts_ms, truth)

    out = lifecycle_figures(log, states, labels, OTA, [(1, None), (2, 60_000)], t0_ms=0, bucket_s=50)

    v1, v2 = out["periods"]["v1"], out["periods"]["v2"]
    assert v1["updated"]["false_alerts"] == 1 and v1["not_updated"]["false_alerts"] == 0
    # Car a's updated events while v1 scored: events 20..59, 10 simulated seconds each.
    assert v1["updated"]["healthy_car_hours"] == round(40 * 10 / 3600, 1)
    assert v1["updated"]["false_alerts_per_1000_car_hours"] > 1000
    assert v2["updated"]["false_alerts"] == 0 and v2["all"]["false_alerts"] == 0
    assert v1["all"]["recall"] == 0.0  # c's failing events 50..59 were v1's, none alerted
    assert v2["all"]["recall"] == (100 - 62) / (100 - 60)  # events 60..99 failing, alerting from 62
    assert [row["t_s"] for row in out["timeline"]] == [0.0, 50.0]
    assert out["timeline"][0]["false_alerts_per_1000_car_hours_updated"] > 0
    assert out["timeline"][1]["false_alerts_per_1000_car_hours_updated"] == 0


def test_without_a_second_version_everything_is_v1s():
    log = fleet(30)
    truth = [TruthRecord(c, HEALTHY, 0, 0.0, 0, 10.0) for c in "abc"]
    out = lifecycle_figures(log, alerting(log, []), label(log.car, log.ts_ms, truth), OTA, [(1, None)], t0_ms=0, bucket_s=10)
    assert list(out["periods"]) == ["v1"] and out["periods"]["v1"]["all"]["events"] == 90
    assert out["periods"]["v1"]["all"]["recall"] is None  # no failing event to recall
