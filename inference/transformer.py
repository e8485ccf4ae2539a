"""The transformer loop: Kafka `sensor-data` -> model server (gRPC V2) -> hysteresis -> alerts + twin.

No-loss ordering: a poll batch is decoded (bad records produced to the DLQ), cut into micro-batches
that go to the model server with several requests in flight, and the results are applied strictly in
submission order (the hysteresis is sequential per car). Every ``checkpoint_interval_s`` the loop
waits until Kafka has acknowledged every alert and DLQ record, hands a snapshot of the due twins to
the writer thread, and commits offsets only once that snapshot is written. A crash anywhere replays
from the last commit; the twin's stored per-partition offsets make the replay skip what it has.

Deferred twins. Writing every changed car every second does not fit FerretDB (100,000 cars sending
every 10 s would be 10,000 upserts/s), so a car is written at the next checkpoint only when its
status changed, when it has no twin document yet (inserted, not upserted), or when its last write is
``twin_interval_s`` old; the others wait, at most ``twin_batch_max`` per bulk, longest-waiting first.
A deferred car's newest events then exist nowhere durable except Kafka, so the commit must not pass
them. Each car remembers ``pending_from``, the offset (on ``pending_part``) of its first applied
event that no written snapshot contains; the commit of partition p is at most the smallest
``pending_from`` of the cars left out of the snapshot on p (and at most what was applied). So:

- every event at or above a partition's committed offset is still in Kafka, and every event below it
  is in a durable twin (its car was in a written snapshot that included it, or it was skipped as
  already there) or produced nothing (DLQ'd, and acknowledged);
- a replay from the commit starts each car from its stored twin: status, counters, hysteresis window
  and clean streak, offsets. Events at or below the stored offset are skipped, later ones re-applied
  in order, so the state it reaches is the state the crashed run had (same model version => same
  scores). Status changes are never deferred, so an alert whose twin write was lost is produced again
  on replay (at least once), never lost;
- commits lag the stream by up to ``twin_interval_s`` (plus write time), which bounds the replay.

The end of a run and a partition revoke write every car with applied events before the last commit.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import grpc
import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from fleetpulse.codec import decode_batch
from fleetpulse.contract import INT_FIELDS, N_FEATURES, SENSOR_FIELDS
from fleetpulse.topics import DLQ_REASON_HEADER, DLQ_SOURCE_HEADER, DLQ_TIME_HEADER

from fleetpulse.alerts import alert_record, encode_alert
from fleetpulse.hysteresis import STATUS_NAMES, Hysteresis, Rule
from inference.v2_client import V2Client
from inference.twin_store import as_set_fields
from inference.windows import CarWindows

CONSUMED = Counter("fleetpulse_transformer_consumed", "Records consumed from sensor-data")
SCORED = Counter("fleetpulse_transformer_scored", "Events scored by the model server")
SKIPPED = Counter("fleetpulse_transformer_replay_skipped", "Replayed events already applied to the twin")
DLQ = Counter("fleetpulse_transformer_dlq", "Undecodable records sent to the dead-letter topic")
ALERTS = Counter("fleetpulse_transformer_alerts", "Alerts (status changes) produced", ["status"])
RETRIES = Counter("fleetpulse_transformer_retries", "Retries after a dependency failed", ["dependency"])
BATCH_ROWS = Histogram("fleetpulse_transformer_infer_batch_rows", "Rows per infer request",
                       buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000))
E2E_LATENCY = Histogram("fleetpulse_transformer_event_to_alert_seconds", "Kafka timestamp of the event -> alert acknowledged",
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
LAG = Gauge("fleetpulse_transformer_consumer_lag", "High watermark minus committed position", ["partition"])
TWIN_WRITES = Counter("fleetpulse_transformer_twin_writes", "Twin documents written (insert: car had none; update: upsert)", ["kind"])
TWIN_WRITE_RATE = Gauge("fleetpulse_transformer_twin_write_rate", "Twin documents per second of the last bulk write")
TWINS_PENDING = Gauge("fleetpulse_transformer_twins_pending", "Cars whose applied events are in no durable twin yet (incl. the bulk in flight)")
TWIN_WRITE_SECONDS = Histogram("fleetpulse_transformer_twin_write_seconds", "Seconds per twin bulk write (retries included)",
                               buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120))
_INT_COLS = [i for i, name in enumerate(SENSOR_FIELDS) if name in INT_FIELDS]


def model_window(client) -> int:
    """Readings per sample the served model takes: 1 for [N, 18], W for a windowed model's [N, W, 18]
    (from the model server's V2 metadata, so the transformer follows whatever model it is pointed at)."""
    shape = client.metadata()["inputs"][0]["shape"]
    return int(shape[1]) if len(shape) == 3 else 1


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class CarTable:
    """Car id <-> dense index, and the per-car state the twin is written from."""

    def __init__(self, rule: Rule, size: int = 1024):
        self.ids: list[str] = []
        self.index: dict[bytes, int] = {}
        self.hysteresis = Hysteresis(rule, size)
        self._alloc(size)

    def _alloc(self, size: int) -> None:
        self.part = np.full(size, -1, np.int32)
        self.off = np.full(size, -1, np.int64)
        self.events = np.zeros(size, np.int64)
        self.over = np.zeros(size, np.int64)
        self.alerts = np.zeros(size, np.int64)
        self.score = np.zeros(size, np.float32)
        self.seen = np.zeros(size, np.int64)
        self.rows = np.zeros((size, N_FEATURES), np.float32)
        self.dirty = np.zeros(size, bool)
        self.offsets: list[dict[str, int]] = [{} for _ in range(size)]
        # Twin bookkeeping (see the module docstring): where the first applied event that is in no
        # durable twin yet sits, whether the status changed since the last write, whether a twin
        # document exists, and when the car was last handed to the writer.
        self.pending_part = np.full(size, -1, np.int32)
        self.pending_from = np.full(size, -1, np.int64)
        self.urgent = np.zeros(size, bool)
        self.has_twin = np.zeros(size, bool)
        self.written_at = np.zeros(size, np.float64)

    _ARRAYS = ("part", "off", "events", "over", "alerts", "score", "seen", "rows", "dirty",
               "pending_part", "pending_from", "urgent", "has_twin", "written_at")
    _MINUS_ONE = ("part", "off", "pending_part", "pending_from")

    def _grow(self, size: int) -> None:
        old = len(self.part)
        if size <= old:
            return
        new = max(size, 2 * old)
        for name in self._ARRAYS:
            arr = getattr(self, name)
            fill = np.full((new - old, *arr.shape[1:]), -1 if name in self._MINUS_ONE else 0, arr.dtype)
            setattr(self, name, np.concatenate([arr, fill]))
        self.offsets += [{} for _ in range(new - old)]
        self.hysteresis.ensure(new)

    def lookup(self, keys: list[bytes]) -> tuple[np.ndarray, list[int]]:
        """Indices for keys; new cars get an index and are returned for loading from the twin."""
        index = self.index
        new: list[int] = []
        out = np.empty(len(keys), np.int64)
        for i, key in enumerate(keys):
            c = index.get(key)
            if c is None:
                c = index[key] = len(self.ids)
                self.ids.append((key or b"").decode("utf-8", "replace"))
                new.append(c)
            out[i] = c
        self._grow(len(self.ids))
        return out, new

    def restore(self, car: int, doc: dict) -> None:
        counters = doc.get("counters", {})
        self.events[car] = counters.get("events", 0)
        self.over[car] = counters.get("over_threshold", 0)
        self.alerts[car] = counters.get("alerts", 0)
        self.offsets[car] = {str(k): int(v) for k, v in doc.get("offsets", {}).items()}
        hyst = doc.get("hysteresis", {})
        status = STATUS_NAMES.index(doc.get("status", "ok")) if doc.get("status") in STATUS_NAMES else 0
        self.hysteresis.set(car, status, int(hyst.get("window_bits", 0)), int(hyst.get("clean_streak", 0)))

    def snapshot(self, cars: np.ndarray, threshold: float, model_version: str) -> "TwinSnapshot":
        """A copy of these cars' twin state that the writer thread can turn into documents while scoring goes on."""
        h = self.hysteresis
        return TwinSnapshot(
            ids=[self.ids[c] for c in cars.tolist()], status=h.status[cars], bits=h.bits[cars], clean=h.clean[cars],
            score=self.score[cars], seen=self.seen[cars], rows=self.rows[cars], events=self.events[cars], over=self.over[cars],
            alerts=self.alerts[cars], offsets=[dict(self.offsets[c]) for c in cars.tolist()], has_twin=self.has_twin[cars],
            threshold=float(threshold), model_version=model_version)


@dataclass
class TwinSnapshot:
    ids: list[str]
    status: np.ndarray
    bits: np.ndarray
    clean: np.ndarray
    score: np.ndarray
    seen: np.ndarray
    rows: np.ndarray
    events: np.ndarray
    over: np.ndarray
    alerts: np.ndarray
    offsets: list[dict[str, int]]
    has_twin: np.ndarray
    threshold: float
    model_version: str

    def __len__(self) -> int:
        return len(self.ids)

    def _body(self, i: int) -> dict:
        row = self.rows[i].tolist()
        readings = dict(zip(SENSOR_FIELDS, row))
        for j in _INT_COLS:
            readings[SENSOR_FIELDS[j]] = int(round(row[j]))
        return {
            "status": STATUS_NAMES[int(self.status[i])],
            "last_score": float(self.score[i]),
            "threshold": self.threshold,
            "model_version": self.model_version,
            "last_seen_ms": int(self.seen[i]),
            "last_readings": readings,
            "counters": {"events": int(self.events[i]), "over_threshold": int(self.over[i]), "alerts": int(self.alerts[i])},
            "hysteresis": {"window_bits": int(self.bits[i]), "clean_streak": int(self.clean[i])},
        }

    def document(self, i: int) -> dict:
        return {"_id": self.ids[i], **self._body(i), "offsets": self.offsets[i]}

    def write(self, twins) -> None:
        """Insert the twins of cars that have none, upsert the others."""
        new = np.flatnonzero(~self.has_twin).tolist()
        old = np.flatnonzero(self.has_twin).tolist()
        if new:
            twins.insert([self.document(i) for i in new])
        if old:
            twins.write([(self.ids[i], as_set_fields(self.document(i))) for i in old])


@dataclass
class Chunk:
    """One infer request and the events it covers; ``done`` carries a whole poll batch's offsets."""

    future: object | None
    request: object | None
    cars: np.ndarray
    rows: np.ndarray
    partitions: np.ndarray
    offsets: np.ndarray
    timestamps: np.ndarray
    done: dict[int, int] = field(default_factory=dict)


@dataclass
class Summary:
    consumed: int = 0
    scored: int = 0
    skipped_replayed: int = 0
    dlq: int = 0
    alerts: int = 0
    alerts_by_status: dict = field(default_factory=lambda: {s: 0 for s in STATUS_NAMES})
    twin_writes: int = 0
    twin_inserts: int = 0  # of twin_writes, cars that had no twin yet
    checkpoints: int = 0
    retries: dict = field(default_factory=dict)
    seconds: float = 0.0
    active_seconds: float = 0.0  # first record received -> last poll batch applied

    def as_dict(self, cars: int) -> dict:
        d = dict(self.__dict__)
        d["cars"] = cars
        d["events_per_s"] = round(self.consumed / self.active_seconds, 1) if self.active_seconds else 0.0
        return d


class Transformer:
    def __init__(self, settings, consumer, producer, client: V2Client, twins, progress: Callable[[str], None] = lambda _: None):
        self.s = settings
        self.consumer = consumer
        self.producer = producer
        self.client = client
        self.twins = twins
        self.progress = progress
        rule = Rule(settings.hysteresis_n, settings.hysteresis_k_warning, settings.hysteresis_k_failing, settings.hysteresis_m)
        self.rule = rule
        self.table = CarTable(rule)
        self.pending: deque[Chunk] = deque()
        self.applied: dict[int, int] = {}  # partition -> last offset applied (not yet committed)
        self.submitted: dict[int, int] = {}  # partition -> last offset handed to the pipeline
        self.committed: dict[int, int] = {}
        self.threshold = float("nan")
        self.model_version = ""
        window = model_window(client)
        self.windows = CarWindows(window) if window > 1 else None  # a windowed (LSTM) model's per-car look-back
        self.summary = Summary()
        self._failed_deliveries: list[tuple[str, bytes, bytes, list]] = []
        self._last_checkpoint = time.monotonic()
        self._stop = False
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="twin-writer")
        self._writing = None  # (future, offsets it covers, cars) of the snapshot being written
        self._known: dict[str, dict] | None = None  # twins not yet restored, when the collection was loaded whole
        self._load_per_batch = settings.twin_preload_max == 0

    # ---- main loop -------------------------------------------------------------------------

    def run(self, until_idle_s: float | None = None, max_events: int | None = None) -> Summary:
        t0 = time.monotonic()
        first_record: float | None = None
        last_record = time.monotonic()
        last_progress = t0
        try:
            while not self._stop:
                # consume() waits until poll_batch records or the timeout: a short timeout bounds the latency
                # a half-full batch adds at moderate rates (0.5 s cost p50 434 ms at 10k ev/s).
                msgs = self.consumer.consume(num_messages=self.s.poll_batch, timeout=self.s.poll_timeout_s)
                if msgs:
                    first_record = first_record or time.monotonic()
                    self._submit_poll(msgs)
                self._drain(all_=not msgs)
                now = time.monotonic()
                if msgs:
                    # After the work, not before: a long retry (dependency down) is not idleness.
                    last_record = now
                self._finish_write(wait=False)
                if now - self._last_checkpoint >= self.s.checkpoint_interval_s and self._writing is None:
                    self._drain(all_=True)
                    self.checkpoint(wait=False)
                if now - last_progress >= 5:
                    last_progress = now
                    self.summary.seconds = now - t0
                    self.progress(self._progress_line())
                if msgs:
                    self.summary.active_seconds = now - first_record
                if until_idle_s is not None and not msgs and not self.pending and now - last_record >= until_idle_s:
                    if self._caught_up():
                        break
                    last_record = time.monotonic()  # Kafka unreachable or records still to fetch: not idle
                if max_events is not None and self.summary.consumed >= max_events:
                    break
        finally:
            self._drain(all_=True)
            self.checkpoint()
            self.summary.seconds = time.monotonic() - t0
        return self.summary

    def _caught_up(self) -> bool:
        """True when every assigned partition's position is at its high watermark (lag 0)."""
        from confluent_kafka import KafkaException

        try:
            assigned = self.consumer.assignment()
            for tp in self.consumer.position(assigned):
                _, high = self.consumer.get_watermark_offsets(tp, timeout=2.0, cached=False)
                if tp.offset < 0 and high > self.committed.get(tp.partition, -1) + 1:
                    return False
                if tp.offset >= 0 and tp.offset < high:
                    return False
        except KafkaException:
            return False
        return True

    def stop(self) -> None:
        self._stop = True

    def _progress_line(self) -> str:
        s = self.summary
        return (f"consumed {s.consumed:,} scored {s.scored:,} alerts {s.alerts:,} dlq {s.dlq:,} cars {len(self.table.ids):,} "
                f"({s.consumed / max(s.seconds, 1e-9):,.0f} ev/s)")

    # ---- poll -> micro-batches ---------------------------------------------------------------

    def _submit_poll(self, msgs) -> int:
        good = [m for m in msgs if m.error() is None]
        if not good:
            return 0
        good = self._drop_redelivered(good)
        if not good:
            return 0
        n = len(good)
        self.summary.consumed += n
        CONSUMED.inc(n)
        values = [m.value() or b"" for m in good]
        partitions = np.fromiter((m.partition() for m in good), np.int32, n)
        offsets = np.fromiter((m.offset() for m in good), np.int64, n)
        timestamps = np.fromiter((m.timestamp()[1] for m in good), np.int64, n)
        done: dict[int, int] = {}
        for p in np.unique(partitions).tolist():
            done[p] = int(offsets[partitions == p].max())
        decoded = decode_batch(values)
        if decoded.errors:
            self._dead_letter(good, decoded.errors)
        ok = np.flatnonzero(decoded.valid)
        cars, new = self.table.lookup([good[i].key() for i in ok.tolist()])
        rows = decoded.values[ok]
        partitions, offsets, timestamps = partitions[ok], offsets[ok], timestamps[ok]
        if new:
            self._restore(new, cars, partitions)
        fresh = self._not_yet_applied(cars, partitions, offsets)
        if not fresh.all():
            skipped = int((~fresh).sum())
            self.summary.skipped_replayed += skipped
            SKIPPED.inc(skipped)
            cars, rows, partitions, offsets, timestamps = cars[fresh], rows[fresh], partitions[fresh], offsets[fresh], timestamps[fresh]
        size = self.s.model_batch
        starts = list(range(0, len(cars), size)) or [0]
        samples = self.windows.samples(cars, rows) if self.windows is not None else rows
        for j, start in enumerate(starts):
            sl = slice(start, start + size)
            chunk_rows = rows[sl]
            request = self.client.request(samples[sl]) if len(chunk_rows) else None
            future = self.client.infer_future(request) if request is not None else None
            if request is not None:
                BATCH_ROWS.observe(len(chunk_rows))
            self.pending.append(Chunk(future, request, cars[sl], chunk_rows, partitions[sl], offsets[sl], timestamps[sl],
                                      done if j == len(starts) - 1 else {}))
        return n

    def _drop_redelivered(self, msgs: list) -> list:
        # After a broker failover the client may fetch a range again; never apply an offset twice.
        submitted = self.submitted
        out = [m for m in msgs if m.offset() > submitted.get(m.partition(), -1)]
        for m in out:
            submitted[m.partition()] = m.offset()
        return out

    def _not_yet_applied(self, cars: np.ndarray, partitions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        t = self.table
        return ~((t.part[cars] == partitions) & (offsets <= t.off[cars]))

    def _restore(self, new: list[int], cars: np.ndarray, partitions: np.ndarray) -> None:
        """Load first-seen cars' twins, so counting continues and replayed offsets are recognised."""
        t = self.table
        ids = [t.ids[c] for c in new]
        docs = self._load(ids)
        first_partition = dict(zip(cars[::-1].tolist(), partitions[::-1].tolist()))
        now = time.monotonic()
        for c, car_id in zip(new, ids):
            doc = docs.get(car_id)
            if doc is not None:
                t.restore(c, doc)
                t.has_twin[c] = True
                t.written_at[c] = now  # its twin is current: the next periodic write is due one interval from now
                p = first_partition.get(c)
                if p is not None:
                    t.part[c], t.off[c] = p, t.offsets[c].get(str(p), -1)

    def _load(self, ids: list[str]) -> dict[str, dict]:
        """Existing twins of first-seen cars: from one load of the whole collection while it is small
        enough (FerretDB scans the table for every `$in` query), else queried per poll batch."""
        if self._known is None and not self._load_per_batch:
            if self._retry("mongodb", self.twins.count) <= self.s.twin_preload_max:
                self._known = self._retry("mongodb", self.twins.load_all)
                self.progress(f"loaded {len(self._known):,} existing twins")
            else:
                self._load_per_batch = True
        if self._load_per_batch:
            return self._retry("mongodb", lambda: self.twins.load(ids))
        known = self._known
        return {i: known.pop(i) for i in ids if i in known}

    def _dead_letter(self, msgs, errors: dict[int, str]) -> None:
        ts = str(now_ms()).encode()
        for i, reason in errors.items():
            m = msgs[i]
            headers = [(DLQ_REASON_HEADER, reason.encode()), (DLQ_SOURCE_HEADER, f"{m.topic()}/{m.partition()}/{m.offset()}".encode()),
                       (DLQ_TIME_HEADER, ts)]
            self._produce(self.s.dlq_topic, m.key(), m.value() or b"", headers)
        self.summary.dlq += len(errors)
        DLQ.inc(len(errors))

    # ---- results, in submission order --------------------------------------------------------

    def _drain(self, all_: bool = False) -> None:
        """Apply finished chunks from the head; wait on the head while too many are in flight (or all_)."""
        while self.pending:
            head = self.pending[0]
            ready = head.future is None or head.future.done()
            if not ready and not all_ and len(self.pending) < self.s.max_in_flight:
                return
            self.pending.popleft()
            self._apply(head)

    def _result(self, chunk: Chunk):
        delay = 0.1
        future = chunk.future
        while True:
            try:
                return V2Client.parse(future.result())
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                self._count_retry("model-server")
                self.progress(f"model server {self.client.target}: {exc.code().name}; retrying in {delay:.1f}s")
                time.sleep(delay)
                delay = min(delay * 2, self.s.retry_max_s)
                future = self.client.infer_future(chunk.request)

    def _apply(self, chunk: Chunk) -> None:
        if chunk.future is not None:
            result = self._result(chunk)
            self.threshold, self.model_version = result.threshold, result.model_version
            self._apply_scores(chunk, result.score, result.anomaly)
        for p, o in chunk.done.items():
            if o > self.applied.get(p, -1):
                self.applied[p] = o

    def _apply_scores(self, chunk: Chunk, score: np.ndarray, over: np.ndarray) -> None:
        t = self.table
        cars = chunk.cars
        n = len(cars)
        self.summary.scored += n
        SCORED.inc(n)
        changes = t.hysteresis.apply(cars, over)
        size = len(t.part)
        t.events += np.bincount(cars, minlength=size)
        t.over += np.bincount(cars, weights=over, minlength=size).astype(np.int64)
        # The newest reading per car: first occurrence in the reversed chunk.
        uniq, first = np.unique(cars[::-1], return_index=True)
        last = n - 1 - first
        t.score[uniq] = score[last]
        t.seen[uniq] = chunk.timestamps[last]
        t.rows[uniq] = chunk.rows[last]
        t.part[uniq] = chunk.partitions[last]
        t.off[uniq] = chunk.offsets[last]
        t.dirty[uniq] = True
        self._hold(uniq, chunk, last)
        for c, p, o in zip(uniq.tolist(), chunk.partitions[last].tolist(), chunk.offsets[last].tolist()):
            t.offsets[c][str(p)] = o
        if changes:
            t.urgent[cars[[i for i, _, _ in changes]]] = True
            self._alert(chunk, score, changes)

    def _hold(self, uniq: np.ndarray, chunk: Chunk, last: np.ndarray) -> None:
        """Remember each car's first event that no durable twin has yet: commits stay below it."""
        t = self.table
        _, first = np.unique(chunk.cars, return_index=True)  # same sorted cars as uniq
        fresh = t.pending_from[uniq] < 0
        t.pending_part[uniq[fresh]] = chunk.partitions[first[fresh]]
        t.pending_from[uniq[fresh]] = chunk.offsets[first[fresh]]
        # A car whose events moved partition (topic resized) is written at once: its hold is tracked on one partition.
        moved = t.pending_part[uniq] != chunk.partitions[last]
        if moved.any():
            t.urgent[uniq[moved]] = True

    def _alert(self, chunk: Chunk, score: np.ndarray, changes) -> None:
        decided = now_ms()
        for i, old, new in changes:
            car = int(chunk.cars[i])
            record = alert_record(self.table.ids[car], old, new, score[i], self.threshold, self.model_version,
                                  chunk.timestamps[i], decided, chunk.partitions[i], chunk.offsets[i])
            self.table.alerts[car] += 1
            self._produce(self.s.alerts_topic, record["car_id"].encode(), encode_alert(record), None, event_ts_ms=int(chunk.timestamps[i]))
            self.summary.alerts += 1
            self.summary.alerts_by_status[STATUS_NAMES[new]] += 1
            ALERTS.labels(STATUS_NAMES[new]).inc()

    # ---- producing with acknowledgement -----------------------------------------------------

    def _produce(self, topic: str, key, value: bytes, headers, event_ts_ms: int | None = None) -> None:
        def delivered(err, msg, _topic=topic, _key=key, _value=value, _headers=headers, _ts=event_ts_ms):
            if err is not None:
                self._failed_deliveries.append((_topic, _key, _value, _headers))
            elif _ts is not None:
                E2E_LATENCY.observe(max(0.0, (now_ms() - _ts) / 1000))

        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
                return
            except BufferError:
                self.producer.poll(0.1)

    def _flush_producer(self) -> None:
        delay = 0.2
        while True:
            remaining = self.producer.flush(5.0)
            if remaining == 0 and not self._failed_deliveries:
                return
            self._count_retry("kafka")
            self.progress(f"kafka: {remaining} records not acknowledged yet, {len(self._failed_deliveries)} to resend")
            failed, self._failed_deliveries = self._failed_deliveries, []
            for topic, key, value, headers in failed:
                self._produce(topic, key, value, headers)
            time.sleep(delay)
            delay = min(delay * 2, self.s.retry_max_s)

    # ---- checkpoint: alerts acked -> twin written -> offsets committed ------------------------

    def checkpoint(self, wait: bool = True) -> None:
        """Alerts acked -> twin snapshot written -> offsets committed, no further than durable twins cover.

        The snapshot holds the cars that are due (status changed, no twin yet, or not written for
        ``twin_interval_s``), at most ``twin_batch_max`` of them; it is written on the writer thread and
        its offsets are committed once that write has succeeded. With ``wait`` every car with applied
        events is in the snapshot, and the call returns only when all of it is written and committed.
        """
        self._last_checkpoint = time.monotonic()
        self._finish_write(wait)
        if self._writing is not None:
            return  # the previous snapshot is still being written; the next checkpoint picks this up
        t = self.table
        if not self.applied and not t.dirty.any():
            return
        self._flush_producer()
        cars = self._due(all_=wait)
        snapshot = t.snapshot(cars, self.threshold, self.model_version)
        t.dirty[cars] = t.urgent[cars] = False
        t.pending_part[cars] = t.pending_from[cars] = -1
        t.has_twin[cars] = True
        t.written_at[cars] = self._last_checkpoint
        to_commit = self._commit_positions()
        TWINS_PENDING.set(int(t.dirty.sum()) + len(cars))
        if len(cars) or to_commit:
            self._writing = (self._writer.submit(self._write, snapshot), to_commit, snapshot)
        if wait:
            self._finish_write(wait=True)

    def _due(self, all_: bool) -> np.ndarray:
        """Cars to write now: urgent ones always, then those without a twin, then the longest unwritten."""
        t = self.table
        n = len(t.ids)
        dirty = t.dirty[:n]
        if all_:
            return np.flatnonzero(dirty)
        stale = (time.monotonic() - t.written_at[:n]) >= self.s.twin_interval_s
        cars = np.flatnonzero(dirty & (t.urgent[:n] | ~t.has_twin[:n] | stale))
        if len(cars) > self.s.twin_batch_max:
            urgent = cars[t.urgent[cars]]
            rest = cars[~t.urgent[cars]]
            rest = rest[np.argsort(t.written_at[rest], kind="stable")][: max(0, self.s.twin_batch_max - len(urgent))]
            cars = np.concatenate([urgent, rest])
        return cars

    def _commit_positions(self) -> dict[int, int]:
        """Per partition, the last offset whose effect is durable once the snapshot is: what was applied,
        but below the first held event of any car left out of the snapshot."""
        t = self.table
        held = t.dirty & (t.pending_from >= 0)
        parts, offs = t.pending_part[held], t.pending_from[held]
        out = {}
        for p, o in self.applied.items():
            below = offs[parts == p]
            last = min(o, int(below.min()) - 1) if len(below) else o
            if last > self.committed.get(p, -1):
                out[p] = last
        return out

    def _write(self, snapshot: TwinSnapshot) -> None:
        t0 = time.monotonic()
        self._retry("mongodb", lambda: snapshot.write(self.twins))
        seconds = time.monotonic() - t0
        inserts = int((~snapshot.has_twin).sum())
        TWIN_WRITES.labels("insert").inc(inserts)
        TWIN_WRITES.labels("update").inc(len(snapshot) - inserts)
        TWIN_WRITE_SECONDS.observe(seconds)
        if len(snapshot):
            TWIN_WRITE_RATE.set(len(snapshot) / max(seconds, 1e-6))

    def _finish_write(self, wait: bool) -> None:
        if self._writing is None or not (wait or self._writing[0].done()):
            return
        future, to_commit, snapshot = self._writing
        future.result()
        self._writing = None
        self.summary.twin_writes += len(snapshot)
        self.summary.twin_inserts += int((~snapshot.has_twin).sum())
        TWINS_PENDING.set(int(self.table.dirty.sum()))
        if to_commit:
            from confluent_kafka import TopicPartition

            offsets = [TopicPartition(self.s.topic, p, o + 1) for p, o in to_commit.items()]
            if self._retry("kafka", lambda: self._commit(offsets)):
                self.committed.update(to_commit)
                self._update_lag(to_commit)
        self.summary.checkpoints += 1

    def _commit(self, offsets) -> bool:
        """Commit; False when the group no longer counts this member (its partitions may be another's).

        Retrying such a commit can never succeed (seen: the main thread blocked in a long final twin
        flush past max.poll.interval.ms). Dropping it is safe: the twins it covers are durable, so the
        member that replays those offsets skips them.
        """
        from confluent_kafka import KafkaError, KafkaException

        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
            return True
        except KafkaException as exc:
            if exc.args[0].code() not in (KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION):
                raise
            self._count_retry("kafka-commit-dropped")
            self.progress(f"kafka: commit dropped ({exc.args[0].str()}); its twins are written, a replay skips them")
            return False

    def _update_lag(self, committed: dict[int, int]) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        for p, o in committed.items():
            try:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(self.s.topic, p), timeout=0.5, cached=False)
            except KafkaException:
                continue
            LAG.labels(str(p)).set(max(0, high - (o + 1)))

    def _retry(self, dependency: str, fn):
        from confluent_kafka import KafkaException
        from pymongo.errors import PyMongoError

        delay = 0.2
        while True:
            try:
                return fn()
            except (PyMongoError, KafkaException) as exc:
                self._count_retry(dependency)
                self.progress(f"{dependency}: {type(exc).__name__}: {str(exc)[:160]}; retrying in {delay:.1f}s")
                time.sleep(delay)
                delay = min(delay * 2, self.s.retry_max_s)

    def _count_retry(self, dependency: str) -> None:
        RETRIES.labels(dependency).inc()
        self.summary.retries[dependency] = self.summary.retries.get(dependency, 0) + 1

    # ---- rebalance ---------------------------------------------------------------------------

    def on_revoke(self, consumer, partitions) -> None:
        """Finish and commit what was applied, then forget car state: another member owns those cars now."""
        self._drain(all_=True)
        self.checkpoint()
        self._forget()

    def on_lost(self, consumer, partitions) -> None:
        self.pending.clear()
        self._forget()

    def _forget(self) -> None:
        self.table = CarTable(self.rule)
        self.applied.clear()
        self.committed.clear()
        self.submitted.clear()
        self._known = None  # another member may have written twins meanwhile: load again
