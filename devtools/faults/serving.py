"""The serving rows of the fault matrix (#13): Kafka -> `fleetpulse score` -> `fleetpulse serve` -> alerts + twins.

Each ``*_row`` function runs one fault against real servers and returns its row
``{fault, load, sent, acknowledged, in_kafka, in_twins, duplicates, lost, recovery_s}`` plus what the
row checked (``alerts``, ``alerts_expected``, ``alerts_missing``, ``alerts_unexpected``, ``dlq`` and
the fault's own figures). Counts are exact:

- every event carries its car's sequence number (Kafka header ``seq``): ``acknowledged`` are the
  ones Kafka acknowledged to the producer, ``in_kafka`` the records read back; a sequence number
  twice in Kafka is a duplicate, an acknowledged one missing is lost;
- every plausible event in Kafka must be counted exactly once in its car's twin (``counters.events``:
  more is a duplicate, fewer is lost), every implausible one must be in the dead-letter topic;
- alerts deduplicated by (car, source partition, source offset) must be exactly the status changes
  that the fixture model's flags and the kernel's hysteresis give for the events in Kafka.

``recovery_s``: from the repair (restart, server back, last scale step) until the group's committed
offsets reach what the topic held at that moment, i.e. until everything produced before the repair
is in durable twins. Loads are parameters: the tests run small ones, bench/faults.py the issue's.
The fixture model, the model server process and private servers come from the test harness
(tests/serving/harness.py, tests/support/stack.py), as bench/score.py's do. The harness and every
transformer member log in as the operator (admin), secured stack or not: the row's topics and group
are its own, on which no service principal has rights.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from devtools.stack import access
from devtools.stack.mongodb import FerretDBService, ensure_id_lookup_indexes
from devtools.stack.settings import StackSettings
from fleetpulse.alerts import decode_alert
from fleetpulse.clients import kafka_config
from fleetpulse.codec import decode_batch, encode_batch
from fleetpulse.contract import INT_FIELDS, SENSOR_FIELDS
from fleetpulse.hysteresis import STATUS_NAMES, status_timeline
from fleetpulse.readings import implausible
from fleetpulse.retry import Backoff, retry
from fleetpulse.settings import KafkaConnection
from tests.serving.harness import (
    FLEETPULSE,
    MEAN,
    STD,
    THRESHOLD,
    ModelServer,
    build_broken_model,
    build_saved_model,
    build_windowed_model,
    publish_saved,
)
from tests.support.stack import start_private

ROW_KEYS = ("fault", "load", "sent", "acknowledged", "in_kafka", "in_twins", "duplicates", "lost", "recovery_s")
PARTITIONS = 6
_FLOAT_COLUMNS = np.array([i for i, name in enumerate(SENSOR_FIELDS) if name not in INT_FIELDS])
SPELL, PERIOD = 12, 40  # each car is failing for SPELL of every PERIOD readings (staggered), so alerts keep coming


@dataclass(frozen=True)
class Servers:
    """The Kafka, FerretDB and fake GCS a row runs against.

    ``kafka``: the stack's (``access.kafka()``) or a private server's ``connection``; ``mongodb``: the
    settings of the stack whose FerretDB holds the twins, the shared one's or a private server's.
    """

    kafka: KafkaConnection
    mongodb: StackSettings
    gcs_endpoint: str

    @property
    def mongodb_uri(self) -> str:
        """The harness's own (admin's) URI: credentials included when secured, never log it."""
        return access.mongodb_uri(self.mongodb)

    @property
    def mongodb_data(self) -> Path:
        """FerretDB's data dir, for its _id lookup index."""
        return FerretDBService(self.mongodb).dir / "data"


@dataclass(frozen=True)
class Load:
    cars: int
    rate: float  # events per second, all cars together
    seconds: float
    bad_share: float = 0.0  # of the events, readings that are NaN, infinite or out of range

    def describe(self) -> str:
        bad = f", {self.bad_share:.0%} NaN/inf/out-of-range" if self.bad_share else ""
        return f"{self.rate:,.0f} ev/s, {self.cars:,} cars, {self.seconds:g} s{bad}"


def fixture_flags(rows: np.ndarray) -> np.ndarray:
    """What the harness's fixture models flag: mean squared z-score over the threshold (also the windowed
    one, which scores each window's newest reading)."""
    return (np.square((rows - MEAN) / STD).mean(axis=1) > THRESHOLD)


# ---- the fleet: topics, twin collection, a paced producer of numbered events ---------------------


class Fleet:
    def __init__(self, servers: Servers, cars: int, name: str = ""):
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient, NewTopic
        from pymongo import MongoClient

        self.servers = servers
        unique = name or uuid.uuid4().hex[:10]
        self.topic, self.alerts, self.dlq = f"fault-sensor-{unique}", f"fault-alerts-{unique}", f"fault-dlq-{unique}"
        self.group, self.collection = f"fault-transformer-{unique}", f"fault_cars_{unique}"
        admin = AdminClient(kafka_config(servers.kafka))
        for f in admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in (self.topic, self.alerts, self.dlq)]).values():
            f.result()
        db = MongoClient(servers.mongodb_uri)["fleetpulse"]
        db.create_collection(self.collection)
        ensure_id_lookup_indexes(servers.mongodb_data)  # else every twin lookup by _id scans the table
        self.ids = [f"car-{i:05d}" for i in range(cars)]
        self.steps = np.zeros(cars, np.int64)
        self.acked = np.zeros(cars, np.int64)
        self.sent = 0
        self.rng = np.random.default_rng(13)
        self.producer = Producer(kafka_config(servers.kafka, **{"linger.ms": 5, "enable.idempotence": True, "acks": "all",
                                                                "message.timeout.ms": 0, "queue.buffering.max.messages": 1_000_000,
                                                                "reconnect.backoff.max.ms": 500}))

    def rows(self, cars: np.ndarray, bad_share: float) -> np.ndarray:
        steps = self.steps[cars]
        rows = MEAN + STD * 0.5 * self.rng.standard_normal((len(cars), len(MEAN)))
        failing = ((steps + cars * 7) % PERIOD) < SPELL
        rows[failing] += STD * 8
        if bad_share:
            bad = np.flatnonzero(self.rng.random(len(cars)) < bad_share)
            col = self.rng.choice(_FLOAT_COLUMNS, len(bad))  # Avro ints cannot carry NaN or infinity
            kind = self.rng.integers(0, 3, len(bad))
            rows[bad, col] = np.where(kind == 0, np.nan, np.where(kind == 1, np.inf, 1e6))
        return rows.astype(np.float32)

    def produce(self, load: Load, at: dict[float, Callable[[], None]] | None = None) -> None:
        """``load.rate`` events/s for ``load.seconds`` (cars round robin); ``at[t]()`` runs ``t`` seconds in,
        in its own thread.

        Returns once every action has returned too, raising the first one's error: a row's accounting
        must not start while its fault's last step (members still stopping, on a secured stack each
        leaving the group after its own login) is under way.
        """
        pending = sorted((at or {}).items())
        actions: list[threading.Thread] = []
        errors: list[Exception] = []

        def start(fn: Callable[[], None]) -> None:
            def act():
                try:
                    fn()
                except Exception as exc:  # noqa: BLE001 - raised again once the load is sent
                    errors.append(exc)

            actions.append(threading.Thread(target=act, daemon=True))
            actions[-1].start()

        tick, next_car, t0 = 0.05, 0, time.monotonic()
        done = 0
        while (elapsed := time.monotonic() - t0) < load.seconds:
            while pending and pending[0][0] <= elapsed:
                start(pending.pop(0)[1])
            due = int(load.rate * min(elapsed + tick, load.seconds)) - done
            if due > 0:
                cars = (next_car + np.arange(due)) % len(self.ids)
                next_car = int(cars[-1] + 1)
                self._send(cars, self.rows(cars, load.bad_share))
                done += due
            time.sleep(max(0.0, t0 + elapsed + tick - time.monotonic()))
        for _, fn in pending:
            start(fn)
        self.producer.flush()
        for action in actions:
            action.join()
        if errors:
            raise errors[0]

    def _send(self, cars: np.ndarray, rows: np.ndarray) -> None:
        for car, payload in zip(cars.tolist(), encode_batch(rows)):
            seq = int(self.steps[car])
            self.steps[car] += 1
            while True:
                try:
                    self.producer.produce(self.topic, key=self.ids[car].encode(), value=payload, headers=[("seq", str(seq).encode())],
                                          on_delivery=lambda err, _msg, c=car: self._delivered(err, c))
                    break
                except BufferError:
                    self.producer.poll(0.05)
            self.sent += 1
        self.producer.poll(0)

    def _delivered(self, err, car: int) -> None:
        if err is None:
            self.acked[car] += 1

    # ---- reading back --------------------------------------------------------------------------

    def read(self, topic: str) -> list:
        """Every record of ``topic``, read to the high watermarks."""
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({**kafka_config(self.servers.kafka), "group.id": f"fault-reader-{uuid.uuid4().hex[:8]}",
                      "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        try:
            ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS)}
            c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
            out, left = [], {p: e for p, e in ends.items() if e > 0}
            deadline = time.monotonic() + 120
            while left and time.monotonic() < deadline:
                for m in c.consume(10000, 1.0):
                    if m.error() is None:
                        out.append(m)
                        if m.offset() + 1 >= left.get(m.partition(), 0):
                            left.pop(m.partition(), None)
            return out
        finally:
            c.close()

    def end_offsets(self) -> dict[int, int]:
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({**kafka_config(self.servers.kafka), "group.id": f"fault-ends-{uuid.uuid4().hex[:8]}"})
        try:
            return {p: c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10, cached=False)[1] for p in range(PARTITIONS)}
        finally:
            c.close()

    def committed(self) -> dict[int, int]:
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({**kafka_config(self.servers.kafka), "group.id": self.group, "enable.auto.commit": False})
        try:
            tps = c.committed([TopicPartition(self.topic, p) for p in range(PARTITIONS)], timeout=10)
            return {tp.partition: max(tp.offset, 0) for tp in tps}
        finally:
            c.close()

    def twins(self) -> dict[str, int]:
        from pymongo import MongoClient

        coll = MongoClient(self.servers.mongodb_uri)["fleetpulse"][self.collection]
        return {d["_id"]: d.get("counters", {}).get("events", 0) for d in coll.find({}, {"counters.events": 1})}


# ---- transformers and the clock of a repair -------------------------------------------------------


class Transformer:
    """One `fleetpulse score` member of the fleet's group, as its own process."""

    def __init__(self, fleet: Fleet, server: ModelServer, log: Path, **env: str):
        from devtools.stack.process import free_port

        self.log = log
        self.metrics_port = free_port()
        servers = fleet.servers
        self.env = {**os.environ, **access.connection_env("SCORE", servers.kafka), **access.mongodb_env("SCORE", servers.mongodb),
                    "FLEETPULSE_SCORE_TOPIC": fleet.topic, "FLEETPULSE_SCORE_ALERTS_TOPIC": fleet.alerts, "FLEETPULSE_SCORE_DLQ_TOPIC": fleet.dlq,
                    "FLEETPULSE_SCORE_GROUP_ID": fleet.group, "FLEETPULSE_SCORE_MODEL_GRPC": server.grpc_target,
                    "FLEETPULSE_SCORE_MODEL_NAME": server.model, "FLEETPULSE_SCORE_TWIN_COLLECTION": fleet.collection,
                    "FLEETPULSE_SCORE_METRICS_PORT": str(self.metrics_port),
                    "FLEETPULSE_SCORE_RETRY_MAX_S": "1", "FLEETPULSE_SCORE_TWIN_INTERVAL_S": "5",
                    "FLEETPULSE_SCORE_STOP_TIMEOUT_S": "180", **{f"FLEETPULSE_SCORE_{k.upper()}": v for k, v in env.items()}}
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> "Transformer":
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([FLEETPULSE, "score", "--json"], env=self.env, stdout=subprocess.PIPE, stderr=out)
        return self

    def health(self, probe: str = "healthz") -> tuple[int, dict]:
        import httpx

        try:
            r = httpx.get(f"http://127.0.0.1:{self.metrics_port}/{probe}", timeout=2)
            return r.status_code, r.json()
        except httpx.HTTPError:
            return 0, {}

    def wait_scoring(self, timeout: float = 60) -> None:
        """Until this member has scored events (it has partitions), from its /metrics."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
                if any(line.startswith("fleetpulse_transformer_scored_total ") and float(line.split()[1]) > 0 for line in text.splitlines()):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 300) -> tuple[dict, float]:
        """SIGTERM; (the run's summary, seconds until it exited)."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout)
        seconds = time.monotonic() - t0
        lines = [line for line in (out or b"").decode().strip().splitlines() if line.startswith("{")]
        if self.proc.returncode != 0 or not lines:
            raise RuntimeError(f"transformer exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        return json.loads(lines[-1]), seconds


class Recovery:
    """Seconds from ``mark()`` until the group's commits reach what the topic held at that moment."""

    def __init__(self, fleet: Fleet):
        self.fleet = fleet
        self.seconds: float | None = None
        self._thread: threading.Thread | None = None

    def mark(self) -> None:
        from confluent_kafka import KafkaException

        t0 = time.monotonic()
        target = retry(self.fleet.end_offsets, (KafkaException,), Backoff(0.5, 0.5, deadline_s=60))

        def watch():
            while time.monotonic() - t0 < 600:
                try:
                    committed = self.fleet.committed()
                except KafkaException:  # the broker is the row's fault, or busy: ask again
                    committed = {}
                if committed and all(committed.get(p, 0) >= o for p, o in target.items()):
                    self.seconds = round(time.monotonic() - t0, 1)
                    return
                time.sleep(0.5)

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()

    def wait(self, timeout: float = 300) -> float | None:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.seconds


def drain(fleet: Fleet, timeout: float = 300) -> None:
    """Wait until the group has committed everything in the topic."""
    recovery = Recovery(fleet)
    recovery.mark()
    if recovery.wait(timeout) is None:
        raise TimeoutError(f"the transformer group did not commit the whole topic within {timeout:.0f}s")


# ---- accounting ----------------------------------------------------------------------------------


def account(fleet: Fleet, fault: str, load: str, recovery_s: float | None, **extra) -> dict:
    """The row: exact counts from the topics and the twins (module docstring)."""
    records = fleet.read(fleet.topic)
    index = {car: i for i, car in enumerate(fleet.ids)}
    cars = np.array([index[m.key().decode()] for m in records], np.int64)
    seqs = np.array([int(dict(m.headers())["seq"]) for m in records], np.int64)
    order = np.lexsort((np.array([m.offset() for m in records]), np.array([m.partition() for m in records])))
    # Kafka: every acknowledged sequence number once.
    unique = {(int(c), int(s)) for c, s in zip(cars, seqs)}
    kafka_duplicates = len(records) - len(unique)
    kafka_lost = max(0, int(fleet.acked.sum()) - len(unique))
    values = decode_batch([m.value() for m in records]).values
    plausible = ~implausible(values)
    # Twins: every plausible event in Kafka once; the implausible ones in the dead-letter topic.
    expected = np.bincount(cars[plausible], minlength=len(fleet.ids))
    twins = fleet.twins()
    got = np.array([twins.get(car, 0) for car in fleet.ids], np.int64)
    dlq = [m for m in fleet.read(fleet.dlq) if m.key() is not None]
    dlq_cars = np.bincount([index[m.key().decode()] for m in dlq if m.key().decode() in index], minlength=len(fleet.ids))
    bad = np.bincount(cars[~plausible], minlength=len(fleet.ids))
    duplicates = kafka_duplicates + int(np.maximum(got - expected, 0).sum())
    lost = kafka_lost + int(np.maximum(expected - got, 0).sum()) + int(np.maximum(bad - dlq_cars, 0).sum())
    alerts_expected = expected_alerts(cars[order], plausible[order], values[order], records, order, fleet.ids)
    seen = {(a["car_id"], a["source_partition"], a["source_offset"], a["status"]) for a in map(decode_alert, (m.value() for m in fleet.read(fleet.alerts)))}
    row = {"fault": fault, "load": load, "sent": fleet.sent, "acknowledged": int(fleet.acked.sum()), "in_kafka": len(records),
           "in_twins": int(got.sum()), "duplicates": duplicates, "lost": lost, "recovery_s": recovery_s,
           "dlq": len(dlq), "alerts": len(seen), "alerts_expected": len(alerts_expected),
           "alerts_missing": len(alerts_expected - seen), "alerts_unexpected": len(seen - alerts_expected)}
    return {**row, **extra}


def expected_alerts(cars, plausible, values, records, order, ids) -> set[tuple[str, int, int, str]]:
    """(car, partition, offset, new status) of every status change the events in Kafka must cause."""
    keep = plausible
    cars, values = cars[keep], values[keep]
    positions = [(records[i].partition(), records[i].offset()) for i in order[keep].tolist()]
    timeline = status_timeline(fixture_flags(values), cars)
    previous = np.zeros(len(ids), np.int8)
    out = set()
    for c, status, (p, o) in zip(cars.tolist(), timeline.tolist(), positions):
        if status != previous[c]:
            out.add((ids[c], p, o, STATUS_NAMES[status]))
            previous[c] = status
    return out


# ---- a run: model server, transformers, load, fault ----------------------------------------------


@dataclass
class Run:
    """What one row runs: its own fleet, a model server (published fixture model), transformer members."""

    servers: Servers
    workdir: Path
    load: Load
    server: ModelServer | None = None
    members: list[Transformer] = field(default_factory=list)
    model: str = ""

    def __post_init__(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.fleet = Fleet(self.servers, self.load.cars)
        self.model = self.model or f"fault-anomaly-{uuid.uuid4().hex[:8]}"

    def publish(self, build: Callable[[Path], Path] = build_saved_model, metadata: dict | None = None) -> int:
        return publish_saved(self.servers.gcs_endpoint, self.model, build(self.workdir / f"saved-{time.monotonic_ns()}"), metadata)

    def serve(self, wait: bool = True) -> ModelServer:
        self.server = ModelServer(self.model, self.servers.gcs_endpoint, self.workdir / "serve.log")
        return self.server.wait_ready(180) if wait else self.server

    def member(self, **env: str) -> Transformer:
        t = Transformer(self.fleet, self.server, self.workdir / f"score-{len(self.members)}.log", **env)
        self.members.append(t)
        return t

    def finish(self) -> list[dict]:
        """Wait until everything is committed, stop every member; their summaries."""
        drain(self.fleet)
        return [m.stop()[0] for m in self.members if m.proc.poll() is None]

    def close(self) -> None:
        for m in self.members:
            if m.proc.poll() is None:
                m.kill()
        if self.server is not None:
            self.server.stop()


def _run(servers: Servers, workdir: Path, load: Load, **kwargs) -> Run:
    run = Run(servers, workdir, load, **kwargs)
    run.publish()
    run.serve()
    return run


def transformer_kill_row(servers: Servers, workdir: Path, load: Load, **member_env: str) -> dict:
    """kill -9 of the transformer a third in; a new one (what Kubernetes would start) a second later.

    The new member gets the partitions once the dead one's session has expired (45 s by default;
    ``member_env`` may set ``consumer_session_timeout_ms``, which ``recovery_s`` then follows)."""
    run = _run(servers, workdir, load)
    try:
        t, recovery = run.member(**member_env), Recovery(run.fleet)

        def restart():
            t.kill()
            time.sleep(1)
            t.start()
            recovery.mark()

        run.fleet.produce(load, {load.seconds / 3: restart})
        run.finish()
        return account(run.fleet, "kill -9 of the transformer", load.describe(), recovery.wait())
    finally:
        run.close()


def model_server_kill_row(servers: Servers, workdir: Path, load: Load) -> dict:
    """kill -9 of the model server a third in, started again (same ports) at two thirds."""
    run = _run(servers, workdir, load)
    try:
        run.member()
        recovery = Recovery(run.fleet)

        def back():
            run.server.start().wait_ready(180)
            recovery.mark()

        run.fleet.produce(load, {load.seconds / 3: run.server.kill, 2 * load.seconds / 3: back})
        summaries = run.finish()
        return account(run.fleet, "kill -9 of the model server", load.describe(), recovery.wait(),
                       model_server_retries=sum(s["retries"].get("model-server", 0) for s in summaries))
    finally:
        run.close()


def mongodb_down_row(servers: Servers, workdir: Path, load: Load, mongodb, down_s: float) -> dict:
    """FerretDB (``mongodb``: a private tests.support.stack.PrivateService, its settings in ``servers``) down for
    ``down_s``. During the outage the transformer's /healthz turns 503 (stuck_after_s 6) naming mongodb,
    and it is sent SIGTERM: it must exit within its stop timeout (5 s, ``stop_s``); the member started in
    its place once FerretDB is back loses nothing."""
    run = _run(servers, workdir, load)
    try:
        first = run.member(stuck_after_s="6", stop_timeout_s="5")
        recovery = Recovery(run.fleet)
        seen: dict = {}

        def outage():
            mongodb.stop()
            deadline = time.monotonic() + down_s - 2
            while time.monotonic() < deadline and "reason" not in seen:
                status, body = first.health()
                if status == 503:
                    seen.update(body, status=status)
                time.sleep(0.5)
            seen["stop_s"] = round(first.stop(timeout=60)[1], 1)
            time.sleep(max(0.0, deadline + 2 - time.monotonic()))
            start_private(mongodb)
            recovery.mark()
            run.member(stuck_after_s="6")  # the pod Kubernetes starts in its place (it needs MongoDB to start)

        run.fleet.produce(load, {load.seconds / 4: outage})
        time.sleep(1)
        run.finish()
        return account(run.fleet, f"FerretDB down {down_s:g} s", load.describe(), recovery.wait(),
                       stuck_reason=seen.get("reason"), stop_s=seen.get("stop_s"))
    finally:
        run.close()


def gcs_down_row(servers: Servers, workdir: Path, load: Load, gcs, down_s: float = 6.0) -> dict:
    """The fake GCS (``gcs``: a private PrivateService, its endpoint in ``servers``) down when the model server starts, and again right after a
    new version is published: the server waits, then serves; keeps serving, then picks the version up."""
    run = Run(servers, workdir, load)
    try:
        run.publish()
        gcs.stop()
        run.serve(wait=False)
        time.sleep(down_s)
        if not run.server.alive():
            raise RuntimeError(f"the model server exited while GCS was down:\n{(workdir / 'serve.log').read_text()[-2000:]}")
        up = time.monotonic()
        start_private(gcs)
        run.server.wait_ready(180)
        at_start = round(time.monotonic() - up, 1)
        run.member()
        published: dict = {}

        def publish_then_down():
            published["version"] = run.publish(lambda p: build_saved_model(p))
            gcs.stop()
            time.sleep(down_s)
            start_private(gcs)
            published["up"] = time.monotonic()

        run.fleet.produce(load, {load.seconds / 4: publish_then_down})
        deadline = time.monotonic() + 60
        while "up" not in published and time.monotonic() < deadline:
            time.sleep(0.2)
        served = wait_for_version(run.server, published["version"], 60)
        picked_up = round(served - published["up"], 1) if served else None
        run.finish()
        return account(run.fleet, "GCS down at server start, and after a new version is published", load.describe(),
                       max(at_start, picked_up or 0.0), recovery_at_start_s=at_start, recovery_new_version_s=picked_up,
                       served_new_version=served is not None)
    finally:
        run.close()


def bad_versions_row(servers: Servers, workdir: Path, load: Load) -> dict:
    """Published as newest, in turn: a truncated model, one with a wrong signature (both skipped, the valid
    version keeps serving), then a valid one with another input shape (LSTM, window 4), which the
    transformer follows. recovery_s: from that publication until the commits reach the topic's end then."""
    run = _run(servers, workdir, load)
    try:
        run.member()
        recovery, versions = Recovery(run.fleet), {}

        def other_shape():
            versions["lstm"] = run.publish(lambda p: build_windowed_model(p, 4), {"model_type": "lstm", "window": 4, "threshold": THRESHOLD})
            recovery.mark()

        steps = {load.seconds / 5: lambda: versions.setdefault("truncated", run.publish(lambda p: build_broken_model(p, "truncated"))),
                 2 * load.seconds / 5: lambda: versions.setdefault("wrong", run.publish(lambda p: build_broken_model(p, "wrong_signature"))),
                 3 * load.seconds / 5: other_shape}
        run.fleet.produce(load, steps)
        served = wait_for_version(run.server, versions.get("lstm", -1), 60)
        summaries = run.finish()
        log = (workdir / "serve.log").read_text()
        skipped = [v for k, v in versions.items() if k != "lstm" and re.search(rf"version {v} \([^)]*\) is invalid", log)]
        return account(run.fleet, "truncated model, wrong signature, other input shape published as newest", load.describe(),
                       recovery.wait(), invalid_skipped=len(skipped), served_other_shape=served is not None,
                       transformer_retries=sum(sum(s["retries"].values()) for s in summaries))
    finally:
        run.close()


def group_scaling_row(servers: Servers, workdir: Path, load: Load) -> dict:
    """The transformer group scaled 1 -> 3 -> 1, and one member SIGSTOPped for 40% of the run (past its 6 s
    session timeout) once it scores as one of three: its partitions move; when it wakes up its twin
    writes wait until Kafka has told it so and are then dropped (``twins_dropped``), and what it had
    snapshotted from an older twin is fenced out by the newer ones (``twins_fenced``)."""
    run = _run(servers, workdir, load)
    env = {"consumer_session_timeout_ms": "6000"}
    try:
        run.member(**env)
        recovery, members, stopped = Recovery(run.fleet), {}, []

        def scale_out():
            members["b"], members["c"] = run.member(**env), run.member(**env)

        def pause():
            members["b"].wait_scoring()
            time.sleep(1)  # a second of its own twins and commits
            members["b"].signal(signal.SIGSTOP)
            time.sleep(0.4 * load.seconds)
            members["b"].signal(signal.SIGCONT)

        def scale_in():
            stopped.extend(members[name].stop()[0] for name in ("b", "c"))
            recovery.mark()

        run.fleet.produce(load, {0.1 * load.seconds: scale_out, 0.2 * load.seconds: pause, 0.9 * load.seconds: scale_in})
        time.sleep(1)
        summaries = stopped + run.finish()
        return account(run.fleet, "transformer group 1 -> 3 -> 1, one member SIGSTOPped past its session timeout", load.describe(),
                       recovery.wait(), twins_fenced=sum(s.get("twins_fenced", 0) for s in summaries),
                       twins_dropped=sum(s.get("twins_dropped", 0) for s in summaries))
    finally:
        run.close()


def bad_readings_row(servers: Servers, workdir: Path, load: Load) -> dict:
    """A share of readings NaN, infinite or out of range (some on failing cars): all in the DLQ, none in a
    twin, and none clears a failing car (the expected alerts leave them out). recovery_s: from the end of
    the load until everything is committed."""
    run = _run(servers, workdir, load)
    try:
        run.member()
        recovery = Recovery(run.fleet)
        run.fleet.produce(load)
        recovery.mark()
        run.finish()
        return account(run.fleet, "NaN, infinite and out-of-range readings", load.describe(), recovery.wait())
    finally:
        run.close()


def wait_for_version(server: ModelServer, version: int, timeout: float) -> float | None:
    """monotonic() when the server first answers with ``version`` (None if not within ``timeout``)."""
    from inference.transformer.v2_client import V2Client

    client = V2Client(server.grpc_target, server.model, timeout_s=5)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                rows = np.repeat(MEAN[None, None, :], 4, axis=1) if _window(client) > 1 else MEAN[None, :]
                if client.infer(rows).model_version == str(version):
                    return time.monotonic()
            except Exception:  # noqa: BLE001 - a swap or a restart in progress: ask again
                pass
            time.sleep(0.2)
        return None
    finally:
        client.close()


def _window(client) -> int:
    shape = client.metadata()["inputs"][0]["shape"]
    return int(shape[1]) if len(shape) == 3 else 1

