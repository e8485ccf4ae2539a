"""The promotion rule, in one place: when a candidate that ran in shadow becomes stable, is rejected,
or needs more car-hours; and when a freshly promoted stable is rolled back. Plain numpy, every
number a field of ``PromotionRule``.

Both models are judged on the same events: the shadowed cars' events of one trial (a stable and a
candidate version, fleetpulse.shadow), in stream order per car, each replayed through the serving
hysteresis from ``ok``. Figures come from fleetpulse.evaluation, so they mean what they mean in the
pipeline's gate and the demo's report:
- recall: the share of labelled failure episodes the model alerts on (evaluation's episodes);
- false alerts per 1,000 healthy car-hours (evaluation's false alerts);
- alert rate: alerts raised per 1,000 car-hours, labels ignored (evaluation's false-alert figure with
  every event taken as healthy: each transition into alerting counts once), the one figure there is
  on a fleet without ground truth.

After a promotion the new stable's alerts are on ``alerts``, not in shadow: the rollback watch
measures its alert rate from those records (``alert_window``) against the previous stable's, taken
the same way, so both rates carry the same estimate's biases.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np

from fleetpulse.evaluation import Labels, alert_states, label, quality
from fleetpulse.ground_truth import HEALTHY, TruthRecord
from fleetpulse.hysteresis import Rule
from fleetpulse.shadow import ShadowBatch

PROMOTE, REJECT, WAIT = "promote", "reject", "wait"
ROLLBACK, KEEP = "rollback", "keep"


@dataclass(frozen=True)
class PromotionRule:
    """The numbers of the rule; rates are per 1,000 car-hours."""

    min_car_hours: float = 1000.0
    """Shadow car-hours before a verdict: the false-alert budget is 1 per 1,000 car-hours, and fewer
    car-hours cannot tell a model at the budget from one at zero."""
    recall_margin: float = 0.02
    """Worse: recall on labelled failures below stable's by more than this (two episodes in 100), and
    by more than one episode: one failure caught or missed is no evidence either way, and on the 37
    failures of a demo trial it alone is 0.027 (measured: a candidate with 0 false alerts against
    stable's 2,214 per 1,000 car-h was rejected for missing one)."""
    min_episodes: int = 10
    """Recall is judged only on at least this many labelled failure episodes; on fewer, one missed
    episode would move it by more than 0.1."""
    false_alert_margin: float = 0.5
    false_alert_budget: float = 1.0
    """Worse: false alerts above stable's by more than the margin, and above the budget."""
    alert_rate_factor: float = 1.5
    alert_rate_floor: float = 1.0
    """Worse on unlabelled data: an alert rate above factor x stable's (stable's taken as at least the
    floor, so a stable with no alert at all does not make a single alert a verdict)."""
    watch_car_hours: float = 1000.0
    """The rollback watch: a new stable's first this many car-hours of alerts."""
    rollback_factor: float = 2.0
    rollback_floor: float = 1.0
    """Roll back when the new stable's alert rate exceeds factor x what it was expected to be: the
    higher of the previous stable's recent rate and its own in the shadow trial that promoted it
    (taken as at least the floor). A stable that was replaced for alerting on a whole group of cars
    keeps them alerting, so its recent rate of new alerts falls: measured in `demo --lifecycle`, v1
    raised 11.5 per 1,000 car-h with 60% of the fleet already alerting, and v2, raising 39.8 as it had
    in shadow, was rolled back against that alone."""

    def __post_init__(self):
        if min(self.min_car_hours, self.watch_car_hours) <= 0 or self.alert_rate_factor < 1 or self.rollback_factor < 1:
            raise ValueError(f"a promotion rule needs positive car-hours and factors >= 1, got {self}")

    def decide(self, stable: "ModelFigures", candidate: "ModelFigures") -> "Decision":
        """Promote, reject or wait, on both models' figures over the same shadowed events."""
        if candidate.car_hours < self.min_car_hours:
            return Decision(WAIT, stable, candidate, f"{candidate.car_hours:,.1f} of {self.min_car_hours:,.0f} shadow car-hours")
        if not (stable.labelled and candidate.labelled):
            return self._unlabelled(stable, candidate)
        worse, notes = [], []
        if candidate.episodes >= self.min_episodes:
            line = f"recall {candidate.recall:.3f} on {candidate.episodes} failures (stable {stable.recall:.3f})"
            gap = stable.recall - candidate.recall
            if gap > self.recall_margin and gap * candidate.episodes > 1 + 1e-9:
                worse.append(f"{line}: more than {self.recall_margin} lower")
            notes.append(line)
        else:
            notes.append(f"recall not judged ({candidate.episodes} failures, fewer than {self.min_episodes})")
        fa, stable_fa = candidate.false_alerts_per_1000_car_hours, stable.false_alerts_per_1000_car_hours
        line = f"{fa:.2f} false alerts per 1,000 car-hours (stable {stable_fa:.2f})"
        if fa > stable_fa + self.false_alert_margin and fa > self.false_alert_budget:
            worse.append(f"{line}: above the budget {self.false_alert_budget} "
                         f"and more than {self.false_alert_margin} above stable")
        notes.append(line)
        if worse:
            return Decision(REJECT, stable, candidate, "; ".join(worse))
        return Decision(PROMOTE, stable, candidate, f"not worse on {candidate.car_hours:,.0f} car-hours: " + ", ".join(notes))

    def _unlabelled(self, stable: "ModelFigures", candidate: "ModelFigures") -> "Decision":
        limit = self.alert_rate_factor * max(stable.alert_rate, self.alert_rate_floor)
        line = f"{candidate.alert_rate:.2f} alerts per 1,000 car-hours (stable {stable.alert_rate:.2f}), no ground truth"
        if candidate.alert_rate > limit:
            return Decision(REJECT, stable, candidate, f"{line}: above {self.alert_rate_factor} x stable's")
        return Decision(PROMOTE, stable, candidate, f"not worse on {candidate.car_hours:,.0f} car-hours: {line}")

    def watch(self, new: "AlertWindow", previous: "AlertWindow", shadow_rate: float | None = None) -> "Watch":
        """After a promotion: roll back, keep, or wait for the new stable's first ``watch_car_hours``.
        ``shadow_rate``: its alert rate in the trial that promoted it (None: promoted by hand, or the
        trial is gone)."""
        if new.car_hours < self.watch_car_hours:
            return Watch(WAIT, new, previous, f"{new.car_hours:,.1f} of {self.watch_car_hours:,.0f} car-hours of alerts")
        limit = self.rollback_factor * max(previous.rate, shadow_rate or 0.0, self.rollback_floor)
        line = (f"{new.rate:.2f} alerts per 1,000 car-hours in its first {new.car_hours:,.0f} car-hours "
                f"(previous stable {previous.rate:.2f} over its last {previous.car_hours:,.0f}"
                + ("" if shadow_rate is None else f"; {shadow_rate:.2f} in its shadow trial") + ")")  # fmt: skip
        if new.rate > limit:
            return Watch(ROLLBACK, new, previous, f"{line}: above {self.rollback_factor} x")
        return Watch(KEEP, new, previous, line)


@dataclass(frozen=True)
class ModelFigures:
    """One model's figures over a trial's events."""

    version: str
    events: int
    car_hours: float
    alert_rate: float  # alerts raised per 1,000 car-hours, labels ignored
    labelled: bool  # ground truth covers the trial's cars
    episodes: int = 0  # labelled failure episodes among the events
    recall: float = 0.0  # share of those episodes alerted on
    false_alerts_per_1000_car_hours: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    verdict: str  # PROMOTE, REJECT or WAIT
    stable: ModelFigures
    candidate: ModelFigures
    reason: str

    def as_dict(self) -> dict:
        return {"verdict": self.verdict, "reason": self.reason,
                "stable": self.stable.as_dict(), "candidate": self.candidate.as_dict()}  # fmt: skip


@dataclass(frozen=True)
class ShadowEvents:
    """A trial's events, each once, in stream order per car, with both models' per-reading flags."""

    stable_version: str
    candidate_version: str
    car_ids: np.ndarray  # str [N]
    ts_ms: np.ndarray  # int64 [N]
    stable_flag: np.ndarray  # bool [N]
    candidate_flag: np.ndarray  # bool [N]

    def __len__(self) -> int:
        return len(self.car_ids)


def shadow_events(batches: Iterable[ShadowBatch]) -> ShadowEvents:
    """The events of one trial's batches (all of the same stable and candidate versions).

    ``model-shadow`` is not keyed, so one car's batches may be read back out of order; a car's events
    are in one sensor-data partition, so (partition, offset) order is its stream order. A chunk the
    transformer scored twice (redelivered after a restart) counts once.
    """
    batches = list(batches)
    versions = {(b.stable_version, b.candidate_version) for b in batches}
    if len(versions) != 1:
        raise ValueError(f"shadow batches of one trial needed, got versions {sorted(versions)}")
    [(stable, candidate)] = versions

    def column(name: str, dtype) -> np.ndarray:
        return np.concatenate([np.asarray(getattr(b, name), dtype) for b in batches])

    partitions, offsets = column("partitions", np.int64), column("offsets", np.int64)
    order = np.lexsort((offsets, partitions))
    keep = order[np.r_[True, (np.diff(partitions[order]) != 0) | (np.diff(offsets[order]) != 0)]]
    return ShadowEvents(stable, candidate, column("car_ids", object)[keep].astype(str), column("ts_ms", np.int64)[keep],
                        column("stable_flag", bool)[keep], column("candidate_flag", bool)[keep])  # fmt: skip


def measure(version: str, flags: np.ndarray, labels: Labels, labelled: bool, hysteresis: Rule = Rule()) -> ModelFigures:
    """One model's figures from its per-reading flags, alerting as the transformer would."""
    alerting = alert_states(flags, labels.car, hysteresis)
    unlabelled = quality(alerting, Labels(labels.car, np.full(len(labels.car), HEALTHY, dtype=object), labels.hours))
    figures = ModelFigures(version, unlabelled.events, unlabelled.car_hours, unlabelled.false_alerts_per_1000_car_hours, labelled)
    if not labelled:
        return figures
    q = quality(alerting, labels)
    episodes = len(q.delays) + q.missed
    return ModelFigures(version, q.events, q.car_hours, figures.alert_rate, True, episodes,
                        len(q.delays) / episodes if episodes else 0.0, q.false_alerts_per_1000_car_hours)  # fmt: skip


def measure_trial(events: ShadowEvents, truth: list[TruthRecord], hysteresis: Rule = Rule()) -> tuple[ModelFigures, ModelFigures]:
    """Stable's and the candidate's figures on a trial's events; labelled when the truth names any of its cars."""
    labels = label(events.car_ids, events.ts_ms, truth)
    labelled = bool({r.car_id for r in truth} & set(np.unique(events.car_ids).tolist()))
    return (measure(events.stable_version, events.stable_flag, labels, labelled, hysteresis),
            measure(events.candidate_version, events.candidate_flag, labels, labelled, hysteresis))  # fmt: skip


@dataclass(frozen=True)
class AlertLog:
    """One model version's records on ``alerts``, each once, in the order they were raised."""

    partitions: np.ndarray  # int64: the sensor-data partition of the event that changed the status
    offsets: np.ndarray  # int64: that event's offset
    raised: np.ndarray  # bool: ok -> warning or failing (an alert raised; the others escalate or clear)

    def __len__(self) -> int:
        return len(self.offsets)


@dataclass(frozen=True)
class AlertWindow:
    car_hours: float
    alerts: int
    complete: bool  # the log held the car-hours asked for

    @property
    def rate(self) -> float:
        """Alerts raised per 1,000 car-hours (0 when the window holds no car-hours)."""
        return 1000.0 * self.alerts / self.car_hours if self.car_hours else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "rate": self.rate}


def alert_window(log: AlertLog, car_hours: float, interval_s: float, latest: bool = False) -> AlertWindow:
    """The first (or, ``latest``, the last) ``car_hours`` of a version's alerts, or all of them if fewer.

    Alert records carry the sensor-data partition and offset of the event that changed a status, and
    every event on sensor-data was scored, so between two alerts of one partition the model scored
    exactly their offset difference of events, each ``interval_s`` of one car's driving. The window's
    car-hours are those spans, summed over partitions; its alerts are those raised above each span's
    lowest offset (a span of n events between records counts the raises of one of its ends, whichever
    way the window grows). Events before a partition's first alert and after its last are not seen:
    a model that raises no alerts never fills a window, and is never rolled back.
    """
    order = np.arange(len(log))[::-1] if latest else np.arange(len(log))
    partitions, offsets, raised = log.partitions[order], log.offsets[order], log.raised[order]
    span_growth = np.zeros(len(order))
    for p in np.unique(partitions):
        idx = np.flatnonzero(partitions == p)
        span = np.maximum.accumulate(offsets[idx]) - np.minimum.accumulate(offsets[idx])
        span_growth[idx] = np.diff(span, prepend=0)
    hours = np.cumsum(span_growth) * interval_s / 3600.0
    full = np.flatnonzero(hours >= car_hours)
    end = int(full[0]) + 1 if len(full) else len(order)
    partitions, offsets, raised = partitions[:end], offsets[:end], raised[:end]
    lowest = np.zeros(len(offsets), np.int64)
    for p in np.unique(partitions):
        lowest[partitions == p] = offsets[partitions == p].min()
    return AlertWindow(float(hours[end - 1]) if end else 0.0, int((raised & (offsets > lowest)).sum()), bool(len(full)))


@dataclass(frozen=True)
class Watch:
    verdict: str  # ROLLBACK, KEEP or WAIT
    new: AlertWindow
    previous: AlertWindow
    reason: str

    def as_dict(self) -> dict:
        return {"verdict": self.verdict, "reason": self.reason, "new": self.new.as_dict(), "previous": self.previous.as_dict()}
