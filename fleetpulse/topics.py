"""Kafka topics FleetPulse uses, with partitions and retention defined once (stack, manifests, tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

SENSOR_DATA = "sensor-data"
SENSOR_DATA_DLQ = "sensor-data-dlq"
GROUND_TRUTH = "ground-truth"
ALERTS = "alerts"
MODEL_SHADOW = "model-shadow"
MODEL_REQUESTS = "model-requests"

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
        TopicSpec(MODEL_SHADOW, 3, 7 * DAY_MS, doc="stable and candidate verdicts on the same events (fleetpulse.shadow), "
                                                    "what a promotion is decided on"),
        TopicSpec(MODEL_REQUESTS, 1, 30 * DAY_MS, doc="requests for a retrain (drift detected), JSON; the training loop acts on them"),
    )
}

# Header names on dead-lettered records.
DLQ_REASON_HEADER = "fleetpulse.dlq.reason"
DLQ_KIND_HEADER = "fleetpulse.dlq.kind"
DLQ_SOURCE_HEADER = "fleetpulse.dlq.source"
DLQ_TIME_HEADER = "fleetpulse.dlq.ts_ms"
DLQ_ORIGINAL_SIZE_HEADER = "fleetpulse.dlq.original_size"
"""ASCII decimal bytes of the payload as received; the record's value may be only a prefix of it."""

# Values of the kind header: why a record is in the dead-letter topic (the reason header says more).
DLQ_UNDECODABLE = "undecodable"  # not a framed cardata record of a known schema
DLQ_NON_FINITE = "non_finite"  # a reading is NaN or infinite
DLQ_OUT_OF_RANGE = "out_of_range"  # a reading is outside its physical range (fleetpulse.readings)
DLQ_BAD_CAR_ID = "bad_car_id"  # the topic's car id is not one (fleetpulse.contract.CAR_ID)
DLQ_OVERSIZED = "oversized"  # larger than a Kafka record may be; the value is a prefix
DLQ_KAFKA_REJECTED = "kafka_rejected"  # Kafka refused the record permanently, after retries
DLQ_KINDS = (DLQ_UNDECODABLE, DLQ_NON_FINITE, DLQ_OUT_OF_RANGE, DLQ_BAD_CAR_ID, DLQ_OVERSIZED, DLQ_KAFKA_REJECTED)
"""The kinds a bad input can have wherever it arrives (the bridge's metrics pre-create one label each)."""
DLQ_NON_FINITE_SCORE = "non_finite_score"  # the model scored a plausible reading NaN or infinite (transformer)
DLQ_TWIN_REFUSED = "twin_refused"  # MongoDB refused a twin document; the value is the document as JSON (transformer)
MQTT_TOPIC_HEADER = "mqtt.topic"
ARRIVAL_TIME_HEADER = "fleetpulse.arrival_ts_ms"
