"""The digital twin in MongoDB (``fleetpulse.cars``, ``_id`` = car id; fields: fleetpulse.twin.TwinDocument):
bulk load, insert and upsert.

Writes set absolute values computed by the transformer, never increments, so writing the same state
twice leaves the same document. Replays are made idempotent one step earlier: the transformer loads a
car's twin before applying its first event and skips events at or below the stored offset of that
partition, so a replayed event is never counted twice. (A filter guard on the stored offset inside
the upsert was measured on FerretDB 1.24/SQLite at ~9 upserts/s: it scans instead of using _id.)
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from fleetpulse.errors import BrokerUnavailable
from fleetpulse.twin import TwinDocument
from inference.transformer import metrics
from inference.transformer.car_table import TwinSnapshot
from inference.transformer.retrying import Retries


# FerretDB 1.24 (SQLite) keeps one pooled SQLite connection per statement of an update command
# until the command ends; its pool holds 100 per database, shared by every client, so update
# commands in flight together with more than ~100 upserts in all deadlock the server (reproduced:
# one bulk of 99 passes, 101 hangs; two writers of 90 on one database hang, as did this transformer's
# writer next to the test suite's). Chunks of 20 leave room for four writers and some readers; with
# the stack's _id lookup index a chunk of 20 costs little against 90 (bench/twin.py). Real MongoDB has
# no such limit and no cost from small chunks worth measuring here.
BULK_CHUNK = 20


# One insert command per this many new twins; FerretDB runs one transaction per command.
INSERT_CHUNK = 1000
_DUPLICATE_KEY = 11000
_LOAD_FIELDS = {"status": 1, "counters": 1, "hysteresis": 1, "offsets": 1}  # what CarTable.restore reads


class TwinStore:
    def __init__(self, client, database: str, collection: str, timeout_s: float | None = None):
        self.collection = client[database][collection]
        # A wedged server (see BULK_CHUNK) never answers; a bounded wait turns that into an error the
        # transformer retries and reports instead of a silent hang.
        self.timeout_s = timeout_s

    def count(self) -> int:
        return self.collection.estimated_document_count()

    def load_all(self) -> dict[str, dict]:
        """Every twin (the fields a restore needs), in one pass.

        FerretDB 1.24 does not push ``$in`` down, so a ``load`` of 1,000 ids reads the whole table
        anyway; with a collection that fits in memory one pass replaces one such scan per poll batch.
        """
        return {doc["_id"]: doc for doc in self.collection.find({}, _LOAD_FIELDS, batch_size=10000)}

    def load(self, car_ids: list[str]) -> dict[str, dict]:
        """Existing twins for these cars (missing cars are absent from the result)."""
        out: dict[str, dict] = {}
        for i in range(0, len(car_ids), 1000):
            chunk = car_ids[i : i + 1000]
            for doc in self.collection.find({"_id": {"$in": chunk}}, _LOAD_FIELDS):
                out[doc["_id"]] = doc
        return out

    def save(self, new: list[TwinDocument], existing: list[TwinDocument]) -> None:
        """Insert the twins of cars that have none, upsert the others."""
        if new:
            self.insert(new)
        if existing:
            self.write((doc["_id"], as_set_fields(doc)) for doc in existing)

    def write(self, updates: Iterable[tuple[str, dict]]) -> int:
        """Upsert ``$set`` documents in one unordered bulk; returns the number of cars written."""
        from pymongo import UpdateOne

        import pymongo

        ops = [UpdateOne({"_id": car}, {"$set": fields}, upsert=True) for car, fields in updates]
        for i in range(0, len(ops), BULK_CHUNK):
            with pymongo.timeout(self.timeout_s):
                self.collection.bulk_write(ops[i : i + BULK_CHUNK], ordered=False)
        return len(ops)

    def insert(self, docs: list[dict]) -> int:
        """Insert twins of cars that have none (~3x an upsert on FerretDB); returns the number written.

        A car whose twin exists after all (another writer, or this insert retried after a lost reply)
        is upserted with the same fields instead, so the result is the same document either way.
        """
        import pymongo
        from pymongo.errors import BulkWriteError

        existing = []
        for i in range(0, len(docs), INSERT_CHUNK):
            chunk = docs[i : i + INSERT_CHUNK]
            try:
                with pymongo.timeout(self.timeout_s):
                    self.collection.insert_many(chunk, ordered=False)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != _DUPLICATE_KEY for e in errors):
                    raise
                existing += [chunk[e["index"]] for e in errors]
        if existing:
            self.write((doc["_id"], as_set_fields(doc)) for doc in existing)
        return len(docs)


class TwinLoader:
    """Existing twins of first-seen cars: from one load of the whole collection while it is small
    enough (FerretDB scans the table for every `$in` query), else queried per poll batch."""

    def __init__(self, store: TwinStore, preload_max: int, retries: Retries, progress: Callable[[str], None] = lambda _: None):
        self.store = store
        self.preload_max = preload_max
        self.retries = retries
        self.progress = progress
        self._preloaded: dict[str, dict] | None = None  # of the whole collection, the twins not handed out yet
        self._per_batch = preload_max == 0

    def load(self, car_ids: list[str]) -> dict[str, dict]:
        if self._preloaded is None and not self._per_batch:
            if self.retries.call("mongodb", self.store.count) <= self.preload_max:
                self._preloaded = self.retries.call("mongodb", self.store.load_all)
                self.progress(f"loaded {len(self._preloaded):,} existing twins")
            else:
                self._per_batch = True
        if self._per_batch:
            return self.retries.call("mongodb", lambda: self.store.load(car_ids))
        preloaded = self._preloaded
        return {i: preloaded.pop(i) for i in car_ids if i in preloaded}

    def forget(self) -> None:
        """Load again next time: another member may have written twins meanwhile."""
        self._preloaded = None


@dataclass
class Write:
    """A snapshot being written, and the positions to commit once it is."""

    future: Future
    snapshot: TwinSnapshot
    to_commit: dict[int, int]


class TwinWriter:
    """Writes twin snapshots on one background thread, one at a time, while scoring goes on."""

    def __init__(self, store: TwinStore, retries: Retries):
        self.store = store
        self.retries = retries
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="twin-writer")
        self._writing: Write | None = None

    @property
    def busy(self) -> bool:
        return self._writing is not None

    def submit(self, snapshot: TwinSnapshot, to_commit: dict[int, int]) -> None:
        self._writing = Write(self._thread.submit(self._write, snapshot), snapshot, to_commit)

    def finish(self, wait: bool) -> Write | None:
        """The write in flight once it has succeeded (waited for with ``wait``), else None."""
        writing = self._writing
        if writing is None or not (wait or writing.future.done()):
            return None
        writing.future.result()
        self._writing = None
        return writing

    def _write(self, snapshot: TwinSnapshot) -> None:
        t0 = time.monotonic()
        self.retries.call("mongodb", lambda: self.store.save(*snapshot.documents()))
        seconds = time.monotonic() - t0
        metrics.TWIN_WRITES.labels("insert").inc(snapshot.inserts)
        metrics.TWIN_WRITES.labels("update").inc(len(snapshot) - snapshot.inserts)
        metrics.TWIN_WRITE_SECONDS.observe(seconds)
        if len(snapshot):
            metrics.TWIN_WRITE_RATE.set(len(snapshot) / max(seconds, 1e-6))


def as_set_fields(doc: dict) -> dict:
    """A whole twin document as ``$set`` fields: offsets per partition, so other partitions' stay."""
    fields = {k: v for k, v in doc.items() if k not in ("_id", "offsets")}
    for p, o in doc.get("offsets", {}).items():
        fields[f"offsets.{p}"] = o
    return fields


def ping(client, uri: str) -> None:
    from pymongo.errors import PyMongoError

    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        raise BrokerUnavailable(f"MongoDB at {uri} is unreachable ({type(exc).__name__}); is the stack up? (fleetpulse stack up)") from None
