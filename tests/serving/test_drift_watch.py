"""The transformer's drift watch: windows of live readings against the served version's reference; a
feature that stays drifted requests one retrain on model-requests (real Kafka)."""

from __future__ import annotations

import json

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition

from fleetpulse.clients import kafka_config
from fleetpulse.drift import reference
from fleetpulse.settings import KafkaConnection
from inference.transformer import metrics
from inference.transformer.drift_watch import DriftWatch

NAMES = ["speed", "control_unit_firmware"]


def fleet(n: int, rng, firmware_share: float = 0.0) -> np.ndarray:
    speed = rng.normal(60, 15, n)
    firmware = np.full(n, 2000.0)
    firmware[rng.random(n) < firmware_share] = 2100.0  # an over-the-air update training never saw
    return np.stack([speed, firmware], axis=1).astype(np.float32)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def requests(kafka: KafkaConnection, topic: str) -> list[dict]:
    c = Consumer({**kafka_config(kafka), "group.id": f"drift-{topic}", "enable.auto.commit": False})
    _, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    c.assign([TopicPartition(topic, 0, 0)])
    out = []
    while len(out) < high:
        out += [json.loads(m.value()) for m in c.consume(100, 2.0) if m.error() is None]
    c.close()
    return out


def watch(kafka: KafkaConnection, topic: str, refs: dict, clock: Clock) -> tuple[DriftWatch, Producer]:
    producer = Producer(kafka_config(kafka))
    return DriftWatch(refs.get, producer, topic, "car-anomaly", threshold=0.25, window_s=60, windows=2, min_rows=500,
                      cooldown_s=3600, clock=clock), producer


def requests_topic(kafka: KafkaConnection, unique: str) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"model-requests-{unique}"
    admin = AdminClient(kafka_config(kafka))
    for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        f.result()
    return topic


def test_an_ota_rollout_raises_the_firmware_gauge_and_requests_one_retrain_while_an_unchanged_fleet_does_not(kafka, unique):
    topic = requests_topic(kafka, unique)
    rng = np.random.default_rng(0)
    clock = Clock()
    w, producer = watch(kafka, topic, {"1": reference(fleet(20_000, rng), NAMES)}, clock)
    for minute in range(3):  # unchanged fleet
        w.add(fleet(2_000, rng), "1")
        clock.now += 61
        w.add(fleet(0, rng), "1")
    assert w.last_psi["control_unit_firmware"] < 0.25
    assert metrics.FEATURE_DRIFT.labels("control_unit_firmware")._value.get() < 0.25
    for minute in range(4):  # the rollout reaches 30% of the fleet and stays
        w.add(fleet(2_000, rng, firmware_share=0.3), "1")
        clock.now += 61
        w.add(fleet(0, rng), "1")
    assert w.last_psi["control_unit_firmware"] > 0.25 and w.last_psi["speed"] < 0.1
    assert metrics.FEATURE_DRIFT.labels("control_unit_firmware")._value.get() > 0.25
    producer.flush(10)
    sent = requests(kafka, topic)
    assert len(sent) == 1  # two windows in a row requested it; later windows are inside the cooldown
    assert sent[0]["reason"] == "drift" and sent[0]["model_version"] == "1" and set(sent[0]["features"]) == {"control_unit_firmware"}


def test_a_version_without_a_reference_turns_drift_off_and_scoring_goes_on(kafka, unique):
    clock = Clock()
    lines = []
    w, _ = watch(kafka, f"unused-{unique}", {}, clock)
    w.progress = lines.append
    w.add(fleet(1_000, np.random.default_rng(1)), "7")
    clock.now += 61
    assert w.close_window() == {} and any("no drift reference" in line for line in lines)


def test_drift_on_a_feature_the_model_does_not_read_as_it_is_is_exported_but_requests_no_retrain(kafka, unique):
    topic = requests_topic(kafka, unique)
    rng = np.random.default_rng(3)
    clock = Clock()
    # How the fleet is driven (speed) moves; the model only reads firmware as it is.
    w, producer = watch(kafka, topic, {"1": reference(fleet(20_000, rng), NAMES, triggers=["control_unit_firmware"])}, clock)
    for minute in range(4):
        shifted = fleet(2_000, rng)
        shifted[:, 0] += 30
        w.add(shifted, "1")
        clock.now += 61
        w.add(fleet(0, rng), "1")
    assert w.last_psi["speed"] > 0.25
    assert metrics.FEATURE_DRIFT.labels("speed")._value.get() > 0.25
    producer.flush(10)
    assert requests(kafka, topic) == []
