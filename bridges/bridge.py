"""The bridge loop: read MQTT in bulk, validate per batch, produce to Kafka, ack MQTT after delivery.

One thread drives everything (select over broker sockets, producer.poll for delivery reports), so
there are no locks. Ordering that matters for no-loss: a QoS 1 PUBACK goes out only when Kafka has
confirmed every record of its batch (data topic or DLQ), and batches are acked in receipt order.
A record Kafka did not take is produced again with backoff (bridges.delivery): for as long as it
takes after a transient error, a few times after a permanent one, then it goes to the DLQ with the
reason; its batch stays un-acked meanwhile. If Kafka is away the in-flight count reaches
max_in_flight, the loop stops reading (the broker holds the rest in our session) and keeps pinging
until Kafka is back. No record can raise out of the loop: bad input is dead-lettered
(bridges.validation), and a dead letter Kafka refuses for good is counted, logged and let go.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import select
import ssl
import time
from dataclasses import asdict, dataclass
from typing import Callable

from confluent_kafka import KafkaError, KafkaException, Producer

from bridges.delivery import Next, Record, Redelivery, next_step
from bridges.health import Health
from bridges.metrics import BridgeMetrics
from bridges.mqtt_source import LoginRefused, MqttSource
from bridges.settings import BridgeSettings
from bridges.validation import Screen
from fleetpulse.errors import AccessDenied
from fleetpulse.contract import MQTT_TOPIC_PREFIX
from fleetpulse.errors import FleetPulseError
from fleetpulse.mqtt_wire import Parsed, ProtocolError
from fleetpulse.retry import Backoff
from fleetpulse.topics import (
    ARRIVAL_TIME_HEADER,
    DLQ_KAFKA_REJECTED,
    DLQ_KIND_HEADER,
    DLQ_ORIGINAL_SIZE_HEADER,
    DLQ_REASON_HEADER,
    DLQ_SOURCE_HEADER,
    DLQ_TIME_HEADER,
    MQTT_TOPIC_HEADER,
)

log = logging.getLogger("fleetpulse.bridge")

DLQ_FIELD_BYTES = 256  # key and source topic of a dead letter: a malformed car id may be 64 KiB long
DLQ_REASON_BYTES = 1024
LOG_EVERY_S = 10.0  # a broken dead-letter topic would otherwise log once per bad record


class AckBatch:
    """The records of one socket read; done when every one is confirmed by Kafka or let go."""

    __slots__ = ("bridge", "left", "size", "packet_ids", "n_valid", "n_invalid")

    def __init__(self, bridge: "Bridge", size: int, packet_ids: list[int], n_invalid: int):
        self.bridge, self.left, self.size, self.packet_ids = bridge, size, size, packet_ids
        self.n_valid, self.n_invalid = size - n_invalid, n_invalid

    def delivered(self, err, msg) -> None:
        if err is not None:
            self.bridge._failed(self, err, _data_record_of(msg), 1)
            return
        self.left -= 1
        if not self.left:
            self.bridge._completed(self)

    def let_go(self) -> None:
        """One record leaves the stream without a delivery (a dead letter Kafka refused for good)."""
        self.n_invalid -= 1
        self.left -= 1
        if not self.left:
            self.bridge._completed(self)


@dataclass
class Summary:
    received: int = 0
    forwarded: int = 0
    dead_lettered: int = 0
    dead_letter_failures: int = 0
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
        self.screen = Screen(settings.max_payload_bytes)
        self.health = Health(settings.stall_timeout_s, settings.live_stall_timeout_s)
        self.summary = Summary()
        self.in_flight = 0
        self.fatal: KafkaError | None = None
        self._again: list[Redelivery] = []  # a heap by due time
        self._seq = itertools.count()
        self._logged_at, self._unlogged = 0.0, 0

    # -- Kafka side -------------------------------------------------------------------------------

    def on_kafka_error(self, err: KafkaError) -> None:
        """librdkafka global errors (broker down and the like) are retried inside; only fatal ones stop us."""
        if err.fatal():
            self.fatal = err
        else:
            log.warning("kafka: %s", err.str())

    def _completed(self, batch: AckBatch) -> None:
        self.in_flight -= batch.size
        self.summary.forwarded += batch.n_valid
        self.summary.dead_lettered += batch.n_invalid
        self.metrics.forwarded.inc(batch.n_valid)
        if batch.n_invalid:
            self.metrics.dead_lettered.inc(batch.n_invalid)
        self.health.progress(time.monotonic())

    def _failed(self, batch: AckBatch, err: KafkaError, record: Record, attempts: int, backoff: Backoff | None = None) -> None:
        """``record`` failed its ``attempts``-th produce: schedule it again, dead-letter it or let it go.

        Never produces itself: it runs inside producer.poll(), and the loop produces what is due.
        """
        self.summary.delivery_errors += 1
        self.metrics.delivery_errors.inc()
        step = next_step(err, attempts, self.settings.kafka_refused_tries, record.topic == self.dlq_topic)
        now = time.monotonic()
        if step is Next.RETRY:
            backoff = backoff or Backoff(initial=0.2, maximum=5.0)
            heapq.heappush(self._again, Redelivery(now + backoff.next_delay(), next(self._seq), record, batch, attempts, backoff))
        elif step is Next.DEAD_LETTER:
            batch.n_valid -= 1
            batch.n_invalid += 1
            self.metrics.refused.labels(DLQ_KAFKA_REJECTED).inc()
            reason = f"Kafka refused the record {attempts} times: {err.name()}: {err.str()}"
            letter = self._dead_letter(record.value, record.key, _source_of(record), DLQ_KAFKA_REJECTED, reason, record.ts)
            heapq.heappush(self._again, Redelivery(now, next(self._seq), letter, batch, 0, None))
        else:
            self.summary.dead_letter_failures += 1
            self.metrics.dead_letter_failures.inc()
            self._log_rarely(now, f"dead letter dropped, Kafka refused it {attempts} times: {err.name()}: {err.str()}")
            batch.let_go()

    def _produce_due(self, now: float) -> None:
        again = self._again
        while again and again[0].due <= now:
            r = heapq.heappop(again)
            self._send(r.record, r.batch, r.attempts, r.backoff)

    def _send(self, rec: Record, batch: AckBatch, attempts: int, backoff: Backoff | None) -> None:
        """produce() off the hot path (dead letters, retries), waiting out a full local queue; a
        refusal goes the way of a failed delivery.

        The callback keeps ``rec``: a delivery report carries no headers, and a dead letter's reason
        is in them.
        """

        def done(err, msg) -> None:
            if err is None:
                batch.delivered(None, msg)
            else:
                self._failed(batch, err, rec, attempts + 1, backoff)

        while True:
            try:
                self.producer.produce(rec.topic, rec.value, rec.key, headers=rec.headers, timestamp=rec.ts, on_delivery=done)
                return
            except BufferError:
                self.producer.poll(0.05)
            except KafkaException as exc:
                self._failed(batch, exc.args[0], rec, attempts + 1, backoff)
                return

    def _dead_letter(self, value: bytes, key: bytes, source: bytes, kind: str, reason: str, ts: int) -> Record:
        """The DLQ record for a refused one: bounded (a prefix of an oversized payload), with why in headers."""
        size = len(value)
        if size > self.settings.max_payload_bytes:
            value = value[: self.settings.dlq_prefix_bytes]
        headers = [
            (DLQ_REASON_HEADER, reason.encode()[:DLQ_REASON_BYTES]),
            (DLQ_KIND_HEADER, kind.encode()),
            (DLQ_SOURCE_HEADER, source[:DLQ_FIELD_BYTES]),
            (DLQ_TIME_HEADER, str(ts).encode()),
            (DLQ_ORIGINAL_SIZE_HEADER, str(size).encode()),
        ]
        return Record(self.dlq_topic, value, key[:DLQ_FIELD_BYTES], headers, ts)

    def _log_rarely(self, now: float, message: str) -> None:
        if now - self._logged_at < LOG_EVERY_S:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more like it since the last line)" if self._unlogged else ""
        log.error("%s%s", message, more)
        self._logged_at, self._unlogged = now, 0

    def forward(self, source: MqttSource, parsed: Parsed) -> None:
        """Validate one read's messages and produce them; the PUBACKs wait in ``source.ack_queue``."""
        payloads, topics = parsed.payloads, parsed.topics
        n = len(payloads)
        if not n:
            return
        ts = int(time.time() * 1000)
        ts_b = str(ts).encode()
        refused = self.screen(payloads, topics)
        packet_ids = [pid for pid in parsed.packet_ids if pid] if self.settings.qos else []
        batch = AckBatch(self, n, packet_ids, len(refused))
        cb = batch.delivered
        produce, topic = self.producer.produce, self.topic
        self.in_flight += n
        self.summary.received += n
        self.metrics.received.inc(n)
        source.ack_queue.append(batch)
        for i in range(n):
            t = topics[i]
            key = t[t.rfind(b"/") + 1 :]
            if refused and i in refused:
                kind, reason = refused[i]
                self.metrics.refused.labels(kind).inc()
                self._send(self._dead_letter(payloads[i], key, t, kind, reason, ts), batch, 0, None)
                continue
            headers = [(MQTT_TOPIC_HEADER, t), (ARRIVAL_TIME_HEADER, ts_b)]
            try:
                produce(topic, payloads[i], key, headers=headers, timestamp=ts, on_delivery=cb)
            except BufferError:
                self._send(Record(topic, payloads[i], key, headers, ts), batch, 0, None)
            except KafkaException as exc:
                self._failed(batch, exc.args[0], Record(topic, payloads[i], key, headers, ts), 1)

    # -- MQTT side --------------------------------------------------------------------------------

    def connect_first(self) -> None:
        """Connect every source once before the loop: a refused identity or an untrusted certificate
        is a configuration error, one line at start-up (AccessDenied); a broker that does not answer
        yet is the loop's to retry."""
        for src in self.sources:
            who = f"as {src.username!r}" if src.username else "anonymously"
            try:
                src.connect()
            except LoginRefused as exc:
                raise AccessDenied(f"MQTT broker at {src.name} refused the bridge's login {who} (client id {src.client_id}): {exc}") from None
            except ssl.SSLError as exc:
                raise AccessDenied(f"TLS with the MQTT broker at {src.name} failed: {exc.reason or exc} (is mqtt_ca_file the CA "
                                   "that signed its certificate?)") from None
            except (OSError, ProtocolError) as exc:
                src.drop(str(exc))
                continue
            self._connected(src)

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
            self._connected(src)

    def _connected(self, src: MqttSource) -> None:
        self.metrics.reconnects.labels(src.name).inc()
        self.metrics.connected.labels(src.name).set(1)
        if (pending := src.take_pending()) is not None:
            self.forward(src, pending)

    def _lost(self, src: MqttSource, exc: BaseException) -> None:
        # Batches of this connection still complete in Kafka; their acks are dropped (the broker
        # redelivers those messages on the resumed session, so they are counted twice, never lost).
        src.drop(str(exc))
        self.metrics.connected.labels(src.name).set(0)

    def _flush_acks(self, live: list[MqttSource]) -> None:
        for src in live:
            if not src.connected:
                continue
            try:
                before = src.acks_sent
                src.flush_acks()
                if src.acks_sent != before:
                    self.metrics.acks.inc(src.acks_sent - before)
            except (OSError, ProtocolError) as exc:
                self._lost(src, exc)

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
            self._produce_due(now)
        self.metrics.in_flight.set(self.in_flight)
        self._flush_acks(live)
        for src in live:
            if not src.connected:
                continue
            try:
                src.tick(now, reading)
            except (OSError, ProtocolError) as exc:
                self._lost(src, exc)
        self.health.turn(now, self.in_flight, len(live))

    def run(self, should_stop: Callable[[], bool], progress: Callable[[Summary], None] | None = None, every_s: float = 5.0) -> Summary:
        """Loop until ``should_stop()``; then drain Kafka (at most shutdown_timeout_s), send the acks
        for what it confirmed and disconnect (session kept)."""
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
            self.drain(self.settings.shutdown_timeout_s)
        return self._snapshot(time.monotonic() - t0)

    def drain(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for Kafka to confirm what is in flight, acking as it does; then
        disconnect. What it has not confirmed by then stays un-acked: the broker redelivers it."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline and self.fatal is None:
            self.producer.poll(0.05)
            if self._again:
                self._produce_due(time.monotonic())
            self._flush_acks(self.sources)
        self._flush_acks(self.sources)
        for src in self.sources:
            src.close()
            self.metrics.connected.labels(src.name).set(0)

    def _snapshot(self, elapsed: float) -> Summary:
        s = self.summary
        s.in_flight, s.elapsed_s = self.in_flight, round(elapsed, 3)
        s.mqtt_acks = sum(src.acks_sent for src in self.sources)
        return Summary(**asdict(s))


def _data_record_of(msg) -> Record:
    """A data record again, from its delivery report. The report has no headers, but both follow from
    the record: the shared subscription's topic is the prefix plus the car id (the key), and the
    arrival time is the record's timestamp."""
    key, ts = msg.key(), msg.timestamp()[1]
    headers = [(MQTT_TOPIC_HEADER, MQTT_TOPIC_PREFIX.encode() + key), (ARRIVAL_TIME_HEADER, str(ts).encode())]
    return Record(msg.topic(), msg.value(), key, headers, ts)


def _source_of(record: Record) -> bytes:
    """The MQTT topic a data record came from (its mqtt.topic header)."""
    return next((v for k, v in record.headers if k == MQTT_TOPIC_HEADER), b"")


def build_bridge(settings: BridgeSettings, metrics: BridgeMetrics | None = None) -> Bridge:
    """A bridge with a producer and one source per broker endpoint, built from settings."""
    from bridges.kafka_sink import build_producer

    metrics = metrics or BridgeMetrics()
    mqtt = settings.mqtt
    password = mqtt.password.get_secret_value() if mqtt.password else None
    context = mqtt.ssl_context()
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
            username=mqtt.username,
            password=password,
            read_bytes=settings.read_bytes,
            ssl_context=context,
        )
        for host, port in mqtt.endpoints
    ]
    bridge = Bridge(settings, None, sources, metrics)  # type: ignore[arg-type]
    bridge.producer = build_producer(settings, error_cb=bridge.on_kafka_error)
    return bridge
