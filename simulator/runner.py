"""The publishing loop: step blocks of cars on schedule, encode, build PUBLISH batches, write.

A worker owns the blocks b with b % workers == worker and the connections of their cars. Block b's
k-th event is due at start + (k + b / blocks) / rate: blocks are spread evenly over each period, so
load is smooth and a batch is one block (up to 512 events). When the loop falls behind it does not
sleep, and events/s is what the machine (and the broker) allowed.

Several workers run as spawned processes (one process holds ~20,000 sockets here); they send stats
and ground truth to the parent over a queue. One worker runs in the calling process.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import queue as queue_mod
import resource
import ssl
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from pydantic import SecretStr

from fleetpulse.codec import encode_batch
from fleetpulse.contract import topic_for_car
from fleetpulse.errors import FleetPulseError
from fleetpulse.ground_truth import HEALTHY, TruthRecord
from fleetpulse.identity import read_car_credentials
from fleetpulse.mqtt_wire import MQTT_5, PublishBuilder
from simulator.car_model import block_count, car_id, make_blocks
from simulator.csv_source import make_csv_blocks
from simulator.failures import FailurePlan, plan_failures
from simulator.mqtt_publisher import Connection, Endpoint, Pool, PublishStats
from simulator.ota import Rollout, plan_ota
from simulator.profiles import get as get_profile
from simulator.sensor_layer import SensorLayer

PER_PROCESS_CONNECTIONS = 15_000
"""Connections one process opens (the hard open-files limit here is 20,000)."""
PER_SOURCE_ADDRESS = 20_000
"""Connections per loopback source address when spreading (one address gives ~28k ephemeral ports)."""


@dataclass
class RunConfig:
    cars: int
    rate: float
    duration: float
    seed: int = 0
    failures: float = 0.05
    connections: int = 4
    qos: int = 0
    source: str = "model"
    csv_path: str | None = None
    sample_interval: float = 10.0
    ramp_s: float = 0.0
    profile: str = "default"
    sensors: SensorLayer = field(default_factory=SensorLayer)
    ota: Rollout | None = None
    brokers: list[tuple[str, int]] = field(default_factory=lambda: [("127.0.0.1", 11883)])
    keepalive: int = 60
    workers: int = 1
    drain_timeout_s: float = 60.0
    tls: bool = False
    ca_file: str | None = None
    gateway: tuple[str, SecretStr | None] | None = None
    """(username, password) every connection logs in with, unless a car logs in as itself."""
    car_credentials_file: str | None = None
    """With one connection per car: each car logs in as itself, its password from this file. Each
    worker reads the file itself: 100,000 passwords are not pickled to every spawned worker."""

    @property
    def events_per_car(self) -> int:
        return max(1, round(self.duration * self.rate))

    @property
    def per_car(self) -> bool:
        return self.connections >= self.cars


def auto_workers(cars: int, connections: int) -> int:
    return max(1, math.ceil(min(connections, cars) / PER_PROCESS_CONNECTIONS))


def make_plan(cfg: RunConfig) -> FailurePlan | None:
    if cfg.source != "model":
        return None
    return plan_failures(cfg.cars, cfg.events_per_car, cfg.failures, cfg.seed)


class Sink:
    """Where a worker reports: ground truth as it happens, stats now and then."""

    def truth(self, records: list[TruthRecord]) -> None: ...

    def stats(self, snapshot: dict) -> None: ...


def _source_address(host: str, conn_index: int, total: int) -> str | None:
    if total <= PER_SOURCE_ADDRESS or not host.startswith("127."):
        return None
    return f"127.0.0.{2 + conn_index // PER_SOURCE_ADDRESS}"


def missing_car_credentials(cfg: RunConfig) -> str | None:
    """The first car of the run without a password in ``cfg.car_credentials_file``, or None."""
    if not (cfg.per_car and cfg.car_credentials_file):
        return None
    known = read_car_credentials(Path(cfg.car_credentials_file))
    return next((car_id(i) for i in range(cfg.cars) if car_id(i) not in known), None)


class Layout:
    """Which connection each car of this worker publishes on, grouped per block."""

    def __init__(self, cfg: RunConfig, worker: int, blocks, stats: PublishStats):
        brokers, W = cfg.brokers, cfg.workers
        self.conns: list[Connection] = []
        self.groups: dict[int, tuple[np.ndarray, list[tuple[Connection, int, int]]]] = {}
        context = ssl.create_default_context(cafile=cfg.ca_file) if cfg.tls else None
        user, password = cfg.gateway or (None, None)
        gateway = {"username": user, "password": password.get_secret_value() if password else None, "ssl_context": context}
        if cfg.per_car:
            cars = read_car_credentials(Path(cfg.car_credentials_file)) if cfg.car_credentials_file else None
            # One session per car, client id = car id, like the original scenario's devices; with
            # credentials the car logs in as itself (the broker binds its username to that client id).
            for block in blocks:
                conns = []
                for i in range(block.first, block.first + block.n):
                    host, port = brokers[i % len(brokers)]
                    car = car_id(i)
                    login = gateway if cars is None else {"username": car, "password": cars[car], "ssl_context": context}
                    conns.append(Connection(car, Endpoint(host, port, _source_address(host, i, cfg.cars)), stats, cfg.keepalive, **login))
                self.conns.extend(conns)
                self.groups[block.index] = (np.arange(block.n), [(c, j, j + 1) for j, c in enumerate(conns)])
            return
        # Multiplexed: this worker's share of the connections, global index j = worker + W x local.
        n_local = len(range(worker, cfg.connections, W))
        for local in range(n_local):
            j = worker + W * local
            host, port = brokers[j % len(brokers)]
            client = f"fleetpulse-sim-{cfg.seed}-{j}-{_run_tag()}"
            endpoint = Endpoint(host, port, _source_address(host, j, cfg.connections))
            self.conns.append(Connection(client, endpoint, stats, cfg.keepalive, **gateway))
        for block in blocks:
            conn_of = (np.arange(block.first, block.first + block.n)) % n_local
            order = np.argsort(conn_of, kind="stable")
            bounds = np.searchsorted(conn_of[order], np.arange(n_local + 1))
            groups = [(self.conns[c], int(bounds[c]), int(bounds[c + 1])) for c in range(n_local) if bounds[c + 1] > bounds[c]]
            self.groups[block.index] = (order, groups)


_TAG = None


def _run_tag() -> str:
    """A per-run suffix so concurrent simulators' multiplexed client ids never collide."""
    global _TAG
    if _TAG is None:
        import os

        _TAG = f"{os.getpid():x}{time.time_ns() & 0xFFFFFF:x}"
    return _TAG


class Worker:
    def __init__(self, cfg: RunConfig, worker: int, sink: Sink):
        self.cfg, self.worker, self.sink = cfg, worker, sink
        nb = block_count(cfg.cars)
        self.n_blocks = nb
        own = {b for b in range(nb) if b % cfg.workers == worker}
        self.plan = make_plan(cfg)
        if cfg.source == "csv":
            self.blocks = make_csv_blocks(cfg.cars, Path(cfg.csv_path), only=own)
        else:
            self.blocks = make_blocks(cfg.cars, cfg.seed, self.plan, cfg.sample_interval, cfg.ramp_s, only=own,
                                      profile=get_profile(cfg.profile), sensors=cfg.sensors,
                                      ota=plan_ota(cfg.cars, cfg.ota, cfg.seed) if cfg.ota is not None else None)
        self.stats = PublishStats()
        self.layout = Layout(cfg, worker, self.blocks, self.stats)
        self.builder = PublishBuilder([topic_for_car(car_id(i)) for i in range(cfg.cars)], protocol=MQTT_5)
        self.failing_started = 0
        self.t_start = self.t_end = 0.0

    async def run(self) -> dict:
        pool = Pool(self.layout.conns, self.stats)
        await pool.open()
        reporter = asyncio.ensure_future(self._report_loop(pool))
        try:
            await self._publish_all()
            unacked = await pool.drain(self.cfg.drain_timeout_s)
        finally:
            reporter.cancel()
            await pool.close()
        return self.snapshot(pool, unacked=unacked, final=True)

    async def _publish_all(self) -> None:
        cfg, period = self.cfg, 1.0 / self.cfg.rate
        loop = asyncio.get_running_loop()
        self.t_start = loop.time()
        for k in range(cfg.events_per_car):
            for block in self.blocks:
                delay = self.t_start + (k + block.index / self.n_blocks) * period - loop.time()
                # Yield every block even when behind: acks, pings and socket writes need the loop.
                await asyncio.sleep(delay if delay > 0 else 0)
                await self._send_block(block)
        self.t_end = loop.time()

    async def _send_block(self, block) -> None:
        step = block.step()
        payloads = encode_batch(step.values)
        order, groups = self.layout.groups[block.index]
        cars = block.first + order
        ordered = [payloads[i] for i in order.tolist()]
        qos = self.cfg.qos
        pids = np.zeros(len(order), dtype=np.int64)
        for conn, lo, hi in groups:
            if not conn.ready:
                await conn.wait_ready()
            if qos:
                pids[lo:hi] = conn.take_pids(hi - lo)
        # The truth time is taken just before the first write of the events it labels.
        self._emit_truth(block, step, time.time_ns() // 1_000_000)
        data, size = self.builder.build(cars, ordered, qos, pids)
        if size == 0:  # uneven packet sizes: build per connection
            for conn, lo, hi in groups:
                part, _ = self.builder.build(cars[lo:hi], ordered[lo:hi], qos, pids[lo:hi])
                self._write(conn, part, hi - lo, pids[lo:hi], self._split(cars[lo:hi], ordered[lo:hi], pids[lo:hi]))
            return
        for conn, lo, hi in groups:
            self._write(conn, data[lo * size : hi * size], hi - lo, pids[lo:hi], None, size)

    def _split(self, cars, payloads, pids) -> list[bytes] | None:
        if not self.cfg.qos:
            return None
        return [self.builder.build(cars[i : i + 1], payloads[i : i + 1], 1, pids[i : i + 1])[0] for i in range(len(cars))]

    def _write(self, conn: Connection, data: bytes, count: int, pids, packets, size: int = 0) -> None:
        if self.cfg.qos:
            conn.publish_qos1(data, pids, size, packets)
        else:
            conn.publish_qos0(data, count)

    def _emit_truth(self, block, step, ts_ms: int) -> None:
        if self.plan is None:
            return
        dt = self.cfg.sample_interval
        records = []
        if step.seq == 0:
            records = [TruthRecord(car_id(i), HEALTHY, ts_ms, 0.0, 0, dt) for i in range(block.first, block.first + block.n)]
        for j in step.onsets.tolist():
            i = block.first + j
            records.append(TruthRecord(car_id(i), self.plan.mode_name(i), ts_ms, round(float(step.severity[j]), 4), step.seq, dt))
            self.failing_started += 1
        if records:
            self.sink.truth(records)

    async def _report_loop(self, pool: Pool) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.sink.stats(self.snapshot(pool))

    def snapshot(self, pool: Pool, unacked: int | None = None, final: bool = False) -> dict:
        s = self.stats
        now = asyncio.get_running_loop().time()
        elapsed = (self.t_end or now) - self.t_start if self.t_start else 0.0
        return {
            "worker": self.worker,
            "cars": sum(b.n for b in self.blocks),
            "events_sent": s.sent,
            "acked": s.acked,
            "not_routed": s.not_routed,
            "dropped": s.dropped,
            "resent": s.resent,
            "reconnects": s.reconnects,
            "connect_errors": s.connect_errors,
            "open_connections": s.open_connections,
            "connections": len(pool.conns),
            "inflight": pool.inflight() if unacked is None else unacked,
            "unacked": unacked or 0,
            "failing_started": self.failing_started,
            "elapsed_s": elapsed,
            "last_error": s.last_error,
            "final": final,
            "rss_mb": _rss_mb(),
        }


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def run_in_process(cfg: RunConfig, sink: Sink) -> list[dict]:
    raise_fd_limit()
    loop = _new_loop()
    try:
        return [loop.run_until_complete(Worker(cfg, 0, sink).run())]
    finally:
        loop.close()


# --- several processes ---------------------------------------------------------------------------


class _QueueSink(Sink):
    def __init__(self, q, worker: int):
        self.q, self.worker = q, worker

    def truth(self, records):
        self.q.put(("truth", self.worker, [asdict(r) for r in records]))

    def stats(self, snapshot):
        self.q.put(("stats", self.worker, snapshot))


def _worker_main(cfg: RunConfig, worker: int, q) -> None:
    raise_fd_limit()
    loop = _new_loop()
    try:
        result = loop.run_until_complete(Worker(cfg, worker, _QueueSink(q, worker)).run())
        q.put(("done", worker, result))
    except FleetPulseError as exc:
        q.put(("error", worker, str(exc)))
    except BaseException as exc:  # the parent must hear about it, whatever it is
        q.put(("error", worker, f"worker {worker} crashed: {type(exc).__name__}: {exc}"))
    finally:
        loop.close()


def run_processes(cfg: RunConfig, sink: Sink, on_stats: Callable[[list[dict]], None]) -> list[dict]:
    """Run cfg.workers spawned workers; truth goes to ``sink``, merged stats to ``on_stats``."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker_main, args=(cfg, w, q), daemon=True) for w in range(cfg.workers)]
    for p in procs:
        p.start()
    latest: dict[int, dict] = {}
    done: dict[int, dict] = {}
    try:
        while len(done) < len(procs):
            try:
                kind, w, body = q.get(timeout=0.5)
            except queue_mod.Empty:
                dead = [i for i, p in enumerate(procs) if not p.is_alive() and i not in done]
                if dead and q.empty():
                    raise FleetPulseError(f"simulator worker {dead[0]} exited with code {procs[dead[0]].exitcode}")
                continue
            if kind == "truth":
                sink.truth([TruthRecord(**r) for r in body])
            elif kind == "stats":
                latest[w] = body
                on_stats(list(latest.values()))
            elif kind == "done":
                done[w] = latest[w] = body
                on_stats(list(latest.values()))
            elif kind == "error":
                raise FleetPulseError(body)
    finally:
        for p in procs:
            if p.is_alive() and len(done) < len(procs):
                p.terminate()
            p.join(timeout=10)
    return [done[w] for w in sorted(done)]
