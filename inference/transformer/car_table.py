"""Per-car state of the transformer: car id <-> dense index, hysteresis, counters, newest reading,
offsets applied, a windowed model's look-back; and the snapshot of it that a twin write turns into documents."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleetpulse.contract import INT_FIELDS, N_FEATURES, SENSOR_FIELDS
from fleetpulse.hysteresis import STATUS_NAMES, Hysteresis, Rule
from fleetpulse.twin import TwinDocument
from inference.transformer.batching import Events
from inference.transformer.windows import CarWindows

_INT_COLS = [i for i, name in enumerate(SENSOR_FIELDS) if name in INT_FIELDS]


class CarTable:
    """Car id <-> dense index, and the per-car state the twin is written from.

    ``window`` > 1: the served model takes each car's last ``window`` readings (kept here, indexed
    like the rest, so a table made afresh after a rebalance starts every car's window afresh too).
    """

    def __init__(self, rule: Rule, size: int = 1024, *, window: int = 1):
        self.ids: list[str] = []
        self.index: dict[bytes, int] = {}
        self.hysteresis = Hysteresis(rule, size)
        self.windows = CarWindows(window, size) if window > 1 else None
        self._alloc(size)

    def _alloc(self, size: int) -> None:
        # part/off: the newest applied event's position, which a replayed event is compared against.
        self.part = np.full(size, -1, np.int32)
        self.off = np.full(size, -1, np.int64)
        self.events = np.zeros(size, np.int64)
        self.over = np.zeros(size, np.int64)
        self.alerts = np.zeros(size, np.int64)
        self.score = np.zeros(size, np.float32)
        self.seen = np.zeros(size, np.int64)
        self.rows = np.zeros((size, N_FEATURES), np.float32)
        self.offsets: list[dict[str, int]] = [{} for _ in range(size)]

    _ARRAYS = ("part", "off", "events", "over", "alerts", "score", "seen", "rows")
    _MINUS_ONE = ("part", "off")

    def __len__(self) -> int:
        return len(self.ids)

    def set_window(self, window: int) -> None:
        """The served model now takes ``window`` readings per sample; every car's window starts afresh (as after a restart)."""
        self.windows = CarWindows(window, len(self.part)) if window > 1 else None

    def _grow(self, size: int) -> None:
        old = len(self.part)
        if size <= old:
            return
        new = max(size, 2 * old)
        for name in self._ARRAYS:
            arr = getattr(self, name)
            fill = np.full((new - old, *arr.shape[1:]), -1 if name in self._MINUS_ONE else 0, arr.dtype)
            setattr(self, name, np.concatenate([arr, fill]))
        self.offsets += [{} for _ in range(new - old)]
        self.hysteresis.ensure(new)

    def lookup(self, keys: list[bytes]) -> tuple[np.ndarray, list[int]]:
        """Indices for keys; new cars get an index and are returned for loading from the twin."""
        index = self.index
        new: list[int] = []
        out = np.empty(len(keys), np.int64)
        for i, key in enumerate(keys):
            c = index.get(key)
            if c is None:
                c = index[key] = len(self.ids)
                self.ids.append((key or b"").decode("utf-8", "replace"))
                new.append(c)
            out[i] = c
        self._grow(len(self.ids))
        return out, new

    def restore(self, new: list[int], docs: dict[str, dict], events: Events) -> list[int]:
        """Continue first-seen cars from their stored twins (``docs`` by car id); returns the cars restored.

        A restored car's position is its stored offset on the partition it first appears on in ``events``,
        so that replayed events are recognised.
        """
        first_partition = dict(zip(events.cars[::-1].tolist(), events.partitions[::-1].tolist()))
        restored = []
        for c in new:
            doc = docs.get(self.ids[c])
            if doc is None:
                continue
            self._restore_one(c, doc)
            p = first_partition.get(c)
            if p is not None:
                self.part[c], self.off[c] = p, self.offsets[c].get(str(p), -1)
            restored.append(c)
        return restored

    def _restore_one(self, car: int, doc: dict) -> None:
        counters = doc.get("counters", {})
        self.events[car] = counters.get("events", 0)
        self.over[car] = counters.get("over_threshold", 0)
        self.alerts[car] = counters.get("alerts", 0)
        self.offsets[car] = {str(k): int(v) for k, v in doc.get("offsets", {}).items()}
        hyst = doc.get("hysteresis", {})
        status = STATUS_NAMES.index(doc.get("status", "ok")) if doc.get("status") in STATUS_NAMES else 0
        self.hysteresis.set(car, status, int(hyst.get("window_bits", 0)), int(hyst.get("clean_streak", 0)))

    def not_yet_applied(self, events: Events) -> np.ndarray:
        """Mask of the events this table has not applied (a replay re-delivers ones at or below a car's position)."""
        cars = events.cars
        return ~((self.part[cars] == events.partitions) & (events.offsets <= self.off[cars]))

    def samples(self, events: Events) -> np.ndarray:
        """The model's input for these events (stream order): their rows, or for a windowed model each
        one's window, which this advances."""
        return self.windows.samples(events.cars, events.rows) if self.windows is not None else events.rows

    def apply(self, events: Events, score: np.ndarray, over: np.ndarray) -> list[tuple[int, int, int]]:
        """Apply scored events in stream order; returns the status changes (event index, old, new)."""
        cars = events.cars
        n = len(cars)
        changes = self.hysteresis.apply(cars, over)
        size = len(self.part)
        self.events += np.bincount(cars, minlength=size)
        self.over += np.bincount(cars, weights=over, minlength=size).astype(np.int64)
        # The newest reading per car: first occurrence in the reversed chunk.
        uniq, first = np.unique(cars[::-1], return_index=True)
        last = n - 1 - first
        self.score[uniq] = score[last]
        self.seen[uniq] = events.timestamps[last]
        self.rows[uniq] = events.rows[last]
        self.part[uniq] = events.partitions[last]
        self.off[uniq] = events.offsets[last]
        for c, p, o in zip(uniq.tolist(), events.partitions[last].tolist(), events.offsets[last].tolist()):
            self.offsets[c][str(p)] = o
        return changes

    def snapshot(self, cars: np.ndarray, has_twin: np.ndarray, threshold: float, model_version: str) -> "TwinSnapshot":
        """A copy of these cars' twin state that the writer thread can turn into documents while scoring goes on."""
        h = self.hysteresis
        return TwinSnapshot(
            ids=[self.ids[c] for c in cars.tolist()], status=h.status[cars], bits=h.bits[cars], clean=h.clean[cars],
            score=self.score[cars], seen=self.seen[cars], rows=self.rows[cars], events=self.events[cars], over=self.over[cars],
            alerts=self.alerts[cars], offsets=[dict(self.offsets[c]) for c in cars.tolist()], has_twin=np.array(has_twin, bool),
            threshold=float(threshold), model_version=model_version, part=self.part[cars], off=self.off[cars])


@dataclass
class TwinSnapshot:
    ids: list[str]
    status: np.ndarray
    bits: np.ndarray
    clean: np.ndarray
    score: np.ndarray
    seen: np.ndarray
    rows: np.ndarray
    events: np.ndarray
    over: np.ndarray
    alerts: np.ndarray
    offsets: list[dict[str, int]]
    has_twin: np.ndarray
    threshold: float
    model_version: str
    part: np.ndarray  # partition and offset of each car's newest event: what its write is fenced on
    off: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def fence(self, i: int) -> tuple[int, int]:
        """(partition, offset) of car ``i``'s newest event (checkpoint.newer_than_stored)."""
        return int(self.part[i]), int(self.off[i])

    @property
    def inserts(self) -> int:
        """Cars in the snapshot that have no twin document yet."""
        return int((~self.has_twin).sum())

    def document(self, i: int) -> TwinDocument:
        row = self.rows[i].tolist()
        readings = dict(zip(SENSOR_FIELDS, row))
        for j in _INT_COLS:
            readings[SENSOR_FIELDS[j]] = int(round(row[j]))
        return {
            "_id": self.ids[i],
            "status": STATUS_NAMES[int(self.status[i])],
            "last_score": float(self.score[i]),
            "threshold": self.threshold,
            "model_version": self.model_version,
            "last_seen_ms": int(self.seen[i]),
            "last_readings": readings,
            "counters": {"events": int(self.events[i]), "over_threshold": int(self.over[i]), "alerts": int(self.alerts[i])},
            "hysteresis": {"window_bits": int(self.bits[i]), "clean_streak": int(self.clean[i])},
            "offsets": self.offsets[i],
        }

    def documents(self) -> tuple[list[TwinDocument], list[TwinDocument]]:
        """(twins of cars that have none: to insert, twins of the others: to update)."""
        return ([self.document(i) for i in np.flatnonzero(~self.has_twin).tolist()],
                [self.document(i) for i in np.flatnonzero(self.has_twin).tolist()])
