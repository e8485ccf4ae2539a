"""The cardata-v1 codec: wire-compatible with the public schema, strict, and exact on both paths."""

from __future__ import annotations

import io
import json
import struct

import fastavro
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpulse import codec
from fleetpulse.contract import CARDATA_V1_ID, INT_FIELDS, N_FEATURES, SENSOR_FIELDS
from fleetpulse.framing import DecodeError

from tests.support.paths import REFERENCE

PUBLIC_SCHEMA = fastavro.parse_schema(json.loads((REFERENCE / "cardata-v1.avsc").read_text()))

f32 = st.floats(width=32, allow_nan=False, allow_infinity=True)
avro_int = st.integers(min_value=-(2**31), max_value=2**31 - 1)


@st.composite
def cardata_records(draw) -> dict:
    return {name: draw(avro_int if name in INT_FIELDS else f32) for name in SENSOR_FIELDS}


def sample_rows() -> np.ndarray:
    rows = [json.loads(line) for line in (REFERENCE / "cardata-v1-sample.jsonl").read_text().splitlines()]
    return np.array([[r[f] for f in SENSOR_FIELDS] for r in rows], dtype=np.float64)


def test_packaged_schema_is_the_public_cardata_v1_schema():
    from fleetpulse.contract import SCHEMAS, schema_json

    assert schema_json(SCHEMAS[CARDATA_V1_ID]) == json.loads((REFERENCE / "cardata-v1.avsc").read_text())


def test_encoded_records_are_confluent_framed_and_readable_by_the_public_schema():
    values = sample_rows()
    for payload, row in zip(codec.encode_batch(values), values):
        assert payload[0] == 0 and struct.unpack(">I", payload[1:5])[0] == CARDATA_V1_ID
        record = fastavro.schemaless_reader(io.BytesIO(payload[5:]), PUBLIC_SCHEMA, None)
        assert [record[f] for f in SENSOR_FIELDS] == pytest.approx(row.astype(np.float32).tolist())


def test_records_written_by_the_public_schema_decode_in_a_batch():
    values = sample_rows()
    payloads = []
    for row in values:
        buf = io.BytesIO()
        rec = {f: int(v) if f in INT_FIELDS else float(v) for f, v in zip(SENSOR_FIELDS, row)}
        fastavro.schemaless_writer(buf, PUBLIC_SCHEMA, rec)
        payloads.append(b"\x00" + struct.pack(">I", 1) + buf.getvalue())
    batch = codec.decode_batch(payloads)
    assert batch.valid.all() and not batch.errors
    np.testing.assert_allclose(batch.values, values.astype(np.float32))


@settings(max_examples=300, deadline=None)
@given(st.lists(cardata_records(), min_size=1, max_size=40))
def test_round_trip_is_exact_on_the_fast_and_the_fallback_path(records):
    values = np.array([[r[f] for f in SENSOR_FIELDS] for r in records], dtype=np.float64)
    payloads = codec.encode_batch(values)
    assert payloads == [codec.encode_one(r) for r in records]  # vectorised writer == fastavro writer
    batch = codec.decode_batch(payloads)
    assert batch.valid.all()
    np.testing.assert_array_equal(batch.values, values.astype(np.float32))
    for payload, row in zip(payloads, batch.values):
        one = codec.decode_one(payload)
        np.testing.assert_array_equal(np.array([one[f] for f in SENSOR_FIELDS], dtype=np.float32), row)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_garbage_raises_only_decode_error(payload):
    try:
        codec.decode_one(payload)
    except DecodeError as exc:
        assert str(exc)
    batch = codec.decode_batch([payload])  # never raises; invalid rows carry a reason
    assert batch.valid[0] or batch.errors[0]


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=58, max_size=58))
def test_any_63_byte_payload_decodes_the_same_on_both_paths(body):
    payload = b"\x00\x00\x00\x00\x01" + body
    batch = codec.decode_batch([payload])
    try:
        one = codec.decode_one(payload)
    except DecodeError:
        assert not batch.valid[0]
        return
    assert batch.valid[0]
    np.testing.assert_array_equal(batch.values[0], np.array([one[f] for f in SENSOR_FIELDS], dtype=np.float32))


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"", "truncated"),
        (b"\x00\x00\x00", "truncated"),
        (b"\x01\x00\x00\x00\x01" + b"\x00" * 58, "bad magic byte"),
        (b"\x00\x00\x00\x00\x07" + b"\x00" * 58, "unknown schema id 7"),
        (b"\x00\x00\x00\x00\x01" + b"\x00" * 10, "truncated Avro body"),
        (codec.encode_batch(np.ones((1, N_FEATURES)) * 30)[0] + b"\x00", "trailing bytes"),
    ],
)
def test_bad_payloads_name_the_reason(payload, reason):
    with pytest.raises(DecodeError, match=reason):
        codec.decode_one(payload)
    batch = codec.decode_batch([payload])
    assert not batch.valid[0] and reason in batch.errors[0]


def test_a_batch_keeps_good_records_around_bad_ones():
    good = codec.encode_batch(sample_rows())
    mixed = [good[0], b"garbage", good[1], b"\x00\x00\x00\x00\x02xx", good[2]]
    batch = codec.decode_batch(mixed)
    assert batch.valid.tolist() == [True, False, True, False, True]
    assert set(batch.errors) == {1, 3}
    assert np.isnan(batch.values[1]).all()


def test_to_records_gives_ints_for_int_fields():
    rec = codec.to_records(sample_rows()[:1])[0]
    assert isinstance(rec["control_unit_firmware"], int) and rec["control_unit_firmware"] == 2000
    assert isinstance(rec["speed"], float)
