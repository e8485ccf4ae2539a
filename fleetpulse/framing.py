"""Confluent wire framing: magic byte 0, 4-byte big-endian schema id, then the Avro body."""

from __future__ import annotations

import struct

MAGIC = 0
HEADER_SIZE = 5
_HEADER = struct.Struct(">bI")


class DecodeError(ValueError):
    """A payload is not a valid framed record; the message says why (for the dead-letter topic)."""


def frame(schema_id: int, body: bytes) -> bytes:
    return _HEADER.pack(MAGIC, schema_id) + body


def header(schema_id: int) -> bytes:
    return _HEADER.pack(MAGIC, schema_id)


def unframe(payload: bytes) -> tuple[int, memoryview]:
    """Split a framed payload into (schema id, body); raise DecodeError on bad framing."""
    if len(payload) < HEADER_SIZE:
        raise DecodeError(f"truncated: {len(payload)} bytes, shorter than the 5-byte Confluent header")
    if payload[0] != MAGIC:
        raise DecodeError(f"bad magic byte {payload[0]:#04x}, expected 0x00 (Confluent wire format)")
    schema_id = int.from_bytes(payload[1:5], "big")
    return schema_id, memoryview(payload)[HEADER_SIZE:]
