"""The shadow record and share: what the transformer publishes for the promotion decision."""

from __future__ import annotations

import pytest

from fleetpulse.shadow import ShadowBatch, decode_shadow, encode_shadow, in_shadow


def batch(n: int = 3) -> ShadowBatch:
    return ShadowBatch("3", "4", 2.5, 2.0, 1_700_000_000_000, [f"car-{i}" for i in range(n)], list(range(n)), [0] * n,
                       list(range(10, 10 + n)), [1.0] * n, [2.1] * n, [False] * n, [True, False, False][:n])


def test_a_shadow_batch_round_trips_and_says_how_often_the_models_agree():
    b = batch()
    assert decode_shadow(encode_shadow(b)) == b
    assert b.agreement() == pytest.approx(2 / 3)


def test_a_record_that_is_not_a_shadow_batch_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="not a shadow batch"):
        decode_shadow(b'{"stable_version": "3"}')
    record = encode_shadow(batch())
    with pytest.raises(ValueError, match="differ in length"):
        decode_shadow(record[:-1])
    with pytest.raises(ValueError, match="format 2: this reader knows only format 1"):
        decode_shadow(record[:4] + bytes([2]) + record[5:])
    bad = batch()
    bad.offsets = bad.offsets[:2]
    with pytest.raises(ValueError, match="differ in length"):
        encode_shadow(bad)


def test_a_shadow_batch_is_a_few_dozen_bytes_per_event_whatever_its_size():
    def of(n: int) -> bytes:  # a micro-batch's events of 30 cars
        return encode_shadow(ShadowBatch("3", "4", 2.5, 2.0, 0, [f"car-{i % 30:04d}" for i in range(n)], list(range(n)), [0] * n,
                                         list(range(n)), [1.0] * n, [2.1] * n, [False] * n, [True] * n))

    assert (len(of(3000)) - len(of(300))) / 2700 < 40  # columns, not per-event text (JSON lists took ~84)


def test_the_shadow_share_is_a_fixed_subset_of_cars_of_about_that_size():
    cars = [f"car-{i:06d}" for i in range(20_000)]
    tenth = in_shadow(cars, 0.1)
    assert 0.09 < tenth.mean() < 0.11
    assert (in_shadow(cars, 0.1) == tenth).all() and (in_shadow([c.encode() for c in cars], 0.1) == tenth).all()
    assert (tenth <= in_shadow(cars, 0.5)).all()  # a larger share keeps every car of a smaller one
    assert in_shadow(cars, 1.0).all() and not in_shadow(cars, 0.0).any()
