"""Labels, metrics, calibration, hysteresis and scaling: plain functions, checked on small cases."""

from __future__ import annotations

import numpy as np

from components.evaluate import best_f1_threshold, label, metrics_for, threshold_for_recall
from components.features import car_windows, robust_stats
from fleetpulse.hysteresis import Rule, status_timeline
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
    m = metrics_for(flags, lab, Rule(n=10, k_warning=3, k_failing=6, m=5))
    assert m["median_detection_delay"] == 2.0  # onset at event 2, first flag at event 4
    assert m["hysteresis"]["median_detection_delay"] == 4.0  # warning on the third flag: event 6
    assert m["car_hours"] == 8.0
    assert m["recall"] == 4 / 6 and m["precision"] == 1.0


def test_false_alerts_are_per_1000_simulated_car_hours():
    truth = [TruthRecord("a", HEALTHY, 0, 0.0, sample_interval_s=10.0)]
    keys = np.array([b"a"] * 360, dtype=object)  # 360 events x 10 s = 1 car-hour
    flags = np.zeros(360, dtype=bool)
    flags[[10, 11, 12, 200]] = True
    m = metrics_for(flags, label(keys, np.arange(360) * 10_000, truth), Rule(n=10, k_warning=3, k_failing=6, m=5))
    assert m["false_alerts_per_1000_car_hours"] == 4000.0
    assert m["hysteresis"]["false_alerts_per_1000_car_hours"] == 1000.0  # only the run of three raises an alert


def test_evaluation_replays_the_serving_hysteresis_per_car_over_interleaved_events():
    rule = Rule(n=4, k_warning=2, k_failing=3, m=2)
    one_car = np.array([1, 0, 1, 1, 0, 0, 1, 0], dtype=bool)
    # status after each reading: warning on the 2nd flag of 4, failing on the 3rd, ok after 2 clean
    expected = [0, 0, 1, 2, 2, 0, 0, 0]
    assert status_timeline(one_car, np.zeros(8, np.int64), rule).tolist() == expected
    # the same car interleaved with a quiet one (as partitions interleave cars) gets the same statuses
    flags = np.empty(16, dtype=bool)
    flags[0::2], flags[1::2] = one_car, False
    cars = np.tile([0, 1], 8)
    timeline = status_timeline(flags, cars, rule)
    assert timeline[0::2].tolist() == expected and not timeline[1::2].any()


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
