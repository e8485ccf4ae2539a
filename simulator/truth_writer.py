"""Ground truth out of band: TruthRecords to Kafka (JSON, key = car id) and/or a JSON Lines file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterable

from fleetpulse.clients import kafka_config, prepare_topics, require_kafka
from fleetpulse.errors import BrokerUnavailable
from fleetpulse.ground_truth import TruthRecord
from fleetpulse.settings import KafkaConnection
from fleetpulse.topics import GROUND_TRUTH, TOPICS


def ensure_topic(connection: KafkaConnection | str, topic: str) -> None:
    """Create the truth topic if it is missing, partitioned and kept forever like ``ground-truth``; as a
    principal (who may not create topics), check that it exists and may be written."""
    from confluent_kafka import KafkaException

    if isinstance(connection, str):
        connection = KafkaConnection(bootstrap_servers=connection)
    try:
        prepare_topics(connection, [replace(TOPICS[GROUND_TRUTH], name=topic)])
    except KafkaException as exc:
        raise BrokerUnavailable(f"cannot create truth topic {topic!r} on {connection.bootstrap_servers}: {exc}") from None


class TruthWriter:
    def __init__(self, kafka: KafkaConnection | str | None, topic: str | None, path: Path | None):
        self.topic = topic or None
        self.count = 0
        self.producer = None
        if self.topic:
            from confluent_kafka import Producer

            require_kafka(kafka)
            ensure_topic(kafka, self.topic)
            self.producer = Producer(kafka_config(kafka, **{"linger.ms": 50, "queue.buffering.max.messages": 2_000_000, "acks": "all"}))
        self.file = open(path, "w") if path else None
        self.delivery_errors = 0

    def _on_delivery(self, err, _msg) -> None:
        if err is not None:
            self.delivery_errors += 1

    def write(self, records: Iterable[TruthRecord]) -> None:
        for r in records:
            raw = r.to_json()
            if self.producer is not None:
                while True:
                    try:
                        self.producer.produce(self.topic, key=r.car_id.encode(), value=raw, on_delivery=self._on_delivery)
                        break
                    except BufferError:
                        self.producer.poll(0.1)
            if self.file is not None:
                self.file.write(raw.decode() + "\n")
            self.count += 1
        if self.producer is not None:
            self.producer.poll(0)

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush everything; raise BrokerUnavailable if Kafka did not take all records."""
        if self.file is not None:
            self.file.close()
        if self.producer is not None:
            left = self.producer.flush(timeout_s)
            if left or self.delivery_errors:
                raise BrokerUnavailable(f"ground truth: {left} records unflushed and {self.delivery_errors} failed to reach Kafka topic {self.topic!r}")
