"""The promotion rule (fleetpulse.promotion): what "worse" means in numbers, when a trial has seen
enough, and when a new stable is rolled back."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fleetpulse.evaluation import alert_states, label, quality
from fleetpulse.ground_truth import HEALTHY, TruthRecord
from fleetpulse.promotion import (
    KEEP,
    PROMOTE,
    REJECT,
    ROLLBACK,
    WAIT,
    AlertLog,
    AlertWindow,
    ModelFigures,
    PromotionRule,
    alert_window,
    measure_trial,
    shadow_events,
)
from fleetpulse.shadow import ShadowBatch

RULE = PromotionRule()
INTERVAL_S = 10.0


def figures(version="1", car_hours=2000.0, recall=0.98, episodes=50, false_alerts=0.0, alert_rate=30.0, labelled=True):
    return ModelFigures(version, int(car_hours * 360), car_hours, alert_rate, labelled, episodes, recall, false_alerts)


# ---- the verdict on two models' figures -------------------------------------------------------


def test_a_candidate_waits_until_its_shadow_has_the_minimum_car_hours():
    decision = RULE.decide(figures(), figures("2", car_hours=RULE.min_car_hours - 1))
    assert decision.verdict == WAIT
    assert decision.reason == f"{RULE.min_car_hours - 1:,.1f} of {RULE.min_car_hours:,.0f} shadow car-hours"
    assert RULE.decide(figures(), figures("2", car_hours=RULE.min_car_hours)).verdict == PROMOTE


def test_a_candidate_that_misses_more_failures_than_the_margin_is_rejected():
    decision = RULE.decide(figures(recall=0.98), figures("2", recall=0.98 - RULE.recall_margin - 0.01))
    assert decision.verdict == REJECT
    assert decision.reason.startswith("recall 0.950 on 50 failures (stable 0.980): more than 0.02 lower")


def test_recall_lower_by_no_more_than_the_margin_is_not_worse():
    assert RULE.decide(figures(recall=0.98), figures("2", recall=0.98 - RULE.recall_margin + 0.001)).verdict == PROMOTE


def test_one_failure_missed_more_than_stable_is_never_a_verdict_however_few_the_failures():
    assert RULE.decide(figures(recall=1.0, episodes=37), figures("2", recall=36 / 37, episodes=37)).verdict == PROMOTE
    assert RULE.decide(figures(recall=1.0, episodes=37), figures("2", recall=35 / 37, episodes=37)).verdict == REJECT


def test_recall_on_fewer_failures_than_the_minimum_is_not_judged():
    few = RULE.min_episodes - 1
    decision = RULE.decide(figures(recall=1.0, episodes=few), figures("2", recall=0.0, episodes=few))
    assert decision.verdict == PROMOTE
    assert f"recall not judged ({few} failures, fewer than {RULE.min_episodes})" in decision.reason


@pytest.mark.parametrize("stable, candidate, verdict", [
    (0.0, 1.6, REJECT),   # above the budget and more than the margin above stable
    (0.0, 0.9, PROMOTE),  # more than the margin above stable, but within the budget
    (1.2, 1.6, PROMOTE),  # above the budget, but within the margin of stable
    (2.0, 1.0, PROMOTE),  # fewer than stable
])  # fmt: skip
def test_false_alerts_are_worse_only_above_the_budget_and_above_stable_by_the_margin(stable, candidate, verdict):
    decision = RULE.decide(figures(false_alerts=stable), figures("2", false_alerts=candidate))
    assert decision.verdict == verdict, decision.reason


def test_a_rejection_names_every_figure_that_is_worse():
    decision = RULE.decide(figures(), figures("2", recall=0.5, false_alerts=9.0))
    assert decision.verdict == REJECT
    assert decision.reason.count(";") == 1 and "recall 0.500" in decision.reason and "9.00 false alerts" in decision.reason


def test_a_promotion_states_the_figures_it_was_decided_on():
    decision = RULE.decide(figures(recall=0.97, false_alerts=0.5), figures("2", car_hours=1500, recall=0.99, false_alerts=0.0))
    assert decision.reason == ("not worse on 1,500 car-hours: recall 0.990 on 50 failures (stable 0.970), "
                               "0.00 false alerts per 1,000 car-hours (stable 0.50)")  # fmt: skip
    assert decision.as_dict()["candidate"]["recall"] == 0.99


@pytest.mark.parametrize("stable, candidate, verdict", [
    (20.0, 30.0, PROMOTE),   # 1.5 x: not above
    (20.0, 30.1, REJECT),
    (0.0, 1.5, PROMOTE),     # a stable without alerts counts as the floor
    (0.0, 1.6, REJECT),
])  # fmt: skip
def test_without_ground_truth_an_alert_rate_above_a_factor_of_stables_is_worse(stable, candidate, verdict):
    decision = RULE.decide(figures(alert_rate=stable, labelled=False), figures("2", alert_rate=candidate, labelled=False))
    assert decision.verdict == verdict, decision.reason
    assert "no ground truth" in decision.reason


def test_the_rule_refuses_numbers_that_make_no_sense():
    with pytest.raises(ValueError):
        PromotionRule(min_car_hours=0)
    with pytest.raises(ValueError):
        PromotionRule(rollback_factor=0.5)


# ---- figures from the shadow's flags ----------------------------------------------------------


def fleet(n_cars=100, n_events=120, failing_every=10, onset=60, seed=3):
    """Per-event car ids, Kafka timestamps, scores (healthy in [0, 1), failing >= 2 from onset) and
    ground truth as the simulator writes it: a healthy record per car at its first event, one at onset."""
    rng = np.random.default_rng(seed)
    t0 = 1_700_000_000_000
    cars = np.tile([f"car-{i:04d}" for i in range(n_cars)], n_events)
    seq = np.repeat(np.arange(n_events), n_cars)
    ts = t0 + seq * int(INTERVAL_S * 1000)
    failing_car = np.tile(np.arange(n_cars) % failing_every == 0, n_events)
    score = np.where(failing_car & (seq >= onset), 2.0 + rng.random(len(cars)), rng.random(len(cars)))
    truth = [TruthRecord(f"car-{i:04d}", HEALTHY, t0, 0.0, 0, INTERVAL_S) for i in range(n_cars)]
    truth += [TruthRecord(f"car-{i:04d}", "overheating", t0 + onset * int(INTERVAL_S * 1000), 1.0, onset, INTERVAL_S)
              for i in range(0, n_cars, failing_every)]  # fmt: skip
    return cars, ts, score, truth


def batches_of(cars, ts, stable_flag, candidate_flag, size=1000, stable="1", candidate="2") -> list[ShadowBatch]:
    n = len(cars)
    out = []
    for i in range(0, n, size):
        rows = slice(i, i + size)
        k = len(cars[rows])
        out.append(ShadowBatch(stable, candidate, 1.0, 1.0, 0, cars[rows].tolist(), ts[rows].tolist(), [0] * k,
                               list(range(i, i + k)), [0.0] * k, [0.0] * k,
                               stable_flag[rows].tolist(), candidate_flag[rows].tolist()))
    return out


def test_figures_are_evaluations_under_the_serving_hysteresis():
    cars, ts, score, truth = fleet()
    events = shadow_events(batches_of(cars, ts, score > 1.2, score > 0.6))
    stable, candidate = measure_trial(events, truth)
    labels = label(cars, ts, truth)
    q = quality(alert_states(score > 0.6, labels.car), labels)
    assert candidate.false_alerts_per_1000_car_hours == q.false_alerts_per_1000_car_hours > 0
    assert (candidate.episodes, candidate.recall) == (10, 1.0) == (stable.episodes, stable.recall)
    assert stable.false_alerts_per_1000_car_hours == 0
    assert candidate.car_hours == stable.car_hours == pytest.approx(100 * 120 * INTERVAL_S / 3600)
    # The alert rate counts every alert raised, true ones included: here one per failing car.
    assert stable.alert_rate == pytest.approx(1000 * 10 / stable.car_hours)
    # The candidate's: its false alerts, and the failures it was not already alerting on at onset.
    assert q.false_alerts < round(candidate.alert_rate * candidate.car_hours / 1000) <= q.false_alerts + 10


def test_a_candidate_at_half_the_threshold_is_rejected_and_one_that_sees_the_same_failures_promoted():
    cars, ts, score, truth = fleet()
    rule = replace(RULE, min_car_hours=30)
    worse = rule.decide(*measure_trial(shadow_events(batches_of(cars, ts, score > 1.2, score > 0.6)), truth))
    assert worse.verdict == REJECT and "false alerts" in worse.reason
    better = rule.decide(*measure_trial(shadow_events(batches_of(cars, ts, score > 1.2, score > 1.5)), truth))
    assert better.verdict == PROMOTE, better.reason


def test_a_single_flagged_reading_raises_no_alert_because_the_hysteresis_needs_three():
    cars, ts, score, truth = fleet(failing_every=10**6)
    lonely = np.zeros(len(cars), bool)
    lonely[::7] = True  # never 3 in 10 readings of one car
    stable, candidate = measure_trial(shadow_events(batches_of(cars, ts, np.zeros(len(cars), bool), lonely)), truth)
    assert candidate.alert_rate == candidate.false_alerts_per_1000_car_hours == 0


def test_without_truth_for_the_trials_cars_the_figures_are_unlabelled():
    cars, ts, score, _ = fleet()
    other_fleet = [TruthRecord("car-elsewhere", "overheating", 0, 1.0)]
    stable, candidate = measure_trial(shadow_events(batches_of(cars, ts, score > 1.2, score > 0.6)), other_fleet)
    assert not stable.labelled and not candidate.labelled
    assert candidate.alert_rate > stable.alert_rate > 0
    decision = RULE.decide(stable, replace(candidate, car_hours=RULE.min_car_hours))
    assert decision.verdict == REJECT and decision.reason.endswith("no ground truth: above 1.5 x stable's")


def test_shadow_events_are_put_in_stream_order_and_a_redelivered_chunk_counts_once():
    cars, ts, score, truth = fleet(n_cars=20, n_events=30)
    batches = batches_of(cars, ts, score > 1.2, score > 0.6, size=50)
    shuffled = batches[::-1] + batches[3:5]  # read back out of order, two chunks published twice
    events = shadow_events(shuffled)
    assert len(events) == len(cars)
    assert events.car_ids.tolist() == cars.tolist() and events.ts_ms.tolist() == ts.tolist()
    assert measure_trial(events, truth) == measure_trial(shadow_events(batches), truth)


def test_batches_of_different_trials_are_never_mixed():
    cars, ts, score, _ = fleet(n_cars=5, n_events=4)
    flags = score > 1
    two_trials = batches_of(cars, ts, flags, flags, candidate="2") + batches_of(cars, ts, flags, flags, candidate="3")
    with pytest.raises(ValueError, match="one trial"):
        shadow_events(two_trials)


# ---- the rollback watch ------------------------------------------------------------------------


def alert_log(partitions, offsets, raised) -> AlertLog:
    return AlertLog(np.asarray(partitions, np.int64), np.asarray(offsets, np.int64), np.asarray(raised, bool))


def test_a_window_counts_the_events_between_alerts_of_each_partition_and_the_alerts_raised_after_its_first():
    # Partition 0: alerts at offsets 100, 460, 820; partition 1: at 0 and 360 (a clear, not a raise).
    log = alert_log([0, 1, 0, 1, 0], [100, 0, 460, 360, 820], [True, True, True, False, True])
    window = alert_window(log, car_hours=10_000, interval_s=INTERVAL_S)
    # 720 + 360 events of 10 s: 3 car-hours; the raises at 460 and 820 (the openings are not counted).
    assert (window.car_hours, window.alerts, window.complete) == (3.0, 2, False)
    assert window.rate == pytest.approx(1000 * 2 / 3)


def test_a_window_stops_at_the_car_hours_asked_for_from_the_start_or_from_the_end():
    offsets = np.arange(0, 36_000, 360)  # one alert per car-hour of one partition
    log = alert_log(np.zeros(len(offsets)), offsets, np.ones(len(offsets)))
    first = alert_window(log, car_hours=10, interval_s=INTERVAL_S)
    assert (first.car_hours, first.alerts, first.complete) == (10.0, 10, True)
    raised = np.zeros(len(offsets), bool)
    raised[-20:] = True  # the last 20 car-hours alert, the rest only clear
    log = alert_log(np.zeros(len(offsets)), offsets, raised)
    assert alert_window(log, car_hours=10, interval_s=INTERVAL_S).alerts == 0
    assert alert_window(log, car_hours=10, interval_s=INTERVAL_S, latest=True).alerts == 10


def test_a_steady_log_gives_the_same_rate_from_the_start_and_from_the_end():
    # Three partitions; every 720 events a car is raised, escalated one event later and cleared ten later.
    raises = np.arange(0, 36_000, 720)
    offsets = np.concatenate([raises, raises + 1, raises + 10])
    raised = np.concatenate([np.ones(len(raises), bool), np.zeros(2 * len(raises), bool)])
    order = np.argsort(offsets, kind="stable")
    log = alert_log(np.repeat([0, 1, 2], len(offsets)), np.tile(offsets[order], 3), np.tile(raised[order], 3))
    by_time = np.lexsort((log.partitions, log.offsets))
    log = alert_log(log.partitions[by_time], log.offsets[by_time], log.raised[by_time])
    first = alert_window(log, car_hours=20, interval_s=INTERVAL_S)
    last = alert_window(log, car_hours=20, interval_s=INTERVAL_S, latest=True)
    assert first.rate == pytest.approx(500, rel=0.03) and last.rate == pytest.approx(500, rel=0.03)


def test_an_empty_log_is_a_window_of_nothing():
    window = alert_window(alert_log([], [], []), car_hours=1, interval_s=INTERVAL_S)
    assert (window.car_hours, window.alerts, window.rate, window.complete) == (0.0, 0, 0.0, False)


def window(rate: float, car_hours: float = 1000.0) -> AlertWindow:
    return AlertWindow(car_hours, int(rate * car_hours / 1000), True)


def test_a_new_stable_is_watched_until_its_first_car_hours_are_in():
    watch = RULE.watch(window(500, car_hours=RULE.watch_car_hours - 1), window(50))
    assert watch.verdict == WAIT
    assert watch.reason == f"{RULE.watch_car_hours - 1:,.1f} of {RULE.watch_car_hours:,.0f} car-hours of alerts"


@pytest.mark.parametrize("new, previous, verdict", [
    (101, 50, ROLLBACK),  # more than 2 x
    (100, 50, KEEP),      # 2 x: not more
    (30, 50, KEEP),
    (2, 0, KEEP),         # a previous stable without alerts counts as the floor
    (3, 0, ROLLBACK),
])  # fmt: skip
def test_a_new_stable_is_rolled_back_when_its_alert_rate_jumps_above_a_factor_of_the_previous_stables(new, previous, verdict):
    watch = RULE.watch(window(new), window(previous))
    assert watch.verdict == verdict, watch.reason
    assert watch.as_dict()["new"]["rate"] == pytest.approx(new)


@pytest.mark.parametrize("new, previous, shadow, verdict", [
    (40, 11.5, 38, KEEP),      # alerting as it did in shadow: no jump, whatever the previous stable did
    (80, 11.5, 38, ROLLBACK),  # more than 2 x both
    (40, 11.5, None, ROLLBACK),  # promoted by hand: only the previous stable's rate to go by
])  # fmt: skip
def test_a_new_stable_alerting_as_it_did_in_its_shadow_trial_is_no_jump(new, previous, shadow, verdict):
    watch = RULE.watch(window(new), window(previous), shadow_rate=shadow)
    assert watch.verdict == verdict, watch.reason
    assert ("in its shadow trial" in watch.reason) == (shadow is not None)
