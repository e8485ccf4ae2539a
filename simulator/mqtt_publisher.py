"""Publish-only MQTT 5 connections on asyncio that take pre-built PUBLISH batches.

One ``Connection`` per MQTT session; many cars may share one. It checks CONNACK, pings every
keepalive/2 and drops a connection that stays silent for two keepalives, reconnects with backoff
when the broker goes away, and at QoS 1 keeps every PUBLISH until its PUBACK arrives and resends the
unacked ones (DUP set, same packet id) after a reconnect, so nothing published is lost.

MQTT 5, not 3.1.1, because only an MQTT 5 PUBACK can say "no matching subscribers" (0x10): Mosquitto
2.0.11 drops a message for a shared subscription whose persistent members are offline after a broker
restart, and acknowledges it all the same. Such a PUBACK (and any refusal, 0x80 and above) is not a
delivery: the packet stays in flight, counted in ``not_routed``, and is published again with backoff
until a subscriber takes it.

paho-mqtt costs 10-20 us of Python per publish(); here a batch of a block's packets is one
``transport.write`` and per-message Python is limited to QoS 1 bookkeeping (a dict entry per packet).

With TLS the event loop's SSL transport carries the same batches; a connection logs in with its own
username and password (a car's, or the fleet gateway's in the multiplexed mode).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from dataclasses import dataclass

import numpy as np

from fleetpulse import mqtt_wire as wire
from fleetpulse.clients import MQTT_LOGIN_REFUSALS
from fleetpulse.errors import AccessDenied
from fleetpulse.errors import BrokerUnavailable
from fleetpulse.retry import Backoff

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux; Python 3.12 names it
QOS1_WINDOW = 20_000
"""Max unacked QoS 1 packets per connection (the broker's Receive Maximum may lower it): keeps 16-bit
packet ids unique (acks come in order, and not-routed packets are published again together)."""


class LoginRefused(ConnectionError):
    """The broker refused this connection's identity at CONNECT."""


@dataclass
class PublishStats:
    sent: int = 0  # PUBLISH packets written (QoS 1: first transmission)
    acked: int = 0  # PUBACKs that mean delivered
    not_routed: int = 0  # PUBACKs that do not (no matching subscribers, or a refusal); each is published again
    dropped: int = 0  # QoS 0 packets that found their connection down
    resent: int = 0
    reconnects: int = 0
    connect_errors: int = 0
    last_error: str = ""
    open_connections: int = 0


@dataclass
class Endpoint:
    host: str
    port: int
    source: str | None = None  # bind to this local address (spreads > 28k connections over 127.0.0.x)


class Connection(asyncio.Protocol):
    """One MQTT session: write batches, track QoS 1 acks, reconnect."""

    def __init__(self, client_id: str, endpoint: Endpoint, stats: PublishStats, keepalive_s: int = 60, connect_timeout_s: float = 10.0,
                 username: str | None = None, password: str | None = None, ssl_context: ssl.SSLContext | None = None):
        self.client_id, self.endpoint, self.stats = client_id, endpoint, stats
        self.keepalive_s, self.connect_timeout_s = keepalive_s, connect_timeout_s
        self.username, self.password, self.ssl_context = username, password, ssl_context
        self.transport: asyncio.Transport | None = None
        self.connected = False
        self.closing = False
        self.inflight: dict[int, bytes] = {}  # pid -> packet, insertion (= send) order
        self.window = QOS1_WINDOW  # lowered to the broker's Receive Maximum at CONNACK
        self.next_pid = 1
        self.unrouted: list[int] = []  # pids whose PUBACK said not delivered, waiting for their next publish
        self._republish_at: asyncio.TimerHandle | None = None
        self._republish_backoff = Backoff(initial=0.1, maximum=2.0)
        self._buf = bytearray()
        self._connack: asyncio.Future | None = None
        self._ready = asyncio.Event()  # not paused and the QoS 1 window has room
        self._paused = False
        self._reconnecting: asyncio.Task | None = None
        self.last_recv = time.monotonic()
        self.ping_sent = 0.0

    # --- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        self._buf.clear()

    def data_received(self, data: bytes):
        self._buf += data
        self.last_recv = time.monotonic()
        if self._acks_only():
            self._update_ready()
            return
        packets, used = wire.split_packets(self._buf)
        del self._buf[:used]
        self.last_recv = time.monotonic()
        inflight = self.inflight
        for ptype, _flags, body in packets:
            if ptype == wire.PUBACK:
                pid, reason = wire.parse_puback(body)
                if wire.puback_delivered(reason):
                    if inflight.pop(pid, None) is not None:
                        self.stats.acked += 1
                elif pid in inflight:
                    self._not_routed(pid, reason)
            elif ptype == wire.CONNACK and self._connack is not None and not self._connack.done():
                self._connack.set_result(body)
            elif ptype == wire.DISCONNECT:
                self.stats.last_error = f"{self.client_id}: broker sent DISCONNECT (reason {body[0] if body else 0:#04x})"
        if packets:
            self._delivering_again()
            self._update_ready()

    def _delivering_again(self) -> None:
        if self._republish_backoff.attempts and not self.unrouted:
            self._republish_backoff.reset()  # the next outage starts from a short delay again

    def _not_routed(self, pid: int, reason: int) -> None:
        self.stats.not_routed += 1
        self.stats.last_error = f"{self.client_id}: PUBACK reason {reason:#04x} (not delivered); publishing again"
        self.unrouted.append(pid)
        if self._republish_at is None:
            delay = self._republish_backoff.next_delay()
            self._republish_at = asyncio.get_running_loop().call_later(delay, self._republish)

    def _republish(self) -> None:
        """Publish the not-routed packets again (same packet ids: the broker released them with its PUBACK)."""
        self._republish_at = None
        pids, self.unrouted = self.unrouted, []
        if self.connected:  # otherwise the reconnect resends everything in flight
            self.transport.write(b"".join(self.inflight[p] for p in pids if p in self.inflight))
            self.stats.resent += len(pids)

    def _acks_only(self) -> bool:
        """At QoS 1 the broker sends back nothing but 4-byte PUBACKs: handle a run of them at once."""
        n = len(self._buf) // 4
        if n < 8:
            return False
        rows = np.frombuffer(memoryview(self._buf)[: n * 4], dtype=np.uint8).reshape(n, 4)
        if not ((rows[:, 0] == 0x40) & (rows[:, 1] == 2)).all():
            return False
        pids = ((rows[:, 2].astype(np.int64) << 8) | rows[:, 3]).tolist()
        del rows
        del self._buf[: n * 4]
        pop, before = self.inflight.pop, len(self.inflight)
        for pid in pids:
            pop(pid, None)
        self.stats.acked += before - len(self.inflight)
        self._delivering_again()
        return True

    def connection_lost(self, exc):
        was = self.connected
        self.connected = False
        self.transport = None
        self._paused = False
        self._update_ready()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectionError(str(exc or "connection closed before CONNACK")))
        if was:
            self.stats.open_connections -= 1
            if not self.closing:
                self.stats.last_error = f"{self.client_id}: connection lost ({exc or 'closed by broker'})"
                self._reconnecting = asyncio.ensure_future(self._reconnect())

    def pause_writing(self):
        self._paused = True
        self._ready.clear()

    def resume_writing(self):
        self._paused = False
        self._update_ready()

    # --- connecting -----------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect and wait for a successful CONNACK; raise OSError/ConnectionError otherwise."""
        loop = asyncio.get_running_loop()
        ep = self.endpoint
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ep.source:
                # Pick the port at connect() time so each source address serves ~28k connections per broker.
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((ep.source, 0))
            await asyncio.wait_for(loop.sock_connect(sock, (ep.host, ep.port)), self.connect_timeout_s)
            self._connack = loop.create_future()
            if self.ssl_context is None:
                await loop.create_connection(lambda: self, sock=sock)
            else:
                await loop.create_connection(lambda: self, sock=sock, ssl=self.ssl_context, server_hostname=ep.host,
                                             ssl_handshake_timeout=self.connect_timeout_s)
        except BaseException:
            sock.close()
            raise
        self.transport.write(wire.connect_packet(self.client_id, protocol=wire.MQTT_5, keepalive_s=self.keepalive_s,
                                                 username=self.username, password=self.password))
        try:
            body = await asyncio.wait_for(self._connack, self.connect_timeout_s)
            _, code, props = wire.parse_connack(body)
        except BaseException:
            if self.transport is not None:
                self.transport.abort()
            raise
        if code >= 0x80:
            self.transport.abort()
            error = LoginRefused if code in MQTT_LOGIN_REFUSALS else ConnectionError
            raise error(f"CONNACK refused: {wire.CONNACK_REASONS_5.get(code, f'reason {code:#04x}')}")
        # MQTT 5 makes more un-acked QoS 1 publishes than the broker's Receive Maximum a protocol error.
        self.window = min(QOS1_WINDOW, int(props.get(wire.PROP_RECEIVE_MAXIMUM, 65535)))
        self.connected = True
        self.last_recv = time.monotonic()
        self.stats.open_connections += 1
        if self._republish_at is not None:
            self._republish_at.cancel()
            self._republish_at = None
        self.unrouted = []
        if self.inflight:
            # Resend every unacked QoS 1 packet, in order, flagged as a duplicate.
            self.transport.write(b"".join(wire.set_dup(p) for p in self.inflight.values()))
            self.stats.resent += len(self.inflight)
        self._update_ready()

    async def _reconnect(self) -> None:
        backoff = Backoff()
        while not self.closing and not self.connected:
            await asyncio.sleep(backoff.next_delay())
            try:
                await self.open()
                self.stats.reconnects += 1
                return
            except (OSError, ConnectionError, asyncio.TimeoutError) as exc:
                self.stats.connect_errors += 1
                self.stats.last_error = f"{self.client_id}: reconnect to {self.endpoint.host}:{self.endpoint.port} failed ({exc})"

    # --- publishing -------------------------------------------------------------------------------
    def _update_ready(self) -> None:
        # Not waiting for the connection itself: QoS 0 counts drops while it is down and QoS 1 queues
        # into the window (resent on reconnect), so one dead connection does not stall the fleet.
        if not self._paused and len(self.inflight) < self.window:
            self._ready.set()
        else:
            self._ready.clear()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def take_pids(self, n: int) -> np.ndarray:
        pids = (self.next_pid - 1 + np.arange(n)) % 65535 + 1
        self.next_pid = int(pids[-1]) % 65535 + 1 if n else self.next_pid
        return pids

    def publish_qos0(self, data: bytes, count: int) -> None:
        if self.connected:
            self.transport.write(data)
            self.stats.sent += count
        else:
            self.stats.dropped += count

    def publish_qos1(self, data: bytes, pids: np.ndarray, size: int, packets: list[bytes] | None = None) -> None:
        """Record packets as in flight (sliced from ``data`` when they are ``size`` bytes each), then send."""
        if packets is None:
            packets = [data[i : i + size] for i in range(0, len(data), size)]
        self.inflight.update(zip(pids.tolist(), packets))
        if self.connected:
            self.transport.write(data)
        self.stats.sent += len(packets)
        self._update_ready()

    def ping_if_due(self, now: float) -> None:
        """Called every keepalive/2: ping, and drop the connection if the last ping went unanswered."""
        if not self.connected:
            return
        if self.ping_sent > self.last_recv and now - self.ping_sent > self.keepalive_s / 2:
            self.stats.last_error = f"{self.client_id}: no PINGRESP within {self.keepalive_s / 2:.0f}s; reconnecting"
            self.transport.abort()  # connection_lost schedules the reconnect
            return
        self.transport.write(wire.PINGREQ_PACKET)
        self.ping_sent = now

    async def close(self) -> None:
        self.closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        if self._republish_at is not None:
            self._republish_at.cancel()
        if self.connected and self.transport is not None:
            self.transport.write(wire.DISCONNECT_PACKET)
            self.transport.close()


class Pool:
    """The connections of one process, opened up front, with a keepalive task."""

    def __init__(self, conns: list[Connection], stats: PublishStats, open_concurrency: int = 256):
        self.conns, self.stats = conns, stats
        self.open_concurrency = open_concurrency
        self._pinger: asyncio.Task | None = None

    async def open(self) -> None:
        """Open every connection; the first that cannot connect raises BrokerUnavailable."""
        sem = asyncio.Semaphore(self.open_concurrency)

        async def one(conn: Connection) -> None:
            async with sem:
                for attempt in range(3):
                    try:
                        await conn.open()
                        return
                    except LoginRefused as exc:
                        who = f"as {conn.username!r}" if conn.username else "anonymously"
                        raise AccessDenied(f"MQTT broker at {conn.endpoint.host}:{conn.endpoint.port} refused the login of "
                                           f"{conn.client_id} {who}: {exc}") from None
                    except ssl.SSLError as exc:
                        raise AccessDenied(f"TLS with the MQTT broker at {conn.endpoint.host}:{conn.endpoint.port} failed: "
                                           f"{exc.reason or exc} (is mqtt_ca_file the CA that signed its certificate?)") from None
                    except (OSError, ConnectionError, asyncio.TimeoutError) as exc:
                        error = exc
                        await asyncio.sleep(0.2 * (attempt + 1))
                ep = conn.endpoint
                raise BrokerUnavailable(
                    f"MQTT broker at {ep.host}:{ep.port} is unreachable for {conn.client_id} ({str(error) or type(error).__name__}); "
                    "is the stack up? (fleetpulse stack up)"
                )

        tasks = [asyncio.ensure_future(one(c)) for c in self.conns]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.close()
            raise
        self._pinger = asyncio.ensure_future(self._ping_loop())

    async def _ping_loop(self) -> None:
        if not self.conns:
            return
        period = self.conns[0].keepalive_s / 2
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for conn in self.conns:
                conn.ping_if_due(now)

    def inflight(self) -> int:
        return sum(len(c.inflight) for c in self.conns)

    async def drain(self, timeout_s: float) -> int:
        """Wait until QoS 1 packets are acked and written; return how many stay unacked."""
        deadline = time.monotonic() + timeout_s
        while self.inflight() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in self.conns:
            if conn.connected and conn.transport is not None:
                while conn.transport.get_write_buffer_size() and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
        return self.inflight()

    async def close(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
        for conn in self.conns:
            await conn.close()
        await asyncio.sleep(0)
