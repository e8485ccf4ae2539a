"""Codec throughput: batch encode/decode (vectorised) vs plain fastavro schemaless_writer/reader per record.

Single-threaded, so records/s is per core. Writes bench/results/codec.json.
"""

from __future__ import annotations

import argparse
import io

import fastavro
import numpy as np

from fleetpulse import codec
from devtools.benchmarking import best_rate, write_result
from fleetpulse.contract import CARDATA_V1_ID, SENSOR_FIELDS, parsed_schema


def realistic_rows(n: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.empty((n, len(SENSOR_FIELDS)))
    rows[:, :9] = rng.uniform(0, 300, (n, 9))
    rows[:, 9:13] = rng.integers(20, 35, (n, 4))
    rows[:, 13:17] = rng.uniform(0, 7, (n, 4))
    rows[:, 17] = rng.choice([1000, 2000], n)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="20k records instead of 200k")
    args = ap.parse_args()
    n = 20_000 if args.quick else 200_000
    rows = realistic_rows(n)
    records = codec.to_records(rows)
    schema = parsed_schema(CARDATA_V1_ID)
    header = b"\x00" + CARDATA_V1_ID.to_bytes(4, "big")
    payloads = codec.encode_batch(rows)

    def baseline_encode():
        out = []
        for rec in records:
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, schema, rec)
            out.append(header + buf.getvalue())
        return out

    def baseline_decode():
        return [fastavro.schemaless_reader(io.BytesIO(p[5:]), schema, None) for p in payloads]

    repeats = 3 if args.quick else 5
    enc = best_rate(lambda: codec.encode_batch(rows), n, repeats)
    dec = best_rate(lambda: codec.decode_batch(payloads), n, repeats)
    base_enc = best_rate(baseline_encode, n, 2)
    base_dec = best_rate(baseline_decode, n, 2)
    # A batch with 1% odd payloads (wider varints, garbage) exercises the per-record fallback.
    mixed = list(payloads)
    odd = codec.encode_batch(np.where(np.arange(18) == 17, 100_000, rows[:1]))[0]
    for i in range(0, n, 100):
        mixed[i] = odd if i % 200 else b"garbage"
    dec_mixed = best_rate(lambda: codec.decode_batch(mixed), n, repeats)

    table = [
        {"metric": "codec decode (records/s/core)", "value": round(dec), "unit": "rec/s", "baseline": round(base_dec), "ratio": round(dec / base_dec, 1), "target": ">= 200,000"},
        {"metric": "codec encode (records/s/core)", "value": round(enc), "unit": "rec/s", "baseline": round(base_enc), "ratio": round(enc / base_enc, 1), "target": ""},
        {"metric": "codec decode, 1% odd/garbage", "value": round(dec_mixed), "unit": "rec/s", "baseline": round(base_dec), "ratio": round(dec_mixed / base_dec, 1), "target": ""},
    ]
    path = write_result(
        "codec",
        {
            "records": n,
            "decode_per_s": dec,
            "encode_per_s": enc,
            "decode_mixed_per_s": dec_mixed,
            "baseline": "fastavro.schemaless_reader/writer per record with a parsed schema",
            "baseline_decode_per_s": base_dec,
            "baseline_encode_per_s": base_enc,
        },
        table,
    )
    for row in table:
        print(f"{row['metric']:34} {row['value']:>12,} {row['unit']}  baseline {row['baseline']:>10,}  x{row['ratio']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
