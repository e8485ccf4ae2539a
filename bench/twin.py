"""Digital-twin writes on FerretDB 1.24 (SQLite): rate vs collection size, current path vs alternatives.

Each configuration gets a private FerretDB (temp state dir, free port) so the shared one is not
stalled. One collection is filled with twin-shaped documents (the transformer's own snapshot
documents) by insert_many up to 1k, 10k, 50k and 100k documents; at each size, each measure runs
up to N operations or a time budget, whichever comes first:

- ``update_upsert`` (baseline, the path before this change): bulk UpdateOne({_id}, {$set}, upsert) of
  existing twins in chunks of 90, one connection;
- ``replace_upsert``: bulk ReplaceOne({_id}, doc, upsert) in chunks of 90;
- ``update_upsert_chunk{BULK_CHUNK}``: the same in the transformer's chunk size now (room for concurrent writers);
- ``update_upsert_x{k}``: the baseline from k threads on one client (k connections, chunk 90 / k);
- ``insert_many``: new twins in one insert command per 1,000 (what the first sight of a car needs);
- ``load_in``: find({_id: {$in: 1000 ids}}) (the transformer's load of first-seen cars), ids/s;
- ``load_find_one``: find_one({_id}) per id, ids/s;
- ``load_all``: find({}) of the whole collection (the transformer's one-pass load), docs/s;
- ``build_fields``: the transformer building $set fields from a snapshot (Python only), cars/s.

Configurations:
- ``ferretdb`` as FerretDB 1.24 ships: `_id` lookups scan the table (the pushed-down expression is not
  the indexed one; see devtools/stack/mongodb.py);
- ``lookup-index``: the stack's extra index on the pushed-down `_id` expression (what `stack up` does);
- ``lookup-index+sync-normal``: plus SQLite synchronous=NORMAL (WAL): durable across a FerretDB crash,
  not across an OS crash or power loss.
Writes bench/results/twin.json; the baseline of every ratio is ``update_upsert`` on ``ferretdb`` at the
same collection size (the path before this change).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devtools.benchmarking import write_result  # noqa: E402
from fleetpulse.hysteresis import Rule  # noqa: E402
from devtools.stack.mongodb import FerretDBService  # noqa: E402
from devtools.stack.process import free_port  # noqa: E402
from devtools.stack.settings import StackSettings  # noqa: E402
from inference.transformer.car_table import CarTable  # noqa: E402

CHUNK = 90  # the chunk before this change; FerretDB 1.24/SQLite deadlocks above ~100 upserts in flight per database
from inference.transformer.twin_store import BULK_CHUNK, as_set_fields  # noqa: E402  the chunk the transformer uses now


class PragmaFerretDB(FerretDBService):
    """A private FerretDB whose SQLite URL carries extra ``_pragma`` query parameters."""

    def __init__(self, settings: StackSettings, pragmas: list[str], lookup_index: bool):
        super().__init__(settings)
        self.pragmas = pragmas
        self.lookup_index = lookup_index

    def after_ready(self) -> None:
        if self.lookup_index:
            super().after_ready()

    def argv(self) -> list[str]:
        argv = super().argv()
        i = argv.index("-sqlite-url") + 1
        if self.pragmas:
            argv[i] += "?" + "&".join(f"_pragma={p}" for p in self.pragmas)
        return argv


def start_ferretdb(pragmas: list[str], lookup_index: bool) -> PragmaFerretDB:
    svc = PragmaFerretDB(StackSettings(state_dir=Path(tempfile.mkdtemp(prefix="bench-twin-")), mongodb_port=free_port()), pragmas, lookup_index)
    svc.install()
    svc.start()
    svc.wait_ready(60)
    return svc


class Twins:
    """Twin documents shaped exactly as the transformer writes them."""

    def __init__(self, n: int):
        self.table = CarTable(Rule(), n)
        rng = np.random.default_rng(1)
        self.table.lookup([f"electric-vehicle-{i:06d}".encode() for i in range(n)])
        self.table.rows[:n] = rng.normal(50, 10, (n, self.table.rows.shape[1]))
        self.table.score[:n] = rng.random(n)
        self.table.events[:n] = 3
        for c in range(n):
            self.table.offsets[c] = {str(c % 6): c}
        self.step = 0

    def snapshot(self, cars: list[int]):
        self.table.seen[cars] = self.step
        return self.table.snapshot(np.asarray(cars), np.ones(len(cars), bool), 0.5, "1")

    def fields(self, c: int) -> dict:
        return as_set_fields(self.doc(c))

    def doc(self, c: int) -> dict:
        return self.snapshot([c]).document(0)


def rate(value: float) -> float:
    """Rates below 100/s keep a decimal: the scan-bound baseline runs at ~1/s and is every ratio's denominator."""
    return round(value) if value >= 100 else round(value, 1)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def update_upsert(coll, twins: Twins, cars: list[int], chunk: int = CHUNK) -> None:
    from pymongo import UpdateOne

    ops = [UpdateOne({"_id": twins.table.ids[c]}, {"$set": twins.fields(c)}, upsert=True) for c in cars]
    for i in range(0, len(ops), chunk):
        coll.bulk_write(ops[i : i + chunk], ordered=False)


def replace_upsert(coll, twins: Twins, cars: list[int]) -> None:
    from pymongo import ReplaceOne

    ops = [ReplaceOne({"_id": twins.table.ids[c]}, twins.doc(c), upsert=True) for c in cars]
    for i in range(0, len(ops), CHUNK):
        coll.bulk_write(ops[i : i + CHUNK], ordered=False)


def concurrent(fn, coll, twins: Twins, cars: list[int], k: int) -> None:
    # The SQLite pool (100 per database) is shared by all commands and every statement of an update
    # command holds one until the command ends: k writers of 90 deadlock (measured), so chunk 90 // k.
    parts = [cars[i::k] for i in range(k)]
    threads = [threading.Thread(target=fn, args=(coll, twins, p, CHUNK // k)) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def insert_many(coll, twins: Twins, cars: list[int]) -> None:
    for i in range(0, len(cars), 1000):
        coll.insert_many([twins.doc(c) for c in cars[i : i + 1000]], ordered=False)


def budgeted(fn, coll, twins: Twins, cars: list[int], budget_s: float, piece: int) -> float:
    """Ops/s of ``fn`` over ``cars`` in pieces, stopping after the piece that crosses ``budget_s``."""
    done, t0 = 0, time.perf_counter()
    for i in range(0, len(cars), piece):
        fn(coll, twins, cars[i : i + piece])
        done += len(cars[i : i + piece])
        if time.perf_counter() - t0 > budget_s:
            break
    return done / (time.perf_counter() - t0)


def measure_config(name: str, sizes: list[int], n_ops: int, threads: list[int], budget_s: float) -> list[dict]:
    from pymongo import MongoClient

    pragmas, lookup_index = CONFIGS[name]
    # Without the lookup index one op costs two table scans: small pieces, so the budget can stop it.
    piece = CHUNK if lookup_index else 2
    svc = start_ferretdb(pragmas, lookup_index)
    rows: list[dict] = []
    try:
        client = MongoClient(svc.uri, maxPoolSize=16, socketTimeoutMS=120_000)  # a FerretDB deadlock fails, not hangs
        coll = client["fleetpulse"]["cars"]
        twins = Twins(max(sizes) + n_ops)
        rng = np.random.default_rng(2)
        filled = 0
        for size in sizes:
            new = list(range(filled, size))
            fill_s = timed(lambda: insert_many(coll, twins, new))
            filled = size
            row = {"config": name, "docs": size, "insert_many_per_s": round(len(new) / fill_s)}
            sample = rng.choice(size, n_ops, replace=False).tolist()
            twins.step += 1
            row["update_upsert_per_s"] = rate(budgeted(update_upsert, coll, twins, sample, budget_s, piece))
            twins.step += 1
            row[f"update_upsert_chunk{BULK_CHUNK}_per_s"] = rate(budgeted(
                lambda coll, twins, cars: update_upsert(coll, twins, cars, BULK_CHUNK), coll, twins, sample, budget_s, piece))
            twins.step += 1
            row["replace_upsert_per_s"] = rate(budgeted(replace_upsert, coll, twins, sample, budget_s, piece))
            for k in threads:
                twins.step += 1
                def parallel(coll, twins, cars, k=k):
                    concurrent(update_upsert, coll, twins, cars, k)
                row[f"update_upsert_x{k}_per_s"] = rate(budgeted(parallel, coll, twins, sample, budget_s, piece * k))
            ids = [twins.table.ids[c] for c in sample[:1000]]
            row["load_in_ids_per_s"] = rate(len(ids) / timed(lambda: list(coll.find({"_id": {"$in": ids}}, {"offsets": 1}))))
            few = ids[: 200 if lookup_index else 3]
            row["load_find_one_ids_per_s"] = rate(len(few) / timed(lambda: [coll.find_one({"_id": i}, {"offsets": 1}) for i in few]))
            row["load_all_docs_per_s"] = round(size / timed(lambda: list(coll.find({}, {"status": 1, "counters": 1, "hysteresis": 1, "offsets": 1}, batch_size=10000))))
            snap = twins.snapshot(sample)
            row["build_fields_per_s"] = round(len(sample) / timed(lambda: [snap.fields(i) for i in range(len(snap))]))
            print(row, flush=True)
            rows.append(row)
        client.close()
    finally:
        svc.process.stop()
        shutil.rmtree(svc.settings.state_dir, ignore_errors=True)
    return rows


CONFIGS = {  # name: (extra SQLite pragmas, stack's _id lookup index); FerretDB's defaults are WAL, synchronous=FULL
    "ferretdb": ([], False),
    "lookup-index": ([], True),
    "lookup-index+sync-normal": (["synchronous(normal)"], True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="Sizes 1k/10k/50k, fewer ops (~2 minutes) for a noisy shared machine.")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="Comma-separated subset of: " + ", ".join(CONFIGS))
    ap.add_argument("--note", default="", help="What else ran on the machine meanwhile (recorded in the JSON).")
    args = ap.parse_args()
    sizes = [1_000, 10_000, 50_000] if args.quick else [1_000, 10_000, 50_000, 100_000]
    n_ops = 900 if args.quick else 1800
    budget_s = 4.0 if args.quick else 10.0
    threads = [2]
    rows = []
    for name in args.configs.split(","):
        rows += measure_config(name, sizes, n_ops, threads, budget_s)
    base = {r["docs"]: r["update_upsert_per_s"] for r in rows if r["config"] == "ferretdb"}
    table = []
    for r in rows:
        baseline = base.get(r["docs"])
        for metric in ("update_upsert_per_s", f"update_upsert_chunk{BULK_CHUNK}_per_s", "replace_upsert_per_s", *(f"update_upsert_x{k}_per_s" for k in threads), "insert_many_per_s"):
            if r["config"] == "ferretdb" and metric == "update_upsert_per_s":
                continue
            table.append({"metric": f"twin {metric} @ {r['docs']:,} docs [{r['config']}]", "value": r[metric], "unit": "docs/s",
                          "baseline": baseline, "ratio": round(r[metric] / baseline, 1) if baseline else None, "target": None})
    path = write_result("twin", {"quick": args.quick, "conditions": {"sizes": sizes, "ops_per_measure": n_ops, "budget_s_per_measure": budget_s,
                                                                    "bulk_chunk": CHUNK, "baseline": "update_upsert on ferretdb",
                                                                    "server": "private FerretDB 1.24.2 (SQLite), pymongo",
                                                                    "shared_machine": True, "note": args.note},
                                 "rows": rows}, table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
