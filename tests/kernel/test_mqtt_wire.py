"""The MQTT wire encoding: the bridge's bulk parser and the simulator's batch builder give back exactly
what the one-packet encoders write, at any byte split."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpulse import mqtt_wire as wire
from fleetpulse.codec import encode_batch
from fleetpulse.contract import topic_for_car

topics = st.binary(min_size=1, max_size=300).map(lambda b: b.replace(b"\x00", b"a"))
messages = st.lists(st.tuples(topics, st.binary(max_size=400), st.sampled_from([0, 1]), st.integers(1, 65535)), min_size=1, max_size=40)

# The simulator's car ids (electric-vehicle-00000 ...): one topic length, the fixed-row path.
CAR_TOPICS = [topic_for_car(f"electric-vehicle-{i:05d}") for i in range(100)]
BUILDER = wire.PublishBuilder(CAR_TOPICS)
PUBACK_FIRST_BYTE = wire.PUBACK << 4


def publish_with_properties(topic: bytes, payload: bytes, qos: int, pid: int, props: bytes) -> bytes:
    body = wire.utf8(topic) + (struct.pack(">H", pid) if qos else b"") + wire.varint(len(props)) + props + payload
    return bytes([0x30 | (qos << 1)]) + wire.varint(len(body)) + body


# --- the bridge's MQTT 5 parser ----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(messages, st.lists(st.integers(1, 5000), max_size=8), st.binary(max_size=200))
def test_stream_parsed_at_any_split_yields_every_publish_unchanged(msgs, cuts, user_prop):
    # Properties the broker may forward (here a user property) must be skipped, not mistaken for payload.
    props = b"\x26" + wire.utf8(b"k") + wire.utf8(user_prop) if user_prop else b""
    stream = b"".join(publish_with_properties(t, p, q, i, props) for t, p, q, i in msgs) + wire.PINGREQ_PACKET
    out, rest, pos = wire.Parsed(), b"", 0
    for cut in sorted(set(c % (len(stream) + 1) for c in cuts)) + [len(stream)]:
        data = rest + stream[pos:cut]
        pos = max(pos, cut)
        rest = data[wire.parse_stream(data, out) :]
    assert rest == b""
    assert out.topics == [t for t, _, _, _ in msgs]
    assert out.payloads == [p for _, p, _, _ in msgs]
    assert out.packet_ids == [i if q else 0 for _, _, q, i in msgs]
    assert [c[0] for c in out.control] == [wire.PINGREQ]


@settings(max_examples=100, deadline=None)
@given(messages)
def test_mqtt5_publish_packets_parse_back_unchanged(msgs):
    stream = b"".join(wire.publish_packet(t, p, q, i, protocol=wire.MQTT_5) for t, p, q, i in msgs)
    out = wire.Parsed()
    assert wire.parse_stream(stream, out) == len(stream)
    assert out.topics == [t for t, _, _, _ in msgs]
    assert out.payloads == [p for _, p, _, _ in msgs]
    assert out.packet_ids == [i if q else 0 for _, _, q, i in msgs]


@given(st.integers(0, 268_435_455))
def test_remaining_length_varint_round_trips(n):
    encoded = wire.varint(n)
    assert wire.read_varint(encoded, 0) == (n, len(encoded))
    assert wire.read_varint(encoded[:-1], 0)[0] == -1 or len(encoded) == 1


def test_malformed_remaining_length_is_a_protocol_error():
    with pytest.raises(wire.ProtocolError):
        wire.parse_stream(b"\x30\xff\xff\xff\xff\x01" + b"x" * 10, wire.Parsed())


def test_connack_with_receive_maximum_and_session_present():
    props = bytes([wire.PROP_RECEIVE_MAXIMUM]) + struct.pack(">H", 1000)
    present, reason, parsed = wire.parse_connack(b"\x01\x00" + wire.varint(len(props)) + props)
    assert present and reason == 0 and parsed[wire.PROP_RECEIVE_MAXIMUM] == 1000


def test_pubacks_are_written_as_one_buffer_in_the_given_order():
    out = wire.Parsed()
    wire.parse_stream(wire.puback_packets([7, 1, 65535]), out)
    assert wire.parse_puback_ids(out.control) == [7, 1, 65535]


# --- the simulator's MQTT 3.1.1 batch builder ---------------------------------------------------------


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
    expected = [wire.publish_packet(CAR_TOPICS[c].encode(), p, qos, int(pid), protocol=wire.MQTT_3_1_1) for c, p, pid in zip(cars, payloads, pids)]
    assert data == b"".join(expected)
    assert size == (0 if odd and len(cars) > 1 else len(expected[0]))
    parsed, used = wire.split_packets(bytearray(data + b"\x30"))
    assert used == len(data) and len(parsed) == len(cars)
    assert all(ptype == wire.PUBLISH and flags == qos << 1 for ptype, flags, _ in parsed)


def test_mixed_width_car_ids_take_the_exact_path():
    topics = [topic_for_car("electric-vehicle-99999"), topic_for_car("electric-vehicle-100000")]
    builder = wire.PublishBuilder(topics)
    payloads = encode_batch(np.full((2, 18), 30.0))
    data, size = builder.build(np.array([0, 1]), payloads, 0)
    assert size == 0 and data == b"".join(wire.publish_packet(t.encode(), p, 0, protocol=wire.MQTT_3_1_1) for t, p in zip(topics, payloads))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=30), st.integers(0, 10_000))
def test_split_packets_returns_the_whole_packets_and_consumes_no_partial_one(bodies, cut):
    packets = [bytes([PUBACK_FIRST_BYTE]) + wire.varint(len(b)) + b for b in bodies]
    stream = b"".join(packets)
    cut %= len(stream) + 1
    parsed, used = wire.split_packets(bytearray(stream[:cut]))
    k = len(parsed)
    assert [(t, body) for t, _, body in parsed] == [(wire.PUBACK, b) for b in bodies[:k]]
    assert used == sum(map(len, packets[:k]))
    assert k == len(bodies) or used + len(packets[k]) > cut
