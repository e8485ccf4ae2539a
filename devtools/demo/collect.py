"""Read back what the run wrote to Kafka: offsets, event logs, alert records, ground truth."""

from __future__ import annotations

import io
import time
import uuid

import fastavro
import numpy as np

from fleetpulse.contract import ALERT_V1_ID, parsed_schema
from devtools.demo.evaluation import EventLog
from fleetpulse.framing import unframe
from fleetpulse.ground_truth import TruthRecord


def high_watermarks(bootstrap: str, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"fleetpulse-demo-probe-{uuid.uuid4().hex[:6]}"})
    try:
        md = consumer.list_topics(topic, timeout=10)
        out = {}
        for p in md.topics[topic].partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            out[p] = high
        return out
    finally:
        consumer.close()


def read_range(bootstrap: str, topic: str, start: dict[int, int], end: dict[int, int], with_values: bool = True):
    """Yield message batches from ``start`` (inclusive) to ``end`` (exclusive) offsets per partition."""
    from confluent_kafka import Consumer, TopicPartition

    todo = {p: (start.get(p, 0), e) for p, e in end.items() if e > start.get(p, 0)}
    if not todo:
        return
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fleetpulse-demo-reader-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 64 * 1024 * 1024,
        }
    )
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


def event_log(bootstrap: str, topic: str, start: dict[int, int], end: dict[int, int]) -> EventLog:
    cars, parts, offs, tss = [], [], [], []
    for batch in read_range(bootstrap, topic, start, end):
        cars.extend(m.key().decode() for m in batch)
        parts.extend(m.partition() for m in batch)
        offs.extend(m.offset() for m in batch)
        tss.extend(m.timestamp()[1] for m in batch)
    return EventLog(
        car=np.array(cars, dtype=object), partition=np.array(parts, dtype=np.int32), offset=np.array(offs, dtype=np.int64), ts_ms=np.array(tss, dtype=np.int64)
    )


def alerts(bootstrap: str, topic: str, start: dict[int, int], end: dict[int, int]) -> list[dict]:
    schema = parsed_schema(ALERT_V1_ID)
    out = []
    for batch in read_range(bootstrap, topic, start, end):
        for m in batch:
            schema_id, body = unframe(m.value())
            if schema_id == ALERT_V1_ID:
                out.append(fastavro.schemaless_reader(io.BytesIO(body), schema, None))
    return out


def truth(bootstrap: str, topic: str, start: dict[int, int], end: dict[int, int]) -> list[TruthRecord]:
    return [TruthRecord.from_json(m.value()) for batch in read_range(bootstrap, topic, start, end) for m in batch]
