"""Shadow scoring's record: what the transformer publishes on ``model-shadow`` for each micro-batch it
also scored with the candidate, and which cars are in the shadow.

The transformer never acts on the candidate's scores (no alert, no twin change). It publishes them,
beside the stable model's for the same events, so whoever decides a promotion (``fleetpulse models
decide``) can evaluate both models on identical events against the ground truth
(fleetpulse.evaluation): a record per micro-batch, JSON, not keyed (events of many cars).

The shadow share is a fixed subset of the fleet, chosen by a hash of the car id (crc32, the same in
every process and every run), so a car is shadowed for all of its events or none: the hysteresis of
both models sees whole car histories.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass

import numpy as np

SHADOW_BUCKETS = 10_000


def in_shadow(car_ids: list[str] | list[bytes], share: float) -> np.ndarray:
    """Which of these cars are shadowed at ``share`` (0..1): a car's membership never changes."""
    if share >= 1.0:
        return np.ones(len(car_ids), bool)
    if share <= 0.0:
        return np.zeros(len(car_ids), bool)
    cut = int(round(share * SHADOW_BUCKETS))
    h = np.fromiter((zlib.crc32(c if isinstance(c, bytes) else c.encode()) for c in car_ids), np.int64, len(car_ids))
    return (h % SHADOW_BUCKETS) < cut


@dataclass
class ShadowBatch:
    """Both models' verdicts on the same events (stream order per car, as the transformer applied them)."""

    stable_version: str
    candidate_version: str
    stable_threshold: float
    candidate_threshold: float
    decided_ms: int
    car_ids: list[str]
    ts_ms: list[int]  # the event's Kafka timestamp (what ground truth is joined on)
    partitions: list[int]
    offsets: list[int]
    stable_score: list[float]
    candidate_score: list[float]
    stable_flag: list[bool]
    candidate_flag: list[bool]

    def __len__(self) -> int:
        return len(self.car_ids)

    def agreement(self) -> float:
        """Share of events both models flag alike (1.0 for an empty batch)."""
        if not self.car_ids:
            return 1.0
        return float(np.mean(np.asarray(self.stable_flag) == np.asarray(self.candidate_flag)))


def encode_shadow(batch: ShadowBatch) -> bytes:
    return json.dumps(asdict(batch), separators=(",", ":"), allow_nan=False).encode()


def decode_shadow(value: bytes) -> ShadowBatch:
    """Raises ValueError for a record that is not a shadow batch."""
    try:
        doc = json.loads(value)
        batch = ShadowBatch(**doc)
    except (TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a shadow batch: {exc}") from None
    n = len(batch.car_ids)
    lengths = {len(getattr(batch, f)) for f in ("ts_ms", "partitions", "offsets", "stable_score", "candidate_score",
                                                 "stable_flag", "candidate_flag")}
    if lengths - {n}:
        raise ValueError(f"shadow batch columns differ in length ({sorted(lengths | {n})})")
    return batch
