"""A poll batch -> micro-batches (infer requests in flight) -> results applied strictly in submission order.

Plain code over arrays and duck-typed Kafka messages (``.partition()``, ``.offset()``, ``.timestamp()``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Events:
    """Decoded events in stream order: car index, feature row and Kafka position of each."""

    cars: np.ndarray
    rows: np.ndarray
    partitions: np.ndarray
    offsets: np.ndarray
    timestamps: np.ndarray

    def __len__(self) -> int:
        return len(self.cars)

    def __getitem__(self, index) -> "Events":
        """The events at a slice or mask."""
        return Events(self.cars[index], self.rows[index], self.partitions[index], self.offsets[index], self.timestamps[index])


@dataclass
class Chunk:
    """One infer request and the events it covers; ``done`` carries a whole poll batch's offsets."""

    events: Events
    future: object | None
    request: object | None
    done: dict[int, int] = field(default_factory=dict)
    shadow: object | None = None  # the candidate's request for the shadowed cars' rows (transformer.shadow)


def positions(msgs: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(partition, offset, timestamp in ms) of each message."""
    n = len(msgs)
    partitions = np.fromiter((m.partition() for m in msgs), np.int32, n)
    offsets = np.fromiter((m.offset() for m in msgs), np.int64, n)
    timestamps = np.fromiter((m.timestamp()[1] for m in msgs), np.int64, n)
    return partitions, offsets, timestamps


def last_offsets(partitions: np.ndarray, offsets: np.ndarray) -> dict[int, int]:
    """partition -> the highest offset among these records."""
    return {p: int(offsets[partitions == p].max()) for p in np.unique(partitions).tolist()}


def drop_redelivered(msgs: list, submitted: dict[int, int]) -> list:
    """The messages past ``submitted`` (partition -> last offset handed on), which advances.

    After a broker failover the client may fetch a range again; an offset is never applied twice.
    """
    out = [m for m in msgs if m.offset() > submitted.get(m.partition(), -1)]
    for m in out:
        submitted[m.partition()] = m.offset()
    return out


def micro_batches(n: int, size: int) -> list[slice]:
    """Slices of at most ``size`` over ``n`` events; one empty slice when there are none, so a poll
    batch with no event to score still carries its offsets."""
    return [slice(start, start + size) for start in range(0, n, size)] or [slice(0, 0)]


class InFlight:
    """Chunks in submission order; ``ready`` hands them back in that order only."""

    def __init__(self, max_in_flight: int):
        self.max_in_flight = max_in_flight
        self._chunks: deque[Chunk] = deque()

    def __len__(self) -> int:
        return len(self._chunks)

    def submit(self, chunk: Chunk) -> None:
        self._chunks.append(chunk)

    def ready(self, everything: bool = False) -> Iterator[Chunk]:
        """Finished chunks from the head; waits on the head (yields it unfinished) while too many are
        in flight, or for every chunk with ``everything``."""
        while self._chunks:
            head = self._chunks[0]
            finished = head.future is None or head.future.done()
            if not finished and not everything and len(self._chunks) < self.max_in_flight:
                return
            yield self._chunks.popleft()

    def drain(self, apply: Callable[[Chunk], None], everything: bool = False) -> None:
        """``apply`` each chunk ``ready`` hands back. A chunk whose apply raises has left the queue, so
        the chunks behind it are dropped too, unapplied: applying them would record their poll batch's
        offsets as done and let a commit pass the failed chunk's events. They are replayed instead."""
        for chunk in self.ready(everything):
            try:
                apply(chunk)
            except BaseException:
                self.clear()
                raise

    def chunks(self) -> list[Chunk]:
        """The chunks in flight, in submission order (to send again after the model's input changed)."""
        return list(self._chunks)

    def clear(self) -> None:
        self._chunks.clear()
