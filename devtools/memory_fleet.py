"""A fleet stepped in memory (no MQTT, no Kafka), labelled as the simulator's ground truth would say:
for benches and tests that score a model on many cars without the stack."""

from __future__ import annotations

import numpy as np

from fleetpulse import evaluation
from fleetpulse.ground_truth import HEALTHY, TruthRecord
from simulator.car_model import car_id, make_blocks
from simulator.failures import plan_failures
from simulator.profiles import get as get_profile

INTERVAL_S = 10.0


def labelled_fleet(profile: str, cars: int, events: int, seed: int, failures: float = 0.05):
    """(values [cars x events, 18], keys, labels): each car healthy from its first event, the failing ones from their onset."""
    plan = plan_failures(cars, events, failures, seed)
    blocks = make_blocks(cars, seed, plan, INTERVAL_S, profile=get_profile(profile))
    values = np.concatenate([b.step().values.astype(np.float32) for _ in range(events) for b in blocks])
    ids = [car_id(i) for i in range(cars)]
    keys = np.array([c.encode() for c in ids] * events, dtype=object)
    ts = np.repeat(np.arange(events, dtype=np.int64) * int(INTERVAL_S * 1000), cars)
    truth = [TruthRecord(c, HEALTHY, 0, 0.0, 0, INTERVAL_S) for c in ids]
    truth += [TruthRecord(ids[c], plan.mode_name(c), int(plan.onset_seq[c] * INTERVAL_S * 1000), 1.0, int(plan.onset_seq[c]), INTERVAL_S)
              for c in np.flatnonzero(plan.mode).tolist()]  # fmt: skip
    return values, keys, evaluation.label(keys, ts, truth)
