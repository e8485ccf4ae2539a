"""Alerts and dead letters to Kafka, with acknowledgement: ``flush`` returns only once Kafka has every
record, so a checkpoint never commits past an alert or a dead letter that could still be lost."""

from __future__ import annotations

import time

from fleetpulse.errors import BrokerUnavailable
from fleetpulse.topics import DLQ_REASON_HEADER, DLQ_SOURCE_HEADER, DLQ_TIME_HEADER
from inference.transformer.metrics import E2E_LATENCY
from inference.transformer.retrying import Retries


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def dead_letter_headers(msg, reason: str, ts: bytes) -> list[tuple[str, bytes]]:
    """Why a record was dead-lettered, where it came from (topic/partition/offset) and when."""
    return [(DLQ_REASON_HEADER, reason.encode()), (DLQ_SOURCE_HEADER, f"{msg.topic()}/{msg.partition()}/{msg.offset()}".encode()),
            (DLQ_TIME_HEADER, ts)]


class Delivery:
    def __init__(self, producer, retries: Retries):
        self.producer = producer
        self.retries = retries
        self._failed: list[tuple[str, bytes, bytes, list | None]] = []  # (topic, key, value, headers) to resend

    def produce(self, topic: str, key, value: bytes, headers=None, event_ts_ms: int | None = None) -> None:
        def delivered(err, msg, _topic=topic, _key=key, _value=value, _headers=headers, _ts=event_ts_ms):
            if err is not None:
                self._failed.append((_topic, _key, _value, _headers))
            elif _ts is not None:
                E2E_LATENCY.observe(max(0.0, (now_ms() - _ts) / 1000))

        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
                return
            except BufferError:
                self.producer.poll(0.1)

    def dead_letter(self, topic: str, msgs: list, errors: dict[int, str]) -> None:
        """Produce ``msgs[i]`` to the dead-letter topic with its reason, for each ``i, reason`` in ``errors``."""
        ts = str(now_ms()).encode()
        for i, reason in errors.items():
            m = msgs[i]
            self.produce(topic, m.key(), m.value() or b"", dead_letter_headers(m, reason, ts))

    def flush(self) -> None:
        """Wait until Kafka has acknowledged every record produced, resending the ones it failed."""
        self.retries.call("kafka", self._flush_once, (BrokerUnavailable,), message=lambda exc, _: str(exc))

    def _flush_once(self) -> None:
        remaining = self.producer.flush(5.0)
        if remaining == 0 and not self._failed:
            return
        failed, self._failed = self._failed, []
        for topic, key, value, headers in failed:
            self.produce(topic, key, value, headers)
        raise BrokerUnavailable(f"kafka: {remaining} records not acknowledged yet, {len(failed)} to resend")
