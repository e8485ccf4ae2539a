"""What the bridge refuses, per socket read: a malformed car id, an oversized, undecodable or
physically impossible record. Each refusal is (dead-letter kind, reason); the record goes to the DLQ.

The checks are priced for the bridge's full rate: topics are checked once per distinct topic (a set
difference against those already seen), payloads by fleetpulse.codec.decode_batch (a few numpy
operations for a read of good records), readings by one vectorised range test.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from fleetpulse import readings
from fleetpulse.codec import decode_batch
from fleetpulse.contract import CAR_ID, MQTT_TOPIC_PREFIX
from fleetpulse.topics import DLQ_BAD_CAR_ID, DLQ_OVERSIZED, DLQ_UNDECODABLE

_CAR_TOPIC = re.compile(re.escape(MQTT_TOPIC_PREFIX).encode() + CAR_ID.pattern.encode())
_KNOWN_TOPICS_MAX = 1_000_000  # distinct good topics remembered (a fleet's worth); then start over


class Screen:
    """Finds the records of a read that must go to the dead-letter topic, and why."""

    def __init__(self, max_payload_bytes: int):
        self.max_payload_bytes = max_payload_bytes
        self._good_topics: set[bytes] = set()

    def __call__(self, payloads: Sequence[bytes], topics: Sequence[bytes]) -> dict[int, tuple[str, str]]:
        """Index -> (kind, reason) for every record to dead-letter (empty when all are fine)."""
        refused: dict[int, tuple[str, str]] = {}
        bad_topics = self._bad_topics(topics)
        if bad_topics:
            refused.update((i, bad_topics[t]) for i, t in enumerate(topics) if t in bad_topics)
        decoded = decode_batch(payloads)
        for i, reason in decoded.errors.items():
            if i in refused:
                continue
            size = len(payloads[i])
            # Every oversized payload fails decoding (a cardata record is under 200 bytes), so only these are measured.
            if size > self.max_payload_bytes:
                refused[i] = (DLQ_OVERSIZED, f"payload of {size:,} bytes is larger than the {self.max_payload_bytes:,} a Kafka record may carry")
            else:
                refused[i] = (DLQ_UNDECODABLE, reason)
        impossible = readings.implausible(decoded.values) & decoded.valid
        if impossible.any():
            for i in np.flatnonzero(impossible).tolist():
                refused.setdefault(i, readings.problem(decoded.values[i]))
        return refused

    def _bad_topics(self, topics: Sequence[bytes]) -> dict[bytes, tuple[str, str]]:
        new = set(topics) - self._good_topics
        if not new:
            return {}
        bad = {t: (DLQ_BAD_CAR_ID, _car_id_problem(t)) for t in new if not _CAR_TOPIC.fullmatch(t)}
        if len(self._good_topics) > _KNOWN_TOPICS_MAX:
            self._good_topics.clear()
        self._good_topics |= new - bad.keys()
        return bad


def _car_id_problem(topic: bytes) -> str:
    car = topic[len(MQTT_TOPIC_PREFIX) :] if topic.startswith(MQTT_TOPIC_PREFIX.encode()) else topic
    shown = car[:80].decode(errors="replace") + ("..." if len(car) > 80 else "")
    return f"car id {shown!r} ({len(car)} bytes) is not a car id: 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
