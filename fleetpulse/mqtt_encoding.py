"""MQTT wire encodings both the simulator's publisher and the bridge's reader need (MQTT 3.1.1 and 5)."""

from __future__ import annotations

import struct


def remaining_length(n: int) -> bytes:
    """The variable byte integer of a packet's remaining length (7 bits per byte, high bit = more)."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8_string(s: str | bytes) -> bytes:
    """A UTF-8 string field: 2-byte big-endian length, then the bytes."""
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(raw)) + raw
