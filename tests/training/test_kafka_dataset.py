"""The TF-IO Kafka reader: complete, exact windows, or a loud error."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from confluent_kafka import Producer

from components.kafka_dataset import WindowError, read_records, read_timed_records, resolve_window, split_window
from fleetpulse.clients import kafka_config
from fleetpulse.errors import BrokerUnavailable


def _by_car(keys, values) -> dict:
    rows = defaultdict(list)
    for k, v in zip(keys.tolist(), values):
        rows[k].append(v)
    return {k: np.array(v) for k, v in rows.items()}


def test_tfio_reads_every_partition_exactly_as_published(fleet_topics):
    window = resolve_window(fleet_topics.kafka, fleet_topics.topic)
    records = read_records(fleet_topics.kafka, window)
    fleet = fleet_topics.fleet

    assert window.records == len(fleet.values) == len(records)
    assert len(window.ranges) == 3 and all(r.count > 0 for r in window.ranges)
    got = _by_car(records.keys, records.values)
    want = _by_car(np.array([c.encode() for c in fleet.car_ids], dtype=object), fleet.values)
    assert got.keys() == want.keys()
    for car in want:  # per car: same readings in the same (time) order, bit for bit
        np.testing.assert_array_equal(got[car], want[car])


def test_tfio_reader_honours_start_offsets(fleet_topics):
    whole = resolve_window(fleet_topics.kafka, fleet_topics.topic)
    head, tail = split_window(whole, 0.5)
    all_rows = read_records(fleet_topics.kafka, whole).values
    tail_rows = read_records(fleet_topics.kafka, tail).values

    assert len(tail_rows) == tail.records == whole.records - head.records
    # TF-IO's own from_kafka would start at offset 0 here; the tail must be the tail.
    assert {r.tobytes() for r in tail_rows} <= {r.tobytes() for r in all_rows}
    assert len({r.tobytes() for r in tail_rows} & {r.tobytes() for r in read_records(fleet_topics.kafka, head).values}) == 0


def test_time_window_selects_records_by_kafka_timestamp(fleet_topics):
    ts = np.unique(fleet_topics.fleet.ts_ms)
    window = resolve_window(fleet_topics.kafka, fleet_topics.topic, int(ts[10]), int(ts[20]))
    records = read_timed_records(fleet_topics.kafka, window)

    assert len(records) == 10 * len(set(fleet_topics.fleet.car_ids))
    assert records.ts_ms.min() == ts[10] and records.ts_ms.max() == ts[19]


def test_empty_window_fails_naming_topic_and_offsets(fleet_topics):
    ts = int(fleet_topics.fleet.ts_ms.max()) + 60_000
    window = resolve_window(fleet_topics.kafka, fleet_topics.topic, ts, ts + 1000)
    with pytest.raises(WindowError, match=rf"topic '{fleet_topics.topic}' offsets \[p0:\d+-\d+.*holds 0 records"):
        read_records(fleet_topics.kafka, window)


def test_missing_topic_is_a_clear_error(kafka, unique):
    # Logged in (a secured stack), the rights check up front finds the topic missing, before the window does.
    with pytest.raises((WindowError, BrokerUnavailable), match=f"topic 'no-such-{unique}' does not exist"):
        resolve_window(kafka, f"no-such-{unique}")


def test_unreachable_broker_fails_loudly_instead_of_reading_nothing(private_service):
    kafka = private_service("kafka")
    kafka.stop()
    with pytest.raises(BrokerUnavailable, match="unreachable"):
        resolve_window(kafka.connection, "sensor-data")


def test_undecodable_records_are_skipped_and_counted(make_fleet_topics):
    ft = make_fleet_topics(n_cars=4, n_events=60)
    producer = Producer(kafka_config(ft.kafka))
    for garbage in (b"", b"\x01nope", b"\x00\x00\x00\x00\x01\x02"):
        producer.produce(ft.topic, garbage, key=b"car00000", partition=0)
    producer.flush(10)

    records = read_records(ft.kafka, resolve_window(ft.kafka, ft.topic))
    assert records.undecodable == 3
    assert len(records) == 240
