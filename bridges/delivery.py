"""What the bridge does with a record Kafka did not take: wait out a transient error, give a permanent
one a bounded number of tries, then dead-letter it (or, for a dead letter, give up on it).

A transient error (broker away, leader moving, a delivery timed out) is retried with backoff for as
long as it takes, and its MQTT message stays un-acked: nothing is lost, the bridge waits. A permanent
one (the record is too large, invalid, or the topic refuses us) would fail the same way forever and
hold every PUBACK behind it, so it gets ``tries`` attempts and then leaves the stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from confluent_kafka import KafkaError

from fleetpulse.retry import Backoff

PERMANENT = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE,  # also what produce() raises locally for a record over message.max.bytes
    KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_RECORD,  # e.g. a broker-side record validation (compacted topic, null key)
    KafkaError.INVALID_TIMESTAMP,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.POLICY_VIOLATION,
    KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
    KafkaError._INVALID_ARG,
})  # fmt: skip
"""Error codes that repeat for the same record however long we wait."""


class Next(Enum):
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"  # a data record Kafka refused: to the DLQ with the reason
    GIVE_UP = "give_up"  # a dead letter Kafka refused: counted and logged, acked so the stream goes on


def next_step(err: KafkaError, attempts: int, tries: int, is_dead_letter: bool) -> Next:
    """After ``attempts`` failed produces of one record, the last failing with ``err``."""
    if err.code() not in PERMANENT or attempts < tries:
        return Next.RETRY
    return Next.GIVE_UP if is_dead_letter else Next.DEAD_LETTER


@dataclass
class Record:
    """One Kafka record as the bridge produces it (kept to produce it again)."""

    topic: str
    value: bytes
    key: bytes
    headers: list[tuple[str, bytes]]
    ts: int


@dataclass(order=True)
class Redelivery:
    """A record waiting for its next attempt; ordered by when it is due."""

    due: float
    seq: int  # ties broken in failure order
    record: Record = field(compare=False)
    batch: object = field(compare=False)  # the AckBatch whose PUBACKs wait for it
    attempts: int = field(compare=False)
    backoff: Backoff | None = field(compare=False)  # None until its first failure
