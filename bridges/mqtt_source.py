"""One MQTT 5 subscriber connection per broker: connect, resume the session, read in bulk, ack in batches.

The socket is driven by the bridge loop (select); nothing here runs a thread. A connection that
drops is marked down and reconnected by the loop with backoff; the broker keeps the session
(clean start false, session expiry set) and redelivers every QoS 1 message we have not acked.

With TLS the socket is a bridges.tls_socket.TlsSocket: a read still decrypts everything one recv()
brought, as one batch.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections import deque

from bridges.tls_socket import TlsSocket
from fleetpulse import mqtt_wire as wire
from fleetpulse.clients import MQTT_LOGIN_REFUSALS
from fleetpulse.retry import Backoff

log = logging.getLogger("fleetpulse.bridge.mqtt")



class LoginRefused(wire.ProtocolError):
    """The broker refused this client's identity at CONNECT."""


class MqttSource:
    """A subscriber connection to one broker; ``read()`` returns parsed PUBLISH packets."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        topic_filter: str,
        qos: int,
        keepalive_s: int = 30,
        session_expiry_s: int = 3600,
        receive_maximum: int = 10_000,
        username: str | None = None,
        password: str | None = None,
        read_bytes: int = 1 << 20,
        connect_timeout_s: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.host, self.port = host, port
        self.name = f"{host}:{port}"
        self.client_id, self.topic_filter, self.qos = client_id, topic_filter, qos
        self.keepalive_s, self.session_expiry_s, self.receive_maximum = keepalive_s, session_expiry_s, receive_maximum
        self.username, self.password = username, password
        self.read_bytes, self.connect_timeout_s = read_bytes, connect_timeout_s
        self.ssl_context = ssl_context
        self.sock: socket.socket | None = None
        self.generation = 0  # bumps on every connect; acks from an older connection are dropped
        self.session_present = False
        self.ack_queue: deque = deque()  # AckBatch objects in receipt order (MQTT 5 wants PUBACKs in order)
        self.acks_sent = 0
        self._rest = b""
        self._pending: wire.Parsed | None = None
        self._last_recv = self._last_ping = 0.0
        self._backoff = Backoff()
        self.next_attempt = 0.0

    @property
    def connected(self) -> bool:
        return self.sock is not None

    def fileno(self) -> int:
        return self.sock.fileno()  # type: ignore[union-attr]

    def connect(self) -> None:
        """Open the socket, CONNECT (resuming the session) and SUBSCRIBE; raise OSError/ProtocolError on failure."""
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                sock = TlsSocket(sock, self.ssl_context, self.host)
                sock.handshake()
            sock.sendall(
                wire.connect_packet(
                    self.client_id,
                    protocol=wire.MQTT_5,
                    keepalive_s=self.keepalive_s,
                    clean_start=False,
                    session_expiry_s=self.session_expiry_s,
                    receive_maximum=self.receive_maximum,
                    username=self.username,
                    password=self.password,
                )
            )
            parsed, rest = self._read_until(sock, wire.CONNACK)
            _, _, body = next(c for c in parsed.control if c[0] == wire.CONNACK)
            self.session_present, reason, props = wire.parse_connack(body)
            if reason >= 0x80:
                text = props.get(wire.PROP_REASON_STRING, b"").decode(errors="replace") or wire.CONNACK_REASONS_5.get(reason, "")
                error = LoginRefused if reason in MQTT_LOGIN_REFUSALS else wire.ProtocolError
                raise error(f"CONNACK reason {reason:#04x} {text}".strip())
            # Subscribe on every connect, resumed session or not: it covers an expired session, and
            # Mosquitto 2.0.11 restores a persistent session's shared subscription after a broker
            # restart only when the client subscribes again (until then it answers publishers
            # "no matching subscribers" and drops their messages; the cars publish those again).
            sock.sendall(wire.subscribe_packet(1, self.topic_filter, self.qos, protocol=wire.MQTT_5))
        except BaseException:
            sock.close()
            raise
        sock.settimeout(10.0)  # reads happen after select; the timeout bounds a blocked ack write
        parsed.control = [c for c in parsed.control if c[0] != wire.CONNACK]
        self.sock, self._rest, self._pending = sock, rest, parsed
        self.generation += 1
        self.ack_queue.clear()
        self._last_recv = self._last_ping = time.monotonic()
        self._backoff.reset()
        log.info("connected to %s as %s (session present: %s)", self.name, self.client_id, self.session_present)

    def _read_until(self, sock: socket.socket, packet_type: int) -> tuple[wire.Parsed, bytes]:
        parsed, data = wire.Parsed(), b""
        deadline = time.monotonic() + self.connect_timeout_s
        while not any(c[0] == packet_type for c in parsed.control):
            if time.monotonic() > deadline:
                raise wire.ProtocolError(f"no CONNACK from {self.name} within {self.connect_timeout_s}s")
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"{self.name} closed the connection during CONNECT")
            data += chunk
            data = data[wire.parse_stream(data, parsed) :]
        return parsed, data

    def read(self) -> wire.Parsed:
        """Read what the socket has (call when select says readable) and parse it."""
        out = self._pending or wire.Parsed()
        self._pending = None
        chunk = self.sock.recv(self.read_bytes)  # type: ignore[union-attr]
        if not chunk:
            raise ConnectionError(f"{self.name} closed the connection")
        self._last_recv = time.monotonic()
        data = self._rest + chunk if self._rest else chunk
        self._rest = data[wire.parse_stream(data, out) :]
        if out.control:
            self._handle_control(out.control)
        return out

    def take_pending(self) -> wire.Parsed | None:
        """PUBLISH packets that arrived together with the CONNACK (queued messages of a resumed session)."""
        out, self._pending = self._pending, None
        return out

    def _handle_control(self, control: list[tuple[int, int, bytes]]) -> None:
        for ptype, _, body in control:
            if ptype == wire.SUBACK:
                _, codes = wire.parse_suback(body)
                if any(code >= 0x80 for code in codes):
                    raise wire.ProtocolError(f"{self.name} refused the subscription {self.topic_filter!r} (reason {codes[0]:#04x})")
            elif ptype == wire.DISCONNECT:
                reason = body[0] if body else 0
                raise ConnectionError(f"{self.name} sent DISCONNECT (reason {reason:#04x})")

    def flush_acks(self) -> None:
        """Send PUBACKs for the leading batches Kafka has confirmed, in receipt order, as one write."""
        queue = self.ack_queue
        if not queue or queue[0].left:
            return
        ids: list[int] = []
        while queue and not queue[0].left:
            ids.extend(queue.popleft().packet_ids)
        if ids and self.sock is not None:
            self.sock.sendall(wire.puback_packets(ids))
            self.acks_sent += len(ids)

    def tick(self, now: float, reading: bool = True) -> None:
        """Keepalive: ping at half the interval; a broker silent for 1.5 intervals is dead.

        While the bridge is not reading (too much in flight) the broker's PINGRESPs wait unread in
        the socket, so silence says nothing then and the check is skipped.
        """
        if not reading:
            self._last_recv = now
        elif now - self._last_recv > 1.5 * self.keepalive_s:
            raise ConnectionError(f"{self.name} silent for {now - self._last_recv:.0f}s (keepalive)")
        if now - self._last_ping >= self.keepalive_s / 2:
            self.sock.sendall(wire.PINGREQ_PACKET)  # type: ignore[union-attr]
            self._last_ping = now

    def drop(self, reason: str) -> None:
        """Close after an error; un-acked messages stay in the broker's session and come back."""
        if self.sock is not None:
            log.warning("connection to %s lost: %s", self.name, reason)
            self.sock.close()
        self.sock, self._rest, self._pending = None, b"", None
        self.ack_queue.clear()
        self.next_attempt = time.monotonic() + self._backoff.next_delay()

    def close(self) -> None:
        """Normal DISCONNECT: the session (and its queue) survives for session_expiry_s."""
        if self.sock is not None:
            wire.disconnect(self.sock)
            self.sock = None
