"""Simulator ground truth: one record per car per state change, on Kafka topic ``ground-truth``
(JSON value, key = car id) and optionally as JSON Lines. Evaluation (fleetpulse.evaluation) reads it;
training never does."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Iterable

HEALTHY = "healthy"
FAILURE_MODES: tuple[str, ...] = (
    "tire_pressure_loss",
    "shock_absorber",
    "drive_shaft_wear",
    "overheating",
    "outdated_firmware",
    "battery_degradation",
)


@dataclass(frozen=True)
class TruthRecord:
    car_id: str
    mode: str  # HEALTHY or one of FAILURE_MODES
    onset_ts: int  # wall-clock ms when the first event in this state was published (joins Kafka timestamps)
    severity: float  # 0..1; ramps up when the failure ramps in
    onset_seq: int = 0  # the car's event number at onset (0 = its first event)
    sample_interval_s: float = 10.0  # simulated seconds between this car's events (for car-hours)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> "TruthRecord":
        data = json.loads(raw)
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in fields})


def histories_by_car(records: Iterable[TruthRecord]) -> dict[str, list[TruthRecord]]:
    """Group records per car, ordered by onset (a car's state history)."""
    out: dict[str, list[TruthRecord]] = {}
    for r in records:
        out.setdefault(r.car_id, []).append(r)
    for history in out.values():
        history.sort(key=lambda r: (r.onset_ts, r.onset_seq))
    return out

