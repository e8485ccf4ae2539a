"""Detection quality from what the pipeline actually wrote: alert records against simulator ground truth.

Each car's status timeline is rebuilt from its alert records (a status holds from the event that
caused it, by partition offset, until the next alert). Every event of the detection stretch then has
a predicted status and a true mode (ground truth at the event's Kafka timestamp). An event counts as
flagged when its car's status is not ``ok``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fleetpulse.ground_truth import FAILURE_MODES, HEALTHY, TruthRecord, histories_by_car


@dataclass
class EventLog:
    """The detection stretch of ``sensor-data``: one entry per event (keys, partitions, offsets, timestamps)."""

    car: np.ndarray  # object (str)
    partition: np.ndarray  # int32
    offset: np.ndarray  # int64
    ts_ms: np.ndarray  # int64


@dataclass
class Scores:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict:
        return {"precision": round(self.precision, 4), "recall": round(self.recall, 4), "f1": round(self.f1, 4),
                "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn}  # fmt: skip


def _scores(truth: np.ndarray, flagged: np.ndarray) -> Scores:
    return Scores(
        tp=int((truth & flagged).sum()), fp=int((~truth & flagged).sum()), fn=int((truth & ~flagged).sum()), tn=int((~truth & ~flagged).sum())
    )


@dataclass
class Evaluation:
    overall: Scores
    per_mode: dict[str, dict]
    detection_delays: list[int]  # events from onset to first flag, per detected failing car
    missed_cars: int
    false_alerts: int
    healthy_car_hours: float
    car_hours: float
    cars: int
    events: int
    statuses: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def false_alerts_per_1000_car_hours(self) -> float:
        return 1000 * self.false_alerts / self.healthy_car_hours if self.healthy_car_hours else 0.0

    @property
    def median_detection_delay(self) -> float | None:
        return float(np.median(self.detection_delays)) if self.detection_delays else None


def status_per_event(log: EventLog, alerts: list[dict]) -> np.ndarray:
    """The car's status in force at each event (``ok`` before its first alert)."""
    status = np.full(len(log.car), "ok", dtype=object)
    by_car: dict[str, list[tuple[int, int, str]]] = {}
    for a in alerts:
        by_car.setdefault(a["car_id"], []).append((a["source_partition"], a["source_offset"], a["status"]))
    for car, idx in _car_groups(log):
        history = sorted(by_car.get(car, []), key=lambda x: x[1])
        if not history:
            continue
        offsets = np.array([h[1] for h in history])
        labels = np.array([h[2] for h in history], dtype=object)
        pos = np.searchsorted(offsets, log.offset[idx], side="right") - 1
        status[idx] = np.where(pos >= 0, labels[np.clip(pos, 0, None)], "ok")
    return status


def _car_groups(log: EventLog):
    """Yield (car, indices of its events in offset order) without a Python loop per event."""
    order = np.lexsort((log.offset, log.car.astype(str)))
    cars_sorted = log.car[order]
    bounds = np.flatnonzero(np.r_[True, cars_sorted[1:] != cars_sorted[:-1], True])
    for start, end in zip(bounds[:-1], bounds[1:]):
        yield cars_sorted[start], order[start:end]


def true_modes(log: EventLog, truth: list[TruthRecord]) -> np.ndarray:
    """Each event's ground-truth mode: the car's latest truth record with onset_ts <= the event's timestamp."""
    histories = histories_by_car(truth)
    modes = np.full(len(log.car), HEALTHY, dtype=object)
    for car, idx in _car_groups(log):
        history = histories.get(car)
        if not history:
            continue
        onsets = np.array([r.onset_ts for r in history])
        labels = np.array([r.mode for r in history], dtype=object)
        pos = np.searchsorted(onsets, log.ts_ms[idx], side="right") - 1
        modes[idx] = np.where(pos >= 0, labels[np.clip(pos, 0, None)], HEALTHY)
    return modes


def evaluate(log: EventLog, alerts: list[dict], truth: list[TruthRecord]) -> Evaluation:
    status = status_per_event(log, alerts)
    modes = true_modes(log, truth)
    flagged = status != "ok"
    failing = modes != HEALTHY
    interval = {r.car_id: r.sample_interval_s for r in truth}
    default_interval = float(np.median(list(interval.values()))) if interval else 10.0
    cars, inverse = np.unique(log.car.astype(str), return_inverse=True)
    per_event_hours = np.array([interval.get(c, default_interval) for c in cars])[inverse] / 3600.0

    final_mode = {}
    for car, history in histories_by_car(truth).items():
        final_mode[car] = next((r.mode for r in reversed(history) if r.mode != HEALTHY), HEALTHY)
    car_mode = np.array([final_mode.get(c, HEALTHY) for c in cars], dtype=object)[inverse]
    per_mode = {}
    for mode in FAILURE_MODES:
        sel = car_mode == mode
        if sel.any():
            s = _scores(failing[sel], flagged[sel])
            per_mode[mode] = {**s.as_dict(), "cars": int(len(set(log.car[sel]))), "events": int(sel.sum())}

    delays, missed, false_alerts = [], 0, 0
    for _, idx in _car_groups(log):
        f, fl = failing[idx], flagged[idx]
        # False alerts: each raise (ok -> flagged) while the car is truly healthy.
        raises = np.flatnonzero(fl & ~np.r_[False, fl[:-1]])
        false_alerts += int((~f[raises]).sum())
        if f.any():
            onset = int(np.argmax(f))
            after = np.flatnonzero(fl[onset:])
            if len(after):
                delays.append(int(after[0]))
            else:
                missed += 1
    return Evaluation(
        overall=_scores(failing, flagged),
        per_mode=per_mode,
        detection_delays=delays,
        missed_cars=missed,
        false_alerts=false_alerts,
        healthy_car_hours=float(per_event_hours[~failing].sum()),
        car_hours=float(per_event_hours.sum()),
        cars=int(len(set(log.car))),
        events=int(len(log.car)),
        statuses={"status": status, "mode": modes},
    )
