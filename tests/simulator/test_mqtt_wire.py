"""The batch PUBLISH builder agrees byte for byte with the one-packet encoder; the parser round-trips."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpulse.codec import encode_batch
from simulator import mqtt_wire as wire
from simulator.car_model import car_id

TOPICS = [f"vehicles/sensor/data/{car_id(i)}" for i in range(100)]
BUILDER = wire.PublishBuilder(TOPICS)


@settings(max_examples=60, deadline=None)
@given(
    cars=st.lists(st.integers(0, 99), min_size=1, max_size=40),
    qos=st.sampled_from([0, 1]),
    first_pid=st.integers(1, 65535),
    odd=st.booleans(),
)
def test_batch_publish_packets_equal_one_by_one_packets(cars, qos, first_pid, odd):
    rng = np.random.default_rng(len(cars))
    values = rng.uniform(0, 100, (len(cars), 18))
    values[:, 9:13], values[:, 17] = 32, 2000
    payloads = encode_batch(values)
    if odd:  # a payload of another length forces the exact per-packet path
        payloads[0] = payloads[0] + b"\x00"
    pids = (first_pid - 1 + np.arange(len(cars))) % 65535 + 1
    data, size = BUILDER.build(np.array(cars), payloads, qos, pids)
    expected = [wire.publish_packet(TOPICS[c].encode(), p, qos, int(pid)) for c, p, pid in zip(cars, payloads, pids)]
    assert data == b"".join(expected)
    assert size == (0 if odd and len(cars) > 1 else len(expected[0]))
    parsed, used = wire.split_packets(bytearray(data + b"\x30"))
    assert used == len(data) and len(parsed) == len(cars)
    assert all(ptype == wire.PUBLISH and flags == qos << 1 for ptype, flags, _ in parsed)


def test_mixed_width_car_ids_take_the_exact_path():
    topics = ["vehicles/sensor/data/" + car_id(i) for i in (99_998, 99_999)]  # ...99999 and ...100000
    builder = wire.PublishBuilder(topics)
    payloads = encode_batch(np.full((2, 18), 30.0))
    data, size = builder.build(np.array([0, 1]), payloads, 0)
    assert size == 0 and data == b"".join(wire.publish_packet(t.encode(), p, 0) for t, p in zip(topics, payloads))
