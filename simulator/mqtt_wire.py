"""MQTT 3.1.1 packets for a publish-only client: CONNECT, pre-built PUBLISH batches, PINGREQ, parsing.

The hot path builds a whole batch of PUBLISH packets as one numpy array: with every car's topic the
same length (all ids up to electric-vehicle-99999) and every payload the 63-byte cardata layout, each
packet is a fixed-size row (fixed header + topic [+ packet id] + payload), so a batch is a few numpy
copies and one ``tobytes()``: no per-message Python. Anything else (an odd-length topic or payload)
takes an exact per-packet path.
"""

from __future__ import annotations

import struct
from typing import Sequence

import numpy as np

from fleetpulse.mqtt_encoding import remaining_length, utf8_string

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
PINGRESP, DISCONNECT_TYPE = 13, 14
PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"
DUP_FLAG = 0x08

CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


_utf8 = utf8_string


def connect_packet(client_id: str, keepalive_s: int, clean_session: bool = True) -> bytes:
    body = _utf8("MQTT") + bytes([4, 0x02 if clean_session else 0]) + struct.pack(">H", keepalive_s) + _utf8(client_id)
    return bytes([CONNECT << 4]) + remaining_length(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, qos: int, pid: int = 0, dup: bool = False) -> bytes:
    """One PUBLISH (the exact, slow path; the batch builder agrees with it byte for byte)."""
    var = struct.pack(">H", len(topic)) + topic + (struct.pack(">H", pid) if qos else b"")
    first = (PUBLISH << 4) | (qos << 1) | (DUP_FLAG if dup else 0)
    return bytes([first]) + remaining_length(len(var) + len(payload)) + var + payload


def set_dup(packet: bytes) -> bytes:
    return bytes([packet[0] | DUP_FLAG]) + packet[1:]


class PublishBuilder:
    """Builds concatenated PUBLISH packets for rows of cars, given their topics."""

    def __init__(self, topics: Sequence[str]):
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
        parts = [publish_packet(self.topics[c], p, qos, int(pids[i]) if qos else 0) for i, (c, p) in enumerate(zip(cars.tolist(), payloads))]
        return b"".join(parts), 0

    def _size(self, plen: int, qos: int) -> int:
        rem = 2 + self.tlen + (2 if qos else 0) + plen
        return 1 + len(remaining_length(rem)) + rem

    def _build_rows(self, cars: np.ndarray, flat: bytes, plen: int, qos: int, pids) -> bytes:
        n = len(cars)
        rem = 2 + self.tlen + (2 if qos else 0) + plen
        head = bytes([(PUBLISH << 4) | (qos << 1)]) + remaining_length(rem) + struct.pack(">H", self.tlen)
        rows = np.empty((n, len(head) + rem - 2), dtype=np.uint8)
        h = len(head)
        rows[:, :h] = np.frombuffer(head, dtype=np.uint8)
        rows[:, h : h + self.tlen] = self.topic_rows[cars]
        at = h + self.tlen
        if qos:
            rows[:, at] = pids >> 8
            rows[:, at + 1] = pids & 0xFF
            at += 2
        rows[:, at:] = np.frombuffer(flat, dtype=np.uint8).reshape(n, plen)
        return rows.tobytes()


def split_packets(buf: bytearray) -> tuple[list[tuple[int, int, bytes]], int]:
    """Parse complete packets from ``buf``: ([(type, flags, body)], bytes consumed)."""
    out = []
    pos, end = 0, len(buf)
    while end - pos >= 2:
        first = buf[pos]
        mult, length, i = 1, 0, pos + 1
        while True:
            if i >= end:
                return out, pos
            byte = buf[i]
            length += (byte & 0x7F) * mult
            mult <<= 7
            i += 1
            if not byte & 0x80:
                break
        if end - i < length:
            break
        out.append((first >> 4, first & 0x0F, bytes(buf[i : i + length])))
        pos = i + length
    return out, pos
