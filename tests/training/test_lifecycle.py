"""`fleetpulse models decide` on the real stack (Kafka, fake-gcs): a trial's shadow batches, the
simulator's ground truth and the alerts on unique topics (written and read as the operator, secured
or not); versions and channels in a unique bucket.

The shadow batches are what the transformer publishes for each micro-batch (fleetpulse.shadow): a
fleet whose healthy readings score in [0, 1) and whose failing ones score >= 2 from their onset,
flagged by stable at 1.2 and by each candidate at its own threshold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer

from components import lifecycle
from fleetpulse import model_store
from fleetpulse.alerts import alert_record, encode_alert
from devtools.stack import access
from fleetpulse.clients import ensure_topics, gcs_client, kafka_config
from fleetpulse.ground_truth import HEALTHY, TruthRecord
from fleetpulse.hysteresis import FAILING, OK, WARNING
from fleetpulse.model_store import ROLLED_BACK
from fleetpulse.promotion import KEEP, PROMOTE, REJECT, ROLLBACK, WAIT, PromotionRule
from fleetpulse.settings import KafkaConnection
from fleetpulse.shadow import ShadowBatch, encode_shadow
from fleetpulse.topics import ALERTS, GROUND_TRUTH, MODEL_SHADOW, TOPICS
from simulator.truth_writer import TruthWriter
from tests.support.watched import WatchedProcess

FP = str(Path(sys.executable).with_name("fleetpulse"))
MODEL = "car-anomaly"  # the CLI names models by type; each test has its own bucket
N_CARS, N_EVENTS, ONSET, INTERVAL_S = 200, 90, 45, 10.0
CAR_HOURS = N_CARS * N_EVENTS * INTERVAL_S / 3600  # 50 car-hours of shadow
STABLE_THRESHOLD = 1.2
SENSOR_PARTITIONS = 3


class Lifecycle:
    """One test's topics, bucket and versions, and the decider run against them."""

    def __init__(self, kafka: KafkaConnection, gcs_endpoint: str, unique: str, tmp_path: Path):
        self.kafka, self.gcs_endpoint = kafka, gcs_endpoint
        self.gcs = gcs_client(gcs_endpoint)
        self.bucket = f"fp-decide-{unique}"
        self.gcs.create_bucket(self.bucket)
        self.shadow_topic, self.truth_topic, self.alerts_topic = f"shadow-{unique}", f"truth-{unique}", f"alerts-{unique}"
        names = {MODEL_SHADOW: self.shadow_topic, GROUND_TRUTH: self.truth_topic, ALERTS: self.alerts_topic}
        ensure_topics(kafka, [replace(TOPICS[spec], name=name) for spec, name in names.items()])
        self.saved = tmp_path / "saved"
        (self.saved / "variables").mkdir(parents=True)
        (self.saved / "saved_model.pb").write_bytes(b"metadata-only: the decider never opens a model")

    def release(self, threshold: float) -> int:
        """Publish and release a version as the pipeline does: the first is stable, later ones candidates."""
        version = model_store.claim_next_version(self.gcs, self.bucket, MODEL)
        model_store.publish(self.gcs, version, self.saved, {"threshold": threshold})
        model_store.release(self.gcs, version)
        return version.version

    def channels(self) -> model_store.Channels:
        return model_store.read_channels(self.gcs, self.bucket, MODEL)[0]

    def produce(self, topic: str, values: list[bytes], keys: list[bytes] | None = None) -> None:
        producer = Producer(kafka_config(self.kafka, **{"linger.ms": 20}))
        for i, value in enumerate(values):
            producer.produce(topic, value=value, key=None if keys is None else keys[i])
        assert producer.flush(30) == 0

    def env(self, **settings: str) -> dict[str, str]:
        """The decider's environment: this stack's GCS, Kafka as the operator (the topics are the test's own)."""
        return {**os.environ, **access.connection_env("DECIDE", self.kafka), "FLEETPULSE_DECIDE_GCS_ENDPOINT": self.gcs_endpoint,
                **{f"FLEETPULSE_DECIDE_{k.upper()}": v for k, v in settings.items()}}  # fmt: skip

    def decide(self, *args: str) -> list[dict]:
        """`fleetpulse models decide --once --json`: the decisions, one dict each."""
        out = subprocess.run([FP, "models", "decide", "--once", "--json", "--bucket", self.bucket, "--shadow-topic", self.shadow_topic,
                              "--truth-topic", self.truth_topic, "--alerts-topic", self.alerts_topic, *args],
                             capture_output=True, text=True, env=self.env(), timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    def decider(self, rule: PromotionRule, cls: type[lifecycle.Decider] = lifecycle.Decider) -> lifecycle.Decider:
        topics = [self.shadow_topic, self.truth_topic, self.alerts_topic]
        reader = lifecycle.TopicReader(self.kafka, topics, "fleetpulse-decider-test")
        return cls(reader, self.gcs, self.bucket, MODEL, *topics, rule=rule)


@pytest.fixture
def life(kafka, gcs_endpoint, unique, tmp_path) -> Lifecycle:
    return Lifecycle(kafka, gcs_endpoint, unique, tmp_path)


# ---- the fleet in shadow ------------------------------------------------------------------------

T0 = 1_700_000_000_000
CARS = [f"car-{i:04d}" for i in range(N_CARS)]
FAILING_CARS = CARS[::10]  # 20 failure episodes, overheating from event ONSET on


def fleet_scores(seed: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per event in stream order: car id, Kafka timestamp, sensor-data partition and offset, score."""
    rng = np.random.default_rng(seed)
    car_index = np.tile(np.arange(N_CARS), N_EVENTS)
    seq = np.repeat(np.arange(N_EVENTS), N_CARS)
    partition = car_index % SENSOR_PARTITIONS
    offset = np.zeros(len(seq), np.int64)
    for p in range(SENSOR_PARTITIONS):
        offset[partition == p] = np.arange((partition == p).sum())
    failing = (car_index % 10 == 0) & (seq >= ONSET)
    score = np.where(failing, 2.0 + rng.random(len(seq)), rng.random(len(seq)))
    return np.asarray(CARS)[car_index], T0 + seq * int(INTERVAL_S * 1000), partition, offset, score


def truth_records() -> list[TruthRecord]:
    """As the simulator writes them: each car healthy from its first event, the failing ones' onset."""
    records = [TruthRecord(c, HEALTHY, T0, 0.0, 0, INTERVAL_S) for c in CARS]
    return records + [TruthRecord(c, "overheating", T0 + ONSET * int(INTERVAL_S * 1000), 1.0, ONSET, INTERVAL_S) for c in FAILING_CARS]


def shadow_batches(stable: int, candidate: int, candidate_threshold: float, batch: int = 600) -> list[bytes]:
    cars, ts, partition, offset, score = fleet_scores()
    decided_ms = int(time.time() * 1000)  # after both versions were published, as a transformer's would be
    out = []
    for i in range(0, len(cars), batch):
        rows = slice(i, i + batch)
        out.append(encode_shadow(ShadowBatch(
            str(stable), str(candidate), STABLE_THRESHOLD, candidate_threshold, decided_ms, cars[rows].tolist(),
            ts[rows].tolist(), partition[rows].tolist(), offset[rows].tolist(), score[rows].tolist(), score[rows].tolist(),
            (score[rows] > STABLE_THRESHOLD).tolist(), (score[rows] > candidate_threshold).tolist())))  # fmt: skip
    return out


def start_trial(life: Lifecycle, candidate_threshold: float, labelled: bool = True) -> tuple[int, int]:
    stable = life.release(STABLE_THRESHOLD)
    candidate = life.release(candidate_threshold)
    life.produce(life.shadow_topic, shadow_batches(stable, candidate, candidate_threshold))
    if labelled:
        writer = TruthWriter(life.kafka, life.truth_topic, None)
        writer.write(truth_records())
        writer.close()
    return stable, candidate


def test_a_candidate_flagging_healthy_readings_at_half_the_threshold_is_rejected_with_its_figures(life):
    stable, candidate = start_trial(life, candidate_threshold=STABLE_THRESHOLD / 2)
    [decision] = life.decide("--min-car-hours", "40")
    assert (decision["action"], decision["version"], decision["against"], decision["applied"]) == (REJECT, candidate, stable, True)
    figures = decision["figures"]
    assert figures["candidate"]["car_hours"] == figures["stable"]["car_hours"] == pytest.approx(CAR_HOURS)
    assert figures["stable"]["false_alerts_per_1000_car_hours"] == 0
    assert figures["candidate"]["false_alerts_per_1000_car_hours"] > 100
    assert figures["candidate"]["episodes"] == len(FAILING_CARS)
    ch = life.channels()
    assert (ch.stable, ch.candidate) == (stable, None)
    assert ch.rejected[candidate].startswith(f"worse than version {stable} in shadow: ")
    assert "false alerts per 1,000 car-hours" in ch.rejected[candidate]


def test_a_candidate_as_good_on_failures_without_false_alerts_is_promoted(life):
    stable, candidate = start_trial(life, candidate_threshold=1.0)
    [decision] = life.decide("--min-car-hours", "40")
    assert (decision["action"], decision["applied"]) == (PROMOTE, True), decision["reason"]
    assert decision["figures"]["candidate"]["recall"] == decision["figures"]["stable"]["recall"] == 1.0
    ch = life.channels()
    assert (ch.stable, ch.candidate, ch.previous) == (candidate, None, (stable,))


def test_a_candidate_that_misses_failures_is_rejected_on_recall(life):
    stable, candidate = start_trial(life, candidate_threshold=2.9)  # flags one failing reading in ten: too few for the hysteresis
    [decision] = life.decide("--min-car-hours", "40")
    assert decision["action"] == REJECT and decision["reason"].startswith("recall "), decision["reason"]
    assert life.channels().candidate is None


def test_without_ground_truth_the_alert_rate_decides(life):
    stable, candidate = start_trial(life, candidate_threshold=STABLE_THRESHOLD / 2, labelled=False)
    [decision] = life.decide("--min-car-hours", "40")
    assert decision["action"] == REJECT and decision["reason"].endswith("no ground truth: above 1.5 x stable's")
    assert not decision["figures"]["candidate"]["labelled"]


def test_the_candidate_waits_while_its_shadow_has_fewer_car_hours_than_the_minimum(life):
    stable, candidate = start_trial(life, candidate_threshold=1.0)
    [decision] = life.decide("--min-car-hours", "100")
    assert (decision["action"], decision["reason"]) == (WAIT, f"{CAR_HOURS:,.1f} of 100 shadow car-hours")
    assert (life.channels().stable, life.channels().candidate) == (stable, candidate)


def test_each_decision_is_one_sentence_without_json(life):
    stable, candidate = start_trial(life, candidate_threshold=1.0)
    env = life.env(shadow_topic=life.shadow_topic, truth_topic=life.truth_topic, alerts_topic=life.alerts_topic, bucket=life.bucket,
                   min_car_hours="40")
    out = subprocess.run([FP, "models", "decide", "--once"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"{MODEL} version {candidate} promoted over version {stable}: not worse on 50 car-hours: "
                                       "recall 1.000 on 20 failures (stable 1.000), "
                                       "0.00 false alerts per 1,000 car-hours (stable 0.00)"]
    assert "deciding on car-anomaly" in out.stderr


def test_the_loop_decides_once_the_trial_has_filled_serves_its_probes_and_ends_on_sigterm(life):
    from devtools.stack.process import free_port

    stable, candidate = life.release(STABLE_THRESHOLD), life.release(1.0)
    batches = shadow_batches(stable, candidate, 1.0)
    half = len(batches) // 2
    life.produce(life.shadow_topic, batches[:half])  # 25 car-hours: below the 40 the rule needs
    port = free_port()
    args = ["--interval", "0.5", "--min-car-hours", "40", "--bucket", life.bucket, "--shadow-topic", life.shadow_topic,
            "--truth-topic", life.truth_topic, "--alerts-topic", life.alerts_topic]
    proc = WatchedProcess([FP, "models", "decide", *args], life.env(metrics_port=str(port)), port)
    try:
        # Waiting is progress (stderr); what the loop read once it does not read again.
        assert "25.0 of 40 shadow car-hours" in proc.next_line("err", "in shadow, waiting")
        assert proc.get("/readyz")[0] == 200 and proc.get("/healthz")[0] == 200
        life.produce(life.shadow_topic, batches[half:])
        assert proc.next_line("out", "promoted").startswith(f"{MODEL} version {candidate} promoted over version {stable}: "
                                                            "not worse on 50 car-hours")  # fmt: skip
        assert 'fleetpulse_decider_decisions_total{action="promote",applied="true"} 1.0' in proc.get("/metrics")[1]
        assert (life.channels().stable, life.channels().candidate) == (candidate, None)
        assert proc.terminate() == 0
    finally:
        proc.kill()


class RacingDecider(lifecycle.Decider):
    """Waits, between reading the channels for its write and writing them, until the other has read them too."""

    both_read: threading.Barrier

    def _apply(self, outcome, seen, change):
        def after_both_read(channels):
            self.both_read.wait(timeout=30)
            return change(channels)

        return super()._apply(outcome, seen, after_both_read)


def test_two_deciders_racing_on_the_same_candidate_make_exactly_one_channel_change(life):
    stable, candidate = start_trial(life, candidate_threshold=1.0)
    rule = replace(PromotionRule(), min_car_hours=40)
    RacingDecider.both_read = threading.Barrier(2)
    deciders = [life.decider(rule, RacingDecider), life.decider(rule, RacingDecider)]
    outcomes = []
    threads = [threading.Thread(target=lambda d=d: outcomes.extend(d.step())) for d in deciders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    # Both read the same generation of channels.json: the precondition lets one write land.
    assert sorted((o.action, o.applied) for o in outcomes) == [(PROMOTE, False), (PROMOTE, True)]
    [lost] = [o for o in outcomes if not o.applied]
    assert lost.reason.startswith("another writer changed the channels first")
    ch = life.channels()
    assert (ch.stable, ch.candidate, ch.previous) == (candidate, None, (stable,))


def test_a_decider_that_comes_second_finds_the_decision_made_and_changes_nothing(life):
    stable, candidate = start_trial(life, candidate_threshold=1.0)
    rule = replace(PromotionRule(), min_car_hours=40, watch_car_hours=20)
    [first] = life.decider(rule).step()
    assert (first.action, first.applied) == (PROMOTE, True)
    [second] = life.decider(rule).step()
    # No trial is left; the new stable's watch begins (it has raised no alert yet).
    assert (second.action, second.watch, second.version) == (WAIT, True, candidate)
    assert life.channels().previous == (stable,)


# ---- the rollback watch -------------------------------------------------------------------------


def alerts_of(version: int, first_offset: int, last_offset: int, every: int, t0_ms: int) -> list[bytes]:
    """A version's alert records on each sensor-data partition: a raise every ``every`` events (one
    car to warning, then failing), and its clear 10 events later."""
    out = []
    for p in range(SENSOR_PARTITIONS):
        for n, off in enumerate(range(first_offset, last_offset, every)):
            car = CARS[(n * SENSOR_PARTITIONS + p) % N_CARS]
            for dt, (old, new) in enumerate([(OK, WARNING), (WARNING, FAILING)]):
                out.append(encode_alert(alert_record(car, old, new, 3.0, 1.2, str(version), T0, t0_ms + off + dt, p, off + dt)))
            out.append(encode_alert(alert_record(car, FAILING, OK, 0.1, 1.2, str(version), T0, t0_ms + off + 10, p, off + 10)))
    return out


def promoted(life: Lifecycle, previous_every: int, new_every: int, new_events: int = 7200) -> tuple[int, int]:
    """Version 1 served 12 car-hours per partition with a raise every ``previous_every`` events;
    version 2, promoted, ``new_events`` per partition with one every ``new_every``."""
    first = life.release(STABLE_THRESHOLD)
    second = life.release(1.0)
    model_store.promote(life.gcs, life.bucket, MODEL, second)
    now = int(time.time() * 1000)  # raised after both were published
    before = alerts_of(first, 0, 4320, previous_every, now)
    after = alerts_of(second, 4320, 4320 + new_events, new_every, now + 10_000)
    life.produce(life.alerts_topic, before + after)
    return first, second


def test_a_new_stable_whose_alert_rate_jumps_is_rolled_back_to_the_previous_stable(life):
    first, second = promoted(life, previous_every=720, new_every=72)
    [watch] = life.decide("--watch-car-hours", "20")
    assert (watch["action"], watch["version"], watch["against"], watch["applied"]) == (ROLLBACK, second, first, True), watch["reason"]
    # One raise every 72 events of 10 s per partition: 5 alerts per car-hour, 10 x the previous stable's.
    assert watch["figures"]["new"]["rate"] == pytest.approx(5000, rel=0.05)
    assert watch["figures"]["previous"]["rate"] == pytest.approx(500, rel=0.05)
    ch = life.channels()
    assert (ch.stable, ch.previous, ch.rejected) == (first, (), {second: ROLLED_BACK})


def test_a_new_stable_alerting_like_the_previous_one_is_kept(life):
    first, second = promoted(life, previous_every=720, new_every=600)
    [watch] = life.decide("--watch-car-hours", "20")
    assert (watch["action"], watch["version"]) == (KEEP, second), watch["reason"]
    assert life.channels().stable == second


def test_alerts_with_the_new_stables_number_from_before_it_was_published_are_another_models_and_not_judged(life):
    # A bucket made again numbers from 1: the topic still holds an earlier model's version 2, alerting at 10 x.
    life.produce(life.alerts_topic, alerts_of(2, 20_000, 27_200, 72, int(time.time() * 1000) - 86_400_000))
    first, second = promoted(life, previous_every=720, new_every=600)
    assert second == 2
    [watch] = life.decide("--watch-car-hours", "20")
    assert (watch["action"], watch["version"]) == (KEEP, second), watch["reason"]
    assert watch["figures"]["new"]["rate"] == pytest.approx(600, rel=0.05)  # a raise every 600 events, its own


def test_a_new_stable_alerting_as_it_did_in_its_shadow_trial_is_kept_though_the_stable_it_replaced_alerted_less(life):
    # The replaced stable had its alerting cars alerting already, so it raised few new alerts (125 per
    # 1,000 car-h); the candidate raised 400 in shadow, its failing cars' first alerts, and does so again.
    stable, candidate = start_trial(life, candidate_threshold=1.0)
    [promotion] = life.decide("--min-car-hours", "40")
    assert (promotion["action"], promotion["applied"]) == (PROMOTE, True), promotion["reason"]
    assert promotion["figures"]["candidate"]["alert_rate"] == pytest.approx(400, rel=0.05)
    now = int(time.time() * 1000)
    life.produce(life.alerts_topic, alerts_of(stable, 0, 4320, 2880, now) + alerts_of(candidate, 4320, 4320 + 7200, 1200, now + 10_000))
    [watch] = life.decide("--watch-car-hours", "20")
    assert (watch["action"], watch["version"]) == (KEEP, candidate), watch["reason"]
    assert watch["figures"]["new"]["rate"] > 2 * watch["figures"]["previous"]["rate"]  # a jump against the old stable alone
    assert "in its shadow trial" in watch["reason"]
    assert life.channels().stable == candidate


def test_a_new_stable_is_watched_until_its_first_car_hours_of_alerts_are_in(life):
    first, second = promoted(life, previous_every=720, new_every=72, new_events=720)
    [watch] = life.decide("--watch-car-hours", "20")
    assert (watch["action"], watch["watch"]) == (WAIT, True)
    assert watch["reason"].endswith("of 20 car-hours of alerts")
    assert life.channels().stable == second
