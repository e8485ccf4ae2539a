"""The edge rows of the fault matrix (#13): cars -> MQTT broker -> bridge -> Kafka.

Each row function runs one fault against real servers (a private Mosquitto, the stack's Kafka as the
operator, secured or not, or a private one when the row stops it, the bridge as a real process) and returns its row
``{fault, load, sent, acknowledged, in_kafka, in_twins, duplicates, lost, recovery_s}`` plus the
row's own figures. Counts are exact: every message carries a sequence number
(devtools.loadgen.bridge_load), ``acknowledged`` are those the broker sent a delivering PUBACK for
(the publisher retries the others: broker restarts, "no matching subscribers"), ``in_kafka`` the
distinct ones read back from the data topic, ``duplicates`` the extra copies, ``lost`` the
acknowledged ones Kafka does not have. ``in_twins`` is None: the edge ends at Kafka.

``recovery_s``: from the repair (the bridge or broker back) until Kafka's end offset has passed the
number of messages acknowledged at that moment; duplicates can make it read a little early.
Loads are parameters: tests/faults runs short ones, bench/faults.py the issue's.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from devtools.loadgen import bridge_load as loadgen
from devtools.stack import access
from fleetpulse.settings import KafkaConnection
from fleetpulse.topics import DLQ_BAD_CAR_ID, DLQ_KIND_HEADER, DLQ_ORIGINAL_SIZE_HEADER, DLQ_OVERSIZED, DLQ_UNDECODABLE
from tests.support.bridge import BridgeProcess, create_topics
from tests.support.stack import PrivateService, stack_with, start_private

CARS = 500
BAD_CAR_IDS = [b"", b"bad car", b"-dash-first", "\u00fcml\u00e4ut".encode(), b"x" * 100, b"a;b"]


def row(fault: str, load: str, sent: int, acknowledged: int, counted: dict, recovery_s: float | None, **extra) -> dict:
    return {"fault": fault, "load": load, "sent": sent, "acknowledged": acknowledged, "in_kafka": counted["in_kafka"],
            "in_twins": None, "duplicates": counted["duplicates"], "lost": counted["lost"],
            "recovery_s": None if recovery_s is None else round(recovery_s, 1), **extra}  # fmt: skip


# ---- servers, bridge and a numbered stream -----------------------------------------------------------


class Edge:
    """A private Mosquitto, a Kafka, one bridge process on fresh topics; ``close()`` stops them all."""

    def __init__(self, workdir: Path, private_kafka: bool = False, **bridge_settings):
        self.workdir, self.unique = workdir, uuid.uuid4().hex[:10]
        self.servers: list[PrivateService] = []
        self.mqtt = self._private("mqtt")
        self.kafka = self._private("kafka") if private_kafka else None
        self.connection = self.kafka.connection if self.kafka else self._shared_kafka()
        self.topic, self.dlq = f"edge-{self.unique}", f"edge-dlq-{self.unique}"
        create_topics(self.connection, self.topic, self.dlq)
        self.bridge = BridgeProcess(
            self._dir("bridge"), kafka=self.connection, topic=self.topic, dlq_topic=self.dlq,
            share_group=f"edge{self.unique}", client_id=f"edge-bridge-{self.unique}", mqtt_brokers=self.mqtt.address,
            **bridge_settings,
        )  # fmt: skip
        self.bridge.start()

    @staticmethod
    def _shared_kafka() -> KafkaConnection:
        """The operator's connection to the stack's Kafka (secured or not): the row's topics are its own."""
        stack_with("kafka")
        return access.kafka()

    def _dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _private(self, name: str) -> PrivateService:
        svc = PrivateService(name, self._dir(f"private-{name}"))
        self.servers.append(svc)
        start_private(svc)
        return svc

    def close(self) -> None:
        if self.bridge.proc is not None and self.bridge.proc.poll() is None:
            self.bridge.proc.kill()
            self.bridge.proc.wait(10)
        for svc in self.servers:
            svc.stop()

    def recovery(self, stream: "Stream", repaired_at: float, timeout_s: float = 300) -> float:
        """Seconds from ``repaired_at`` (wall clock) until Kafka holds as many records as were acknowledged then."""
        target = stream.acked
        count, reached = loadgen.wait_for_count(self.connection, self.topic, target, timeout_s)
        if count < target:
            raise TimeoutError(f"Kafka holds {count} of the {target} messages acknowledged at the repair after {timeout_s}s")
        return max(0.0, reached - repaired_at)


@contextmanager
def edge(private_kafka: bool = False, **bridge_settings):
    with tempfile.TemporaryDirectory(prefix="fleetpulse-edge-") as tmp:
        e = Edge(Path(tmp), private_kafka, **bridge_settings)
        try:
            yield e
        finally:
            e.close()


class Stream:
    """Publishes ``pkts`` at ``rate`` (QoS 1) in a thread; reconnects through broker restarts."""

    def __init__(self, endpoint: str, pkts: list[bytes], rate: float):
        host, port = endpoint.rsplit(":", 1)
        self.publisher = loadgen.Publisher(host, int(port), qos=1)
        self.n, self.error, self.report = len(pkts), None, None
        self.thread = threading.Thread(target=self._run, args=(pkts, rate), daemon=True)
        self.thread.start()

    def _run(self, pkts, rate) -> None:
        try:
            self.report = self.publisher.publish(pkts, rate=rate, chunk=100, reconnect_for_s=120)
        except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread by join()
            self.error = exc

    @property
    def acked(self) -> int:
        rep = self.publisher.report
        return rep.acked if rep is not None else 0

    def join(self, timeout_s: float = 600) -> loadgen.PublishReport:
        self.thread.join(timeout_s)
        if self.error is not None:
            raise self.error
        if self.report is None:
            raise TimeoutError(f"publisher did not finish in {timeout_s}s ({self.acked} of {self.n} acknowledged)")
        self.publisher.close()
        return self.report


def numbered(n: int, prefix: str) -> list[bytes]:
    return loadgen.packets(loadgen.payloads(n), CARS, prefix, qos=1)


def count_numbered(kafka: KafkaConnection, topic: str, n: int) -> dict:
    """in_kafka / duplicates / lost for messages 0..n-1, all acknowledged; ``missing`` are the lost ones."""
    held = loadgen.settled_count(kafka, topic)
    seq = loadgen.sequence_numbers(loadgen.read_topic(kafka, topic, held, timeout_s=120, idle_s=1.0).values)
    seq = seq[(seq >= 0) & (seq < n)]
    distinct = np.unique(seq)
    missing = np.setdiff1d(np.arange(n), distinct)
    return {"in_kafka": int(len(distinct)), "duplicates": int(len(seq) - len(distinct)), "lost": int(len(missing)), "missing": missing}


def _load(rate: float, seconds: float) -> str:
    return f"{rate:,.0f} ev/s QoS 1, {CARS} cars, {seconds:g} s"


# ---- the rows ------------------------------------------------------------------------------------------


def bridge_kill9(rate: float = 5_000, seconds: float = 60) -> dict:
    """kill -9 of the bridge a third into the stream, restarted after 1 s: its session keeps the rest."""
    n = int(rate * seconds)
    with edge() as e:
        stream = Stream(e.mqtt.address, numbered(n, f"k{e.unique}"), rate)
        e.bridge.wait_metric("fleetpulse_bridge_received_total", n // 3, timeout=seconds + 60)
        e.bridge.kill9()  # some records delivered but not acked, some read but not produced
        time.sleep(1.0)
        e.bridge.start()
        repaired = time.time()
        recovery = e.recovery(stream, repaired)
        rep = stream.join()
        counted = count_numbered(e.connection, e.topic, n)
        resumed = "session present: True" in e.bridge.log()
    return row("kill -9 of the bridge", _load(rate, seconds), n, rep.acked, counted, recovery, session_resumed=resumed)


def kafka_down(rate: float = 5_000, seconds: float = 90, down_s: float = 60) -> dict:
    """Kafka stopped for ``down_s`` mid-stream: the bridge stops acking, the broker queues, nothing is lost."""
    n = int(rate * seconds)
    with edge(private_kafka=True) as e:
        stream = Stream(e.mqtt.address, numbered(n, f"d{e.unique}"), rate)
        e.bridge.wait_metric("fleetpulse_bridge_forwarded_total", min(n // 10, int(rate * 2)), timeout=60)
        e.kafka.stop()
        time.sleep(down_s)
        held = e.bridge.metrics()
        start_private(e.kafka)
        repaired = time.time()
        recovery = e.recovery(stream, repaired)
        rep = stream.join()
        counted = count_numbered(e.connection, e.topic, n)
        alive = e.bridge.proc.poll() is None
    return row(f"Kafka down {down_s:g} s, then back", _load(rate, seconds), n, rep.acked, counted, recovery,
               bridge_waited=alive, in_flight_while_down=int(held["fleetpulse_bridge_in_flight"]),
               acks_while_down_le_forwarded=held["fleetpulse_bridge_mqtt_acks_total"] <= held["fleetpulse_bridge_forwarded_total"])  # fmt: skip


def mosquitto_restart(rate: float = 5_000, seconds: float = 60) -> dict:
    """Mosquitto stopped cleanly (it saves its persistence file) and started again mid-stream."""
    n = int(rate * seconds)
    with edge() as e:
        stream = Stream(e.mqtt.address, numbered(n, f"r{e.unique}"), rate)
        e.bridge.wait_metric("fleetpulse_bridge_received_total", n // 3, timeout=seconds + 60)
        start_private(e.mqtt)  # SIGTERM, then start on the same port and state
        repaired = time.time()
        recovery = e.recovery(stream, repaired)
        rep = stream.join()
        counted = count_numbered(e.connection, e.topic, n)
        connects = e.bridge.metric("fleetpulse_bridge_mqtt_connects_total")
    return row("Mosquitto restart (clean)", _load(rate, seconds), n, rep.acked, counted, recovery,
               publisher_reconnects=rep.reconnects, not_routed=rep.not_routed, bridge_connects=int(connects))  # fmt: skip


def mosquitto_kill9(rate: float = 5_000, seconds: float = 60, backlog_s: float = 0.0) -> dict:
    """kill -9 of Mosquitto mid-stream; with ``backlog_s`` the bridge is down (kill -9) that long first,
    so the broker queues the stream in the bridge's offline session, as it does while a bridge restarts.
    (A paused but connected bridge is not enough: the broker writes to its socket, and what the socket
    buffers holds survives the broker.)

    Mosquitto acknowledges a QoS 1 publish before it is on disk: its persistence file is written every
    autosave_interval (30 s in the local stack), so a kill -9 loses what it had acknowledged and not
    yet handed to the bridge since the last save. ``unsaved_acked`` counts the messages acknowledged
    after the last save the broker logged before the kill (its log has 1 s resolution, so one second
    more is counted): every lost message must be among them. ``queued_unsaved`` counts those first
    published while the bridge was down and after that save: what the broker held only in memory.
    """
    n = int(rate * seconds)
    with edge() as e:
        stream = Stream(e.mqtt.address, numbered(n, f"m{e.unique}"), rate)
        e.bridge.wait_metric("fleetpulse_bridge_received_total", n // 3, timeout=seconds + 60)
        bridge_down = time.time()
        if backlog_s:
            e.bridge.kill9()
            time.sleep(backlog_s)
        killed = time.time()
        e.mqtt.kill()
        last_save = _last_save_before(e.mqtt, killed)
        start_private(e.mqtt)
        if backlog_s:
            e.bridge.start()
        repaired = time.time()
        recovery = e.recovery(stream, repaired)
        rep = stream.join()
        counted = count_numbered(e.connection, e.topic, n)
    sent_at = _sent_at(rep, n)
    unsaved = (sent_at >= (last_save or 0) - 1.0) & (sent_at <= killed)
    queued = (sent_at >= max(last_save or 0, bridge_down)) & (sent_at <= killed) if backlog_s else np.zeros(n, bool)
    missing = counted.pop("missing")
    return row("Mosquitto kill -9" + (f", its bridge down for the {backlog_s:g} s before" if backlog_s else ""), _load(rate, seconds),
               n, rep.acked, counted, recovery, unsaved_acked=int(unsaved.sum()), queued_unsaved=int(queued.sum()),
               lost_all_unsaved=bool(unsaved[missing].all()) if len(missing) else True,
               seconds_since_last_save=None if last_save is None else round(killed - last_save, 1))  # fmt: skip


def poison(rate: float = 10_000, seconds: float = 60) -> dict:
    """1% garbage, one 2 MB payload, NaN/inf/out-of-range readings and malformed car ids among numbered
    good messages: every good one must reach the data topic, every bad one the DLQ with its kind."""
    n = int(rate * seconds)
    with edge() as e:
        topics, bodies, expected = _poisoned(n, f"p{e.unique}")
        stream = Stream(e.mqtt.address, loadgen.publish_packets(topics, bodies), rate)
        rep = stream.join()
        counted = count_numbered(e.connection, e.topic, n)
        counted.pop("missing")
        letters = loadgen.read_topic(e.connection, e.dlq, sum(expected.values()), timeout_s=120, idle_s=2.0)
        e.bridge.stop()
    found = Counter((k, v, h[DLQ_KIND_HEADER].decode(), int(h[DLQ_ORIGINAL_SIZE_HEADER])) for k, v, h in zip(letters.keys, letters.values, letters.headers))
    bad_lost, bad_dups = sum((expected - found).values()), sum((found - expected).values())
    kinds = Counter(kind for _, _, kind, _ in expected.elements())
    counted = {"in_kafka": counted["in_kafka"] + sum((found & expected).values()), "duplicates": counted["duplicates"] + bad_dups,
               "lost": counted["lost"] + bad_lost}  # fmt: skip
    return row("1% garbage, one 2 MB payload, NaN/inf/out-of-range readings, malformed car ids", f"{rate:,.0f} ev/s QoS 1, {seconds:g} s",
               len(bodies), rep.acked, counted, None, good=n, bad=sum(expected.values()), bad_by_kind=dict(kinds),
               dead_lettered_by_kind=dict(Counter(kind for _, _, kind, _ in found.elements())))  # fmt: skip


# ---- helpers -----------------------------------------------------------------------------------------


def _poisoned(n: int, prefix: str) -> tuple[list[bytes], list[bytes], Counter]:
    """Topics and bodies of ``n`` numbered good messages with the bad ones spread through them, and the
    dead letters the bad ones must become: (key, value, kind, original size) with multiplicity."""
    good = loadgen.payloads(n)
    garbage = [(b, DLQ_UNDECODABLE) for b in loadgen.garbage(max(1, n // 100))]
    bad = garbage + loadgen.implausible(max(5, n // 1000)) + [(os.urandom(2 * 1024 * 1024), DLQ_OVERSIZED)]
    bad_topics = [loadgen.car_topic(prefix, i % CARS) for i in range(len(bad))]
    for j, car in enumerate(BAD_CAR_IDS):
        bad.append((good[j], DLQ_BAD_CAR_ID))
        bad_topics.append(b"vehicles/sensor/data/" + car)
    topics = [loadgen.car_topic(prefix, i % CARS) for i in range(n)]
    bodies = list(good)
    expected: Counter = Counter()
    step = max(1, n // (len(bad) + 1))
    for j, ((body, kind), topic) in enumerate(zip(bad, bad_topics)):
        at = min(len(bodies), (j + 1) * step + j)
        bodies.insert(at, body)
        topics.insert(at, topic)
        key = topic[len(b"vehicles/sensor/data/") :][:256]
        value = body if kind != DLQ_OVERSIZED else body[:4096]
        expected[(key, value, kind, len(body))] += 1
    return topics, bodies, expected


def _last_save_before(mqtt: PrivateService, t: float) -> float | None:
    """Wall clock (1 s resolution) of the last "Saving in-memory database" line before ``t``."""
    saves = [int(line.split(":", 1)[0]) for line in mqtt.service.process.log_file.read_text(errors="replace").splitlines()
             if "Saving in-memory database" in line and line.split(":", 1)[0].isdigit()]  # fmt: skip
    before = [s for s in saves if s <= t]
    return float(before[-1]) if before else None


def _sent_at(rep: loadgen.PublishReport, n: int) -> np.ndarray:
    """Wall clock of each message's first transmission, from the publisher's chunk times."""
    starts = np.array([i for i, _ in rep.chunk_times])
    times = np.array([t for _, t in rep.chunk_times])
    return times[np.searchsorted(starts, np.arange(n), side="right") - 1]
