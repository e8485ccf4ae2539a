"""The bridge loop: read MQTT in bulk, validate per batch, produce to Kafka, ack MQTT after delivery.

One thread drives everything (select over broker sockets, producer.poll for delivery reports), so
there are no locks. Ordering that matters for no-loss: a QoS 1 PUBACK goes out only when Kafka has
confirmed every record of its batch (data topic or DLQ), and batches are acked in receipt order.
A failed delivery is produced again and its batch stays un-acked. If Kafka is away the in-flight
count reaches max_in_flight, the loop stops reading (the broker holds the rest in our session) and
keeps pinging until Kafka is back.
"""

from __future__ import annotations

import logging
import select
import time
from dataclasses import asdict, dataclass
from typing import Callable

from confluent_kafka import KafkaError, Producer

from bridges.metrics import BridgeMetrics
from bridges.mqtt_source import MqttSource
from bridges.settings import BridgeSettings
from bridges.validation import invalid_payloads
from fleetpulse.errors import FleetPulseError
from fleetpulse.mqtt_wire import Parsed, ProtocolError
from fleetpulse.topics import ARRIVAL_TIME_HEADER, DLQ_REASON_HEADER, DLQ_SOURCE_HEADER, DLQ_TIME_HEADER, MQTT_TOPIC_HEADER

log = logging.getLogger("fleetpulse.bridge")


class AckBatch:
    """The records of one socket read; done when Kafka confirmed all of them."""

    __slots__ = ("bridge", "left", "packet_ids", "n_valid", "n_invalid")

    def __init__(self, bridge: "Bridge", size: int, packet_ids: list[int], n_invalid: int):
        self.bridge, self.left, self.packet_ids = bridge, size, packet_ids
        self.n_valid, self.n_invalid = size - n_invalid, n_invalid

    def delivered(self, err, msg) -> None:
        if err is not None:
            self.bridge._redeliver(self, err, msg)
            return
        self.left -= 1
        if not self.left:
            self.bridge._completed(self)


@dataclass
class Summary:
    received: int = 0
    forwarded: int = 0
    dead_lettered: int = 0
    delivery_errors: int = 0
    mqtt_acks: int = 0
    in_flight: int = 0
    elapsed_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


class Bridge:
    def __init__(self, settings: BridgeSettings, producer: Producer, sources: list[MqttSource], metrics: BridgeMetrics):
        self.settings, self.producer, self.sources, self.metrics = settings, producer, sources, metrics
        self.topic, self.dlq_topic = settings.topic, settings.dlq_topic
        self.summary = Summary()
        self.in_flight = 0
        self.fatal: KafkaError | None = None
        self._again: list[tuple[AckBatch, object]] = []

    # -- Kafka side -------------------------------------------------------------------------------

    def on_kafka_error(self, err: KafkaError) -> None:
        """librdkafka global errors (broker down and the like) are retried inside; only fatal ones stop us."""
        if err.fatal():
            self.fatal = err
        else:
            log.warning("kafka: %s", err.str())

    def _completed(self, batch: AckBatch) -> None:
        n = batch.n_valid + batch.n_invalid
        self.in_flight -= n
        self.summary.forwarded += batch.n_valid
        self.summary.dead_lettered += batch.n_invalid
        self.metrics.forwarded.inc(batch.n_valid)
        if batch.n_invalid:
            self.metrics.dead_lettered.inc(batch.n_invalid)

    def _redeliver(self, batch: AckBatch, err, msg) -> None:
        self.summary.delivery_errors += 1
        self.metrics.delivery_errors.inc()
        self._again.append((batch, msg))

    def _produce_again(self) -> None:
        again, self._again = self._again, []
        for batch, msg in again:
            self._produce(msg.topic(), msg.value(), msg.key(), msg.headers(), msg.timestamp()[1], batch.delivered)

    def _produce(self, topic, value, key, headers, ts, cb) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, headers=headers, timestamp=ts, on_delivery=cb)
                return
            except BufferError:
                self.producer.poll(0.05)

    def forward(self, source: MqttSource, parsed: Parsed) -> None:
        """Validate one read's messages and produce them; the PUBACKs wait in ``source.ack_queue``."""
        payloads, topics = parsed.payloads, parsed.topics
        n = len(payloads)
        if not n:
            return
        ts = int(time.time() * 1000)
        ts_b = str(ts).encode()
        bad = invalid_payloads(payloads)
        packet_ids = [pid for pid in parsed.packet_ids if pid] if self.settings.qos else []
        batch = AckBatch(self, n, packet_ids, len(bad))
        cb = batch.delivered
        produce, topic = self.producer.produce, self.topic
        self.in_flight += n
        self.summary.received += n
        self.metrics.received.inc(n)
        source.ack_queue.append(batch)
        for i in range(n):
            t = topics[i]
            if bad and i in bad:
                headers = [(DLQ_REASON_HEADER, bad[i].encode()), (DLQ_SOURCE_HEADER, t), (DLQ_TIME_HEADER, ts_b)]
                self._produce(self.dlq_topic, payloads[i], t[t.rfind(b"/") + 1 :], headers, ts, cb)
                continue
            try:
                produce(topic, payloads[i], t[t.rfind(b"/") + 1 :], headers=[(MQTT_TOPIC_HEADER, t), (ARRIVAL_TIME_HEADER, ts_b)], timestamp=ts, on_delivery=cb)
            except BufferError:
                self._produce(topic, payloads[i], t[t.rfind(b"/") + 1 :], [(MQTT_TOPIC_HEADER, t), (ARRIVAL_TIME_HEADER, ts_b)], ts, cb)

    # -- MQTT side --------------------------------------------------------------------------------

    def _connect_due(self, now: float) -> None:
        for src in self.sources:
            if src.connected or now < src.next_attempt:
                continue
            try:
                src.connect()
            except (OSError, ProtocolError) as exc:
                src.drop(str(exc))
                log.warning("cannot connect to %s: %s (retrying)", src.name, exc)
                continue
            self.metrics.reconnects.labels(src.name).inc()
            self.metrics.connected.labels(src.name).set(1)
            if (pending := src.take_pending()) is not None:
                self.forward(src, pending)

    def _lost(self, src: MqttSource, exc: BaseException) -> None:
        # Batches of this connection still complete in Kafka; their acks are dropped (the broker
        # redelivers those messages on the resumed session, so they are counted twice, never lost).
        src.drop(str(exc))
        self.metrics.connected.labels(src.name).set(0)

    def step(self, now: float) -> None:
        """One loop turn: connect, read what is readable (unless too much is in flight), deliver, ack."""
        self._connect_due(now)
        live = [s for s in self.sources if s.connected]
        reading = self.in_flight < self.settings.max_in_flight
        timeout = 0.002 if self.in_flight else 0.05
        if live and reading:
            readable, _, _ = select.select(live, [], [], timeout)
            for src in readable:
                try:
                    self.forward(src, src.read())
                except (OSError, ProtocolError) as exc:
                    self._lost(src, exc)
            self.producer.poll(0)
        else:
            self.producer.poll(timeout)
        if self._again:
            self._produce_again()
        self.metrics.in_flight.set(self.in_flight)
        for src in live:
            if not src.connected:
                continue
            try:
                before = src.acks_sent
                src.flush_acks()
                if src.acks_sent != before:
                    self.metrics.acks.inc(src.acks_sent - before)
                src.tick(now, reading)
            except (OSError, ProtocolError) as exc:
                self._lost(src, exc)

    def run(self, should_stop: Callable[[], bool], progress: Callable[[Summary], None] | None = None, every_s: float = 5.0) -> Summary:
        """Loop until ``should_stop()``; then drain Kafka, send the last acks and disconnect (session kept)."""
        t0 = last = time.monotonic()
        try:
            while not should_stop():
                now = time.monotonic()
                self.step(now)
                if self.fatal is not None:
                    raise FleetPulseError(f"Kafka producer failed fatally: {self.fatal.str()}")
                if progress is not None and now - last >= every_s:
                    last = now
                    progress(self._snapshot(now - t0))
        finally:
            self.drain()
        return self._snapshot(time.monotonic() - t0)

    def drain(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline and self.fatal is None:
            self.producer.poll(0.05)
            if self._again:
                self._produce_again()
        for src in self.sources:
            if src.connected:
                try:
                    src.flush_acks()
                except OSError:
                    pass
                src.close()
            self.metrics.connected.labels(src.name).set(0)

    def _snapshot(self, elapsed: float) -> Summary:
        s = self.summary
        s.in_flight, s.elapsed_s = self.in_flight, round(elapsed, 3)
        s.mqtt_acks = sum(src.acks_sent for src in self.sources)
        return Summary(**asdict(s))


def build_bridge(settings: BridgeSettings, metrics: BridgeMetrics | None = None) -> Bridge:
    """A bridge with a producer and one source per broker endpoint, built from settings."""
    from bridges.kafka_sink import build_producer

    metrics = metrics or BridgeMetrics()
    password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
    sources = [
        MqttSource(
            host,
            port,
            client_id=settings.client_id,
            topic_filter=settings.topic_filter,
            qos=settings.qos,
            keepalive_s=settings.keepalive_s,
            session_expiry_s=settings.session_expiry_s,
            receive_maximum=settings.receive_maximum,
            username=settings.mqtt_username,
            password=password,
            read_bytes=settings.read_bytes,
        )
        for host, port in settings.broker_endpoints
    ]
    bridge = Bridge(settings, None, sources, metrics)  # type: ignore[arg-type]
    bridge.producer = build_producer(settings, error_cb=bridge.on_kafka_error)
    return bridge
