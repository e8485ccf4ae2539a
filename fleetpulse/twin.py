"""The digital-twin document in MongoDB (database ``fleetpulse``, collection ``cars``, ``_id`` = car id).

The one definition of its fields: the transformer writes exactly these (tests/serving/test_car_table.py
holds it to that), the demo and tools read them.
"""

from __future__ import annotations

from typing import Literal, TypedDict

TWIN_DATABASE = "fleetpulse"
TWIN_COLLECTION = "cars"

Status = Literal["ok", "warning", "failing"]  # fleetpulse.hysteresis.STATUS_NAMES, by name


class TwinCounters(TypedDict):
    events: int  # events applied
    over_threshold: int  # of them, scored over the threshold
    alerts: int  # status changes


class TwinHysteresis(TypedDict):
    """The car's hysteresis state, so a restarted transformer continues it instead of starting clean."""

    window_bits: int  # over-threshold flags of the last n readings, newest in bit 0
    clean_streak: int  # consecutive readings under the threshold


class TwinDocument(TypedDict):
    _id: str  # car id
    status: Status
    last_score: float
    threshold: float
    model_version: str
    last_seen_ms: int  # Kafka timestamp of the newest event applied
    last_readings: dict[str, float]  # the newest cardata-v1 record (its int fields as int)
    counters: TwinCounters
    hysteresis: TwinHysteresis
    # "<partition>" -> last Kafka offset applied; a replay skips events at or below it, and a write whose
    # newest event is below the stored offset of its partition is fenced out (a stale group member's).
    offsets: dict[str, int]
