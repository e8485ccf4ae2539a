"""MQTT wire encoding for the project's raw-socket clients: the simulator (an MQTT 5 publisher, so a
PUBACK can say a message reached no subscriber), the bridge (an MQTT 5 subscriber) and the load
generators that stand in for either.

Only the subset those clients send and read. The two versions differ here only in CONNECT (protocol
level, MQTT 5 properties) and in the property-length field MQTT 5 adds to PUBLISH and SUBSCRIBE, so
those builders take ``protocol``. The hot paths avoid per-message Python:

- ``parse_stream`` (the bridge) walks a whole socket read of MQTT 5 traffic and returns PUBLISH
  packets as parallel lists (topic, payload, packet id), a few slices per message: paho reads every
  packet with several recv() calls and builds an object and a callback per message, which is what
  the naive baseline in bench/bridge.py measures.
- ``PublishBuilder`` (the simulator) builds a batch of PUBLISH packets as one numpy array:
  with every car's topic the same length (all ids up to electric-vehicle-99999) and every payload the
  63-byte cardata layout, each packet is a fixed-size row (fixed header + topic [+ packet id]
  [+ MQTT 5's empty property length] + payload), so a batch is a few numpy copies and one ``tobytes()``. Anything else (an odd-length
  topic or payload) takes the exact per-packet ``publish_packet``.
"""

from __future__ import annotations

import socket
import struct
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

# Protocol levels, as CONNECT carries them.
MQTT_3_1_1, MQTT_5 = 4, 5

# Packet types (the high nibble of the first byte).
CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"  # MQTT 5: reason Normal disconnection, which it lets us omit
DUP_FLAG = 0x08

# Property identifiers (MQTT 5.0 section 2.2.2.2).
PROP_SESSION_EXPIRY = 0x11
PROP_RECEIVE_MAXIMUM = 0x21
PROP_REASON_STRING = 0x1F

CONNECT_RETURN_CODES = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}
"""MQTT 3.1.1 CONNACK return codes (MQTT 5 reason codes for a refusal are 0x80 and above)."""

CONNACK_REASONS_5 = {
    0x80: "unspecified error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorised",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x97: "quota exceeded",
}
"""The MQTT 5 CONNACK refusals a broker is likely to send, by reason code."""

NO_MATCHING_SUBSCRIBERS = 0x10
"""MQTT 5 PUBACK reason: accepted, but no subscription matched, so the broker dropped the message.
Mosquitto 2.0.11 answers it for a shared subscription whose persistent members are all offline after
a broker restart (it restores their subscriptions only when they resubscribe)."""

_PUBACK = struct.Struct(">BBH")


class ProtocolError(Exception):
    """The broker sent something this client cannot continue after (reconnect)."""


# --- encoding ---------------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """A variable byte integer (remaining length, property length): 7 bits per byte, high bit = more."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(s: str | bytes) -> bytes:
    """A UTF-8 string field: 2-byte big-endian length, then the bytes."""
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(raw)) + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + varint(len(body)) + body


def connect_packet(
    client_id: str,
    *,
    protocol: int,
    keepalive_s: int,
    clean_start: bool = True,
    session_expiry_s: int = 0,
    receive_maximum: int = 65535,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    """CONNECT; session expiry and receive maximum are MQTT 5 properties, which 3.1.1 does not send."""
    flags = (0x02 if clean_start else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = utf8("MQTT") + bytes([protocol, flags]) + struct.pack(">H", keepalive_s)
    if protocol == MQTT_5:
        props = bytes([PROP_SESSION_EXPIRY]) + struct.pack(">I", session_expiry_s)
        props += bytes([PROP_RECEIVE_MAXIMUM]) + struct.pack(">H", receive_maximum)
        body += varint(len(props)) + props
    body += utf8(client_id)
    if username is not None:
        body += utf8(username)
    if password is not None:
        body += utf8(password)
    return _packet(CONNECT << 4, body)


def subscribe_packet(packet_id: int, topic_filter: str, qos: int, *, protocol: int) -> bytes:
    # Options byte: max QoS in bits 0-1; No Local must stay 0 on shared subscriptions.
    props = varint(0) if protocol == MQTT_5 else b""
    return _packet(0x82, struct.pack(">H", packet_id) + props + utf8(topic_filter) + bytes([qos]))


def publish_packet(topic: str | bytes, payload: bytes, qos: int, packet_id: int = 0, *, protocol: int) -> bytes:
    """One PUBLISH (MQTT 5: with no properties)."""
    var = utf8(topic) + (struct.pack(">H", packet_id) if qos else b"") + (b"\x00" if protocol == MQTT_5 else b"")
    return bytes([(PUBLISH << 4) | (qos << 1)]) + varint(len(var) + len(payload)) + var + payload


def set_dup(packet: bytes) -> bytes:
    """The same PUBLISH flagged as a redelivery."""
    return bytes([packet[0] | DUP_FLAG]) + packet[1:]


def puback_packets(packet_ids: list[int]) -> bytes:
    """Concatenated PUBACKs (MQTT 5 lets us omit reason Success; then they are 3.1.1's too) for one socket write."""
    pack = _PUBACK.pack
    return b"".join([pack(0x40, 2, pid) for pid in packet_ids])


def parse_puback(body: bytes) -> tuple[int, int]:
    """(packet id, reason code) of a PUBACK body; MQTT 3.1.1 and MQTT 5's short form mean Success (0)."""
    return (body[0] << 8) | body[1], body[2] if len(body) > 2 else 0


def puback_delivered(reason: int) -> bool:
    """Whether a PUBACK reason means the broker has the message for a subscriber: not when no
    subscription matched (the message is gone) and not for a refusal (0x80 and above)."""
    return reason < 0x80 and reason != NO_MATCHING_SUBSCRIBERS


def disconnect(sock: socket.socket) -> None:
    """Send DISCONNECT if the connection still takes it, then close the socket."""
    with suppress(OSError):  # a peer that is already gone needs no goodbye
        sock.sendall(DISCONNECT_PACKET)
    sock.close()


class PublishBuilder:
    """Builds concatenated PUBLISH packets (MQTT 3.1.1 or 5, no properties) for rows of cars, given their topics."""

    def __init__(self, topics: Sequence[str], protocol: int = MQTT_3_1_1):
        self.protocol = protocol
        self.props = 1 if protocol == MQTT_5 else 0  # MQTT 5's property length byte (no properties)
        self.topics = [t.encode() for t in topics]
        lengths = {len(t) for t in self.topics}
        self.uniform = len(lengths) == 1
        if self.uniform:
            tlen = lengths.pop()
            self.topic_rows = np.frombuffer(b"".join(self.topics), dtype=np.uint8).reshape(len(self.topics), tlen)
            self.tlen = tlen

    def build(self, cars: np.ndarray, payloads: list[bytes], qos: int, pids: np.ndarray | None = None) -> tuple[bytes, int]:
        """Packets for ``cars`` (indices into topics) in order; returns (bytes, packet size or 0 if uneven)."""
        n = len(cars)
        if self.uniform and n:
            plen = len(payloads[0])
            if all(len(p) == plen for p in payloads):
                return self._build_rows(cars, b"".join(payloads), plen, qos, pids), self._size(plen, qos)
        parts = [
            publish_packet(self.topics[c], p, qos, int(pids[i]) if qos else 0, protocol=self.protocol)
            for i, (c, p) in enumerate(zip(cars.tolist(), payloads))
        ]
        return b"".join(parts), 0

    def _size(self, plen: int, qos: int) -> int:
        rem = 2 + self.tlen + (2 if qos else 0) + self.props + plen
        return 1 + len(varint(rem)) + rem

    def _build_rows(self, cars: np.ndarray, flat: bytes, plen: int, qos: int, pids) -> bytes:
        n = len(cars)
        rem = 2 + self.tlen + (2 if qos else 0) + self.props + plen
        head = bytes([(PUBLISH << 4) | (qos << 1)]) + varint(rem) + struct.pack(">H", self.tlen)
        rows = np.empty((n, len(head) + rem - 2), dtype=np.uint8)
        h = len(head)
        rows[:, :h] = np.frombuffer(head, dtype=np.uint8)
        rows[:, h : h + self.tlen] = self.topic_rows[cars]
        at = h + self.tlen
        if qos:
            rows[:, at] = pids >> 8
            rows[:, at + 1] = pids & 0xFF
            at += 2
        if self.props:
            rows[:, at] = 0
            at += 1
        rows[:, at:] = np.frombuffer(flat, dtype=np.uint8).reshape(n, plen)
        return rows.tobytes()


# --- parsing ----------------------------------------------------------------------------------------


def read_varint(data: bytes | bytearray, pos: int) -> tuple[int, int]:
    """Decode a variable byte integer at ``pos``; return (value, position after it), or (-1, pos) if incomplete."""
    value, shift = 0, 0
    for i in range(pos, min(pos + 4, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    if len(data) - pos >= 4:
        raise ProtocolError("malformed remaining length")
    return -1, pos


def split_packets(buf: bytes | bytearray) -> tuple[list[tuple[int, int, bytes]], int]:
    """Every complete packet in ``buf`` as (type, flags, body), either version; and the bytes consumed."""
    out = []
    n = len(buf)
    pos = 0
    while pos + 2 <= n:
        rl = buf[pos + 1]
        if rl < 0x80:
            start = pos + 2
        else:
            rl, start = read_varint(buf, pos + 1)
            if rl < 0:
                break
        end = start + rl
        if end > n:
            break
        b0 = buf[pos]
        out.append((b0 >> 4, b0 & 0x0F, bytes(buf[start:end])))
        pos = end
    return out, pos


@dataclass
class Parsed:
    """Packets parsed from one buffer: PUBLISH as parallel lists, everything else as (type, flags, body)."""

    topics: list[bytes] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    packet_ids: list[int] = field(default_factory=list)  # 0 for QoS 0
    control: list[tuple[int, int, bytes]] = field(default_factory=list)


def parse_stream(data: bytes, out: Parsed) -> int:
    """Parse every complete MQTT 5 packet in ``data`` into ``out``; return the number of bytes consumed."""
    # The framing loop of split_packets, inlined: this runs once per message at the bridge's full rate.
    topics, payloads, pids, control = out.topics, out.payloads, out.packet_ids, out.control
    n = len(data)
    pos = 0
    while pos + 2 <= n:
        b0 = data[pos]
        rl = data[pos + 1]
        if rl < 0x80:
            start = pos + 2
        else:
            rl, start = read_varint(data, pos + 1)
            if rl < 0:
                break
        end = start + rl
        if end > n:
            break
        if b0 >> 4 == PUBLISH:
            t0 = start + 2
            t1 = t0 + ((data[start] << 8) | data[start + 1])
            topics.append(data[t0:t1])
            if b0 & 0x06:
                pids.append((data[t1] << 8) | data[t1 + 1])
                t1 += 2
            else:
                pids.append(0)
            plen = data[t1]
            if plen < 0x80:
                p = t1 + 1 + plen
            else:
                plen, p = read_varint(data, t1)
                p += plen
            payloads.append(data[p:end])
        else:
            control.append((b0 >> 4, b0 & 0x0F, data[start:end]))
        pos = end
    return pos


def parse_connack(body: bytes) -> tuple[bool, int, dict[int, int | bytes]]:
    """(session present, reason code, selected properties) of a CONNACK body."""
    if len(body) < 2:
        raise ProtocolError("short CONNACK")
    session_present, reason = bool(body[0] & 1), body[1]
    props: dict[int, int | bytes] = {}
    if len(body) > 2:
        plen, p = read_varint(body, 2)
        end = p + plen
        while p < end:
            pid = body[p]
            p += 1
            if pid == PROP_RECEIVE_MAXIMUM:
                props[pid] = struct.unpack_from(">H", body, p)[0]
                p += 2
            elif pid == PROP_REASON_STRING:
                slen = struct.unpack_from(">H", body, p)[0]
                props[pid] = body[p + 2 : p + 2 + slen]
                p += 2 + slen
            else:
                break  # the rest is not needed; properties have per-id widths
    return session_present, reason, props


def parse_suback(body: bytes) -> tuple[int, list[int]]:
    """(packet id, reason codes) of an MQTT 5 SUBACK body."""
    packet_id = struct.unpack_from(">H", body, 0)[0]
    plen, p = read_varint(body, 2)
    return packet_id, list(body[p + plen :])


def parse_puback_ids(control: list[tuple[int, int, bytes]]) -> list[int]:
    """The packet ids of the PUBACKs among parsed control packets."""
    return [(b[0] << 8) | b[1] for t, _, b in control if t == PUBACK]
