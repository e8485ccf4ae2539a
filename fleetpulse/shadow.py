"""Shadow scoring's record: what the transformer publishes on ``model-shadow`` for each micro-batch it
also scored with the candidate, and which cars are in the shadow.

The transformer never acts on the candidate's scores (no alert, no twin change). It publishes them,
beside the stable model's for the same events, so whoever decides a promotion (``fleetpulse models
decide``) can evaluate both models on identical events against the ground truth
(fleetpulse.evaluation): a record per micro-batch, not keyed (events of many cars).

The record is columnar and binary, because it is written at the stream's rate: JSON of per-event
lists cost the transformer more than everything else it does per event together (profiled with
py-spy, bench/score.py: shadow on ran at 0.44x of shadow off). Layout, format 1::

    b"FPSB" | format (u8) | header length (u32 LE) | header (JSON, padded to 8 bytes) | columns

The header holds the batch's scalars, its event count, its distinct car ids (a column holds each
event's index into them) and the columns' names and dtypes in payload order, so a record says what
it holds; a reader refuses another format version with the reason. Columns are little-endian
arrays of ``events`` items each, widest first so every one starts 8-byte aligned.

The shadow share is a fixed subset of the fleet, chosen by a hash of the car id (crc32, the same in
every process and every run), so a car is shadowed for all of its events or none: the hysteresis of
both models sees whole car histories.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, fields

import numpy as np

SHADOW_BUCKETS = 10_000

MAGIC = b"FPSB"
FORMAT = 1
_PREFIX = struct.Struct("<4sBI")  # magic, format, header length
_SCALARS = ("stable_version", "candidate_version", "stable_threshold", "candidate_threshold", "decided_ms")
COLUMNS: tuple[tuple[str, str], ...] = (  # format 1's columns, payload order; "car" indexes the header's "cars"
    ("ts_ms", "<i8"), ("offsets", "<i8"), ("partitions", "<i4"), ("car", "<u4"),
    ("stable_score", "<f4"), ("candidate_score", "<f4"), ("stable_flag", "|b1"), ("candidate_flag", "|b1"))
_EVENT_BYTES = sum(np.dtype(d).itemsize for _, d in COLUMNS)


def in_shadow(car_ids: list[str] | list[bytes], share: float) -> np.ndarray:
    """Which of these cars are shadowed at ``share`` (0..1): a car's membership never changes."""
    if share >= 1.0:
        return np.ones(len(car_ids), bool)
    if share <= 0.0:
        return np.zeros(len(car_ids), bool)
    cut = int(round(share * SHADOW_BUCKETS))
    h = np.fromiter((zlib.crc32(c if isinstance(c, bytes) else c.encode()) for c in car_ids), np.int64, len(car_ids))
    return (h % SHADOW_BUCKETS) < cut


@dataclass(eq=False)
class ShadowBatch:
    """Both models' verdicts on the same events (stream order per car, as the transformer applied them).

    Columns are numpy arrays (sequences given are converted to the record's dtypes)."""

    stable_version: str
    candidate_version: str
    stable_threshold: float
    candidate_threshold: float
    decided_ms: int
    car_ids: np.ndarray  # str
    ts_ms: np.ndarray  # int64: the event's Kafka timestamp (what ground truth is joined on)
    partitions: np.ndarray  # int32
    offsets: np.ndarray  # int64
    stable_score: np.ndarray  # float32, as the model server answers
    candidate_score: np.ndarray  # float32
    stable_flag: np.ndarray  # bool
    candidate_flag: np.ndarray  # bool

    def __post_init__(self) -> None:
        self.car_ids = np.asarray(self.car_ids, str)
        for name, dtype in COLUMNS:
            if name != "car":
                setattr(self, name, np.asarray(getattr(self, name), dtype))

    def __len__(self) -> int:
        return len(self.car_ids)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShadowBatch):
            return NotImplemented
        return all(np.array_equal(getattr(self, f.name), getattr(other, f.name)) if isinstance(getattr(self, f.name), np.ndarray)
                   else getattr(self, f.name) == getattr(other, f.name) for f in fields(self))

    def agreement(self) -> float:
        """Share of events both models flag alike (1.0 for an empty batch)."""
        if not len(self):
            return 1.0
        return float(np.mean(self.stable_flag == self.candidate_flag))


def encode_shadow(batch: ShadowBatch) -> bytes:
    """Raises ValueError for a batch whose columns differ in length or whose thresholds are not finite."""
    n = len(batch)
    lengths = {len(getattr(batch, name)) for name, _ in COLUMNS if name != "car"}
    if lengths - {n}:
        raise ValueError(f"shadow batch columns differ in length ({sorted(lengths | {n})})")
    cars, car = np.unique(batch.car_ids, return_inverse=True)
    header = {**{k: getattr(batch, k) for k in _SCALARS}, "events": n, "cars": cars.tolist(), "columns": [list(c) for c in COLUMNS]}
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    head += b" " * (-(_PREFIX.size + len(head)) % 8)  # JSON allows trailing blanks: the columns start aligned
    columns = {**{name: getattr(batch, name) for name, _ in COLUMNS if name != "car"}, "car": car}
    return b"".join([_PREFIX.pack(MAGIC, FORMAT, len(head)), head,
                     *(np.ascontiguousarray(columns[name], dtype).tobytes() for name, dtype in COLUMNS)])


def decode_shadow(value: bytes) -> ShadowBatch:
    """Raises ValueError, with the reason, for a record that is not a shadow batch of format 1."""
    if len(value) < _PREFIX.size or not value.startswith(MAGIC):
        raise ValueError(f"not a shadow batch: starts with {bytes(value[:8])!r}, not the {MAGIC!r} magic")
    _, version, head_len = _PREFIX.unpack_from(value)
    if version != FORMAT:
        raise ValueError(f"shadow batch of format {version}: this reader knows only format {FORMAT}")
    try:
        header = json.loads(value[_PREFIX.size:_PREFIX.size + head_len])
        n, cars, columns = int(header["events"]), header["cars"], header["columns"]
        scalars = [header[k] for k in _SCALARS]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a shadow batch: bad header ({type(exc).__name__}: {exc})") from None
    if [tuple(c) for c in columns] != list(COLUMNS):
        raise ValueError(f"shadow batch columns {columns} are not format {FORMAT}'s")
    start = _PREFIX.size + head_len
    if len(value) - start != n * _EVENT_BYTES:
        raise ValueError(f"shadow batch columns differ in length: {n} events need {n * _EVENT_BYTES} bytes, "
                         f"the record has {len(value) - start}")
    out = {}
    for name, dtype in COLUMNS:
        out[name] = np.frombuffer(value, dtype, n, start).copy()  # its own memory: the record is not pinned
        start += out[name].nbytes
    car = out.pop("car")
    if n and car.max() >= len(cars):
        raise ValueError(f"shadow batch names car {int(car.max())} of {len(cars)}")
    return ShadowBatch(*scalars, np.asarray(cars, str)[car], **out)
