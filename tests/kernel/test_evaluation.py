"""The one definition of detection quality: labels, F1, detection delay, false alerts per 1,000 car-hours."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpulse.evaluation import alert_states, figures, label, quality
from fleetpulse.ground_truth import HEALTHY, TruthRecord
from fleetpulse.hysteresis import Rule

RULE = Rule(n=10, k_warning=3, k_failing=6, m=5)


def one_car(n: int, truth: list[TruthRecord], car: str = "a", step_ms: int = 1000):
    return label(np.array([car.encode()] * n, dtype=object), np.arange(n) * step_ms, truth)


def test_an_event_is_failing_from_its_cars_onset_timestamp_on():
    truth = [TruthRecord("a", HEALTHY, 0, 0.0), TruthRecord("a", "overheating", 3000, 0.3, 3), TruthRecord("b", HEALTHY, 0, 0.0)]
    keys = np.array([b"a"] * 5 + [b"b"] * 2, dtype=object)
    ts = np.array([0, 1000, 2000, 3000, 4000, 3000, 4000])
    lab = label(keys, ts, truth)
    assert lab.modes.tolist() == [HEALTHY, HEALTHY, HEALTHY, "overheating", "overheating", HEALTHY, HEALTHY]


def test_kafka_keys_as_bytes_and_car_ids_as_str_label_alike():
    truth = [TruthRecord("a", "overheating", 2000, 1.0, 2), TruthRecord("b", HEALTHY, 0, 0.0, 0, 5.0)]
    ts = np.array([0, 3000, 0, 3000])
    as_bytes = label(np.array([b"a", b"a", b"b", b"b"], dtype=object), ts, truth)
    as_str = label(np.array(["a", "a", "b", "b"], dtype=object), ts, truth)
    assert as_bytes.modes.tolist() == as_str.modes.tolist() == [HEALTHY, "overheating", HEALTHY, HEALTHY]
    assert as_bytes.hours.tolist() == as_str.hours.tolist() == [10 / 3600, 10 / 3600, 5 / 3600, 5 / 3600]


def test_detection_delay_counts_events_from_onset_to_first_alert():
    truth = [TruthRecord("a", "shock_absorber", 2000, 1.0, 2, sample_interval_s=3600.0)]
    lab = one_car(8, truth)
    flags = np.array([False, False, False, False, True, True, True, True])
    m = figures(flags, lab, RULE)
    assert m["median_detection_delay"] == 2.0  # onset at event 2, first flag at event 4
    assert m["hysteresis"]["median_detection_delay"] == 4.0  # warning on the third flag: event 6
    assert m["car_hours"] == 8.0
    assert m["recall"] == 4 / 6 and m["precision"] == 1.0


def test_false_alerts_are_raises_while_healthy_per_1000_simulated_car_hours():
    truth = [TruthRecord("a", HEALTHY, 0, 0.0, sample_interval_s=10.0)]
    lab = one_car(360, truth, step_ms=10_000)  # 360 events x 10 s = 1 car-hour
    flags = np.zeros(360, dtype=bool)
    flags[[10, 11, 12, 200]] = True
    m = figures(flags, lab, RULE)
    # Per reading, each run of flagged readings is one raise: 10-12 and 200.
    assert m["false_alerts"] == 2 and m["false_alerts_per_1000_car_hours"] == 2000.0
    assert m["hysteresis"]["false_alerts_per_1000_car_hours"] == 1000.0  # only the run of three raises an alert
    assert m["hysteresis"]["healthy_cars_alerted_share"] == 1.0


def test_false_alerts_are_per_healthy_car_hour_and_a_raise_before_onset_stays_false():
    truth = [TruthRecord("a", HEALTHY, 0, 0.0), TruthRecord("a", "overheating", 180 * 10_000, 1.0, 180)]
    lab = one_car(360, truth, step_ms=10_000)  # half an hour healthy, then failing
    alerting = np.zeros(360, dtype=bool)
    alerting[170:] = True  # raised ten events before onset, held into the failure
    q = quality(alerting, lab)
    assert q.false_alerts == 1 and q.healthy_car_hours == 0.5 and q.car_hours == 1.0
    assert q.false_alerts_per_1000_car_hours == 2000.0
    assert q.delays == (0,) and q.missed == 0  # already alerting at onset


def test_a_failure_already_under_way_when_evaluation_starts_is_still_missed_if_never_alerted():
    truth = [TruthRecord("a", "drive_shaft_wear", 0, 1.0)]
    q = quality(np.zeros(20, dtype=bool), one_car(20, truth, step_ms=1000))
    assert q.missed == 1 and q.delays == () and q.median_detection_delay is None


def test_each_failure_episode_of_a_car_is_detected_or_missed_on_its_own():
    truth = [TruthRecord("a", HEALTHY, 0, 0.0), TruthRecord("a", "overheating", 5000, 1.0, 5),
             TruthRecord("a", HEALTHY, 10_000, 0.0, 10), TruthRecord("a", "shock_absorber", 15_000, 1.0, 15)]  # fmt: skip
    alerting = np.zeros(20, dtype=bool)
    alerting[7:10] = True  # the overheating episode, two events in; the shock absorber never
    q = quality(alerting, one_car(20, truth))
    assert q.delays == (2,) and q.missed == 1
    assert q.per_mode["overheating"].delays == (2,) and q.per_mode["shock_absorber"].missed == 1


def test_per_mode_recall_is_over_that_modes_events_and_precision_against_every_healthy_event():
    cars = np.array(["a"] * 10 + ["b"] * 10 + ["h"] * 10, dtype=object)
    ts = np.tile(np.arange(10) * 1000, 3)
    truth = [TruthRecord("a", "overheating", 5000, 1.0, 5), TruthRecord("b", "battery_degradation", 5000, 1.0, 5)]
    lab = label(cars, ts, truth)
    alerting = np.zeros(30, dtype=bool)
    alerting[5:10] = True  # all of a's failing events
    alerting[15:17] = True  # two of b's five
    alerting[25] = True  # one healthy event of car h
    q = quality(alerting, lab)
    assert q.recall_per_mode == {"overheating": 1.0, "battery_degradation": 0.4}
    assert q.per_mode["overheating"].counts.precision == 5 / 6  # the healthy car's flag counts against every mode
    assert q.per_mode["overheating"].cars == 1 and q.per_mode["overheating"].events == 5
    assert q.healthy_cars == 1 and q.healthy_cars_alerted_share == 1.0
    assert (q.counts.tp, q.counts.fp, q.counts.fn) == (7, 1, 3)


def test_evaluation_replays_the_serving_hysteresis_per_car_over_interleaved_events():
    rule = Rule(n=4, k_warning=2, k_failing=3, m=2)
    one = np.array([1, 0, 1, 1, 0, 0, 1, 0], dtype=bool)
    # alerting after each reading: warning on the 2nd flag of 4, failing on the 3rd, ok after 2 clean
    expected = [False, False, True, True, True, False, False, False]
    assert alert_states(one, np.zeros(8, np.int64), rule).tolist() == expected
    # the same car interleaved with a quiet one (as partitions interleave cars) gets the same statuses
    flags = np.empty(16, dtype=bool)
    flags[0::2], flags[1::2] = one, False
    timeline = alert_states(flags, np.tile([0, 1], 8), rule)
    assert timeline[0::2].tolist() == expected and not timeline[1::2].any()


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_how_cars_interleave_in_the_stream_does_not_change_a_figure(data):
    n_cars = data.draw(st.integers(1, 4))
    n = 12
    alerting = np.array(data.draw(st.lists(st.booleans(), min_size=n * n_cars, max_size=n * n_cars)))
    onsets = data.draw(st.lists(st.one_of(st.none(), st.integers(0, n)), min_size=n_cars, max_size=n_cars))
    truth = [TruthRecord(f"c{c}", "overheating", o * 1000, 1.0, o) for c, o in enumerate(onsets) if o is not None]
    car_major = np.repeat(np.arange(n_cars), n)
    ts = np.tile(np.arange(n) * 1000, n_cars)
    # any interleaving that keeps each car's own order
    mix = np.array(data.draw(st.permutations(car_major.tolist())))
    order = np.concatenate([np.flatnonzero(car_major == c) for c in range(n_cars)])
    slots = np.argsort(mix, kind="stable")  # the k-th slot of car c takes car c's k-th event
    interleaved = np.empty(len(order), np.int64)
    interleaved[slots] = order
    names = np.array([f"c{c}" for c in car_major], dtype=object)
    a = quality(alerting, label(names, ts, truth))
    b = quality(alerting[interleaved], label(names[interleaved], ts[interleaved], truth))
    assert a == b


def test_a_failure_with_fewer_events_than_the_hysteresis_needs_is_reported_apart_from_the_detectable_ones():
    # Car a fails from its 3rd of 10 events and is caught; car b fails in its last 2 events, which no
    # rule needing 3 readings over threshold can alert on.
    truth = [TruthRecord("a", "overheating", 2000, 1.0, 2), TruthRecord("b", "overheating", 8000, 1.0, 8)]
    keys = np.array([b"a"] * 10 + [b"b"] * 10, dtype=object)
    ts = np.tile(np.arange(10) * 1000, 2)
    flags = np.r_[np.arange(10) >= 2, np.arange(10) >= 8]
    q = quality(alert_states(flags, label(keys, ts, truth).car, RULE), label(keys, ts, truth))
    assert q.failures_with_at_least(RULE.k_warning) == {
        "at_least_3_events": {"failures": 1, "detected": 1, "recall": 1.0},
        "fewer_than_3_events": {"failures": 1, "detected": 0, "recall": 0.0},
    }
