"""A fleet stepped in memory (no MQTT, no Kafka), with the ground truth the simulator would publish:
for benches and tests that score a model on many cars without the stack, or produce them to Kafka."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleetpulse import evaluation
from fleetpulse.ground_truth import HEALTHY, TruthRecord
from simulator.car_model import car_id, make_blocks
from simulator.failures import plan_failures
from simulator.profiles import get as get_profile

INTERVAL_S = 10.0


@dataclass(frozen=True)
class SteppedFleet:
    values: np.ndarray  # float32 [cars x events, 18], event by event, each event every car in order
    ids: list[str]  # car ids, by car index
    ts_ms: np.ndarray  # int64 per row: t0_ms + the event's index x the interval
    truth: list[TruthRecord]  # every car healthy from t0_ms; the failing ones from their onset


def stepped_fleet(cars: int, events: int, failures: float, seed: int, profile: str = "default", interval_s: float = INTERVAL_S,
                  t0_ms: int = 0) -> SteppedFleet:
    """The simulator's car model stepped ``events`` times; Kafka timestamps and truth on one clock."""
    plan = plan_failures(cars, events, failures, seed)
    blocks = make_blocks(cars, seed, plan, interval_s, profile=get_profile(profile))
    interval_ms = int(interval_s * 1000)
    values = np.concatenate([b.step().values for _ in range(events) for b in blocks]).astype(np.float32)
    ids = [car_id(i) for i in range(cars)]
    truth = [TruthRecord(c, HEALTHY, t0_ms, 0.0, 0, interval_s) for c in ids]
    for car in np.flatnonzero(plan.mode).tolist():
        onset = int(plan.onset_seq[car])
        truth.append(TruthRecord(ids[car], plan.mode_name(car), t0_ms + onset * interval_ms, 1.0, onset, interval_s))
    ts = t0_ms + np.repeat(np.arange(events, dtype=np.int64) * interval_ms, cars)
    return SteppedFleet(values, ids, ts, truth)


def labelled_fleet(profile: str, cars: int, events: int, seed: int, failures: float = 0.05):
    """(values [cars x events, 18], keys, labels): each car healthy from its first event, the failing ones from their onset."""
    f = stepped_fleet(cars, events, failures, seed, profile)
    keys = np.array([c.encode() for c in f.ids] * events, dtype=object)
    return f.values, keys, evaluation.label(keys, f.ts_ms, f.truth)
