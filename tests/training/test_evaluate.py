"""Threshold calibration and feature scaling: plain functions, checked on small cases.

Labels and figures are fleetpulse.evaluation's, tested in tests/kernel/test_evaluation.py."""

from __future__ import annotations

import numpy as np
import pytest

from components.evaluate import HEALTHY_SCORE, best_f1_threshold, evaluate_scores, healthy_tail_threshold, tail_share, threshold_for_recall
from components.features import car_windows, robust_stats
from fleetpulse.evaluation import Labels, alert_states, label, quality
from fleetpulse.ground_truth import TruthRecord


def test_calibrated_threshold_separates_when_scores_separate():
    scores = np.array([0.1, 0.2, 0.3, 5.0, 6.0])
    failing = np.array([False, False, False, True, True])
    t = best_f1_threshold(scores, failing)
    assert 0.3 < t < 5.0
    assert threshold_for_recall(scores, failing, 1.0) < 5.0


def test_threshold_is_calibrated_on_one_half_of_the_cars_and_figures_reported_on_the_other():
    keys = np.array([f"car-{i:03d}".encode() for i in range(40) for _ in range(20)], dtype=object)
    ts = np.tile(np.arange(20) * 1000, 40)
    truth = [TruthRecord(f"car-{i:03d}", "overheating", 10_000, 1.0, 10) for i in range(0, 40, 4)]
    lab = label(keys, ts, truth)
    scores = np.where(lab.failing, 8.0, 0.5)
    threshold, m = evaluate_scores(scores, scores, keys, lab)
    assert m["calibrated_on"] == "half" and 0 < m["report_events"] < len(keys)
    assert 1.0 <= threshold < 8.0 and m["f1"] == 1.0 and m["hysteresis"]["false_alerts"] == 0
    assert m["eval_cars"] == 40 and m["baseline_robust_z"]["at_model_recall"]["recall"] == 1.0


HOURS = 10 / 3600  # the simulator's 10 s between readings


def healthy_labels(cars: int, events: int) -> Labels:
    car = np.tile(np.arange(cars), events)
    return Labels(car, np.full(len(car), "healthy", dtype=object), np.full(len(car), HOURS))


def test_tail_share_over_threshold_raises_at_most_the_budgeted_false_alerts_when_readings_are_independent():
    budget = 300.0  # per 1,000 car-hours: high enough to count alerts in 1,100 car-hours
    labels = healthy_labels(200, 2000)
    over = np.random.default_rng(0).random(len(labels.car)) < tail_share(budget, HOURS)
    measured = quality(alert_states(over, labels.car), labels).false_alerts_per_1000_car_hours
    assert 0.5 * budget < measured <= budget


def test_healthy_tail_threshold_flags_the_tail_share_of_healthy_scores_and_ignores_failing_ones():
    labels = healthy_labels(100, 500)
    scores = HEALTHY_SCORE + np.random.default_rng(1).exponential(0.1, len(labels.car))
    t = healthy_tail_threshold(scores, labels)
    assert np.mean(scores > t) == pytest.approx(tail_share(0.1, HOURS), rel=0.05)
    sick = Labels(labels.car, np.where(labels.car < 5, "overheating", "healthy").astype(object), labels.hours)
    assert healthy_tail_threshold(np.where(sick.failing, 50.0, scores), sick) == healthy_tail_threshold(scores, sick)


def test_healthy_tail_threshold_rises_over_a_healthy_car_whose_scores_go_over_together():
    labels = healthy_labels(100, 500)
    scores = np.full(len(labels.car), 0.5)
    stuck = np.flatnonzero(labels.car == 7)[100:103]  # three readings in a row: an alert at any lower threshold
    scores[stuck] = [3.0, 2.0, 2.5]
    t = healthy_tail_threshold(scores, labels)
    assert t == 2.0 and not alert_states(scores > t, labels.car).any()
    assert alert_states(scores > np.nextafter(t, 0), labels.car).any()


def test_integer_sensor_with_zero_mad_does_not_turn_a_one_psi_wobble_into_an_outlier():
    tyre = np.r_[np.full(60, 32.0), np.full(20, 31.0), np.full(20, 33.0)]
    values = np.tile(tyre[:, None], (1, 18)).astype(np.float32)
    center, scale = robust_stats(values)
    assert center[0] == 32.0 and 0.5 < scale[0] < 1.0


def test_lstm_windows_are_per_car_and_edge_padded():
    keys = np.array([b"a", b"b", b"a", b"b", b"a"], dtype=object)
    values = np.arange(5, dtype=np.float32)[:, None].repeat(18, axis=1)
    w = car_windows(values, keys, 3)
    assert w[:, :, 0].tolist() == [[0, 0, 0], [1, 1, 1], [0, 0, 2], [1, 1, 3], [0, 2, 4]]
