"""Threshold calibration and the z-score baseline: the training side of evaluation.

Labels and every figure (F1, detection delay, false alerts per 1,000 car-hours, per-mode recall) are
defined once, in fleetpulse.evaluation. Ground truth is never used to fit a model; it calibrates the
alert threshold on one half of the held-out cars and the figures are reported on the other half, so
they are not fitted to the data they describe.
"""

from __future__ import annotations

import zlib

import numpy as np

from components.features import robust_stats, robust_z
from fleetpulse.evaluation import Labels, figures


def calibration_half(keys: np.ndarray) -> np.ndarray:
    """True for cars whose labels calibrate the threshold; the rest are where metrics are reported."""
    return np.fromiter(((zlib.crc32(b"calibrate:" + k) & 1) == 0 for k in keys), dtype=bool, count=len(keys))


HEALTHY_SCORE = 1.0
"""A model score of 1 is the healthy 99.9th percentile of the worst feature on the training window
(components.models.residual_scale). A threshold below it flags readings the training window calls
healthy. With few failing cars to calibrate on, best-F1 can land there (0.93 on a 100-car fleet with
25% failing, 600 false alerts per 1,000 car-hours), so the calibrated threshold never goes below it."""


def best_f1_threshold(scores: np.ndarray, failing: np.ndarray) -> float:
    """The threshold (flag = score > t) maximising per-row F1; midway between neighbouring scores."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], failing[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    positives = max(int(y.sum()), 1)
    f1 = 2 * tp / (tp + fp + positives)
    # Only cut between distinct scores.
    last_of_run = np.r_[s[1:] != s[:-1], True]
    f1 = np.where(last_of_run, f1, -1)
    k = int(np.argmax(f1))
    below = s[k + 1] if k + 1 < len(s) else s[k] - 1.0
    return float((s[k] + below) / 2)


def threshold_for_recall(scores: np.ndarray, failing: np.ndarray, recall: float) -> float:
    """The highest threshold that still reaches ``recall`` (for a false-alert comparison at equal recall)."""
    pos = np.sort(scores[failing])[::-1]
    if len(pos) == 0:
        return float("inf")
    k = min(len(pos) - 1, max(0, int(np.ceil(recall * len(pos))) - 1))
    return float(np.nextafter(pos[k], -np.inf))


class ZScoreBaseline:
    """The bar to beat: max over features of the robust z-score (median / MAD from the training window)."""

    def __init__(self, center: np.ndarray, scale: np.ndarray):
        self.center, self.scale = np.asarray(center, np.float32), np.asarray(scale, np.float32)

    @classmethod
    def fit(cls, train_values: np.ndarray) -> "ZScoreBaseline":
        return cls(*robust_stats(train_values))

    def score(self, values: np.ndarray) -> np.ndarray:
        return np.abs(robust_z(values, self.center, self.scale)).max(axis=1).astype(np.float32)


def evaluate_scores(scores: np.ndarray, baseline_scores: np.ndarray, keys: np.ndarray, labels: Labels) -> tuple[float, dict]:
    """Calibrate on one half of the cars (split by Kafka key), report on the other; returns (threshold, metrics)."""
    failing = labels.failing
    calib = calibration_half(keys)
    calibrated_on = "half"
    if not (failing[calib].any() and failing[~calib].any() and (~failing[calib]).any()):
        calib = np.ones(len(scores), dtype=bool)  # too few failing cars to split: calibrate on all, say so
        calibrated_on = "all"
    report = ~calib if calibrated_on == "half" else calib
    sub = labels.subset(report)

    threshold = max(best_f1_threshold(scores[calib], failing[calib]), HEALTHY_SCORE)
    metrics = figures(scores[report] > threshold, sub)
    metrics["threshold"] = threshold
    metrics["calibrated_on"] = calibrated_on

    base_threshold = best_f1_threshold(baseline_scores[calib], failing[calib])
    base = figures(baseline_scores[report] > base_threshold, sub)
    base["threshold"] = base_threshold
    # At equal recall: the baseline's threshold moved to reach the model's recall on the report half.
    equal = threshold_for_recall(baseline_scores[report], sub.failing, metrics["recall"])
    base_eq = figures(baseline_scores[report] > equal, sub)
    metrics["baseline_robust_z"] = {
        **{k: base[k] for k in ("precision", "recall", "f1", "false_alerts_per_1000_car_hours", "median_detection_delay", "threshold")},
        "per_mode": base["per_mode"],
        "at_model_recall": {k: base_eq[k] for k in ("precision", "recall", "f1", "false_alerts_per_1000_car_hours")},
    }
    metrics["beats_baseline_false_alerts_at_equal_recall"] = (
        metrics["false_alerts_per_1000_car_hours"] <= base_eq["false_alerts_per_1000_car_hours"]
    )
    metrics["eval_events"] = int(len(scores))
    metrics["report_events"] = int(report.sum())
    metrics["eval_cars"] = int(len(np.unique(labels.car)))
    return threshold, metrics
