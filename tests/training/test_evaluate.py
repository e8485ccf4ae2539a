"""Labels, metrics, calibration, hysteresis and scaling: plain functions, checked on small cases."""

from __future__ import annotations

import numpy as np

from components.evaluate import best_f1_threshold, label, metrics_for, threshold_for_recall
from components.features import car_windows, robust_stats
from components.hysteresis import alert_states
from fleetpulse.ground_truth import HEALTHY, TruthRecord


def test_an_event_is_failing_from_its_cars_onset_timestamp_on():
    truth = [TruthRecord("a", HEALTHY, 0, 0.0), TruthRecord("a", "overheating", 3000, 0.3, 3), TruthRecord("b", HEALTHY, 0, 0.0)]
    keys = np.array([b"a"] * 5 + [b"b"] * 2, dtype=object)
    ts = np.array([0, 1000, 2000, 3000, 4000, 3000, 4000])
    lab = label(keys, ts, truth)
    assert lab.modes.tolist() == [HEALTHY, HEALTHY, HEALTHY, "overheating", "overheating", HEALTHY, HEALTHY]


def test_detection_delay_counts_events_from_onset_to_first_alert():
    truth = [TruthRecord("a", "shock_absorber", 2000, 1.0, 2, sample_interval_s=3600.0)]
    keys = np.array([b"a"] * 8, dtype=object)
    lab = label(keys, np.arange(8) * 1000, truth)
    flags = np.array([False, False, False, False, True, True, True, True])
    m = metrics_for(flags, lab)
    assert m["median_detection_delay"] == 2.0  # onset at event 2, first flag at event 4
    assert m["hysteresis"]["median_detection_delay"] == 3.0  # raised after 2 consecutive flags
    assert m["car_hours"] == 8.0
    assert m["recall"] == 4 / 6 and m["precision"] == 1.0


def test_false_alerts_are_per_1000_simulated_car_hours():
    truth = [TruthRecord("a", HEALTHY, 0, 0.0, sample_interval_s=10.0)]
    keys = np.array([b"a"] * 360, dtype=object)  # 360 events x 10 s = 1 car-hour
    flags = np.zeros(360, dtype=bool)
    flags[[10, 11, 200]] = True
    m = metrics_for(flags, label(keys, np.arange(360) * 10_000, truth))
    assert m["false_alerts_per_1000_car_hours"] == 3000.0
    assert m["hysteresis"]["false_alerts_per_1000_car_hours"] == 1000.0  # only the pair raises an alert


def test_hysteresis_raises_after_consecutive_flags_and_clears_after_quiet_ones():
    flags = np.array([1, 0, 1, 1, 0, 1, 0, 0, 0, 1], dtype=bool)
    assert alert_states(flags, raise_after=2, clear_after=3).tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 0, 0]


def test_calibrated_threshold_separates_when_scores_separate():
    scores = np.array([0.1, 0.2, 0.3, 5.0, 6.0])
    failing = np.array([False, False, False, True, True])
    t = best_f1_threshold(scores, failing)
    assert 0.3 < t < 5.0
    assert threshold_for_recall(scores, failing, 1.0) < 5.0


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
