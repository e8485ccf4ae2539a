"""The transformer's no-loss rules without Kafka: when a car's twin is due, how far a commit may go, what
a stale writer may overwrite, and that a failed chunk is never passed.

``Stream`` plays the loop against a TwinLedger and remembers every event, what each written snapshot
held and what the DLQ took, so a property test can check the ledger's commits over any interleaving.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pytest import approx
from hypothesis import example, given, settings
from hypothesis import strategies as st

from inference.transformer.checkpoint import PauseFence, TwinLedger, fence_filter, newer_than_stored

PARTITIONS = 3
CARS = 4
INTERVAL = 10.0


@dataclass
class Stream:
    ledger: TwinLedger
    next_offset: list[int] = field(default_factory=lambda: [0] * PARTITIONS)
    applied: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # car -> its (partition, offset), in order
    dead_lettered: set[tuple[int, int]] = field(default_factory=set)
    durable: set[tuple[int, int]] = field(default_factory=set)  # events some written snapshot holds
    writing: tuple[dict[int, int], set[tuple[int, int]]] | None = None  # (positions to commit, events) of the snapshot in flight
    seen: set[int] = field(default_factory=set)
    now: float = 0.0

    def poll_batch(self, records: list[tuple[int | None, int]], changes: set[int] = frozenset(), restored: set[int] = frozenset(),
                   chunk: int = 1000) -> None:
        """Records (car, or None for an undecodable one; partition) in poll order, applied in micro-batches
        of ``chunk``; cars in ``changes`` change status, first-seen cars in ``restored`` had a twin."""
        cars, parts, offs = [], [], []
        done: dict[int, int] = {}
        for car, p in records:
            o = done[p] = self.next_offset[p]
            self.next_offset[p] += 1
            if car is None:
                self.dead_lettered.add((p, o))
            else:
                cars.append(car), parts.append(p), offs.append(o)
        new = sorted(set(cars) - self.seen)
        self.seen.update(cars)
        self.ledger.restored(np.array([c for c in new if c in restored], np.int64), self.now)
        cars, parts, offs = np.array(cars, np.int64), np.array(parts, np.int32), np.array(offs, np.int64)
        for start in range(0, len(cars), chunk):
            sl = slice(start, start + chunk)
            self.ledger.events_applied(cars[sl], parts[sl], offs[sl])
            for c, p, o in zip(cars[sl].tolist(), parts[sl].tolist(), offs[sl].tolist()):
                self.applied.setdefault(c, []).append((p, o))
            changed = sorted(set(changes) & set(cars[sl].tolist()))
            if changed:
                self.ledger.status_changed(np.array(changed, np.int64))
        self.ledger.batch_done(done)

    def start_checkpoint(self, elapsed: float = 0.0, everything: bool = False) -> list[int] | None:
        """Snapshot the due cars for the writer (None while a write is in flight: the loop waits for it)."""
        self.now += elapsed
        if self.writing is not None:
            return None
        cars = self.ledger.due(self.now, everything)
        events = {e for c in cars.tolist() for e in self.applied.get(c, [])}
        self.writing = (self.ledger.take(cars, self.now), events)
        return sorted(cars.tolist())

    def finish_write(self) -> None:
        """The snapshot is written: its events are durable, its positions committed."""
        if self.writing is None:
            return
        positions, events = self.writing
        self.writing = None
        self.durable |= events
        before = dict(self.ledger.committed)
        self.ledger.committed_to(positions)
        assert all(o > before.get(p, -1) for p, o in positions.items()), f"a commit went backwards: {before} -> {positions}"

    def lost_if_crashed_now(self) -> list[tuple[int, int, int]]:
        """(car, partition, offset) of events below a committed offset that neither a written snapshot nor the DLQ holds."""
        committed = self.ledger.committed
        return [(c, p, o) for c, events in self.applied.items() for p, o in events
                if o <= committed.get(p, -1) and (p, o) not in self.durable and (p, o) not in self.dead_lettered]


car = st.integers(0, CARS - 1)
undecodable = st.integers(0, PARTITIONS - 1).map(lambda p: (None, p))
keyed = car.map(lambda c: (c, c % PARTITIONS))  # Kafka keys a car to one partition ...
moved = st.tuples(car, st.integers(0, PARTITIONS - 1))  # ... until the topic is resized
poll = st.tuples(st.just("poll"), st.lists(st.one_of(keyed, moved, undecodable), max_size=12), st.sets(car), st.sets(car),
                 st.integers(1, 5))
checkpoint = st.tuples(st.just("checkpoint"), st.floats(0, 2 * INTERVAL), st.booleans())
finish = st.tuples(st.just("finish"))


def play(steps, twin_batch_max: int) -> Stream:
    stream = Stream(TwinLedger(INTERVAL, twin_batch_max, size=2))  # small, so the ledger grows as cars appear
    for step in steps:
        if step[0] == "poll":
            stream.poll_batch(*step[1:])
        elif step[0] == "checkpoint":
            stream.start_checkpoint(*step[1:])
        else:
            stream.finish_write()
            assert stream.lost_if_crashed_now() == []
    return stream


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(poll, checkpoint, finish), max_size=40), st.integers(1, CARS + 1))
# Found by this test: car 0's chunk interleaves its partitions 0, 1, 0, and only its newest event's moved.
@example([("poll", [(0, 0), (0, 1), (0, 0)], set(), {0}, 5), ("checkpoint", 1.0, False), ("finish",)], 10)
def test_no_interleaving_commits_past_an_event_that_no_written_snapshot_or_dlq_holds(steps, twin_batch_max):
    """Whatever order polls, deferred cars, status changes, checkpoints and finished writes come in,
    and however small the batch limit: every commit covers only durable or dead-lettered events, and never goes back."""
    play(steps, twin_batch_max)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(poll, checkpoint, finish), max_size=30), st.integers(1, CARS + 1))
def test_a_final_checkpoint_writes_every_car_and_commits_everything_applied(steps, twin_batch_max):
    stream = play(steps, twin_batch_max)
    stream.finish_write()
    stream.start_checkpoint(everything=True)
    stream.finish_write()
    assert stream.ledger.unwritten_count() == 0
    assert all(stream.ledger.committed.get(p, -1) == o for p, o in stream.ledger.applied.items())
    assert stream.lost_if_crashed_now() == []


def test_a_deferred_car_holds_its_partitions_commit_just_below_its_first_unwritten_event():
    stream = Stream(TwinLedger(INTERVAL, 100))
    stream.poll_batch([(0, 0), (3, 0)], restored={0, 3})  # both had twins: neither is due before the interval
    stream.start_checkpoint(1.0), stream.finish_write()
    assert stream.ledger.committed == {}  # offsets 0 and 1 of partition 0 are in no written twin
    stream.poll_batch([(0, 0), (3, 0)], changes={3})  # car 3 changes status: written now; car 0 still deferred
    assert stream.start_checkpoint(1.0) == [3]
    stream.finish_write()
    assert stream.ledger.committed == {}  # car 0's first unwritten event is offset 0
    assert stream.start_checkpoint(INTERVAL) == [0]  # its last write is an interval old
    stream.finish_write()
    assert stream.ledger.committed == {0: 3}


def test_dead_lettered_records_let_the_commit_pass_them():
    stream = Stream(TwinLedger(INTERVAL, 100))
    stream.poll_batch([(None, 1), (None, 1)])
    assert stream.start_checkpoint() == []
    stream.finish_write()
    assert stream.ledger.committed == {1: 1}


# ---- when a car's twin is due ------------------------------------------------------------------


def ledger_with(n: int, has_twin, written_at, urgent, batch_max: int = 1000) -> TwinLedger:
    """A ledger of ``n`` cars that all have unwritten events (each on its own offset of partition 0)."""
    ledger = TwinLedger(INTERVAL, batch_max, size=1)
    cars = np.arange(n)
    ledger.events_applied(cars, np.zeros(n, np.int32), cars)
    ledger.has_twin[:n], ledger.written_at[:n], ledger.urgent[:n] = has_twin, written_at, urgent
    return ledger


cars_state = st.integers(1, 30).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.booleans(), min_size=n, max_size=n), st.lists(st.floats(0, 100), min_size=n, max_size=n),
    st.lists(st.booleans(), min_size=n, max_size=n)))


@given(cars_state, st.integers(1, 40), st.floats(0, 200))
def test_a_status_change_is_always_due_at_the_next_checkpoint_even_past_the_batch_limit(state, batch_max, now):
    n, has_twin, written_at, urgent = state
    due = set(ledger_with(n, has_twin, written_at, urgent, batch_max).due(now).tolist())
    assert {c for c in range(n) if urgent[c]} <= due


@given(cars_state, st.floats(0, 200))
def test_a_car_is_due_when_it_has_no_twin_or_its_last_write_is_a_twin_interval_old_and_not_otherwise(state, now):
    n, has_twin, written_at, urgent = state
    due = set(ledger_with(n, has_twin, written_at, urgent).due(now).tolist())
    assert due == {c for c in range(n) if urgent[c] or not has_twin[c] or now - written_at[c] >= INTERVAL}


@given(cars_state, st.integers(1, 40), st.floats(0, 200))
def test_past_the_batch_limit_the_longest_waiting_cars_go_first(state, batch_max, now):
    n, has_twin, written_at, urgent = state
    ledger = ledger_with(n, has_twin, [w if h else 0.0 for w, h in zip(written_at, has_twin)], urgent, batch_max)
    due = ledger.due(now).tolist()
    wanted = [c for c in range(n) if urgent[c] or not has_twin[c] or now - ledger.written_at[c] >= INTERVAL]
    assert len(due) == len(set(due)) == min(len(wanted), max(batch_max, sum(urgent)))
    chosen = [c for c in due if not urgent[c]]
    left = [c for c in wanted if c not in due]
    assert all(ledger.written_at[a] <= ledger.written_at[b] for a in chosen for b in left)


def test_a_healthy_car_is_due_again_one_twin_interval_after_it_was_handed_to_the_writer():
    stream = Stream(TwinLedger(INTERVAL, 100))
    stream.poll_batch([(2, 2)])
    assert stream.start_checkpoint(0.5) == [2]  # no twin yet: inserted at once
    stream.finish_write()
    for _ in range(9):
        stream.poll_batch([(2, 2)])
        assert stream.start_checkpoint(1.0) == []
        stream.finish_write()
    stream.poll_batch([(2, 2)])
    assert stream.start_checkpoint(1.0) == [2]


# ---- fenced twin writes ------------------------------------------------------------------------

writer = st.tuples(st.integers(0, 2), st.integers(0, 30))  # (partition, offset) of a snapshot's newest event of the car


@given(st.lists(writer, min_size=1, max_size=20))
def test_a_fenced_write_never_moves_a_twin_back_on_any_partition(writes):
    """Members write the same car with snapshots of any age, in any order (a stale member wakes up late):
    the stored offset of every partition only grows, and the newest snapshot of a partition always lands."""
    stored: dict[str, int] = {}
    for p, o in writes:
        before = dict(stored)
        if newer_than_stored(stored, p, o):
            stored[str(p)] = o
        assert all(stored[k] >= v for k, v in before.items())
    for p in {p for p, _ in writes}:
        assert stored[str(p)] == max(o for q, o in writes if q == p)


def test_the_same_snapshot_written_again_applies_and_an_older_one_does_not():
    assert newer_than_stored({"0": 7}, 0, 7) and newer_than_stored({"0": 7}, 0, 8) and not newer_than_stored({"0": 7}, 0, 6)
    assert newer_than_stored({"0": 7}, 1, 0)  # a partition the twin never saw (the topic was resized)


def test_the_fence_filter_is_the_same_rule_on_the_twin_document():
    assert fence_filter("car-1", 2, 40) == {"_id": "car-1", "offsets.2": {"$not": {"$gt": 40}}}


# ---- a paused member ---------------------------------------------------------------------------

PAUSE, HOLD = 1.0, 5.0


def test_a_write_waits_the_hold_after_a_pause_and_never_while_the_process_runs():
    fence = PauseFence(PAUSE, HOLD, now=100.0)
    assert all(fence.observe(100.0 + 0.1 * i) == 0 for i in range(1, 100))  # the watchdog's ticks
    assert fence.observe(121.9) == HOLD  # woken after 12 s stopped
    waits = [fence.observe(121.9 + 0.1 * i) for i in range(1, 51)]
    assert waits[:49] == approx([HOLD - 0.1 * i for i in range(1, 50)]) and waits[49] == 0 and fence.pauses == 1


def test_a_pause_is_seen_by_whichever_thread_looks_at_the_clock_first():
    """The writer may run before the watchdog after a SIGCONT: it sees the gap itself, and the watchdog's
    look right after is not a second pause."""
    fence = PauseFence(PAUSE, HOLD, now=10.0)
    assert fence.observe(22.0) == HOLD  # the writer, about to send
    assert fence.observe(22.05) == approx(HOLD - 0.05) and fence.pauses == 1  # the watchdog
    assert fence.observe(21.99) == approx(HOLD + 0.01)  # a clock read before the writer's, looked at after it: no new pause


looks = st.lists(st.floats(0.0, 3.0, allow_nan=False), min_size=1, max_size=60)


@given(looks)
@example([1.8227733963365393, 1.2600529611468994, 1.0])  # found in CI: the sum's last gap reads as just over 1.0
def test_a_write_may_go_exactly_when_no_gap_longer_than_the_pause_ended_within_the_hold(gaps):
    fence, now, pause_ends = PauseFence(PAUSE, HOLD, now=0.0), 0.0, []
    for gap in gaps:
        before, now = now, now + gap
        if now - before > PAUSE:  # the gap as the clock readings give it (1.0 drawn can be 1.0000000000000004 read)
            pause_ends.append(now)
        wait = fence.observe(now)
        recent = [t for t in pause_ends if now - t < HOLD]
        assert (wait > 0) == bool(recent)
        if recent:
            assert wait == max(recent) + HOLD - now


# ---- a chunk that fails ------------------------------------------------------------------------


class Reply:
    """An infer request's future, finished when the test says so."""

    def __init__(self):
        self.finished = False

    def done(self) -> bool:
        return self.finished


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(car, min_size=0, max_size=6), min_size=1, max_size=6), st.integers(1, 3), st.integers(1, 4), st.data())
def test_a_failed_chunk_is_never_passed_by_a_commit_of_the_chunks_behind_it(polls, chunk_size, max_in_flight, data):
    """Poll batches cut into chunks (the last carries the batch's offsets) go in flight and their replies
    come back in any order; one chunk raises when applied. Whatever was in flight behind it, nothing the
    ledger may commit afterwards reaches its events, even once everything left is applied and written."""
    from inference.transformer.batching import Chunk, Events, InFlight

    ledger, in_flight, offset, chunks = TwinLedger(INTERVAL, 100), InFlight(max_in_flight), 0, []
    for cars in polls:
        n = len(cars)
        events = Events(np.array(cars, np.int64), np.zeros((n, 1)), np.zeros(n, np.int32), np.arange(offset, offset + n), np.zeros(n))
        offset += n
        cuts = [slice(s, s + chunk_size) for s in range(0, n, chunk_size)] or [slice(0, 0)]
        chunks += [Chunk(events[sl], Reply(), None, {0: offset - 1} if sl is cuts[-1] and n else {}) for sl in cuts]
    failing = data.draw(st.sampled_from([c for c in chunks if len(c.events)] or chunks))

    def apply(chunk):
        if chunk is failing:
            raise RuntimeError("the model server rejected the request")
        ledger.events_applied(chunk.events.cars, chunk.events.partitions, chunk.events.offsets)
        ledger.batch_done(chunk.done)

    for chunk in chunks:
        in_flight.submit(chunk)
    try:
        for i in data.draw(st.permutations(range(len(chunks)))):
            chunks[i].future.finished = True
            in_flight.drain(apply)
        in_flight.drain(apply, everything=True)
    except RuntimeError:
        in_flight.drain(apply, everything=True)  # what the loop's final checkpoint does after a failure
    committed = ledger.take(ledger.due(0.0, everything=True), 0.0)
    if len(failing.events):
        assert committed.get(0, -1) < int(failing.events.offsets[0])
