"""A counting MQTT subscriber: how many events reached the broker (tests and bench).

Raw MQTT 3.1.1 on a blocking socket in a thread, so it keeps up with a 100k msg/s publisher where a
paho on_message callback would not. It acks QoS 1 deliveries, can keep a persistent session
(``clean=False``) and reconnects when the broker restarts, and dedups QoS 1 redeliveries by payload.
On a secured broker it logs in on the plain loopback listener (``username``, ``password``: ``admin``, the
one identity that may subscribe to every car's data).
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter as Tally

from fleetpulse import mqtt_wire as wire


class CountingSubscriber:
    def __init__(self, host: str, port: int, topic_filter: str = "vehicles/sensor/data/#", qos: int = 0,
                 client_id: str | None = None, clean: bool = True, keep_payloads: bool = False,
                 username: str | None = None, password: str | None = None):
        self.host, self.port, self.filter, self.qos = host, port, topic_filter, qos
        self.username, self.password = username, password
        self.client_id = client_id or f"fleetpulse-counter-{time.time_ns() & 0xFFFFFFF:x}"
        self.clean, self.keep_payloads = clean, keep_payloads
        self.count = 0
        self.per_topic: Tally[bytes] = Tally()
        self.payloads: set[bytes] = set()
        self.messages: list[tuple[bytes, bytes]] = []  # (topic, payload) in arrival order
        self.last_message = 0.0
        self.reconnects = 0
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="mqtt-counter")

    def start(self, timeout: float = 10.0) -> "CountingSubscriber":
        self._thread.start()
        if not self._subscribed.wait(timeout):
            raise TimeoutError(f"could not subscribe at {self.host}:{self.port}")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def wait_quiet(self, quiet_s: float = 1.0, timeout: float = 60.0, expect: int | None = None) -> int:
        """Wait until ``expect`` messages arrived or none came for ``quiet_s``; return the count."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if expect is not None and self.count >= expect:
                break
            if self.last_message and time.monotonic() - self.last_message > quiet_s and expect is None:
                break
            time.sleep(0.05)
        return self.count

    @property
    def unique(self) -> int:
        return len(self.payloads)

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.sendall(wire.connect_packet(self.client_id, protocol=wire.MQTT_3_1_1, keepalive_s=60, clean_start=self.clean,
                                         username=self.username, password=self.password))
        sock.sendall(wire.subscribe_packet(1, self.filter, self.qos, protocol=wire.MQTT_3_1_1))
        sock.settimeout(0.2)
        return sock

    def _run(self) -> None:
        buf = bytearray()
        sock = None
        while not self._stop.is_set():
            if sock is None:
                try:
                    sock = self._connect()
                    buf.clear()
                    last_ping = time.monotonic()
                except OSError:
                    time.sleep(0.2)
                    continue
            try:
                data = sock.recv(1 << 20)
                if not data:
                    raise ConnectionError("closed")
            except socket.timeout:
                data = b""
            except OSError:
                sock.close()
                sock = None
                self.reconnects += 1
                continue
            if time.monotonic() - last_ping > 20:
                sock.sendall(wire.PINGREQ_PACKET)
                last_ping = time.monotonic()
            if data:
                buf += data
                packets, used = wire.split_packets(buf)
                del buf[:used]
                acks = self._handle(packets)
                if acks:
                    try:
                        sock.sendall(acks)
                    except OSError:
                        sock.close()
                        sock = None
        if sock is not None:
            wire.disconnect(sock)

    def _handle(self, packets) -> bytes:
        acks = []
        n = 0
        for ptype, flags, body in packets:
            if ptype == wire.PUBLISH:
                tlen = (body[0] << 8) | body[1]
                at = 2 + tlen
                if flags & 0x06:
                    acks.append(b"\x40\x02" + body[at : at + 2])
                    at += 2
                n += 1
                if self.keep_payloads:
                    topic, payload = body[2 : 2 + tlen], body[at:]
                    self.per_topic[topic] += 1
                    if topic + payload not in self.payloads:  # a QoS 1 redelivery is counted once
                        self.payloads.add(topic + payload)
                        self.messages.append((topic, payload))
            elif ptype == wire.SUBACK:
                self._subscribed.set()
        if n:
            self.count += n
            self.last_message = time.monotonic()
        return b"".join(acks)
