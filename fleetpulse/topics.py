"""Kafka topics FleetPulse uses, with partitions and retention defined once (stack, manifests, tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

SENSOR_DATA = "sensor-data"
SENSOR_DATA_DLQ = "sensor-data-dlq"
GROUND_TRUTH = "ground-truth"
ALERTS = "alerts"

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int  # -1 keeps forever
    config: dict[str, str] = field(default_factory=dict)
    doc: str = ""

    def kafka_config(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), **self.config}


TOPICS: dict[str, TopicSpec] = {
    t.name: t
    for t in (
        TopicSpec(SENSOR_DATA, 6, 7 * DAY_MS, doc="cardata-v1 events keyed by car id, bytes as published over MQTT"),
        TopicSpec(SENSOR_DATA_DLQ, 1, 14 * DAY_MS, doc="payloads that failed validation; headers name the reason"),
        TopicSpec(GROUND_TRUTH, 1, -1, doc="simulator labels {car_id, mode, onset_ts, severity}; never read by training"),
        TopicSpec(ALERTS, 3, 30 * DAY_MS, doc="alert-v1 records on every car status change, keyed by car id"),
    )
}

# Header names on dead-lettered records.
DLQ_REASON_HEADER = "fleetpulse.dlq.reason"
DLQ_SOURCE_HEADER = "fleetpulse.dlq.source"
DLQ_TIME_HEADER = "fleetpulse.dlq.ts_ms"
MQTT_TOPIC_HEADER = "mqtt.topic"
ARRIVAL_TIME_HEADER = "fleetpulse.arrival_ts_ms"
