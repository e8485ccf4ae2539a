"""Detection quality against the simulator's ground truth: the one definition of every figure.

The pipeline's evaluate step, the demo's report and bench/quality.py all compute their figures here,
so a figure means the same wherever it is printed. Ground truth never fits a model; it only scores.

Inputs are per event, in stream order per car (the order the transformer applies them); cars may
interleave.
- label: an event is failing iff its car's latest truth record with ``onset_ts`` <= the event's
  Kafka timestamp names a failure mode: failing from the onset event on, healthy before the first
  record. Each event stands for its car's ``sample_interval_s`` of simulated driving.
- alerting: whether the car is alerting after the event. As alerts, that is the kernel's hysteresis
  (``alert_states``: status warning or failing); per reading, it is the model's flag itself.

Figures of one alerting series (``quality``):
- precision / recall / F1 over events: positive = failing, predicted = alerting.
- A failure is an episode: a run of one car's consecutive events in one failure mode. It is detected
  if the car is alerting at any of its events; its detection delay is the number of events from its
  first event to the first alerting one (0 = alerting at onset). An episode already under way at the
  car's first evaluated event counts from that event, so a failure never alerted is still missed.
- A false alert is an alert raised while the car's truth is healthy: a transition of the car from
  not alerting to alerting (alerting at its first evaluated event counts as one) at an event
  labelled healthy, counted once however long it lasts; a raise before onset that lasts into the
  failure is still false. ``false_alerts_per_1000_car_hours`` divides by the healthy car-hours (the
  simulated time in which a false alert could be raised), so the share of failing cars in a fleet
  does not move it.
- Per failure mode: recall over that mode's events, its episodes' delays, and precision / F1 of
  that mode's events against every healthy event (a false alert has no mode).
- ``healthy_cars_alerted_share``: of the cars healthy at every evaluated event, the share that were
  alerting at least once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np

from fleetpulse.ground_truth import FAILURE_MODES, HEALTHY, TruthRecord, histories_by_car
from fleetpulse.hysteresis import OK, Rule, status_timeline

DEFAULT_INTERVAL_S = 10.0  # the simulator's default, for a fleet with no truth records at all


@dataclass(frozen=True)
class Labels:
    """Ground truth per event: car index, mode, and the simulated hours the event stands for."""

    car: np.ndarray  # int64 [N], a small index per car (stable within one Labels)
    modes: np.ndarray  # object [N], HEALTHY or a failure mode
    hours: np.ndarray  # float64 [N]

    @property
    def failing(self) -> np.ndarray:
        return self.modes != HEALTHY

    def subset(self, mask: np.ndarray) -> "Labels":
        return Labels(self.car[mask], self.modes[mask], self.hours[mask])


def label(cars: np.ndarray, ts_ms: np.ndarray, truth: Iterable[TruthRecord]) -> Labels:
    """Labels for events given by car id (str or bytes, as Kafka keys) and Kafka timestamp."""
    names, car = _car_index(cars)
    ts_ms = np.asarray(ts_ms, np.int64)
    histories = histories_by_car(truth)
    intervals = [h[-1].sample_interval_s for h in histories.values()]
    interval = np.full(len(names), float(np.median(intervals)) if intervals else DEFAULT_INTERVAL_S)
    modes = np.full(len(car), HEALTHY, dtype=object)
    for i, idx in enumerate(_events_per_car(car, len(names))):
        history = histories.get(names[i])
        if not history:
            continue
        interval[i] = history[-1].sample_interval_s
        onsets = np.array([r.onset_ts for r in history], np.int64)
        states = np.array([r.mode for r in history], dtype=object)
        # The car's mode at each event: its last record with onset_ts <= ts.
        pos = np.searchsorted(onsets, ts_ms[idx], side="right") - 1
        modes[idx] = np.where(pos >= 0, states[np.maximum(pos, 0)], HEALTHY)
    return Labels(car, modes, interval[car] / 3600.0)


def alert_states(flags: np.ndarray, car: np.ndarray, rule: Rule = Rule()) -> np.ndarray:
    """Per event: is the car alerting (warning or failing) after it, under the serving hysteresis."""
    return status_timeline(flags, car, rule) != OK


@dataclass(frozen=True)
class Counts:
    tp: int
    fp: int
    fn: int
    tn: int

    @classmethod
    def of(cls, alerting: np.ndarray, failing: np.ndarray) -> "Counts":
        return cls(int((alerting & failing).sum()), int((alerting & ~failing).sum()),
                   int((~alerting & failing).sum()), int((~alerting & ~failing).sum()))  # fmt: skip

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
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1, **asdict(self)}


def _median(values: tuple[int, ...]) -> float | None:
    return float(np.median(values)) if values else None


@dataclass(frozen=True)
class ModeQuality:
    cars: int
    events: int
    counts: Counts  # this mode's events against every healthy event
    delays: tuple[int, ...]  # per detected episode
    missed: int

    @property
    def recall(self) -> float:
        return self.counts.recall

    def as_dict(self) -> dict:
        c = self.counts
        return {"cars": self.cars, "events": self.events, "precision": c.precision, "recall": c.recall, "f1": c.f1,
                "tp": c.tp, "fn": c.fn, "median_detection_delay": _median(self.delays),
                "failures_detected": len(self.delays), "failures_missed": self.missed}  # fmt: skip


@dataclass(frozen=True)
class Quality:
    counts: Counts
    per_mode: dict[str, ModeQuality]  # the modes present among the events
    delays: tuple[int, ...]  # per detected episode, events from onset to the first alerting event
    missed: int  # episodes never alerted
    false_alerts: int
    car_hours: float
    healthy_car_hours: float
    cars: int
    healthy_cars: int
    healthy_cars_alerted: int
    episode_events: tuple[int, ...] = ()  # per episode, in order: how many of its events were evaluated
    episode_detected: tuple[bool, ...] = ()  # per episode: alerted at any of them

    def failures_with_at_least(self, events: int) -> dict:
        """The episodes with at least ``events`` events (a hysteresis needing k readings over threshold
        cannot alert on fewer than k), and the others: how many, how many detected, the share."""
        length = np.asarray(self.episode_events, np.int64)
        detected = np.asarray(self.episode_detected, bool)
        out = {}
        for name, mask in ((f"at_least_{events}_events", length >= events), (f"fewer_than_{events}_events", length < events)):
            n = int(mask.sum())
            out[name] = {"failures": n, "detected": int(detected[mask].sum()), "recall": float(detected[mask].mean()) if n else None}
        return out

    @property
    def events(self) -> int:
        c = self.counts
        return c.tp + c.fp + c.fn + c.tn

    @property
    def false_alerts_per_1000_car_hours(self) -> float:
        return 1000.0 * self.false_alerts / self.healthy_car_hours if self.healthy_car_hours else 0.0

    @property
    def median_detection_delay(self) -> float | None:
        return _median(self.delays)

    @property
    def healthy_cars_alerted_share(self) -> float:
        return self.healthy_cars_alerted / self.healthy_cars if self.healthy_cars else 0.0

    @property
    def recall_per_mode(self) -> dict[str, float]:
        return {mode: q.recall for mode, q in self.per_mode.items()}

    def as_dict(self) -> dict:
        """JSON-able figures (unrounded)."""
        return {
            **self.counts.as_dict(),
            "events": self.events,
            "cars": self.cars,
            "car_hours": self.car_hours,
            "healthy_car_hours": self.healthy_car_hours,
            "false_alerts": self.false_alerts,
            "false_alerts_per_1000_car_hours": self.false_alerts_per_1000_car_hours,
            "median_detection_delay": self.median_detection_delay,
            "failures_detected": len(self.delays),
            "failures_missed": self.missed,
            "healthy_cars_alerted_share": self.healthy_cars_alerted_share,
            "per_mode": {mode: q.as_dict() for mode, q in self.per_mode.items()},
        }


def quality(alerting: np.ndarray, labels: Labels) -> Quality:
    """Every figure of one alerting series (per event, stream order per car) against ``labels``."""
    alerting = np.asarray(alerting, bool)
    failing, healthy = labels.failing, ~labels.failing
    # Group each car's events together, keeping stream order within a car.
    order = np.argsort(labels.car, kind="stable")
    car, modes, alert = labels.car[order], labels.modes[order], alerting[order]
    first = np.r_[True, car[1:] != car[:-1]]
    was_alerting = np.r_[False, alert[:-1]] & ~first
    false_alerts = int((alert & ~was_alerting & (modes == HEALTHY)).sum())

    starts, first_hit, lengths = _episodes(first, modes, alert)
    hit = first_hit >= 0
    delays, episode_modes = first_hit - starts, modes[starts]

    per_car_failing = np.bincount(labels.car, weights=failing) > 0
    present = np.bincount(labels.car) > 0
    healthy_cars = present & ~per_car_failing
    alerted = np.bincount(labels.car, weights=alerting, minlength=len(present)) > 0
    per_mode = {}
    for mode in FAILURE_MODES:
        events = labels.modes == mode
        if not events.any():
            continue
        in_mode = episode_modes == mode
        counts = Counts.of(alerting[events | healthy], failing[events | healthy])
        per_mode[mode] = ModeQuality(len(np.unique(labels.car[events])), int(events.sum()), counts,
                                     tuple(delays[in_mode & hit].tolist()), int((in_mode & ~hit).sum()))  # fmt: skip
    return Quality(
        counts=Counts.of(alerting, failing),
        per_mode=per_mode,
        delays=tuple(delays[hit].tolist()),
        missed=int((~hit).sum()),
        false_alerts=false_alerts,
        car_hours=float(labels.hours.sum()),
        healthy_car_hours=float(labels.hours[healthy].sum()),
        cars=int(present.sum()),
        healthy_cars=int(healthy_cars.sum()),
        healthy_cars_alerted=int((healthy_cars & alerted).sum()),
        episode_events=tuple(lengths.tolist()),
        episode_detected=tuple(hit.tolist()),
    )


def figures(flags: np.ndarray, labels: Labels, rule: Rule = Rule()) -> dict:
    """Per reading (every flagged reading counts as alerting) and, under ``hysteresis``, as the
    transformer alerts: the flags replayed through ``rule``."""
    return {
        **quality(flags, labels).as_dict(),
        "hysteresis": {"rule": asdict(rule), **quality(alert_states(flags, labels.car, rule), labels).as_dict()},
    }


def _episodes(first: np.ndarray, modes: np.ndarray, alert: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Failure episodes of events grouped by car: each one's start position, its first alerting
    position (-1 if none) and its number of events."""
    failing = modes != HEALTHY
    starts_mask = failing & (first | np.r_[True, modes[1:] != modes[:-1]])
    starts = np.flatnonzero(starts_mask)
    episode = np.cumsum(starts_mask) - 1  # the episode each failing event belongs to
    first_hit = np.full(len(starts), len(modes), np.int64)
    hits = np.flatnonzero(failing & alert)
    np.minimum.at(first_hit, episode[hits], hits)
    lengths = np.bincount(episode[failing], minlength=len(starts)) if len(starts) else np.zeros(0, np.int64)
    return starts, np.where(first_hit < len(modes), first_hit, -1), lengths


def _car_index(cars: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Car names (as truth records spell them) and a small index per event."""
    cars = np.asarray(cars)
    if cars.dtype == object:
        cars = cars.astype("S" if len(cars) and isinstance(cars[0], bytes) else "U")
    uniques, car = np.unique(cars, return_inverse=True)
    names = [u.decode() if isinstance(u, bytes) else str(u) for u in uniques.tolist()]
    return names, car.astype(np.int64)


def _events_per_car(car: np.ndarray, n_cars: int) -> list[np.ndarray]:
    order = np.argsort(car, kind="stable")
    return np.split(order, np.cumsum(np.bincount(car, minlength=n_cars))[:-1])
