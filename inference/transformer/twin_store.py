"""The digital twin in MongoDB (``fleetpulse.cars``, ``_id`` = car id; fields: fleetpulse.twin.TwinDocument):
bulk load, insert and upsert.

Writes set absolute values computed by the transformer, never increments, so writing the same state
twice leaves the same document. Replays are made idempotent one step earlier: the transformer loads a
car's twin before applying its first event and skips events at or below the stored offset of that
partition, so a replayed event is never counted twice.

Fenced (checkpoint.newer_than_stored): on MongoDB the rule is in the update filter, atomic with the
write. FerretDB 1.24 (SQLite) pushes a filter down only when it is exactly ``{_id: <string>}`` and
otherwise reads the whole table for each update (measured: ~20 fenced upserts/s against ~950 by _id
at 20,000 twins, ~1/s when the fence refuses); its updates are read-modify-write without a
transaction on both of its backends (handler: query, then ``UPDATE ... WHERE _id``), so no filter is
atomic there, and the store reads the stored offsets by _id and compares (one find per car).

A read-then-compare is only as good as the reading is fresh, and only as good as the writer still
owns the car when its write arrives. Two guards close those two gaps:

- The lease: the comparison holds for ``fence_lease_s`` only, checked immediately before the write is
  sent, so a member paused between its read and its write (SIGSTOP, a long stall) reads again: a new
  owner exists only after the old one missed heartbeats for a whole session timeout, which Kafka never
  lets be shorter than ``group.min.session.timeout.ms`` (6 s by default), so a read younger than the
  2 s lease cannot predate a write by another owner. (Seen without it: 12 of 30,000 events missing
  from twins after a 1 -> 3 -> 1 rebalance with a member SIGSTOPped.)
- The pause hold (checkpoint.PauseFence, in TwinWriter): a member paused past its session timeout
  that wakes up before it has noticed that its partitions moved reads the stored offsets afresh, and
  its older state could land just after the new owner's newer one (seen on the secured stack: 40-45 of
  30,000 events missing, 2 of 2 runs). After any pause longer than ``twin_pause_s`` its writes wait
  ``twin_pause_hold_s``, by which time librdkafka has found the session expired, and then for the
  loop's next consume(), where its ``on_lost`` drops the write (``TwinWriter.drop``): nothing of it
  is sent, and its commit is not made. The watchdog that sees pauses needs nothing from the group
  coordinator: a check that asked it from the writer thread (a commit of the last committed offsets)
  stalled the group, because such a commit is not answered while the loop thread runs a rebalance
  callback.

What is left on FerretDB (MongoDB's atomic filter closes it): a pause that lands after the last
check and before pymongo has sent the bulk (encoding and writing 20 documents to the socket; that
write then arrives after the pause), and a member cut off from Kafka but not from MongoDB, which
stops writing only when librdkafka's own session timer expires and ``on_lost`` runs, about when the
coordinator's expires; the new owner's first twin write comes a rebalance, a restore and a
checkpoint after that.

Bad documents do not block the others: the first failure of a save is retried whole (counted, like
any outage); from the second attempt on, a bulk that fails while the server answers a ping is split
until the document it refuses is alone, which is tried ``refuse_after`` times and then handed back
with the reason (the transformer dead-letters it). FerretDB refuses NaN by closing the connection,
so the error type says nothing; the ping tells an outage (retried, whole) from a refusal. Timeouts
are never refusals: a wedged server is an outage.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

from fleetpulse.errors import BrokerUnavailable
from fleetpulse.twin import TwinDocument
from inference.transformer import metrics
from inference.transformer.car_table import TwinSnapshot
from inference.transformer.checkpoint import PauseFence, fence_filter, newer_than_stored
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
# How long a stored offset read on FerretDB is trusted (module docstring): well under the shortest
# session timeout a broker accepts, and far above a chunk's 20 finds by _id (~20 ms).
FENCE_LEASE_S = 2.0
PAUSE_TICK_S = 0.1  # how often the watchdog looks at the clock (PauseFence): well under any pause that matters
_DUPLICATE_KEY = 11000
_LOAD_FIELDS = {"status": 1, "counters": 1, "hysteresis": 1, "offsets": 1}  # what CarTable.restore reads


@dataclass
class Saved:
    """What a fenced save did: cars written, cars whose stored twin was newer, documents refused (with why),
    and whether it stopped because the member lost the partitions first (``stale``: ``dropped`` cars
    were not sent, and its commit must not be made)."""

    written: int = 0
    fenced: list[str] = field(default_factory=list)
    refused: list[tuple[TwinDocument, str]] = field(default_factory=list)
    stale: bool = False
    dropped: int = 0

    def add(self, other: "Saved") -> None:
        self.written += other.written
        self.fenced += other.fenced
        self.refused += other.refused


class _Stale(Exception):
    """Raised just before a send that ``may_send`` refused: the member no longer owns these cars."""


def _always() -> bool:
    return True


class TwinStore:
    def __init__(self, client, database: str, collection: str, timeout_s: float | None = None, refuse_after: int = 3,
                 fence_lease_s: float = FENCE_LEASE_S):
        self.client = client
        self.collection = client[database][collection]
        # A wedged server (see BULK_CHUNK) never answers; a bounded wait turns that into an error the
        # transformer retries and reports instead of a silent hang.
        self.timeout_s = timeout_s
        self.refuse_after = refuse_after
        self.fence_lease_s = fence_lease_s
        self._fence_in_filter: bool | None = None  # MongoDB: yes; FerretDB: read and compare (module docstring)

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

    def save(self, snapshot: TwinSnapshot, isolate: bool = True, may_send: Callable[[], bool] = _always) -> Saved:
        """Insert the twins of cars that have none, update the others, both fenced; raises for an outage,
        and (without ``isolate``) for any failure.

        ``may_send()`` is asked immediately before each command that writes (it may wait); once it says
        no, nothing more is sent and the result is ``stale``.
        """
        new: list[tuple[TwinDocument, tuple[int, int]]] = []
        existing: list[tuple[TwinDocument, tuple[int, int]]] = []
        for i in range(len(snapshot)):
            (existing if snapshot.has_twin[i] else new).append((snapshot.document(i), snapshot.fence(i)))
        saved = Saved()

        def insert(items: list) -> Saved:
            return self._insert_fenced(items, may_send)

        def update(items: list) -> Saved:
            return self._update_fenced(items, may_send)

        chunks = [(new[i : i + INSERT_CHUNK], insert) for i in range(0, len(new), INSERT_CHUNK)]
        chunks += [(existing[i : i + BULK_CHUNK], update) for i in range(0, len(existing), BULK_CHUNK)]
        try:
            for items, write in chunks:
                saved.add(self._isolating(items, write) if isolate else write(items))
        except _Stale:
            saved.stale = True
            saved.dropped = len(snapshot) - saved.written - len(saved.fenced) - len(saved.refused)
        return saved

    def _insert_fenced(self, items: list, may_send: Callable[[], bool]) -> Saved:
        import pymongo
        from pymongo.errors import BulkWriteError

        if not may_send():
            raise _Stale
        try:
            with pymongo.timeout(self.timeout_s):
                self.collection.insert_many([doc for doc, _ in items], ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != _DUPLICATE_KEY for e in errors):
                raise
            # Another writer inserted these first (or a lost reply hid our own insert): fenced updates.
            dup = {e["index"] for e in errors}
            saved = self._update_fenced([items[i] for i in sorted(dup)], may_send)
            saved.written += len(items) - len(dup)
            return saved
        return Saved(written=len(items))

    def _update_fenced(self, items: list, may_send: Callable[[], bool]) -> Saved:
        import pymongo
        from pymongo import UpdateOne
        from pymongo.errors import BulkWriteError

        if self._fence_in_filter is None:
            self._fence_in_filter = "ferretdbVersion" not in self.client.admin.command("buildInfo")
        if not self._fence_in_filter:
            saved = Saved()
            for i in range(0, len(items), BULK_CHUNK):
                saved.add(self._update_read_and_compare(items[i : i + BULK_CHUNK], may_send))
            return saved
        ops = [UpdateOne(fence_filter(doc["_id"], *f), {"$set": as_set_fields(doc)}, upsert=True) for doc, f in items]
        if not may_send():
            raise _Stale
        try:
            with pymongo.timeout(self.timeout_s):
                self.collection.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != _DUPLICATE_KEY for e in errors):
                raise
            # The fence filter did not match an existing twin, so the upsert tried to insert it again.
            fenced = [items[e["index"]][0]["_id"] for e in errors]
            return Saved(len(items) - len(fenced), fenced)
        return Saved(len(items))

    def _update_read_and_compare(self, items: list, may_send: Callable[[], bool]) -> Saved:
        """The fence on FerretDB: stored offsets read by _id, compared, and written while the reads are
        younger than the lease (module docstring); a chunk whose reads aged past it (a pause, or
        ``may_send`` waiting one out) is read again."""
        import pymongo
        from pymongo import UpdateOne

        stored: dict[str, dict[str, int]] = {}
        read_at: dict[str, float] = {}
        while True:
            lease_from = time.monotonic() - self.fence_lease_s
            for car in [doc["_id"] for doc, _ in items if read_at.get(doc["_id"], -1e18) < lease_from]:
                read_at[car] = time.monotonic()  # before the find: its answer is at least this old
                stored[car] = self._stored_offsets(car)
            keep = [(doc, f) for doc, f in items if newer_than_stored(stored[doc["_id"]], *f)]
            fenced = [doc["_id"] for doc, f in items if not newer_than_stored(stored[doc["_id"]], *f)]
            ops = [UpdateOne({"_id": doc["_id"]}, {"$set": as_set_fields(doc)}, upsert=True) for doc, _ in keep]
            if ops and not may_send():
                raise _Stale
            if min(read_at.values()) >= time.monotonic() - self.fence_lease_s:
                break
            metrics.TWIN_FENCE_REREADS.inc()
        if ops:
            with pymongo.timeout(self.timeout_s):
                self.collection.bulk_write(ops, ordered=False)
        return Saved(len(ops), fenced)

    def _stored_offsets(self, car: str) -> dict[str, int]:
        import pymongo

        with pymongo.timeout(self.timeout_s):
            doc = self.collection.find_one({"_id": car}, {"offsets": 1})
        return {str(k): int(v) for k, v in (doc or {}).get("offsets", {}).items()}

    def _isolating(self, items: list, write: Callable[[list], Saved]) -> Saved:
        """``write(items)``; if the server answers but refuses it, halves until the refused documents are alone."""
        from pymongo.errors import PyMongoError

        try:
            return write(items)
        except PyMongoError as exc:
            if getattr(exc, "timeout", False) or not self._answers():
                raise
            if len(items) > 1:
                half = len(items) // 2
                saved = self._isolating(items[:half], write)
                saved.add(self._isolating(items[half:], write))
                return saved
            return self._one(items, write, exc)

    def _one(self, item: list, write: Callable[[list], Saved], exc: Exception) -> Saved:
        from pymongo.errors import PyMongoError

        for attempt in range(1, self.refuse_after):
            time.sleep(0.2 * 2**attempt)
            try:
                return write(item)
            except PyMongoError as again:
                if getattr(again, "timeout", False) or not self._answers():
                    raise
                exc = again
        doc = item[0][0]
        return Saved(refused=[(doc, f"MongoDB refused the twin of {doc['_id']} {self.refuse_after} times: "
                                    f"{type(exc).__name__}: {str(exc)[:300]}")])

    def _answers(self) -> bool:
        import pymongo
        from pymongo.errors import PyMongoError

        try:
            with pymongo.timeout(5.0):
                self.client.admin.command("ping")
            return True
        except PyMongoError:
            return False

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
    epoch: int  # TwinWriter.epoch when it was snapshotted

    @property
    def saved(self) -> Saved:
        return self.future.result()


class TwinWriter:
    """Writes twin snapshots on a background thread, one at a time, while scoring goes on.

    A daemon thread per snapshot, not an executor: the interpreter joins executor threads at exit,
    so a stop that gives up on a write (MongoDB down) would wait for it anyway.

    Before each command it sends, a write waits out the hold after a pause of the process (``pauses``,
    while ``watch_pauses`` runs) and stops if the partitions were revoked or lost since its snapshot
    (``drop``): checkpoint's "Paused members".

    The hold ends on an event, not only on the clock: a loss reaches ``drop`` only through the loop's
    next consume() (librdkafka serves rebalance callbacks there), so after a pause a write also waits
    for a consume() that began once the hold was over to have returned (``polled``): a loop held up
    elsewhere meanwhile keeps the write waiting. (Added after the group 1 -> 3 -> 1 fault row had 36
    of 30,000 events missing from twins once in 4 full runs, the woken member's commits failing
    "Unknown member" with no write dropped; that this was the cause is not established: the same log
    shape has been seen since in runs that passed.) A checkpoint that blocks the loop until its write
    is done (``blocking``: a revoke's, the last one) is not made to wait for a consume it prevents; a
    revoke's callback is Kafka's word that the partitions are still this member's until it returns.
    """

    def __init__(self, store: TwinStore, retries: Retries, pauses: PauseFence | None = None):
        self.store = store
        self.retries = retries
        self.pauses = pauses
        self.epoch = 0  # of the assignment: a write belongs to the one it was snapshotted in
        self.blocking = False  # the loop waits for the write in flight (checkpoint(wait=True))
        self._polled_from = -math.inf  # when the newest consume() that has returned began
        self._watching = False
        self._writing: Write | None = None

    @property
    def busy(self) -> bool:
        return self._writing is not None

    def submit(self, snapshot: TwinSnapshot, to_commit: dict[int, int]) -> None:
        future: Future = Future()
        self._writing = Write(future, snapshot, to_commit, self.epoch)
        threading.Thread(target=self._run, args=(future, snapshot, self.epoch), name="twin-writer", daemon=True).start()

    def drop(self) -> None:
        """The partitions were revoked or lost: what the write in flight has not sent yet is never sent."""
        self.epoch += 1

    def polled(self, began: float) -> None:
        """The loop's consume(), begun at ``began`` (monotonic), has returned: a revocation or loss
        librdkafka had queued by then has been served."""
        self._polled_from = began

    def watch_pauses(self) -> Callable[[], None]:
        """Look at the clock every PAUSE_TICK_S on a daemon thread, so a pause is seen; returns what ends it."""
        done = threading.Event()
        pauses = self.pauses
        if pauses is None:
            return done.set

        def watch() -> None:
            counted = pauses.pauses
            while not done.wait(PAUSE_TICK_S):
                pauses.observe(time.monotonic())
                if pauses.pauses > counted:
                    metrics.PAUSES.inc(pauses.pauses - counted)
                    counted = pauses.pauses
            self._watching = False

        pauses.seen = time.monotonic()  # the time before the watch started was not a pause
        self._watching = True
        threading.Thread(target=watch, name="pause-watch", daemon=True).start()
        return done.set

    def _may_send(self, epoch: int) -> bool:
        """Waits out a pause's hold; False once the assignment this write belongs to has ended."""
        while self._watching and self.epoch == epoch:
            wait = self.pauses.observe(time.monotonic())
            if wait <= 0 and (self.blocking or self._polled_from >= self.pauses.resumed_at + self.pauses.hold_s):
                break
            time.sleep(min(wait, PAUSE_TICK_S) if wait > 0 else PAUSE_TICK_S)  # in slices: a loss meanwhile ends it
        return self.epoch == epoch

    def finish(self, wait: bool, timeout_s: float | None = None) -> Write | None:
        """The write in flight once it has succeeded (waited for with ``wait``, at most ``timeout_s``), else None."""
        writing = self._writing
        if writing is None or not (wait or writing.future.done()):
            return None
        try:
            writing.future.result(timeout_s)
        except TimeoutError:
            return None
        self._writing = None
        return writing

    def _run(self, future: Future, snapshot: TwinSnapshot, epoch: int) -> None:
        try:
            future.set_result(self._write(snapshot, epoch))
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which raises it
            future.set_exception(exc)

    def _write(self, snapshot: TwinSnapshot, epoch: int) -> Saved:
        t0 = time.monotonic()
        attempts = itertools.count()
        saved = self.retries.call("mongodb", lambda: self.store.save(snapshot, isolate=next(attempts) > 0,
                                                                     may_send=lambda: self._may_send(epoch)))
        seconds = time.monotonic() - t0
        metrics.TWIN_WRITES.labels("insert").inc(snapshot.inserts)
        metrics.TWIN_WRITES.labels("update").inc(len(snapshot) - snapshot.inserts)
        metrics.TWIN_WRITES.labels("fenced").inc(len(saved.fenced))
        metrics.TWIN_WRITES.labels("refused").inc(len(saved.refused))
        metrics.TWIN_WRITES.labels("dropped").inc(saved.dropped)
        metrics.TWIN_WRITE_SECONDS.observe(seconds)
        if len(snapshot):
            metrics.TWIN_WRITE_RATE.set(len(snapshot) / max(seconds, 1e-6))
        return saved


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
