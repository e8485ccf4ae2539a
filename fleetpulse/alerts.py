"""alert-v1 records (Avro, Confluent framing, schema id ALERT_V1_ID) for car status changes.

The kernel owns the wire format: the transformer encodes alerts, the demo, benches and tests decode them."""

from __future__ import annotations

from fleetpulse.codec import encode_one
from fleetpulse.contract import ALERT_V1_ID
from fleetpulse.hysteresis import STATUS_NAMES


def alert_record(car_id: str, previous: int, status: int, score: float, threshold: float, model_version: str,
                 event_ts_ms: int, alert_ts_ms: int, partition: int, offset: int) -> dict:
    return {
        "car_id": car_id,
        "status": STATUS_NAMES[status],
        "previous_status": STATUS_NAMES[previous],
        "score": float(score),
        "threshold": float(threshold),
        "model_version": model_version,
        "event_ts_ms": int(event_ts_ms),
        "alert_ts_ms": int(alert_ts_ms),
        "source_partition": int(partition),
        "source_offset": int(offset),
    }


def encode_alert(record: dict) -> bytes:
    return encode_one(record, ALERT_V1_ID)


def decode_alert(payload: bytes) -> dict:
    """An alert-v1 payload back to a dict (for tests, the demo and tools; not a hot path)."""
    import io

    import fastavro

    from fleetpulse.contract import parsed_schema
    from fleetpulse.framing import DecodeError, unframe

    schema_id, body = unframe(payload)
    if schema_id != ALERT_V1_ID:
        raise DecodeError(f"schema id {schema_id} is not alert-v1 ({ALERT_V1_ID})")
    return fastavro.schemaless_reader(io.BytesIO(body), parsed_schema(ALERT_V1_ID), None)
