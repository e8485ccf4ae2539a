"""The bridge's rules for bad input and refused records, without servers: a scripted producer stands in
for Kafka, so each rule (what is retried, what is dead-lettered, what is acked and when) is checked
directly. The same paths against real servers are in test_bridge.py and tests/faults/."""

from __future__ import annotations

import time
from collections import deque

import numpy as np
import pytest
from confluent_kafka import KafkaError, KafkaException
from hypothesis import given, settings
from hypothesis import strategies as st

from bridges.bridge import Bridge
from bridges.delivery import Next, next_step
from bridges.health import Health
from bridges.metrics import BridgeMetrics
from bridges.settings import BridgeSettings
from bridges.validation import Screen
from devtools.loadgen import bridge_load as loadgen
from fleetpulse.codec import encode_batch
from fleetpulse.mqtt_wire import Parsed
from fleetpulse.topics import (
    DLQ_BAD_CAR_ID,
    DLQ_KAFKA_REJECTED,
    DLQ_KIND_HEADER,
    DLQ_NON_FINITE,
    DLQ_ORIGINAL_SIZE_HEADER,
    DLQ_OUT_OF_RANGE,
    DLQ_OVERSIZED,
    DLQ_REASON_HEADER,
    DLQ_UNDECODABLE,
    MQTT_TOPIC_HEADER,
)

TOPIC = b"vehicles/sensor/data/car-00001"


class Msg:
    """A delivery report; like librdkafka's, it carries no headers."""

    def __init__(self, topic, value, key, headers, ts):
        self._t, self._v, self._k, self._ts = topic, value, key, ts
        self.produced_headers = dict(headers)

    def topic(self):
        return self._t

    def value(self):
        return self._v

    def key(self):
        return self._k

    def headers(self):
        return None

    def timestamp(self):
        return (1, self._ts)


class ScriptedProducer:
    """Queues produced records; poll() reports each delivered, or failed with ``fail(msg)``'s error."""

    def __init__(self, fail=lambda msg: None, raise_on=lambda topic, value: None):
        self.fail, self.raise_on = fail, raise_on
        self.queue: list[tuple[Msg, object]] = []
        self.delivered: list[Msg] = []
        self.attempts = 0

    def produce(self, topic, value, key, headers=None, timestamp=0, on_delivery=None):
        self.attempts += 1
        if (err := self.raise_on(topic, value)) is not None:
            raise KafkaException(err)
        self.queue.append((Msg(topic, value, key, headers or [], timestamp), on_delivery))

    def poll(self, timeout=0):
        queue, self.queue = self.queue, []
        for msg, cb in queue:
            err = self.fail(msg)
            if err is None:
                self.delivered.append(msg)
            cb(err, msg)
        return len(queue)


class Source:
    def __init__(self):
        self.ack_queue = deque()


def make_bridge(producer, **settings) -> tuple[Bridge, Source]:
    s = BridgeSettings(topic="data", dlq_topic="dlq", **settings)
    return Bridge(s, producer, [], BridgeMetrics()), Source()


def read_of(payloads: list[bytes], topics: list[bytes] | None = None) -> Parsed:
    topics = topics or [TOPIC] * len(payloads)
    return Parsed(topics=list(topics), payloads=list(payloads), packet_ids=list(range(1, len(payloads) + 1)))


def settle(bridge: Bridge, producer: ScriptedProducer, rounds: int = 20) -> None:
    """Deliver, and produce what is due as if the backoff delays had passed."""
    for _ in range(rounds):
        producer.poll()
        bridge._produce_due(time.monotonic() + 3600)


def test_permanent_refusal_is_tried_a_bounded_number_of_times_then_dead_lettered_and_the_read_is_acked():
    producer = ScriptedProducer(fail=lambda m: KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if m.topic() == "data" and m.value() == bad else None)
    bridge, source = make_bridge(producer, kafka_refused_tries=3)
    good = loadgen.payloads(5)
    bad = good[2]
    bridge.forward(source, read_of(good))
    settle(bridge, producer)
    batch = source.ack_queue[0]
    assert batch.left == 0 and bridge.in_flight == 0
    letters = [m for m in producer.delivered if m.topic() == "dlq"]
    assert len(letters) == 1 and letters[0].value() == bad
    headers = letters[0].produced_headers
    assert headers[DLQ_KIND_HEADER] == DLQ_KAFKA_REJECTED.encode() and b"MSG_SIZE_TOO_LARGE" in headers[DLQ_REASON_HEADER]
    assert bridge.summary.forwarded == 4 and bridge.summary.dead_lettered == 1 and bridge.summary.delivery_errors == 3


def test_transient_errors_are_retried_for_as_long_as_they_last_and_nothing_is_acked_before():
    failures = {"left": 7}

    def fail(msg):
        if failures["left"]:
            failures["left"] -= 1
            return KafkaError(KafkaError._MSG_TIMED_OUT)
        return None

    producer = ScriptedProducer(fail=fail)
    bridge, source = make_bridge(producer, kafka_refused_tries=2)
    bridge.forward(source, read_of(loadgen.payloads(1)))
    for _ in range(7):
        producer.poll()
        assert source.ack_queue[0].left == 1, "acked before Kafka confirmed"
        bridge._produce_due(time.monotonic() + 3600)
    producer.poll()
    assert source.ack_queue[0].left == 0 and bridge.summary.forwarded == 1 and bridge.summary.dead_lettered == 0
    (record,) = producer.delivered
    assert record.produced_headers[MQTT_TOPIC_HEADER] == TOPIC, "the record produced again lost its headers"


def test_a_dead_letter_kafka_refuses_for_good_is_let_go_counted_and_never_raises():
    producer = ScriptedProducer(raise_on=lambda topic, value: KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED) if topic == "dlq" else None)
    bridge, source = make_bridge(producer, kafka_refused_tries=3)
    bridge.forward(source, read_of([b"garbage", *loadgen.payloads(3)]))
    settle(bridge, producer)
    assert source.ack_queue[0].left == 0 and bridge.in_flight == 0
    assert bridge.summary.dead_letter_failures == 1 and bridge.summary.forwarded == 3 and bridge.summary.dead_lettered == 0


def test_a_record_produce_refuses_at_once_takes_the_same_path():
    producer = ScriptedProducer(raise_on=lambda topic, value: KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if topic == "data" else None)
    bridge, source = make_bridge(producer, kafka_refused_tries=2)
    bridge.forward(source, read_of(loadgen.payloads(2)))
    settle(bridge, producer)
    assert source.ack_queue[0].left == 0 and bridge.summary.dead_lettered == 2


def test_oversized_payload_goes_to_the_dlq_as_a_bounded_prefix_with_its_size_and_reason():
    producer = ScriptedProducer()
    bridge, source = make_bridge(producer, dlq_prefix_bytes=100)
    big = bytes(2 * 1024 * 1024)
    bridge.forward(source, read_of([big, *loadgen.payloads(2)]))
    settle(bridge, producer)
    (letter,) = [m for m in producer.delivered if m.topic() == "dlq"]
    headers = letter.produced_headers
    assert letter.value() == big[:100] and int(headers[DLQ_ORIGINAL_SIZE_HEADER]) == len(big)
    assert headers[DLQ_KIND_HEADER] == DLQ_OVERSIZED.encode() and b"2,097,152 bytes" in headers[DLQ_REASON_HEADER]
    assert bridge.summary.forwarded == 2


@pytest.mark.parametrize("err, attempts, dead_letter, expected", [
    (KafkaError._MSG_TIMED_OUT, 100, False, Next.RETRY),
    (KafkaError._TRANSPORT, 100, True, Next.RETRY),
    (KafkaError.INVALID_RECORD, 2, False, Next.RETRY),
    (KafkaError.INVALID_RECORD, 3, False, Next.DEAD_LETTER),
    (KafkaError.TOPIC_AUTHORIZATION_FAILED, 3, True, Next.GIVE_UP),
])  # fmt: skip
def test_transient_errors_wait_forever_and_permanent_ones_leave_after_their_tries(err, attempts, dead_letter, expected):
    assert next_step(KafkaError(err), attempts, 3, dead_letter) is expected


# --- what goes to the DLQ ----------------------------------------------------------------------------


def rows(n: int) -> np.ndarray:
    values = np.full((n, 18), 0.5)
    values[:, 0:3], values[:, 4], values[:, 9:13], values[:, 17] = 40.0, 220.0, 32, 2000
    return values


@pytest.mark.parametrize("column, value, kind, name", [
    (0, np.nan, DLQ_NON_FINITE, "coolant_temp"),
    (6, np.inf, DLQ_NON_FINITE, "speed"),
    (13, -np.inf, DLQ_NON_FINITE, "accelerometer_1_1_value"),
    (0, 900.0, DLQ_OUT_OF_RANGE, "coolant_temp"),
    (3, 1.5, DLQ_OUT_OF_RANGE, "battery_percentage"),
    (9, 250, DLQ_OUT_OF_RANGE, "tire_pressure_1_1"),
    (6, -1.0, DLQ_OUT_OF_RANGE, "speed"),
])  # fmt: skip
def test_impossible_readings_are_refused_naming_the_reading(column, value, kind, name):
    values = rows(3)
    values[1, column] = value
    refused = Screen(1000)(encode_batch(values), [TOPIC] * 3)
    assert list(refused) == [1] and refused[1][0] == kind and refused[1][1].startswith(name)


@pytest.mark.parametrize("car", [b"", b"bad car", b"-leading-dash", "\u00fcml\u00e4ut".encode(), b"x" * 65, b"a;b"])
def test_malformed_car_ids_are_refused(car):
    refused = Screen(1000)(encode_batch(rows(2)), [TOPIC, b"vehicles/sensor/data/" + car])
    assert list(refused) == [1] and refused[1][0] == DLQ_BAD_CAR_ID


def test_good_records_of_every_car_id_shape_pass():
    topics = [b"vehicles/sensor/data/" + c for c in (b"electric-vehicle-00001", b"car1a2b-00042", b"A", b"x" * 64, b"a.b_c-d")]
    assert Screen(1000)(encode_batch(rows(5)), topics) == {}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=30))
def test_any_bytes_are_either_a_plausible_record_or_refused_with_a_reason(payloads):
    refused = Screen(1000)(payloads, [TOPIC] * len(payloads))
    assert all(kind in (DLQ_UNDECODABLE, DLQ_NON_FINITE, DLQ_OUT_OF_RANGE) and reason for kind, reason in refused.values())


def test_loadgen_payloads_are_plausible_and_keep_their_sequence_numbers():
    payloads = loadgen.payloads(1000, start_seq=123_456)
    assert Screen(1000)(payloads, [TOPIC] * 1000) == {}
    assert loadgen.sequence_numbers(payloads).tolist() == list(range(123_456, 124_456))


# --- stuck is visible ----------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_pending_input_without_progress_turns_ready_then_live_unhealthy_and_progress_heals_it():
    clock = Clock()
    h = Health(ready_after_s=30, live_after_s=300, clock=clock)
    clock.t += 100  # idle: nothing pending, no progress needed
    h.turn(clock.t, pending=0, connected=1)
    assert h.unready() == [] and h.dead() == []
    h.turn(clock.t, pending=500, connected=1)
    clock.t += 29
    h.turn(clock.t, pending=500, connected=1)
    assert h.unready() == []
    clock.t += 2
    h.turn(clock.t, pending=500, connected=1)
    assert h.unready() == ["no_progress"] and h.dead() == []
    clock.t += 300
    h.turn(clock.t, pending=500, connected=1)
    assert h.dead() == ["no_progress"]
    h.progress(clock.t)
    assert h.unready() == [] and h.dead() == []


def test_a_loop_that_stops_turning_is_seen_by_the_probes():
    clock = Clock()
    h = Health(ready_after_s=30, live_after_s=300, clock=clock)
    h.turn(clock.t, pending=0, connected=1)
    clock.t += 301
    assert h.unready() == ["loop", "mqtt_down"] and h.dead() == ["loop"]


def test_no_broker_connection_makes_the_bridge_unready_but_not_dead():
    clock = Clock()
    h = Health(ready_after_s=30, live_after_s=300, clock=clock)
    for _ in range(40):
        clock.t += 10
        h.turn(clock.t, pending=0, connected=0)
    assert h.unready() == ["mqtt_down"] and h.dead() == []
