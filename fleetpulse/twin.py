"""The digital-twin document shape in MongoDB (database ``fleetpulse``, collection ``cars``)."""

from __future__ import annotations

from typing import Literal, TypedDict

TWIN_DATABASE = "fleetpulse"
TWIN_COLLECTION = "cars"

Status = Literal["ok", "warning", "failing"]
STATUSES: tuple[Status, ...] = ("ok", "warning", "failing")


class TwinDocument(TypedDict, total=False):
    _id: str  # car id
    status: Status
    last_score: float
    threshold: float
    model_version: str
    last_seen_ms: int  # Kafka timestamp of the newest event applied
    last_readings: dict[str, float]  # the newest cardata-v1 record
    counters: dict[str, int]  # events, over_threshold, alerts
    offsets: dict[str, int]  # "<partition>" -> last Kafka offset applied
    updated_ms: int
