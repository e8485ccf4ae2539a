"""The transformer's no-loss rules: which cars are due for a twin write, and how far a commit may go.

No-loss ordering: a poll batch is decoded (bad records produced to the DLQ), cut into micro-batches
that go to the model server with several requests in flight, and the results are applied strictly in
submission order (the hysteresis is sequential per car). Every ``checkpoint_interval_s`` the loop
waits until Kafka has acknowledged every alert and DLQ record, hands a snapshot of the due twins to
the writer thread, and commits offsets only once that snapshot is written. A crash anywhere replays
from the last commit; the twin's stored per-partition offsets make the replay skip what it has.

Deferred twins. Writing every changed car every second does not fit FerretDB (100,000 cars sending
every 10 s would be 10,000 upserts/s), so a car is written at the next checkpoint only when its
status changed, when it has no twin document yet (inserted, not upserted), or when its last write is
``twin_interval_s`` old; the others wait, at most ``twin_batch_max`` per bulk, longest-waiting first.
A deferred car's newest events then exist nowhere durable except Kafka, so the commit must not pass
them. Each car remembers ``pending_from``, the offset (on ``pending_part``) of its first applied
event that no written snapshot contains; the commit of partition p is at most the smallest
``pending_from`` of the cars left out of the snapshot on p (and at most what was applied). So:

- every event at or above a partition's committed offset is still in Kafka, and every event below it
  is in a durable twin (its car was in a written snapshot that included it, or it was skipped as
  already there) or produced nothing (DLQ'd, and acknowledged);
- a replay from the commit starts each car from its stored twin: status, counters, hysteresis window
  and clean streak, offsets. Events at or below the stored offset are skipped, later ones re-applied
  in order, so the state it reaches is the state the crashed run had (same model version => same
  scores). Status changes are never deferred, so an alert whose twin write was lost is produced again
  on replay (at least once), never lost;
- commits lag the stream by up to ``twin_interval_s`` (plus write time), which bounds the replay.

The end of a run and a partition revoke write every car with applied events before the last commit.

Fenced writes. A member that lost its partitions without noticing (SIGSTOPped or cut off past the
session timeout) may still hold a snapshot and write it after the new owner wrote newer twins; its
commit then fails, but the twins it wrote would have moved backwards, and a replay from the new
owner's commit would start from them and skip events they never counted. So a twin write applies
only if the car's newest event in it is at or past the stored offset of that partition
(``newer_than_stored``; equal is the same state written again). Fenced-out writes are dropped: the
stored twin already holds those events.

Paused members. Where the store cannot make that rule atomic (FerretDB, see twin_store), the member
itself must not write after it may have lost its partitions: a process that did not run for a while
(SIGSTOP, a stall; ``PauseFence``) sends no twin write until Kafka has had the time to tell it so
(``hold_s``: librdkafka notices a session that expired during the pause on its next 1 s timer, or on
the next heartbeat's answer) and the loop has asked since (a consume() begun after the hold: librdkafka
serves a loss only there; twin_store.TwinWriter). A revocation or loss that arrives meanwhile drops
the write in flight and its commit (the next owner replays it).
"""

from __future__ import annotations

import math
import threading

import numpy as np


class TwinLedger:
    """Per-partition positions and per-car twin bookkeeping (car indices as in the CarTable).

    The loop reports what happened (``restored``, ``events_applied``, ``status_changed``, ``batch_done``);
    at a checkpoint it asks which cars are ``due``, hands them to the writer with ``take`` (which
    returns the positions that may be committed once their snapshot is written) and, after the
    commit, records it with ``committed_to``.
    """

    def __init__(self, twin_interval_s: float, twin_batch_max: int, size: int = 1024):
        self.twin_interval_s = twin_interval_s
        self.twin_batch_max = twin_batch_max
        self.applied: dict[int, int] = {}  # partition -> last offset applied (not yet committed)
        self.committed: dict[int, int] = {}  # partition -> last offset committed
        self.unwritten = np.zeros(size, bool)  # has applied events that no snapshot has taken
        self.urgent = np.zeros(size, bool)  # written at the next checkpoint, whatever the interval
        self.has_twin = np.zeros(size, bool)  # a twin document exists (update, not insert)
        self.written_at = np.zeros(size, np.float64)  # when the car was last handed to the writer
        self.pending_part = np.full(size, -1, np.int32)  # see the module docstring
        self.pending_from = np.full(size, -1, np.int64)

    def ensure(self, size: int) -> None:
        old = len(self.unwritten)
        if size <= old:
            return
        grow = max(size, 2 * old) - old
        for name in ("unwritten", "urgent", "has_twin", "written_at"):
            setattr(self, name, np.concatenate([getattr(self, name), np.zeros(grow, getattr(self, name).dtype)]))
        for name in ("pending_part", "pending_from"):
            setattr(self, name, np.concatenate([getattr(self, name), np.full(grow, -1, getattr(self, name).dtype)]))

    # ---- what the loop applied --------------------------------------------------------------

    def restored(self, cars: np.ndarray, now: float) -> None:
        """These cars' twins were loaded: they are current, so the next periodic write is one interval from ``now``."""
        if len(cars):
            self.ensure(int(np.max(cars)) + 1)
            self.has_twin[cars] = True
            self.written_at[cars] = now

    def events_applied(self, cars: np.ndarray, partitions: np.ndarray, offsets: np.ndarray) -> None:
        """Events (car index, partition, offset; stream order) were applied to the car table.

        Each car remembers its first event that no durable twin has yet: commits stay below it.
        """
        if len(cars) == 0:
            return
        self.ensure(int(cars.max()) + 1)
        uniq, first = np.unique(cars, return_index=True)
        self.unwritten[uniq] = True
        fresh = self.pending_from[uniq] < 0
        self.pending_part[uniq[fresh]] = partitions[first[fresh]]
        self.pending_from[uniq[fresh]] = offsets[first[fresh]]
        # A car's hold is tracked on one partition: an event of it on another (the topic was resized)
        # is held by nothing, so the car is written at the next checkpoint. Every event counts, not
        # only the newest: a chunk can interleave a car's old and new partitions.
        moved = cars[self.pending_part[cars] != partitions]
        if len(moved):
            self.urgent[moved] = True

    def status_changed(self, cars: np.ndarray) -> None:
        self.ensure(int(np.max(cars)) + 1)
        self.urgent[cars] = True

    def batch_done(self, done: dict[int, int]) -> None:
        """Every record of a poll batch up to these offsets (partition -> offset) was applied or dead-lettered."""
        for p, o in done.items():
            if o > self.applied.get(p, -1):
                self.applied[p] = o

    # ---- checkpoint ---------------------------------------------------------------------------

    def has_work(self) -> bool:
        return bool(self.applied) or bool(self.unwritten.any())

    def uncommitted(self) -> bool:
        """True while something applied is not committed yet (what the health check calls pending work)."""
        return bool(self.unwritten.any()) or any(o > self.committed.get(p, -1) for p, o in self.applied.items())

    def due(self, now: float, everything: bool = False) -> np.ndarray:
        """Cars to write now: urgent ones always, then those without a twin, then the longest unwritten.

        With ``everything``, every car with applied events that no snapshot has taken.
        """
        if everything:
            return np.flatnonzero(self.unwritten)
        stale = (now - self.written_at) >= self.twin_interval_s
        cars = np.flatnonzero(self.unwritten & (self.urgent | ~self.has_twin | stale))
        if len(cars) > self.twin_batch_max:
            urgent = cars[self.urgent[cars]]
            rest = cars[~self.urgent[cars]]
            rest = rest[np.argsort(self.written_at[rest], kind="stable")][: max(0, self.twin_batch_max - len(urgent))]
            cars = np.concatenate([urgent, rest])
        return cars

    def take(self, cars: np.ndarray, now: float) -> dict[int, int]:
        """These cars' state was snapshotted for the writer; returns what may be committed once it is written."""
        self.unwritten[cars] = self.urgent[cars] = False
        self.pending_part[cars] = self.pending_from[cars] = -1
        self.has_twin[cars] = True
        self.written_at[cars] = now
        return self.commit_positions()

    def commit_positions(self) -> dict[int, int]:
        """Per partition, the last offset whose effect is durable once the snapshot is: what was applied,
        but below the first held event of any car left out of the snapshot (only partitions that advance)."""
        held = self.unwritten & (self.pending_from >= 0)
        parts, offs = self.pending_part[held], self.pending_from[held]
        out = {}
        for p, o in self.applied.items():
            below = offs[parts == p]
            last = min(o, int(below.min()) - 1) if len(below) else o
            if last > self.committed.get(p, -1):
                out[p] = last
        return out

    def committed_to(self, positions: dict[int, int]) -> None:
        self.committed.update(positions)

    def unwritten_count(self) -> int:
        return int(self.unwritten.sum())


def newer_than_stored(stored_offsets: dict[str, int], partition: int, offset: int) -> bool:
    """True when a twin whose newest event is (partition, offset) may replace one with ``stored_offsets``."""
    return stored_offsets.get(str(partition), -1) <= offset


def fence_filter(car: str, partition: int, offset: int) -> dict:
    """``newer_than_stored`` as a MongoDB update filter (``$not $gt`` also matches a partition never stored)."""
    return {"_id": car, f"offsets.{partition}": {"$not": {"$gt": offset}}}


class PauseFence:
    """When a twin write may be sent after the process was paused (module docstring, "Paused members").

    Every thread that looks at the clock for it (a watchdog ticking, the writer before each send)
    calls ``observe``; a gap of more than ``pause_s`` since the previous look, by any thread, is a
    pause, and writes wait until ``hold_s`` after the look that saw it.
    """

    def __init__(self, pause_s: float, hold_s: float, now: float):
        self.pause_s, self.hold_s = pause_s, hold_s
        self.seen = now
        self.resumed_at = -math.inf
        self.pauses = 0
        self._lock = threading.Lock()

    def observe(self, now: float) -> float:
        """Seconds a twin write must still wait (0: it may be sent now)."""
        with self._lock:
            if now - self.seen > self.pause_s:
                self.resumed_at = now
                self.pauses += 1
            self.seen = max(self.seen, now)  # threads read the clock in one order and get here in another
            return max(0.0, self.resumed_at + self.hold_s - now)
