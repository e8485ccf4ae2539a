"""Load generation and end-to-end counting for the bridge's bench and fault tests.

Not used by the bridge itself. Payloads come from fleetpulse.codec.encode_batch with healthy-car
readings inside fleetpulse.readings' ranges (the bridge dead-letters anything else) and a sequence
number carried in two of them, so every message can be found in Kafka again.
The publisher writes pre-built PUBLISH packets to a plain socket, so it costs the shared CPUs far
less than the bridge it feeds; QoS 1 keeps within the broker's Receive Maximum and, after a
broker restart, reconnects and resends everything not yet acknowledged.
"""

from __future__ import annotations

import socket
import ssl
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from fleetpulse import mqtt_wire as wire
from fleetpulse import readings
from fleetpulse.clients import kafka_config
from fleetpulse.codec import decode_batch, encode_batch
from fleetpulse.contract import MQTT_TOPIC_PREFIX, N_FEATURES, SENSOR_FIELDS
from fleetpulse.settings import KafkaConnection, MqttConnection
from fleetpulse.topics import DLQ_NON_FINITE, DLQ_OUT_OF_RANGE
from fleetpulse.retry import Backoff, retry


SEQ_LOW = 10_000
"""The sequence number is engine_vibration_amplitude = seq % SEQ_LOW and control_unit_firmware =
1000 + seq // SEQ_LOW: both exact in float32 and inside their ranges up to 64.5 million, and the
firmware stays in the codec's two-byte fast path below 71 million."""


def payloads(n: int, start_seq: int = 0, seed: int = 0) -> list[bytes]:
    """``n`` valid cardata-v1 payloads numbered start_seq .. start_seq+n-1 (see SEQ_LOW)."""
    return encode_batch(_rows(n, start_seq, seed))


def _rows(n: int, start_seq: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = np.empty((n, N_FEATURES))
    values[:, 0:2] = rng.uniform(10, 90, size=(n, 2))  # coolant, intake air
    values[:, 2] = rng.uniform(0, 150, size=n)
    values[:, 3] = rng.uniform(0.05, 0.95, size=n)
    values[:, 4] = rng.uniform(190, 250, size=n)
    values[:, 5] = rng.uniform(0, 80, size=n)
    values[:, 6] = rng.uniform(0, 38, size=n)
    values[:, 8] = rng.uniform(0, 1, size=n)
    values[:, 9:13] = rng.integers(30, 35, size=(n, 4))
    values[:, 13:17] = rng.uniform(0, 1, size=(n, 4))
    seq = np.arange(start_seq, start_seq + n)
    values[:, 7] = seq % SEQ_LOW
    values[:, 17] = 1000 + seq // SEQ_LOW
    return values


def implausible(n: int, seed: int = 2) -> list[tuple[bytes, str]]:
    """``n`` decodable payloads no car could send, each with the dead-letter kind it must get: a NaN,
    an infinity or a reading outside its physical range (fleetpulse.readings), in turn."""
    values = _rows(n, 0, seed)
    floats = [c for c in range(N_FEATURES) if c not in (9, 10, 11, 12, 17)]
    out = []
    for i in range(n):
        column, kind = floats[i % len(floats)], i % 5
        row = values[i : i + 1].copy()
        if kind < 3:
            row[0, column] = (np.nan, np.inf, -np.inf)[kind]
        else:
            low, high = readings.RANGES[SENSOR_FIELDS[column]]
            row[0, column] = high + 1 + abs(high) if kind == 3 else low - 1 - abs(low)
        out.append((encode_batch(row)[0], DLQ_NON_FINITE if kind < 3 else DLQ_OUT_OF_RANGE))
    return out


def sequence_numbers(values: list[bytes]) -> np.ndarray:
    """Sequence numbers of payloads read back from Kafka; -1 for undecodable ones."""
    decoded = decode_batch(values)
    v = np.nan_to_num(decoded.values[:, [7, 17]]).astype(np.int64)
    return np.where(decoded.valid, v[:, 0] + (v[:, 1] - 1000) * SEQ_LOW, -1)


def garbage(n: int, seed: int = 1) -> list[bytes]:
    """Payloads that fail validation in each way the DLQ must name: framing, schema id, Avro body."""
    rng = np.random.default_rng(seed)
    good = payloads(1)[0]
    kinds = [
        lambda: b"",  # truncated header
        lambda: b"\x07" + good[1:],  # bad magic byte
        lambda: good[:1] + (99).to_bytes(4, "big") + good[5:],  # unknown schema id
        lambda: good[:20],  # truncated Avro body
        lambda: good + b"\x00\x01",  # trailing bytes
        lambda: bytes(rng.integers(0, 256, size=int(rng.integers(1, 120)), dtype=np.uint8)),
    ]
    return [kinds[i % len(kinds)]() for i in range(n)]


def packets(bodies: list[bytes], cars: int, prefix: str, qos: int = 1) -> list[bytes]:
    """PUBLISH packets spreading ``bodies`` round-robin over ``cars`` car ids ``<prefix>-<n>``."""
    topics = [car_topic(prefix, i) for i in range(cars)]
    return publish_packets([topics[i % cars] for i in range(len(bodies))], bodies, qos)


def car_topic(prefix: str, car: int) -> bytes:
    return f"{MQTT_TOPIC_PREFIX}{prefix}-{car:05d}".encode()


def publish_packets(topics: list[bytes], bodies: list[bytes], qos: int = 1) -> list[bytes]:
    """One MQTT 5 PUBLISH per (topic, body); the packet id follows the position (as Publisher expects)."""
    return [wire.publish_packet(t, body, qos, (i % 65535) + 1, protocol=wire.MQTT_5) for i, (t, body) in enumerate(zip(topics, bodies))]


@dataclass
class PublishReport:
    sent: int = 0  # packets written for the first time
    acked: int = 0  # PUBACKs that mean delivered (each packet counted once)
    not_routed: int = 0  # PUBACKs that did not (no matching subscribers, a refusal); each packet was published again
    reconnects: int = 0
    started: float = 0.0  # wall clock
    finished: float = 0.0
    chunk_times: list[tuple[int, float]] = field(default_factory=list)  # (first index, wall clock when written)


class Publisher:
    """An MQTT 5 publisher on a raw socket; ``publish`` sends pre-built packets at a rate or flat out.

    At QoS 1 a packet counts as acknowledged only for a PUBACK that means delivered: a "no matching
    subscribers" PUBACK (Mosquitto 2.0.11 sends it while a restarted broker has not yet restored a
    shared subscription) or a refusal leaves it in flight, and it is published again with backoff.
    """

    def __init__(self, host: str, port: int, qos: int = 0, client_id: str | None = None, window: int = 900,
                 tls: ssl.SSLContext | None = None, username: str | None = None, password: str | None = None):
        self.host, self.port, self.qos = host, port, qos
        self.client_id = client_id or f"fleetpulse-loadgen-{uuid.uuid4().hex[:8]}"
        self.tls, self.username, self.password = tls, username, password
        self.window = window  # Mosquitto's Receive Maximum is 1000 in our config; exceeding it is a protocol error
        self.sock: socket.socket | None = None
        self.report: PublishReport | None = None  # of the publish under way (other threads may watch it)
        self._pids: list[int] = []  # packet id of each packet being published
        self._unacked: dict[int, int] = {}  # packet id -> index, published and waiting for its PUBACK
        self._again: list[int] = []  # indices to publish again at _again_at
        self._again_at = 0.0
        self._again_backoff = Backoff(initial=0.1, maximum=2.0)

    @classmethod
    def to(cls, conn: MqttConnection, qos: int = 0, broker: int = 0, **kw) -> "Publisher":
        """A publisher to broker ``broker`` of ``conn``, with its TLS and login (on a secured stack, the
        gateway ``simulator`` may publish any car's topic over one connection; a car only its own)."""
        host, port = conn.endpoints[broker]
        password = conn.password.get_secret_value() if conn.password else None
        return cls(host, port, qos, tls=conn.ssl_context(), username=conn.username, password=password, **kw)

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        sock.sendall(wire.connect_packet(self.client_id, protocol=wire.MQTT_5, keepalive_s=60, username=self.username, password=self.password))
        data, parsed = b"", wire.Parsed()
        while not parsed.control:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("broker closed the connection during CONNECT")
            data += chunk
            wire.parse_stream(data, parsed)
        _, reason, props = wire.parse_connack(parsed.control[0][2])
        if reason >= 0x80:
            raise ConnectionError(f"CONNACK reason {reason:#04x}")
        self.window = min(self.window, int(props.get(wire.PROP_RECEIVE_MAXIMUM, 65535)) - 10)
        sock.settimeout(30)
        self.sock = sock

    def publish(self, pkts: list[bytes], rate: float | None = None, chunk: int = 500, reconnect_for_s: float = 0.0) -> PublishReport:
        """Send ``pkts`` (at ``rate`` messages/s if given); for QoS 1 return once all are acknowledged.

        A packet waits while its packet id is still in flight (``packets`` numbers them so that
        never happens within 65,535 in a row). With ``reconnect_for_s`` a lost connection is re-opened (for up to that long) and
        every packet not yet acknowledged is sent again, so QoS 1 delivery survives a broker restart
        (duplicates possible).
        """
        rep = self.report = PublishReport(started=time.time())
        if self.sock is None:
            self.connect()
        if self.qos:
            self._pids = [_packet_id(p) for p in pkts]
        t0 = time.monotonic()
        while rep.acked < len(pkts):
            try:
                self._run(pkts, rep, rate, chunk, t0)
            except OSError:
                if not reconnect_for_s or self.qos == 0:
                    raise
                self._reconnect(rep, reconnect_for_s)
        rep.finished = time.time()
        return rep

    def _run(self, pkts, rep: PublishReport, rate, chunk, t0) -> None:
        n = len(pkts)
        pending = b""
        while rep.acked < n:
            if self._again and time.monotonic() >= self._again_at:
                self._publish_again(pkts)
            k = min(chunk, n - rep.sent) if self.qos == 0 else self._room(rep.sent, min(chunk, n - rep.sent))
            if k > 0:
                if rate:
                    delay = t0 + rep.sent / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                rep.chunk_times.append((rep.sent, time.time()))
                self.sock.sendall(b"".join(pkts[rep.sent : rep.sent + k]))  # type: ignore[union-attr]
                if self.qos == 0:
                    rep.sent = rep.acked = rep.sent + k
                    continue
                pids = self._pids
                self._unacked.update((pids[i], i) for i in range(rep.sent, rep.sent + k))
                rep.sent += k
            if not self._unacked:  # only packets waiting to be published again
                time.sleep(max(0.0, self._again_at - time.monotonic()))
                continue
            pending += self._recv()
            parsed = wire.Parsed()
            pending = pending[wire.parse_stream(pending, parsed) :]
            self._acked(parsed.control, rep)

    def _room(self, first: int, k: int) -> int:
        """How many of the next ``k`` packets may go out: within the window, and no packet id still in use."""
        k = min(k, self.window - len(self._unacked) - len(self._again))
        busy = self._unacked.keys() | {self._pids[i] for i in self._again} if self._again else self._unacked
        for j, pid in enumerate(self._pids[first : first + max(k, 0)]):
            if pid in busy:
                return j
        return k

    def _recv(self) -> bytes:
        """What the broker sent; b"" when a publish-again falls due first (the broker may be silent meanwhile)."""
        wait = self._again_at - time.monotonic() if self._again else None
        self.sock.settimeout(min(30.0, max(wait, 0.001)) if wait is not None else 30.0)  # type: ignore[union-attr]
        try:
            data = self.sock.recv(65536)  # type: ignore[union-attr]
        except TimeoutError:
            if wait is None:
                raise
            return b""
        if not data:
            raise ConnectionError("broker closed the connection")
        return data

    def _acked(self, control, rep: PublishReport) -> None:
        for ptype, _, body in control:
            if ptype != wire.PUBACK:
                continue
            pid, reason = wire.parse_puback(body)
            index = self._unacked.pop(pid, None)
            if index is None:
                continue
            if wire.puback_delivered(reason):
                rep.acked += 1
                if self._again_backoff.attempts and not self._again:
                    self._again_backoff.reset()
                continue
            rep.not_routed += 1
            if not self._again:
                self._again_at = time.monotonic() + self._again_backoff.next_delay()
            self._again.append(index)

    def _publish_again(self, pkts) -> None:
        again, self._again = self._again, []
        self.sock.sendall(b"".join(pkts[i] for i in again))  # type: ignore[union-attr]
        self._unacked.update((self._pids[i], i) for i in again)

    def _reconnect(self, rep: PublishReport, for_s: float) -> None:
        self.close()
        retry(self.connect, (OSError,), Backoff(initial=0.2, maximum=0.2, deadline_s=for_s))
        rep.reconnects += 1
        # The new connection has no session: everything not yet acknowledged is published again now.
        self._again = sorted([*self._unacked.values(), *self._again])
        self._unacked.clear()
        self._again_at = 0.0

    def close(self) -> None:
        if self.sock is not None:
            wire.disconnect(self.sock)
            self.sock = None


def _packet_id(packet: bytes) -> int:
    """The packet id of a QoS 1 PUBLISH: after the fixed header and the topic."""
    _, at = wire.read_varint(packet, 1)
    at += 2 + ((packet[at] << 8) | packet[at + 1])
    return (packet[at] << 8) | packet[at + 1]


def wait_for_count(kafka: KafkaConnection, topic: str, expected: int, timeout_s: float, poll_s: float = 0.2) -> tuple[int, float]:
    """Poll end offsets until ``expected`` records are in ``topic``; return (count, wall clock when reached)."""
    with _offsets(kafka) as count_of:
        deadline = time.monotonic() + timeout_s
        count = 0
        while time.monotonic() < deadline:
            count = count_of(topic)
            if count >= expected:
                return count, time.time()
            time.sleep(poll_s)
        return count, time.time()


def settled_count(kafka: KafkaConnection, topic: str, quiet_s: float = 3.0, timeout_s: float = 300.0) -> int:
    """The number of records in ``topic`` once it has stopped growing for ``quiet_s``."""
    with _offsets(kafka) as count_of:
        deadline = time.monotonic() + timeout_s
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            count = count_of(topic)
            if count != last:
                last, since = count, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                break
            time.sleep(0.2)
        return last


@contextmanager
def _offsets(kafka: KafkaConnection):
    """A function topic -> records in it (the sum of its partitions' end offsets)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(kafka_config(kafka, **{"group.id": f"fleetpulse-count-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}))

    def count_of(topic: str) -> int:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1] for p in meta.partitions)

    try:
        yield count_of
    finally:
        c.close()


@dataclass
class Records:
    keys: list[bytes] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    headers: list[dict[str, bytes]] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)


def read_topic(kafka: KafkaConnection, topic: str, expected: int, timeout_s: float = 60.0, idle_s: float = 3.0) -> Records:
    """Read ``topic`` from the start until ``expected`` records, then until ``idle_s`` without new ones."""
    from confluent_kafka import Consumer

    c = Consumer(kafka_config(kafka, **{"group.id": f"fleetpulse-read-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "earliest",
                                        "enable.auto.commit": False, "fetch.wait.max.ms": 10}))
    out = Records()
    c.subscribe([topic])
    deadline = time.monotonic() + timeout_s
    idle_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msgs = c.consume(10_000, 0.005)
            now = time.time()
            if not msgs:
                if len(out.values) >= expected and time.monotonic() - idle_since > idle_s:
                    break
                continue
            idle_since = time.monotonic()
            for m in msgs:
                if m.error():
                    continue
                out.keys.append(m.key())
                out.values.append(m.value())
                out.headers.append(dict(m.headers() or []))
                out.timestamps.append(m.timestamp()[1])
                out.received_at.append(now)
    finally:
        c.close()
    return out
