"""The one place that builds the bridge's Kafka producer and makes sure its topics exist."""

from __future__ import annotations

import logging
from dataclasses import replace

from confluent_kafka import Producer

from bridges.settings import BridgeSettings
from fleetpulse.clients import kafka_config, prepare_topics
from fleetpulse.topics import SENSOR_DATA, SENSOR_DATA_DLQ, TOPICS

log = logging.getLogger("fleetpulse.bridge.kafka")


def producer_config(settings: BridgeSettings, error_cb=None) -> dict:
    """Idempotent, acks=all, batched: a record is confirmed only once every in-sync replica has it."""
    conf = kafka_config(
        settings.kafka,
        **{
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": settings.kafka_linger_ms,
            "batch.num.messages": settings.kafka_batch_messages,
            "batch.size": settings.kafka_batch_bytes,
            "compression.type": settings.kafka_compression,
            "message.timeout.ms": settings.kafka_delivery_timeout_ms,
            "message.max.bytes": settings.kafka_max_message_bytes,
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
    """Create the data and dead-letter topics if missing (partitions/retention from fleetpulse.topics);
    as a principal on a secured Kafka, which may not create topics, check they exist and are writable."""
    specs = [replace(TOPICS[SENSOR_DATA], name=settings.topic), replace(TOPICS[SENSOR_DATA_DLQ], name=settings.dlq_topic)]
    created = prepare_topics(settings.kafka, specs, timeout)
    if created:
        log.info("created topics %s", created)
    return created
