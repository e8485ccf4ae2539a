"""The bridge's MQTT 5 packet parser: bulk parsing of any byte split gives back exactly what was published."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridges import mqtt_wire as wire

topics = st.binary(min_size=1, max_size=300).map(lambda b: b.replace(b"\x00", b"a"))
messages = st.lists(st.tuples(topics, st.binary(max_size=400), st.sampled_from([0, 1]), st.integers(1, 65535)), min_size=1, max_size=40)


def publish_with_properties(topic: bytes, payload: bytes, qos: int, pid: int, props: bytes) -> bytes:
    body = wire.utf8(topic) + (struct.pack(">H", pid) if qos else b"") + wire.varint(len(props)) + props + payload
    return bytes([0x30 | (qos << 1)]) + wire.varint(len(body)) + body


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
