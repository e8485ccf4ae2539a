"""The transformer's per-car state without Kafka: how events change it, how a twin restores it, and
that the twin it writes is the kernel's TwinDocument."""

from __future__ import annotations

from typing import get_args, get_type_hints

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpulse.contract import N_FEATURES
from fleetpulse.hysteresis import STATUS_NAMES, Rule
from fleetpulse.twin import Status, TwinDocument
from inference.transformer.batching import Events
from inference.transformer.car_table import CarTable

RULE = Rule(n=6, k_warning=2, k_failing=4, m=3)


def events(cars, partitions=None, offsets=None) -> Events:
    cars = np.asarray(cars, np.int64)
    n = len(cars)
    rows = np.arange(n * N_FEATURES, dtype=np.float32).reshape(n, N_FEATURES)
    partitions = np.zeros(n, np.int32) if partitions is None else np.asarray(partitions, np.int32)
    offsets = np.arange(n, dtype=np.int64) if offsets is None else np.asarray(offsets, np.int64)
    return Events(cars, rows, partitions, offsets, 1000 + offsets)


def table_with(n_cars: int) -> CarTable:
    table = CarTable(RULE, size=2)  # small, so it grows
    table.lookup([f"car-{i}".encode() for i in range(n_cars)])
    return table


def state(table: CarTable, n: int) -> dict:
    h = table.hysteresis
    return {name: getattr(table, name)[:n].tolist() for name in ("events", "over", "score", "seen", "rows", "part", "off")} | {
        "status": h.status[:n].tolist(), "bits": h.bits[:n].tolist(), "clean": h.clean[:n].tolist(), "offsets": table.offsets[:n]}


def test_lookup_gives_each_car_one_index_and_returns_only_the_first_seen():
    table = CarTable(RULE, size=1)
    idx, new = table.lookup([b"a", b"b", b"a"])
    assert idx.tolist() == [0, 1, 0] and new == [0, 1]
    idx, new = table.lookup([b"b", b"c"])
    assert idx.tolist() == [1, 2] and new == [2] and table.ids == ["a", "b", "c"] and len(table) == 3


stream = st.integers(1, 60).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 4), min_size=n, max_size=n), st.lists(st.booleans(), min_size=n, max_size=n),
    st.lists(st.integers(1, 60), min_size=1, max_size=6)))


@settings(max_examples=150, deadline=None)
@given(stream)
def test_applying_a_stream_in_any_chunking_gives_the_same_state(case):
    """Per-car state depends on the events in stream order, not on how micro-batches cut them."""
    cars, over, cuts = case
    ev, over = events(cars), np.array(over)
    score = np.where(over, 5.0, 1.0).astype(np.float32)
    whole, chunked = table_with(5), table_with(5)
    whole_changes = [(i, a, b) for i, a, b in whole.apply(ev, score, over)]
    chunked_changes, start = [], 0
    for size in cuts * len(cars):
        if start >= len(cars):
            break
        sl = slice(start, start + size)
        chunked_changes += [(i + start, a, b) for i, a, b in chunked.apply(ev[sl], score[sl], over[sl])]
        start += size
    assert state(chunked, 5) == state(whole, 5)
    assert chunked_changes == whole_changes


def test_a_car_keeps_its_newest_reading_and_the_last_offset_of_each_partition():
    table = table_with(2)
    table.apply(events([0, 1, 0], partitions=[2, 1, 2], offsets=[5, 6, 7]), np.array([1, 2, 3], np.float32), np.zeros(3, bool))
    table.apply(events([0, 0], partitions=[0, 0], offsets=[8, 9]), np.array([4, 5], np.float32), np.zeros(2, bool))
    assert table.offsets[0] == {"2": 7, "0": 9} and table.offsets[1] == {"1": 6}
    assert table.score[0] == 5 and table.seen[0] == 1009 and table.events[:2].tolist() == [4, 1]
    assert (table.part[0], table.off[0]) == (0, 9)


def test_a_restored_car_continues_from_its_twin_and_recognises_replayed_events():
    table = table_with(1)
    doc = {"status": "warning", "counters": {"events": 7, "over_threshold": 3, "alerts": 1},
           "hysteresis": {"window_bits": 0b101, "clean_streak": 0}, "offsets": {"0": 4, "1": 9}}
    replay = events([0, 0, 0], partitions=[1, 1, 1], offsets=[8, 9, 10])
    assert table.restore([0], {"car-0": doc}, replay) == [0]
    assert table.not_yet_applied(replay).tolist() == [False, False, True]
    assert (table.events[0], table.over[0], table.alerts[0]) == (7, 3, 1)
    assert STATUS_NAMES[table.hysteresis.status[0]] == "warning" and table.hysteresis.bits[0] == 0b101


def test_a_table_made_afresh_after_a_rebalance_gives_a_car_only_its_own_readings_in_its_window():
    before = CarTable(RULE, window=3)
    before.lookup([b"car-a", b"car-b"])
    before.samples(events([0, 1, 0, 1]))
    after = CarTable(RULE, window=3)  # what the loop makes when partitions are revoked
    cars, _ = after.lookup([b"car-b"])  # car-b now gets index 0, car-a's index before
    first = events(cars)
    assert (after.samples(first)[0] == first.rows[0]).all()


def test_a_car_without_a_twin_is_not_restored():
    table = table_with(2)
    assert table.restore([0, 1], {"car-1": {"status": "ok"}}, events([0, 1])) == [1]


@settings(max_examples=100, deadline=None)
@given(stream)
def test_a_snapshot_restores_to_the_same_twin(case):
    """What a replay starts a car from (status, counters, hysteresis, offsets) is what the twin stored."""
    cars, over, _ = case
    table = table_with(5)
    table.apply(events(cars), np.where(over, 5.0, 1.0).astype(np.float32), np.array(over))
    written = [table.snapshot(np.array([c]), np.array([True]), 3.0, "7").document(0) for c in range(5)]
    restored = table_with(5)
    restored.restore(list(range(5)), {d["_id"]: d for d in written}, events(range(5)))
    again = [restored.snapshot(np.array([c]), np.array([True]), 3.0, "7").document(0) for c in range(5)]
    keys = ("status", "counters", "hysteresis", "offsets")
    assert [{k: d[k] for k in keys} for d in again] == [{k: d[k] for k in keys} for d in written]


def test_the_twin_written_has_exactly_the_fields_of_the_kernels_twin_document():
    table = table_with(2)
    table.apply(events([0, 1]), np.array([1.0, 4.0], np.float32), np.array([False, True]))
    snapshot = table.snapshot(np.array([0, 1]), np.array([False, True]), 3.0, "2")
    new, existing = snapshot.documents()
    assert [d["_id"] for d in new] == ["car-0"] and [d["_id"] for d in existing] == ["car-1"] and snapshot.inserts == 1
    hints = get_type_hints(TwinDocument)
    for doc in new + existing:
        assert set(doc) == set(hints)
        for name in ("counters", "hysteresis"):
            assert set(doc[name]) == set(get_type_hints(hints[name]))
        assert isinstance(doc["last_readings"]["tire_pressure_1_1"], int) and doc["status"] in get_args(Status)
    assert get_args(Status) == STATUS_NAMES
