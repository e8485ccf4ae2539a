"""Batch encode/decode of cardata records between framed Avro payloads and float32 feature rows.

The hot path is vectorised with numpy: a cardata-v1 body is 13 fixed-width floats and 5 zig-zag
varints, and in practice every varint has one fixed width (tyre pressures take one byte, firmware
two), so nearly every payload has the same 63-byte layout. Rows in that layout are decoded as one
numpy view after checking the varint continuation bits; anything else (other widths, garbage)
goes through fastavro one record at a time, which is exact and strict. Both paths agree bit for
bit, which the property tests check.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import fastavro
import numpy as np

from fleetpulse.contract import CARDATA_V1_ID, INT_FIELDS, N_FEATURES, SCHEMAS, SENSOR_FIELDS, parsed_schema
from fleetpulse.framing import HEADER_SIZE, DecodeError, frame, header, unframe

__all__ = ["DecodeError", "DecodedBatch", "decode_batch", "decode_one", "encode_batch", "encode_one", "to_records"]

_INT_COLUMNS = np.array([i for i, name in enumerate(SENSOR_FIELDS) if name in INT_FIELDS])
# Byte offsets of the common layout (after the 5-byte header).
_F1 = slice(HEADER_SIZE, HEADER_SIZE + 36)  # 9 floats: coolant_temp .. throttle_pos
_TIRES = HEADER_SIZE + 36  # 4 one-byte varints
_F2 = slice(_TIRES + 4, _TIRES + 20)  # 4 floats: accelerometers
_FW = _TIRES + 20  # one two-byte varint
FAST_SIZE = _FW + 2  # 63 bytes
_FAST_HEADER = np.frombuffer(header(CARDATA_V1_ID), dtype=np.uint8)


@dataclass
class DecodedBatch:
    """Feature rows for a batch of payloads; rows that failed are NaN with the reason in ``errors``."""

    values: np.ndarray  # float32 [N, 18], schema order
    valid: np.ndarray  # bool [N]
    errors: dict[int, str] = field(default_factory=dict)

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())


def _zigzag(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.int64)
    return (z >> 1) ^ -(z & 1)


def _decode_fast(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode [n, 63] uint8 rows; return (values [n,18], mask of rows that fit the fast layout)."""
    ok = (rows[:, :HEADER_SIZE] == _FAST_HEADER).all(axis=1)
    ok &= (rows[:, _TIRES : _TIRES + 4] < 0x80).all(axis=1)
    ok &= (rows[:, _FW] >= 0x80) & (rows[:, _FW + 1] < 0x80)
    out = np.empty((len(rows), N_FEATURES), dtype=np.float32)
    out[:, 0:9] = np.ascontiguousarray(rows[:, _F1]).view("<f4")
    out[:, 9:13] = _zigzag(rows[:, _TIRES : _TIRES + 4])
    out[:, 13:17] = np.ascontiguousarray(rows[:, _F2]).view("<f4")
    fw = (rows[:, _FW].astype(np.int64) & 0x7F) | (rows[:, _FW + 1].astype(np.int64) << 7)
    out[:, 17] = _zigzag(fw)
    return out, ok


def decode_one(payload: bytes) -> dict:
    """Decode one framed payload to a dict; raise DecodeError naming what is wrong."""
    schema_id, body = unframe(payload)
    if schema_id not in SCHEMAS:
        raise DecodeError(f"unknown schema id {schema_id} (known: {sorted(SCHEMAS)})")
    buf = io.BytesIO(body)
    try:
        record = fastavro.schemaless_reader(buf, parsed_schema(schema_id), None)
    except EOFError:
        raise DecodeError(f"truncated Avro body ({len(body)} bytes) for schema id {schema_id}") from None
    except (ValueError, TypeError, IndexError, OverflowError, UnicodeDecodeError, KeyError) as exc:
        raise DecodeError(f"invalid Avro body for schema id {schema_id}: {exc}") from None
    if buf.tell() != len(body):
        raise DecodeError(f"{len(body) - buf.tell()} trailing bytes after the Avro record")
    if not isinstance(record, dict):
        raise DecodeError("Avro body is not a record")
    return record


def _row(record: dict) -> list[float]:
    return [record[name] for name in SENSOR_FIELDS]


def decode_batch(payloads: Sequence[bytes]) -> DecodedBatch:
    """Decode framed cardata payloads into float32 rows; never raises for bad payloads."""
    n = len(payloads)
    values = np.full((n, N_FEATURES), np.nan, dtype=np.float32)
    valid = np.zeros(n, dtype=bool)
    if n == 0:
        return DecodedBatch(values, valid)
    lengths = np.fromiter((len(p) for p in payloads), dtype=np.int64, count=n)
    fast_idx = np.flatnonzero(lengths == FAST_SIZE)
    if len(fast_idx) == n:
        rows = np.frombuffer(b"".join(payloads), dtype=np.uint8).reshape(n, FAST_SIZE)
    elif len(fast_idx):
        rows = np.frombuffer(b"".join([payloads[i] for i in fast_idx]), dtype=np.uint8).reshape(-1, FAST_SIZE)
    if len(fast_idx):
        fast_values, fast_ok = _decode_fast(rows)
        values[fast_idx[fast_ok]] = fast_values[fast_ok]
        valid[fast_idx[fast_ok]] = True
    errors: dict[int, str] = {}
    for i in np.flatnonzero(~valid):
        try:
            values[i] = _row(decode_one(payloads[i]))
            valid[i] = True
        except DecodeError as exc:
            errors[int(i)] = str(exc)
    return DecodedBatch(values, valid, errors)


def to_records(values: np.ndarray) -> list[dict]:
    """Feature rows back to cardata dicts (ints as int); for twins, tests and JSON, not hot paths."""
    out = []
    for row in np.asarray(values, dtype=np.float64).tolist():
        rec = dict(zip(SENSOR_FIELDS, row))
        for name in INT_FIELDS:
            rec[name] = int(round(rec[name]))
        out.append(rec)
    return out


def encode_one(record: dict, schema_id: int = CARDATA_V1_ID) -> bytes:
    """Encode one cardata dict as a framed payload."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed_schema(schema_id), record)
    return frame(schema_id, buf.getvalue())


def encode_batch(values: np.ndarray | Iterable[Sequence[float]]) -> list[bytes]:
    """Encode feature rows [N, 18] (schema order) as framed cardata-v1 payloads."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != N_FEATURES:
        raise ValueError(f"expected rows of {N_FEATURES} features, got shape {values.shape}")
    n = len(values)
    ints = np.rint(values[:, _INT_COLUMNS]).astype(np.int64)
    zz = (ints << 1) ^ (ints >> 63)
    tires, fw = zz[:, :4], zz[:, 4]
    fast = (tires >= 0).all(axis=1) & (tires < 0x80).all(axis=1) & (fw >= 0x80) & (fw < 0x4000)
    rows = np.empty((n, FAST_SIZE), dtype=np.uint8)
    rows[:, :HEADER_SIZE] = _FAST_HEADER
    rows[:, _F1] = values[:, 0:9].astype("<f4").view(np.uint8).reshape(n, 36)
    rows[:, _TIRES : _TIRES + 4] = np.where(fast[:, None], tires, 0)
    rows[:, _F2] = values[:, 13:17].astype("<f4").view(np.uint8).reshape(n, 16)
    rows[:, _FW] = np.where(fast, (fw & 0x7F) | 0x80, 0)
    rows[:, _FW + 1] = np.where(fast, fw >> 7, 0)
    flat = rows.tobytes()
    out = [flat[i * FAST_SIZE : (i + 1) * FAST_SIZE] for i in range(n)]
    for i in np.flatnonzero(~fast):
        out[i] = encode_one(to_records(values[i : i + 1])[0])
    return out
