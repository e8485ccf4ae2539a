"""Poll batch -> micro-batches -> results applied in submission order, without Kafka or a model server."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from inference.transformer.batching import Chunk, InFlight, drop_redelivered, last_offsets, micro_batches


class Future:
    def __init__(self):
        self.finished = False

    def done(self) -> bool:
        return self.finished


class Message:
    def __init__(self, partition: int, offset: int):
        self._partition, self._offset = partition, offset

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


def chunk(i: int, future=None) -> Chunk:
    return Chunk(events=None, future=future, request=None, done={0: i})


@given(st.integers(1, 12), st.permutations(range(12)), st.integers(1, 5))
def test_chunks_are_applied_in_submission_order_whatever_order_they_finish(n, finish_order, max_in_flight):
    in_flight = InFlight(max_in_flight)
    futures = [Future() for _ in range(n)]
    applied = []
    for i in range(n):
        in_flight.submit(chunk(i, futures[i]))
        applied += [c.done[0] for c in in_flight.ready()]
        assert len(in_flight) < max_in_flight  # once the pipeline is full, its head is handed back to be waited on
    for i in (i for i in finish_order if i < n):
        futures[i].finished = True
        applied += [c.done[0] for c in in_flight.ready()]
    assert applied == list(range(n)) and len(in_flight) == 0


def test_a_full_pipeline_hands_back_its_unfinished_head_and_everything_hands_back_all():
    in_flight = InFlight(2)
    in_flight.submit(chunk(0, Future()))
    assert list(in_flight.ready()) == []
    in_flight.submit(chunk(1, Future()))
    assert [c.done[0] for c in in_flight.ready()] == [0]
    in_flight.submit(chunk(2))  # nothing to score: ready at once, but behind chunk 1
    assert [c.done[0] for c in in_flight.ready(everything=True)] == [1, 2]


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 30)), max_size=40))
def test_a_redelivered_offset_is_never_handed_on_twice(fetches):
    submitted: dict[int, int] = {}
    handed = [(m.partition(), m.offset()) for p, o in fetches for m in drop_redelivered([Message(p, o)], submitted)]
    assert len(handed) == len(set(handed))
    for p in range(3):
        mine = [o for q, o in handed if q == p]
        assert mine == sorted(mine)


@given(st.integers(0, 50), st.integers(1, 20))
def test_micro_batches_cover_every_event_once_and_an_empty_poll_still_carries_its_offsets(n, size):
    slices = micro_batches(n, size)
    covered = [i for sl in slices for i in range(n)[sl]]
    assert covered == list(range(n)) and len(slices) >= 1
    assert all(len(range(n)[sl]) <= size for sl in slices)


def test_a_poll_batch_is_done_up_to_its_highest_offset_per_partition():
    assert last_offsets(np.array([0, 1, 0, 2]), np.array([5, 3, 9, 1])) == {0: 9, 1: 3, 2: 1}
