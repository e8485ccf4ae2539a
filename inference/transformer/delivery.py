"""Alerts and dead letters to Kafka, with acknowledgement: ``flush`` returns only once Kafka has every
record, so a checkpoint never commits past an alert or a dead letter that could still be lost.

The producer retries inside librdkafka forever (``message.timeout.ms`` 0), so a delivery report with
an error is Kafka refusing that record (too large, not authorised, a topic that cannot take it).
Such a record is produced again at most ``attempts`` times in all; then an alert goes to the
dead-letter topic with the reason (kind ``kafka_rejected``), and a dead letter that Kafka refuses is
sent once more as a bounded prefix (its original size in a header), else dropped, counted and
logged: either way the checkpoint goes on instead of waiting on it forever.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from fleetpulse.codec import encode_batch
from fleetpulse.errors import BrokerUnavailable
from fleetpulse.topics import (
    DLQ_KAFKA_REJECTED,
    DLQ_KIND_HEADER,
    DLQ_ORIGINAL_SIZE_HEADER,
    DLQ_REASON_HEADER,
    DLQ_SOURCE_HEADER,
    DLQ_TIME_HEADER,
    DLQ_TWIN_REFUSED,
    DLQ_UNDECODABLE,
)
from inference.transformer import metrics
from inference.transformer.metrics import E2E_LATENCY
from inference.transformer.retrying import Retries

PREFIX_BYTES = 64 * 1024  # what is kept of a dead letter Kafka refused as it was


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def dead_letter_headers(msg, reason: str, ts: bytes, kind: str = DLQ_UNDECODABLE) -> list[tuple[str, bytes]]:
    """Why a record was dead-lettered, where it came from (topic/partition/offset) and when."""
    return [(DLQ_REASON_HEADER, reason.encode()), (DLQ_KIND_HEADER, kind.encode()),
            (DLQ_SOURCE_HEADER, f"{msg.topic()}/{msg.partition()}/{msg.offset()}".encode()), (DLQ_TIME_HEADER, ts)]


@dataclass
class _Record:
    topic: str
    key: bytes | None
    value: bytes
    headers: list | None
    attempts: int = 1
    error: str = ""


class Delivery:
    def __init__(self, producer, retries: Retries, dlq_topic: str = "", attempts: int = 5,
                 progress: Callable[[str], None] = lambda _: None):
        self.producer = producer
        self.retries = retries
        self.dlq_topic = dlq_topic
        self.attempts = attempts
        self.progress = progress
        self._failed: list[_Record] = []  # delivery failed: to resend (or dead-letter) at the next flush

    def produce(self, topic: str, key, value: bytes, headers=None, event_ts_ms: int | None = None) -> None:
        self._produce(_Record(topic, key, value, headers), event_ts_ms)

    def _produce(self, record: _Record, event_ts_ms: int | None = None) -> None:
        def delivered(err, msg, _record=record, _ts=event_ts_ms):
            if err is not None:
                _record.error = err.str() if hasattr(err, "str") else str(err)
                self._failed.append(_record)
            elif _ts is not None:
                E2E_LATENCY.observe(max(0.0, (now_ms() - _ts) / 1000))

        from confluent_kafka import KafkaException

        while True:
            try:
                self.producer.produce(record.topic, value=record.value, key=record.key, headers=record.headers, on_delivery=delivered)
                return
            except BufferError:
                self.retries.check_stop("room in the producer's queue")
                self.producer.poll(0.1)
            except KafkaException as exc:  # refused before sending (e.g. larger than message.max.bytes): no retry helps
                record.attempts, record.error = self.attempts, exc.args[0].str()
                self._failed.append(record)
                return

    def dead_letter(self, topic: str, msgs: list, errors: dict[int, str], kind: str = DLQ_UNDECODABLE) -> None:
        """Produce ``msgs[i]`` to the dead-letter topic with its reason, for each ``i, reason`` in ``errors``."""
        ts = str(now_ms()).encode()
        for i, reason in errors.items():
            m = msgs[i]
            self.produce(topic, m.key(), m.value() or b"", dead_letter_headers(m, reason, ts, kind))

    def dead_letter_rows(self, topic: str, source_topic: str, car_ids: list[str], rows: np.ndarray, partitions: np.ndarray,
                         offsets: np.ndarray, reason: str, kind: str) -> None:
        """Dead-letter decoded events (their cardata-v1 payloads encoded again: the same bytes for a valid record)."""
        ts = str(now_ms()).encode()
        for car, payload, p, o in zip(car_ids, encode_batch(rows), partitions.tolist(), offsets.tolist()):
            headers = [(DLQ_REASON_HEADER, reason.encode()), (DLQ_KIND_HEADER, kind.encode()),
                       (DLQ_SOURCE_HEADER, f"{source_topic}/{p}/{o}".encode()), (DLQ_TIME_HEADER, ts)]
            self.produce(topic, car.encode(), payload, headers)

    def dead_letter_twins(self, topic: str, refused: list[tuple[dict, str]], source: str) -> None:
        """Dead-letter twin documents MongoDB refused, as JSON, each with MongoDB's reason."""
        ts = str(now_ms()).encode()
        for doc, reason in refused:
            headers = [(DLQ_REASON_HEADER, reason.encode()), (DLQ_KIND_HEADER, DLQ_TWIN_REFUSED.encode()),
                       (DLQ_SOURCE_HEADER, f"{source}/{doc['_id']}".encode()), (DLQ_TIME_HEADER, ts)]
            self.produce(topic, str(doc["_id"]).encode(), json.dumps(doc, default=str).encode(), headers)

    def flush(self) -> None:
        """Wait until Kafka has acknowledged every record produced, resending the ones it failed."""
        self.retries.call("kafka", self._flush_once, (BrokerUnavailable,), message=lambda exc, _: str(exc))

    def _flush_once(self) -> None:
        remaining = self.producer.flush(5.0)
        if remaining == 0 and not self._failed:
            return
        failed, self._failed = self._failed, []
        resend = [r for r in failed if r.attempts < self.attempts]
        for record in failed:
            if record.attempts >= self.attempts:
                self._reject(record)
        for record in resend:
            record.attempts += 1
            self._produce(record)
        raise BrokerUnavailable(f"kafka: {remaining} records not acknowledged yet, {len(resend)} to resend")

    def _reject(self, record: _Record) -> None:
        """A record Kafka refused ``attempts`` times: to the dead-letter topic, or (a dead letter itself) a prefix or nothing."""
        why = f"Kafka refused the record for {record.topic} {record.attempts} times: {record.error}"
        metrics.KAFKA_REJECTED.labels(record.topic).inc()
        if record.topic != self.dlq_topic and self.dlq_topic:
            headers = [*(record.headers or []), (DLQ_REASON_HEADER, why.encode()), (DLQ_KIND_HEADER, DLQ_KAFKA_REJECTED.encode()),
                       (DLQ_SOURCE_HEADER, record.topic.encode()), (DLQ_TIME_HEADER, str(now_ms()).encode())]
            self._produce(_Record(self.dlq_topic, record.key, record.value, headers))
        elif len(record.value) > PREFIX_BYTES:
            headers = [*(record.headers or []), (DLQ_ORIGINAL_SIZE_HEADER, str(len(record.value)).encode())]
            self._produce(_Record(record.topic, record.key, record.value[:PREFIX_BYTES], headers, attempts=self.attempts - 1))
        else:
            metrics.DROPPED.labels(record.topic).inc()
            self.progress(f"dropped a record for {record.topic}: {why}")
