"""Read back what the run wrote to Kafka: offsets, event logs, alert records, ground truth; and the
alerting status at every event, rebuilt from the alert records (fleetpulse.evaluation scores it).

The reader is the operator (``admin``): no service may read all of sensor-data, alerts and ground-truth."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import numpy as np

from fleetpulse.alerts import decode_alert
from fleetpulse.clients import kafka_config
from fleetpulse.framing import DecodeError
from fleetpulse.ground_truth import TruthRecord
from fleetpulse.settings import KafkaConnection


@dataclass
class EventLog:
    """The detection stretch of ``sensor-data``: one entry per event, as consumed (so each car's
    events, keyed to one partition, in stream order)."""

    car: np.ndarray  # object (str)
    partition: np.ndarray  # int32
    offset: np.ndarray  # int64
    ts_ms: np.ndarray  # int64
    column: np.ndarray | None = None  # float32: one sensor's reading per event (NaN: undecodable), when asked for


class Watermarks:
    """High watermarks through one consumer for the whole run. A consumer per look-up (the demo looks
    every 0.3 s while the bridge drains) would log in each time, SCRAM over TLS when secured, and one
    closed before its login finished makes librdkafka print an authentication error."""

    def __init__(self, kafka: KafkaConnection):
        from confluent_kafka import Consumer

        self._consumer = Consumer(kafka_config(kafka, **{"group.id": f"fleetpulse-demo-probe-{uuid.uuid4().hex[:6]}",
                                                         "enable.auto.commit": False}))

    def __call__(self, topic: str) -> dict[int, int]:
        from confluent_kafka import TopicPartition

        md = self._consumer.list_topics(topic, timeout=10)
        return {p: self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.topics[topic].partitions}

    def close(self) -> None:
        self._consumer.close()


def read_range(kafka: KafkaConnection, topic: str, start: dict[int, int], end: dict[int, int], with_values: bool = True):
    """Yield message batches from ``start`` (inclusive) to ``end`` (exclusive) offsets per partition."""
    from confluent_kafka import Consumer, TopicPartition

    todo = {p: (start.get(p, 0), e) for p, e in end.items() if e > start.get(p, 0)}
    if not todo:
        return
    consumer = Consumer(kafka_config(kafka, **{"group.id": f"fleetpulse-demo-reader-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False,
                                               "fetch.max.bytes": 64 * 1024 * 1024}))
    consumer.assign([TopicPartition(topic, p, s) for p, (s, _) in todo.items()])
    remaining = dict(todo)
    deadline = time.monotonic() + 300
    try:
        while remaining and time.monotonic() < deadline:
            batch = consumer.consume(num_messages=50_000, timeout=1.0)
            keep = []
            for m in batch:
                if m.error():
                    continue
                p = m.partition()
                if p in remaining and m.offset() < remaining[p][1]:
                    keep.append(m)
                    if m.offset() >= remaining[p][1] - 1:
                        del remaining[p]
            if keep:
                yield keep
    finally:
        consumer.close()


def event_log(kafka: KafkaConnection, topic: str, start: dict[int, int], end: dict[int, int], column: str | None = None) -> EventLog:
    """The events between the offsets; with ``column`` (a cardata-v1 field), that reading of each."""
    from fleetpulse.codec import decode_batch
    from fleetpulse.contract import SENSOR_FIELDS

    j = SENSOR_FIELDS.index(column) if column is not None else None
    cars, parts, offs, tss, cols = [], [], [], [], []
    for batch in read_range(kafka, topic, start, end):
        cars.extend(m.key().decode() for m in batch)
        parts.extend(m.partition() for m in batch)
        offs.extend(m.offset() for m in batch)
        tss.extend(m.timestamp()[1] for m in batch)
        if j is not None:
            cols.append(decode_batch([m.value() for m in batch]).values[:, j])
    return EventLog(
        car=np.array(cars, dtype=object), partition=np.array(parts, dtype=np.int32), offset=np.array(offs, dtype=np.int64), ts_ms=np.array(tss, dtype=np.int64),
        column=(np.concatenate(cols) if cols else np.zeros(0, np.float32)) if j is not None else None,
    )


def alerts(kafka: KafkaConnection, topic: str, start: dict[int, int], end: dict[int, int]) -> list[dict]:
    out = []
    for batch in read_range(kafka, topic, start, end):
        for m in batch:
            try:
                out.append(decode_alert(m.value()))
            except DecodeError:
                continue  # the local stack's alerts topic is shared: a record not in alert-v1 is none of this run's
    return out


def alerting(log: EventLog, alerts: list[dict]) -> np.ndarray:
    """Per event: is its car alerting after it. A status holds from the event that caused it (by
    partition offset) until the car's next alert; a car is ``ok`` before its first alert."""
    n = len(log.car)
    car = np.concatenate([log.car.astype(str), np.array([a["car_id"] for a in alerts], dtype=str)])
    offset = np.concatenate([log.offset, np.array([a["source_offset"] for a in alerts], dtype=np.int64)])
    raised = np.concatenate([np.zeros(n, bool), np.array([a["status"] != "ok" for a in alerts], dtype=bool)])
    is_alert = np.arange(len(car)) >= n
    # Events and alerts merged per car in offset order, an alert just before the event that caused it;
    # each event then takes the status of the last alert before it, if that alert is its car's.
    order = np.lexsort((~is_alert, offset, car))
    last = np.maximum.accumulate(np.where(is_alert[order], np.arange(len(order)), -1))
    known = (last >= 0) & (car[order][np.maximum(last, 0)] == car[order])
    status = known & raised[order][np.maximum(last, 0)]
    out = np.zeros(n, dtype=bool)
    events = ~is_alert[order]
    out[order[events]] = status[events]
    return out


def truth(kafka: KafkaConnection, topic: str, start: dict[int, int], end: dict[int, int]) -> list[TruthRecord]:
    return [TruthRecord.from_json(m.value()) for batch in read_range(kafka, topic, start, end) for m in batch]
