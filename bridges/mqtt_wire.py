"""MQTT 5 packets the bridge needs: build CONNECT/SUBSCRIBE/PUBACK/PINGREQ, parse a byte stream in bulk.

Only the subset a subscriber uses. The parser walks a whole socket read at once and returns
PUBLISH packets as parallel lists (topic, payload, packet id), which keeps the per-message Python
work to a few slices: paho reads every packet with several recv() calls and builds an object and a
callback per message, which is what the naive baseline in bench/bridge.py measures.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from fleetpulse.mqtt_encoding import remaining_length, utf8_string

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14

# Property identifiers (MQTT 5.0 section 2.2.2.2).
PROP_SESSION_EXPIRY = 0x11
PROP_RECEIVE_MAXIMUM = 0x21
PROP_REASON_STRING = 0x1F

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"
_PUBACK = struct.Struct(">BBH")


class ProtocolError(Exception):
    """The broker sent something this client cannot continue after (reconnect)."""


varint = remaining_length
utf8 = utf8_string


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + varint(len(body)) + body


def connect_packet(
    client_id: str,
    *,
    keepalive_s: int,
    clean_start: bool,
    session_expiry_s: int = 0,
    receive_maximum: int = 65535,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    flags = (0x02 if clean_start else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    props = bytes([PROP_SESSION_EXPIRY]) + struct.pack(">I", session_expiry_s)
    props += bytes([PROP_RECEIVE_MAXIMUM]) + struct.pack(">H", receive_maximum)
    body = utf8("MQTT") + bytes([5, flags]) + struct.pack(">H", keepalive_s) + varint(len(props)) + props
    body += utf8(client_id)
    if username is not None:
        body += utf8(username)
    if password is not None:
        body += utf8(password)
    return _packet(CONNECT << 4, body)


def subscribe_packet(packet_id: int, topic_filter: str, qos: int) -> bytes:
    # Options byte: max QoS in bits 0-1; No Local must stay 0 on shared subscriptions.
    body = struct.pack(">H", packet_id) + varint(0) + utf8(topic_filter) + bytes([qos])
    return _packet(0x82, body)


def publish_packet(topic: str | bytes, payload: bytes, qos: int = 0, packet_id: int = 0) -> bytes:
    """A PUBLISH with no properties (used by the load generator)."""
    body = utf8(topic) + (struct.pack(">H", packet_id) if qos else b"") + b"\x00" + payload
    return _packet((PUBLISH << 4) | (qos << 1), body)


def puback_packets(packet_ids: list[int]) -> bytes:
    """Concatenated PUBACKs (reason Success, which MQTT 5 lets us omit) for one socket write."""
    pack = _PUBACK.pack
    return b"".join([pack(0x40, 2, pid) for pid in packet_ids])


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
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


@dataclass
class Parsed:
    """Packets parsed from one buffer: PUBLISH as parallel lists, everything else as (type, flags, body)."""

    topics: list[bytes] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    packet_ids: list[int] = field(default_factory=list)  # 0 for QoS 0
    control: list[tuple[int, int, bytes]] = field(default_factory=list)


def parse_stream(data: bytes, out: Parsed) -> int:
    """Parse every complete packet in ``data`` into ``out``; return the number of bytes consumed."""
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
    """(packet id, reason codes) of a SUBACK body."""
    packet_id = struct.unpack_from(">H", body, 0)[0]
    plen, p = read_varint(body, 2)
    return packet_id, list(body[p + plen :])


def parse_puback_ids(body_list: list[tuple[int, int, bytes]]) -> list[int]:
    return [(b[0] << 8) | b[1] for t, _, b in body_list if t == PUBACK]
