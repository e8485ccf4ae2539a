"""The one place that builds the bridge's Kafka producer and makes sure its topics exist."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from bridges.settings import BridgeSettings
from fleetpulse.clients import kafka_config
from fleetpulse.topics import SENSOR_DATA, SENSOR_DATA_DLQ, TOPICS

log = logging.getLogger("fleetpulse.bridge.kafka")


def producer_config(settings: BridgeSettings, error_cb=None) -> dict:
    """Idempotent, acks=all, batched: a record is confirmed only once every in-sync replica has it."""
    conf = kafka_config(
        settings.kafka_bootstrap_servers,
        **{
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": settings.kafka_linger_ms,
            "batch.num.messages": settings.kafka_batch_messages,
            "batch.size": settings.kafka_batch_bytes,
            "compression.type": settings.kafka_compression,
            "message.timeout.ms": settings.kafka_delivery_timeout_ms,
            # The bridge bounds its own in-flight count below this, so produce() never sees a full queue.
            "queue.buffering.max.messages": max(100_000, 2 * settings.max_in_flight),
            "queue.buffering.max.kbytes": 1_048_576,
            "client.id": settings.client_id,
        },
    )
    if error_cb is not None:
        conf["error_cb"] = error_cb
    return conf


def build_producer(settings: BridgeSettings, error_cb=None) -> Producer:
    return Producer(producer_config(settings, error_cb))


def ensure_topics(settings: BridgeSettings, timeout: float = 15.0) -> list[str]:
    """Create the data and dead-letter topics if missing (partitions/retention from fleetpulse.topics)."""
    admin = AdminClient(kafka_config(settings.kafka_bootstrap_servers))
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [(settings.topic, TOPICS[SENSOR_DATA]), (settings.dlq_topic, TOPICS[SENSOR_DATA_DLQ])]
    new = [NewTopic(name, spec.partitions, 1, config=spec.kafka_config()) for name, spec in wanted if name not in existing]
    if not new:
        return []
    for name, future in admin.create_topics(new, request_timeout=timeout).items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    log.info("created topics %s", [t.topic for t in new])
    return [t.topic for t in new]
