"""Threshold calibration and feature scaling: plain functions, checked on small cases.

Labels and figures are fleetpulse.evaluation's, tested in tests/kernel/test_evaluation.py."""

from __future__ import annotations

import numpy as np

from components.evaluate import best_f1_threshold, evaluate_scores, threshold_for_recall
from components.features import car_windows, robust_stats
from fleetpulse.evaluation import label
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
