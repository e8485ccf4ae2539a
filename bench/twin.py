"""Digital-twin writes on FerretDB 1.24: SQLite vs PostgreSQL backend, at 1k, 10k and 100k twins.

Each backend gets private servers started by the stack's own code (temp state dir, free ports: a
FerretDB, and for ``postgresql`` the stack's PostgreSQL), so the shared stack is not stalled; both
with the stack's extra `_id` lookup index (see mongodb.py and postgres.py). One collection is filled
with twin-shaped documents (the transformer's own snapshot documents) by insert_many up to each size;
at each size every measure runs over up to N distinct existing twins or a time budget, whichever ends
first:

- ``upsert_chunk{c}``: bulk UpdateOne({_id}, {$set}, upsert) in chunks of c, one connection: the
  transformer's write (c = BULK_CHUNK), and larger chunks where the backend allows (below);
  each with the p99 latency of one bulk;
- ``upsert_2writers_chunk{c}``: two such writers at once, each with chunks of BULK_CHUNK (p99: both chunks);
- ``fenced_filter``: the same with the fence in the filter, ``{_id, "offsets.p": {$not: {$gt: o}}}``
  (what the transformer sends to MongoDB), chunks of BULK_CHUNK (SQLite: 2, see measures()), every
  fence passing;
- ``read_compare_upsert``: what the transformer does on FerretDB instead: find_one({_id}) of the
  stored offsets per car, then the bulk upsert, per chunk of BULK_CHUNK;
- ``find_one``: find_one({_id}, {offsets: 1}) per id;
- ``insert_many``: the fill itself, one insert command per 1,000 new twins.

Memory: peak RSS of FerretDB, and of PostgreSQL (postmaster and every backend) both the sum of RSS
(counts its shared buffers once per process) and of PSS (shared pages split between processes);
``memory_mb`` is FerretDB's RSS plus PostgreSQL's PSS. ``upsert_largest_chunk`` is the rate at the
largest chunk the backend allows.

Chunks: FerretDB 1.24 holds a pooled connection per matched update of an `update` command until the
command ends, plus one to write; a bulk of more than the pool allows hangs the server for good
(SQLite: 100 per database, measured: 99 passes, 101 hangs; PostgreSQL: the stack's pool of
postgres.FERRETDB_POOL = 200, measured: 199 passes, 200 hangs). So chunks of 90 on both, and 180 on
PostgreSQL only.

Writes bench/results/twin.json; every ratio is PostgreSQL / SQLite for the same measure at the same size.
``--tuning`` runs the stack's SQLite configuration against SQLite untuned instead (FerretDB's fsync per
commit and Go's GOGC 100: StackSettings.mongodb_sqlite_synchronous, mongodb_gogc) and writes
bench/results/twin-tuning.json, ratios tuned / untuned.
"""

from __future__ import annotations

import argparse
import os
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
from devtools.stack.mongodb import FerretDBService  # noqa: E402
from devtools.stack.postgres import FERRETDB_POOL, PostgresService  # noqa: E402
from devtools.stack.process import free_port  # noqa: E402
from devtools.stack.settings import FERRETDB_VERSION, StackSettings  # noqa: E402
from fleetpulse.hysteresis import Rule  # noqa: E402
from fleetpulse.twin import TWIN_COLLECTION, TWIN_DATABASE  # noqa: E402
from inference.transformer.car_table import CarTable  # noqa: E402
from inference.transformer.checkpoint import fence_filter  # noqa: E402
from inference.transformer.twin_store import BULK_CHUNK, as_set_fields  # noqa: E402  the transformer's chunk

CHUNKS = {"sqlite": [BULK_CHUNK, 90], "postgresql": [BULK_CHUNK, 90, 180]}
BACKENDS = list(CHUNKS)
# A configuration: (backend, StackSettings overrides). "sqlite" and "postgresql" are the stack's defaults;
# "sqlite-untuned" is SQLite as FerretDB and Go leave it (fsync per commit, GOGC 100), the baseline of
# --tuning.
CONFIGS = {"sqlite": ("sqlite", {}), "postgresql": ("postgresql", {}),
           "sqlite-untuned": ("sqlite", {"mongodb_sqlite_synchronous": "FULL", "mongodb_gogc": 100})}


class Servers:
    """A private FerretDB on ``backend`` (and its PostgreSQL), started and stopped as `stack up` / `down` would."""

    def __init__(self, backend: str, **overrides):
        self.settings = StackSettings(state_dir=Path(tempfile.mkdtemp(prefix=f"bench-twin-{backend}-")), mongodb_backend=backend,
                                      mongodb_port=free_port(), postgresql_port=free_port(), **overrides)
        self.ferretdb = FerretDBService(self.settings)
        self.postgres = PostgresService(self.settings) if backend == "postgresql" else None
        self.services = [s for s in (self.postgres, self.ferretdb) if s is not None]

    def __enter__(self) -> "Servers":
        for svc in self.services:
            svc.install()
            svc.start()
            svc.wait_ready(120)
        return self

    def __exit__(self, *exc) -> None:
        for svc in reversed(self.services):
            svc.process.stop()
        shutil.rmtree(self.settings.state_dir, ignore_errors=True)

    def cpu_seconds(self) -> float:
        """CPU time of FerretDB, and of PostgreSQL with every backend it has started (ended ones included)."""
        total = _cpu_seconds(self.ferretdb.process.pid(), children=False)
        if self.postgres is not None:
            total += _cpu_seconds(self.postgres.process.pid(), children=True)
        return total

    def settle(self, idle_cpu: float = 0.05, timeout_s: float = 120.0) -> None:
        """Wait until the servers use under ``idle_cpu`` of a core: a fill leaves PostgreSQL's autovacuum
        and both backends' checkpoints running, which would fall on the first measure only."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            before = self.cpu_seconds()
            time.sleep(1.0)
            if self.cpu_seconds() - before < idle_cpu:
                return

    def memory(self) -> dict[str, float]:
        out = {"ferretdb_rss_mb": _tree_memory(self.ferretdb.process.pid(), children=False)[0]}
        if self.postgres is not None:
            out["postgresql_rss_mb"], out["postgresql_pss_mb"] = _tree_memory(self.postgres.process.pid(), children=True)
        return out


def _cpu_seconds(pid: int | None, children: bool) -> float:
    if pid is None:
        return 0.0
    ticks = _ticks(pid, waited=children)
    if children:
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            try:
                ticks += _ticks(int(child), waited=False)
            except FileNotFoundError:
                pass  # ended meanwhile: in the parent's waited-for time from the next reading on
    return ticks / os.sysconf("SC_CLK_TCK")


def _ticks(pid: int, waited: bool) -> int:
    """utime + stime of ``pid``, plus cutime + cstime (the children it has waited for) if ``waited``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11 : 15 if waited else 13])


def _tree_memory(pid: int | None, children: bool) -> tuple[float, float]:
    """RSS and PSS (MB) of ``pid``, with its direct children (PostgreSQL's backends) if ``children``."""
    if pid is None:
        return 0.0, 0.0
    pids = [pid]
    if children:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    rss = pss = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("Rss", "Pss"):
                    kb = int(value.split()[0])
                    rss, pss = (rss + kb, pss) if key == "Rss" else (rss, pss + kb)
        except (FileNotFoundError, ProcessLookupError):
            pass  # a backend that ended meanwhile
    return round(rss / 1024, 1), round(pss / 1024, 1)


class PeakMemory:
    """The largest of each of ``Servers.memory()`` from ``start()`` to ``stop()`` (sampled every 0.5 s)."""

    def __init__(self, servers: Servers):
        self.servers = servers
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for key, value in self.servers.memory().items():
            self.peak[key] = max(self.peak.get(key, 0.0), value)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def start(self) -> "PeakMemory":
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.peak


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

    def doc(self, c: int) -> dict:
        return self.snapshot([c]).document(0)

    def advance(self, cars: list[int]) -> None:
        """A newer event for each of ``cars``: its offset grows, so a fence on the stored offset passes."""
        self.step += 1
        for c in cars:
            self.table.offsets[c] = {p: o + 1 for p, o in self.table.offsets[c].items()}


def rate(value: float) -> float:
    """Rates below 100/s keep a decimal (SQLite's fenced filter scans the table: a few per second at 100k)."""
    return round(value) if value >= 100 else round(value, 1)


def upsert(coll, twins: Twins, cars: list[int]) -> None:
    from pymongo import UpdateOne

    coll.bulk_write([UpdateOne({"_id": twins.table.ids[c]}, {"$set": as_set_fields(twins.doc(c))}, upsert=True) for c in cars],
                    ordered=False)


def fenced_filter(coll, twins: Twins, cars: list[int]) -> None:
    from pymongo import UpdateOne

    ops = []
    for c in cars:
        doc = twins.doc(c)
        (partition, offset), = ((int(p), o) for p, o in doc["offsets"].items())
        ops.append(UpdateOne(fence_filter(doc["_id"], partition, offset), {"$set": as_set_fields(doc)}, upsert=True))
    coll.bulk_write(ops, ordered=False)


def read_compare_upsert(coll, twins: Twins, cars: list[int]) -> None:
    for c in cars:
        coll.find_one({"_id": twins.table.ids[c]}, {"offsets": 1})
    upsert(coll, twins, cars)


def two_writers(coll, twins: Twins, cars: list[int]) -> None:
    """``upsert`` of half the cars each from two threads at once (two connections)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(upsert, coll, twins, cars[i::2]) for i in range(2)]:
            done.result()


def find_one(coll, twins: Twins, cars: list[int]) -> None:
    for c in cars:
        coll.find_one({"_id": twins.table.ids[c]}, {"offsets": 1})


def budgeted(fn, servers: Servers, coll, twins: Twins, cars: list[int], chunk: int, budget_s: float) -> dict[str, float]:
    """Ops/s of ``fn`` over ``cars`` in chunks, stopping after the chunk that crosses ``budget_s``; p99 ms per
    chunk; and the servers' CPU ms per op (less moved by other load on a shared machine than the rate)."""
    twins.advance(cars)
    fn(coll, twins, cars[:chunk])  # warm-up, untimed: the pool opens the connections a chunk this size needs
    seconds: list[float] = []
    done, cpu0, t0 = 0, servers.cpu_seconds(), time.perf_counter()
    for i in range(0, len(cars), chunk):
        t = time.perf_counter()
        fn(coll, twins, cars[i : i + chunk])
        seconds.append(time.perf_counter() - t)
        done += len(cars[i : i + chunk])
        if time.perf_counter() - t0 > budget_s:
            break
    wall, cpu = time.perf_counter() - t0, servers.cpu_seconds() - cpu0
    return {"per_s": rate(done / wall), "p99_ms": round(float(np.percentile(seconds, 99)) * 1000, 1),
            "cpu_ms_per_op": round(cpu * 1000 / done, 3)}


def measures(backend: str) -> list[tuple[str, object, int]]:
    """(name, operation, chunk) in the order they run."""
    # SQLite does not push the fenced filter down: every op reads the whole table (seconds each at 100k),
    # so chunks of 2 there, or one chunk would outlast the budget and the client's timeout.
    fenced_chunk = 2 if backend == "sqlite" else BULK_CHUNK
    return ([(f"upsert_chunk{c}", upsert, c) for c in CHUNKS[backend]]
            + [(f"upsert_2writers_chunk{BULK_CHUNK}", two_writers, 2 * BULK_CHUNK), ("fenced_filter", fenced_filter, fenced_chunk),
               ("read_compare_upsert", read_compare_upsert, BULK_CHUNK), ("find_one", find_one, BULK_CHUNK)])


def measure(backends: list[str], sizes: list[int], n_ops: int, budget_s: float) -> list[dict]:
    """Every measure on every backend at every size; the backends take turns measure by measure, so
    other load on the machine falls on both alike."""
    from contextlib import ExitStack

    from pymongo import MongoClient

    twins = Twins(max(sizes))
    rng = np.random.default_rng(2)
    rows: list[dict] = []
    with ExitStack() as stack:
        servers = {b: stack.enter_context(Servers(CONFIGS[b][0], **CONFIGS[b][1])) for b in backends}
        # A bound on every reply: a FerretDB that hangs (see the module docstring) fails the run, not stalls it.
        clients = {b: MongoClient(s.ferretdb.uri, maxPoolSize=4, socketTimeoutMS=120_000) for b, s in servers.items()}
        for client in clients.values():
            stack.callback(client.close)
        colls = {b: c[TWIN_DATABASE][TWIN_COLLECTION] for b, c in clients.items()}
        filled = 0
        for size in sizes:
            row = {b: {"backend": b, "docs": size} for b in backends}
            memory = {b: PeakMemory(s).start() for b, s in servers.items()}
            for b in backends:
                t0 = time.perf_counter()
                for i in range(filled, size, 1000):
                    colls[b].insert_many([twins.doc(c) for c in range(i, min(i + 1000, size))], ordered=False)
                row[b]["insert_many_per_s"] = rate((size - filled) / (time.perf_counter() - t0))
            filled = size
            for b in backends:
                servers[b].settle()
            # Distinct twins, passed over again below n_ops twins: enough bulks for a p99 at 1k too.
            sample = np.resize(rng.choice(size, min(n_ops, size), replace=False), n_ops).tolist()
            for k in range(max(len(measures(CONFIGS[b][0])) for b in backends)):
                for b in backends:
                    if k < len(measures(CONFIGS[b][0])):
                        name, fn, chunk = measures(CONFIGS[b][0])[k]
                        for key, value in budgeted(fn, servers[b], colls[b], twins, sample, chunk, budget_s).items():
                            row[b][f"{name}_{key}"] = value
            for b in backends:
                r = row[b]
                r["upsert_largest_chunk_per_s"] = r[f"upsert_chunk{CHUNKS[CONFIGS[b][0]][-1]}_per_s"]
                r.update(memory[b].stop())
                r["memory_mb"] = round(r["ferretdb_rss_mb"] + r.get("postgresql_pss_mb", 0.0), 1)
                print(r, flush=True)
                rows.append(r)
    return rows


def summary(rows: list[dict], measured: str = "postgresql", baseline: str = "sqlite") -> list[dict]:
    """Table rows: ``measured``'s figure, ``baseline``'s beside it, ratio measured / baseline, for every shared measure."""
    base_rows = {r["docs"]: r for r in rows if r["backend"] == baseline}
    table = []
    for r in (r for r in rows if r["backend"] == measured):
        base = base_rows.get(r["docs"], {})
        for metric, value in r.items():
            if metric in ("backend", "docs") or metric not in base:
                continue
            unit = {"_per_op": "CPU ms/op", "_ms": "ms", "_mb": "MB"}.get(next((e for e in ("_per_op", "_ms", "_mb") if metric.endswith(e)), ""), "docs/s")
            table.append({"metric": f"twin {metric} @ {r['docs']:,} docs [{measured} vs {baseline}]", "value": value, "unit": unit,
                          "baseline": base[metric], "ratio": round(value / base[metric], 2) if base[metric] else None, "target": None})
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="Sizes 1k/10k, fewer ops, shorter budgets (~3 minutes).")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="Comma-separated subset of: " + ", ".join(BACKENDS))
    ap.add_argument("--tuning", action="store_true",
                    help="The stack's SQLite settings against SQLite untuned (synchronous FULL, GOGC 100) instead of the two "
                         "backends; writes bench/results/twin-tuning.json.")
    ap.add_argument("--note", default="", help="What else ran on the machine meanwhile (recorded in the JSON).")
    args = ap.parse_args()
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    n_ops = 2000 if args.quick else 6000
    budget_s = 4.0 if args.quick else 12.0
    configs = ["sqlite", "sqlite-untuned"] if args.tuning else args.backends.split(",")
    rows = measure(configs, sizes, n_ops, budget_s)
    measured, baseline = ("sqlite", "sqlite-untuned") if args.tuning else ("postgresql", "sqlite")
    stack = StackSettings()
    conditions = {"sizes": sizes, "ops_per_measure": n_ops, "budget_s_per_measure": budget_s, "bulk_chunk": BULK_CHUNK,
                  "chunks": CHUNKS, "ferretdb_postgresql_pool": FERRETDB_POOL, "ratio": f"{measured} / {baseline}",
                  "configs": {c: {"backend": CONFIGS[c][0], **CONFIGS[c][1]} for c in configs},
                  "server": f"private FerretDB {FERRETDB_VERSION} per configuration (SQLite: WAL, synchronous="
                            f"{stack.mongodb_sqlite_synchronous} unless said, GOGC {stack.mongodb_gogc} unless said; PostgreSQL "
                            f"{PostgresService(stack).bin_dir.parent.name}: fsync on, synchronous_commit on), pymongo",
                  "loadavg_1m_at_end": round(os.getloadavg()[0], 2), "shared_machine": True, "note": args.note}
    path = write_result("twin-tuning" if args.tuning else "twin", {"quick": args.quick, "conditions": conditions, "rows": rows},
                        summary(rows, measured, baseline))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
