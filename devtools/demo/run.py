"""The demo's stages, in order. Every part runs as its own `fleetpulse <command>` process, as it
would run as its own container; the demo only starts them, waits, and reads back what they wrote."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fleetpulse import evaluation
from devtools.demo import collect, report
from devtools.demo.processes import Children, StageFailed, wait_http_ok
from devtools.stack import access, control
from devtools.stack.process import free_port
from devtools.stack.settings import StackSettings
from fleetpulse.topics import ALERTS, GROUND_TRUTH, SENSOR_DATA

SIMULATOR_CONNECTIONS = 4
"""MQTT connections the simulator opens: fewer than the cars, so it publishes as the fleet gateway
(identity ``simulator``); with no more cars than this, each car connects, and logs in, as itself."""
TWIN_SAMPLE = 200
"""Cars whose twin age is sampled (every 10 s); 200 x 30 samples in a 5-minute stretch for the p99."""


@dataclass
class DemoParams:
    cars: int = 2000
    rate: float = 5.0  # events per second per car
    train_duration: float = 30.0  # seconds of stream the model trains on
    duration: float = 50.0  # seconds of stream detection is measured on
    sample_interval: float = 10.0  # simulated seconds per event (the original's 1 message / 10 s)
    failures: float = 0.05
    seed: int = 42
    qos: int = 1  # what the cars publish at
    train_profile: str = "default"  # the fleet the model trains on (simulator/profiles.py)
    profile: str = "default"  # the fleet detection is measured on
    model: str = "autoencoder"
    epochs: int = 8
    min_f1: float = 0.0
    http_port: int = 0  # 0: a free port is chosen at start
    grpc_port: int = 0
    out_dir: Path = Path("reports/demo")
    keep_stack: bool = False
    bridge_metrics_port: int = 0
    score_metrics_port: int = 0
    idle_s: float = 5.0

    @property
    def model_name(self) -> str:
        return "car-anomaly" if self.model == "autoencoder" else "car-anomaly-lstm"


class Demo:
    def __init__(self, params: DemoParams, console: Console | None = None):
        self.p = params
        self.console = console or Console(stderr=True)
        self.stack_settings = StackSettings()
        self.children = Children(params.out_dir / "logs")
        self.stages: dict[str, float] = {}
        self.run_id = uuid.uuid4().hex[:8]
        self.watermarks: collect.Watermarks | None = None  # from stack up on, as the operator
        self.log_column: str | None = None  # a sensor the event log also reads back (the lifecycle: firmware)
        self.measured: dict = {}  # what the detection stretch cost (cpu_share, twin freshness, drain)
        from fleetpulse import endpoints

        self.bucket = endpoints.MODEL_BUCKET  # where the model's versions and channels are (the lifecycle: its own)
        for name in ("http_port", "grpc_port", "bridge_metrics_port", "score_metrics_port"):
            if not getattr(self.p, name):
                setattr(self.p, name, free_port())

    def stage(self, name: str, fn: Callable):
        self.console.rule(f"[bold]{name}")
        t0 = time.monotonic()
        result = fn()
        self.stages[name] = time.monotonic() - t0
        self.console.print(f"[green]✓[/] {name} in {self.stages[name]:.1f}s")
        return result

    def run(self) -> dict:
        t_start = time.monotonic()
        try:
            run, published = self._story()
            run["stages_s"] = {k: round(v, 1) for k, v in self.stages.items()}
            run["wall_time_s"] = round(time.monotonic() - t_start, 1)
            run["events_published"] = published
            run.update(self.measured)
            ev = run.pop("_evaluation")
            return report.write(self.p.out_dir, run, ev)
        finally:
            self._stop_watching()
            self.children.stop_all()
            if self.watermarks is not None:
                self.watermarks.close()
            if not self.p.keep_stack:
                control.down(self.stack_settings)

    def _story(self) -> tuple[dict, int]:
        """The stages; returns what was collected and how many events were published."""
        self.stage("stack up", self._stack_up)
        self.stage("bridge", self._start_bridge)
        train_sim = self.stage(f"simulate: training stretch ({self.p.train_profile} fleet)",
                               lambda: self._simulate(self.p.train_duration, self.p.seed, self.p.train_profile))  # fmt: skip
        trained = self.stage("train (KFP pipeline)", lambda: self._train(train_sim))
        self.stage("promote to stable", lambda: self._promote(trained))
        self.stage("model server", self._start_server)
        self.stage("transformer", self._start_scorer)
        live_sim = self.stage(f"simulate: detection stretch ({self.p.profile} fleet)",
                              lambda: self._measured(lambda: self._simulate(self.p.duration, self.p.seed + 1, self.p.profile)))  # fmt: skip
        scored = self.stage("drain transformer", self._drain)
        run = self.stage("collect and evaluate", lambda: self._collect(trained, live_sim, scored))
        return run, train_sim.get("events_sent", 0) + live_sim.get("events_sent", 0)

    def _stop_watching(self) -> None:
        """Stop the threads that sample the run."""
        self.sampling = False

    # -- stages ---------------------------------------------------------------------------------
    def _stack_up(self) -> None:
        # As many MQTT brokers as the stack runs already: fewer would stop the others' brokers.
        control.up(self.stack_settings, mqtt_brokers=max(1, control.mqtt_broker_count(self.stack_settings)),
                   progress=lambda msg: self.console.print(f"  {msg}", style="dim"))
        # Secured or not as the stack came up: the stack's own helpers below do not look it up.
        self.stack_settings = control.resolved(self.stack_settings)
        # Every service runs as its own identity on the production topics; the demo's own reads and
        # set-up (offsets, the event log, alerts, truth, twins) are the operator's.
        self.kafka = access.kafka(self.stack_settings)
        self.watermarks = collect.Watermarks(self.kafka)
        self._fresh_twins()

    def _fresh_twins(self) -> None:
        """Start from no twins. The demo simulates a new fleet each run under the same car ids, and the
        transformer resumes a car from its twin: an earlier run's twins would start cars in that run's
        statuses (measured: 30 false alerts per 1,000 car-h on a rerun) and, at 100,000 of them, hold
        the transformer's start for 30 s while it loads them. Dropped, because FerretDB's delete_many
        fails on 100,000 documents; the stack then recreates the collection and its _id lookup index."""
        from fleetpulse.clients import mongo_client
        from devtools.stack.mongodb import FerretDBService
        from fleetpulse.twin import TWIN_COLLECTION, TWIN_DATABASE

        client = mongo_client(access.mongodb_uri(self.stack_settings))
        try:
            client[TWIN_DATABASE].drop_collection(TWIN_COLLECTION)
        finally:
            client.close()
        FerretDBService(self.stack_settings).after_ready()

    def _start_bridge(self) -> None:
        # A session and share group of this run's own, gone when it ends. At QoS 1 a persistent
        # session left behind keeps queueing whatever reaches the shared broker afterwards (bench
        # runs, tests), and a later demo resuming it took that in as its fleet (measured: 1.04
        # million foreign records in a training stretch of 260,000); a stale member of a shared
        # group would take its round-robin share of the demo's messages where nobody reads them.
        env = {"FLEETPULSE_BRIDGE_QOS": "1", "FLEETPULSE_BRIDGE_METRICS_PORT": str(self.p.bridge_metrics_port),
               "FLEETPULSE_BRIDGE_CLIENT_ID": f"fleetpulse-demo-bridge-{self.run_id}",
               "FLEETPULSE_BRIDGE_SHARE_GROUP": f"fleetpulse-demo-{self.run_id}",
               "FLEETPULSE_BRIDGE_SESSION_EXPIRY_S": "0",
               **access.kafka_env("BRIDGE", self.stack_settings, identity="bridge"),
               **access.mqtt_env("BRIDGE", self.stack_settings, identity="bridge")}  # fmt: skip
        self.children.start("bridge", "bridge", env=env)
        wait_http_ok(f"http://127.0.0.1:{self.p.bridge_metrics_port}/metrics", 60, alive=lambda: self.children.check_alive("bridge"))

    def _simulate(self, duration: float, seed: int, profile: str, *extra: str) -> dict:
        before = self.watermarks(SENSOR_DATA)
        t0 = int(time.time() * 1000)
        summary = self.children.run_json(
            f"simulate-{seed}",
            "simulate", "--cars", str(self.p.cars), "--rate", str(self.p.rate), "--duration", str(duration), "--seed", str(seed),
            "--failures", str(self.p.failures), "--sample-interval", str(self.p.sample_interval), "--qos", str(self.p.qos),
            "--connections", str(SIMULATOR_CONNECTIONS), "--profile", profile, "--json", *extra, env=self._simulator_env(),
        )  # fmt: skip
        self._wait_bridge_idle()
        summary["window"] = {"from_ts": t0, "to_ts": int(time.time() * 1000), "start_offsets": before,
                             "end_offsets": self.watermarks(SENSOR_DATA)}  # fmt: skip
        return summary

    def _simulator_env(self) -> dict[str, str]:
        env = {**access.kafka_env("SIMULATOR", self.stack_settings, identity="simulator"),
               **access.mqtt_env("SIMULATOR", self.stack_settings, identity="simulator")}
        if self.p.cars <= SIMULATOR_CONNECTIONS:
            from simulator.car_model import car_id

            cars_file = access.car_credentials_file(self.stack_settings, [car_id(i) for i in range(self.p.cars)])
            if cars_file is not None:
                env["FLEETPULSE_SIMULATOR_CAR_CREDENTIALS_FILE"] = str(cars_file)
        return env

    def _wait_bridge_idle(self, quiet_s: float = 1.5, timeout: float = 60) -> None:
        """The simulator is done when it has published; wait until the bridge has forwarded it all."""
        last, since, deadline = None, time.monotonic(), time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = sum(self.watermarks(SENSOR_DATA).values())
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return
            time.sleep(0.3)

    def _train(self, train_sim: dict) -> dict:
        w = train_sim["window"]
        return self.children.run_json(
            "train", "train", "--model", self.p.model, "--epochs", str(self.p.epochs), "--min-f1", str(self.p.min_f1), "--json",
            "--from-ts", str(w["from_ts"]), "--to-ts", str(w["to_ts"]), "--bucket", self.bucket,
            env=access.kafka_env("TRAIN", self.stack_settings, identity="training"),
        )  # fmt: skip

    def _promote(self, trained: dict) -> None:
        """Serve the version just trained. A model that already has a stable version gets each new one
        as a candidate, shadowed until `fleetpulse models decide` promotes it: the server would score
        with an earlier run's stable (measured: version 1, trained on another fleet), not the model
        this run reports. So the demo, as the operator, promotes it (`fleetpulse models promote`)."""
        from fleetpulse import endpoints, model_store
        from fleetpulse.clients import gcs_client

        if trained["channel"] != model_store.CANDIDATE:
            return  # the model's first version, stable already
        bucket = trained["model_uri"].removeprefix("gs://").split("/")[0]
        before, _ = model_store.promote(gcs_client(endpoints.GCS_ENDPOINT), bucket, trained["model"], trained["version"])
        self.console.print(f"  {trained['model']} version {trained['version']} is stable (was version {before.stable})", style="dim")

    def _start_server(self, *extra: str) -> None:
        self.children.start("serve", "serve", "--http-port", str(self.p.http_port), "--grpc-port", str(self.p.grpc_port),
                            "--model-uri", f"gs://{self.bucket}/{self.p.model_name}", "--model", self.p.model_name, *extra)  # fmt: skip
        wait_http_ok(f"http://127.0.0.1:{self.p.http_port}/v2/models/{self.p.model_name}/ready", 180, alive=lambda: self.children.check_alive("serve"))

    def _start_scorer(self, extra_env: dict[str, str] | None = None) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from fleetpulse.clients import kafka_config

        self.start_offsets = {t: self.watermarks(t) for t in (SENSOR_DATA, ALERTS, GROUND_TRUTH)}
        # Under the prefix the transformer's principal may join (devtools/stack/rights.py).
        self.group = f"fleetpulse-transformer-demo-{self.run_id}"
        # Position the new group exactly at the start of the detection stretch before the scorer joins.
        c = Consumer(kafka_config(self.kafka, **{"group.id": self.group, "enable.auto.commit": False}))
        c.commit(offsets=[TopicPartition(SENSOR_DATA, p, o) for p, o in self.start_offsets[SENSOR_DATA].items()], asynchronous=False)
        c.close()
        env = {"FLEETPULSE_SCORE_GROUP_ID": self.group, "FLEETPULSE_SCORE_MODEL_GRPC": f"127.0.0.1:{self.p.grpc_port}",
               "FLEETPULSE_SCORE_MODEL_NAME": self.p.model_name, "FLEETPULSE_SCORE_METRICS_PORT": str(self.p.score_metrics_port),
               "FLEETPULSE_SCORE_MODEL_URI": f"gs://{self.bucket}/{self.p.model_name}",
               **access.kafka_env("SCORE", self.stack_settings, identity="transformer"),
               **access.mongodb_env("SCORE", self.stack_settings, identity="transformer"), **(extra_env or {})}  # fmt: skip
        self.children.start("score", "score", "--until-idle", str(self.p.idle_s), "--json", env=env)
        wait_http_ok(f"http://127.0.0.1:{self.p.score_metrics_port}/metrics", 90, alive=lambda: self.children.check_alive("score"))
        self.t_detect_start = time.time()
        self.throughput: list[tuple[float, float]] = []
        self.sampling = True
        threading.Thread(target=self._sample_throughput, daemon=True).start()

    def _sample_throughput(self, window: int = 5) -> None:
        """Scored events/s from the transformer's counter, over a sliding 5-sample window
        (scores are applied per micro-batch, so per-second differences alias into spikes)."""
        samples = [(time.time(), self._scored())]
        while self.sampling:
            time.sleep(1.0)
            samples.append((time.time(), self._scored()))
            (t0, n0), (t1, n1) = samples[max(0, len(samples) - 1 - window)], samples[-1]
            self.throughput.append((round(t1 - self.t_detect_start, 1), max(0.0, (n1 - n0) / (t1 - t0))))

    def _measured(self, stretch: Callable[[], dict]) -> dict:
        """Run the detection stretch measuring what it costs: CPU per process (every server and
        FleetPulse process but the simulator, which stands for the cars) and how fresh twins are."""
        from devtools.demo.cpu import CpuMeter

        pids = {svc.label: pid for svc in control.services(self.stack_settings) if (pid := svc.process.pid()) is not None}
        pids.update({name: proc.pid for name, proc in self.children.procs.items() if proc.poll() is None})
        meter = CpuMeter(pids)
        ages: list[np.ndarray] = []
        missing: list[int] = []  # per sample, the sampled cars that had no twin yet
        done = threading.Event()
        sampler = threading.Thread(target=self._sample_twin_ages, args=(ages, missing, done), daemon=True)
        meter.start()
        sampler.start()
        try:
            return stretch()
        finally:
            done.set()
            cpu = meter.stop()
            sampler.join(30)
            all_ages = np.concatenate(ages) if ages else np.zeros(0)
            self.measured = {"cpu_share": cpu["cpu_share"], "cpu": cpu,
                             "twin_freshness_p99_s": round(float(np.percentile(all_ages, 99)), 1) if len(all_ages) else None,
                             "twin_freshness_samples": len(ages), "twin_freshness_missing": sum(missing)}  # fmt: skip

    def _sample_twin_ages(self, ages: list, missing: list, done: threading.Event, every_s: float = 10.0) -> None:
        """Every ``every_s``, for a fixed random sample of TWIN_SAMPLE cars: each twin's age, now minus
        the Kafka time of the newest event it holds (the car's own gap between events included).

        By _id, one read per car (FerretDB serves those from its index): scanning every twin cost the
        twin store a full read of 100,000 documents every 10 s at fleet scale, inside the figures it
        measured."""
        from fleetpulse.clients import mongo_client
        from fleetpulse.twin import TWIN_COLLECTION, TWIN_DATABASE
        from simulator.car_model import car_id

        rng = np.random.default_rng(self.p.seed)
        cars = [car_id(int(i)) for i in rng.choice(self.p.cars, min(TWIN_SAMPLE, self.p.cars), replace=False)]
        client = mongo_client(access.mongodb_uri(self.stack_settings))
        try:
            coll = client[TWIN_DATABASE][TWIN_COLLECTION]
            while not done.wait(every_s):
                now = time.time() * 1000
                docs = [coll.find_one({"_id": c}, {"last_seen_ms": 1}) for c in cars]
                missing.append(sum(d is None for d in docs))
                ages.append((now - np.array([d.get("last_seen_ms", 0) for d in docs if d is not None], np.float64)) / 1000)
        except Exception as exc:  # noqa: BLE001 - a lost sample leaves the figure to the others
            self.console.print(f"  twin freshness sampling stopped: {type(exc).__name__}: {exc}", style="dim")
        finally:
            client.close()

    def _drain(self) -> dict:
        proc = self.children.procs["score"]
        end = self.watermarks(SENSOR_DATA)
        total = sum(end.values()) - sum(self.start_offsets[SENSOR_DATA].values())
        t0, scored_all = time.monotonic(), None
        with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=self.console) as bar:
            task = bar.add_task("score", total=total)
            while proc.poll() is None:
                scored = self._scored()
                if scored_all is None and scored >= total:
                    scored_all = time.monotonic() - t0
                bar.update(task, completed=min(total, scored))
                time.sleep(0.5)
            bar.update(task, completed=min(total, self._scored()))
        # The transformer leaves once idle for idle_s, after its final checkpoint: every twin durable.
        self.measured.update(drain_s=round(max(0.0, time.monotonic() - t0 - self.p.idle_s), 1),
                             scored_all_s=None if scored_all is None else round(scored_all, 1))
        self.sampling = False
        self.children.procs.pop("score", None)
        if proc.returncode != 0:
            raise StageFailed(f"transformer exited with {proc.returncode} (log: {self.children.log_dir / 'score.log'})")
        lines = [line for line in (self.children.log_dir / "score.log").read_text().splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}

    def _scored(self) -> int:
        """Events the transformer has scored so far, from its /metrics counter. (Committed offsets
        trail by up to the twin interval: healthy cars' twins are written every minute, and offsets
        are committed no further than the first event a durable twin lacks.)"""
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.p.score_metrics_port}/metrics", timeout=2) as resp:
                for line in resp.read().decode().splitlines():
                    if line.startswith("fleetpulse_transformer_scored_total "):
                        self._last_scored = int(float(line.split()[1]))
                        break
        except OSError:
            pass  # exited or busy: the last figure stands
        return getattr(self, "_last_scored", 0)

    def _collect(self, trained: dict, live_sim: dict, scored: dict) -> dict:
        end = {t: self.watermarks(t) for t in (SENSOR_DATA, ALERTS, GROUND_TRUTH)}
        start = self.start_offsets
        log = collect.event_log(self.kafka, SENSOR_DATA, start[SENSOR_DATA], end[SENSOR_DATA], column=self.log_column)
        alerts = collect.alerts(self.kafka, ALERTS, start[ALERTS], end[ALERTS])
        truth = collect.truth(self.kafka, GROUND_TRUTH, start[GROUND_TRUTH], end[GROUND_TRUTH])
        self.collected = (log, alerts, truth)
        ev = evaluation.quality(collect.alerting(log, alerts), evaluation.label(log.car, log.ts_ms, truth))
        cars = sorted(set(log.car.tolist()))
        twins = self._count_twins(cars)
        latencies = [a["alert_ts_ms"] - a["event_ts_ms"] for a in alerts]
        lat_timeline = _p99_timeline(alerts, self.t_detect_start)
        metrics = trained.get("metrics", {})
        return {
            "cars": len(cars),
            "events_sent": live_sim.get("events_sent"),
            "alerts": len(alerts),
            "twins": twins,
            "latencies_ms": latencies,
            "latency_timeline": lat_timeline,
            "throughput": self.throughput,
            "events_per_s": scored.get("events_per_s"),
            "scorer": scored,
            "model_uri": trained.get("model_uri"),
            "model_version": trained.get("version"),
            "threshold": trained.get("threshold") or metrics.get("threshold"),
            "training": {"records": trained.get("records"), "metrics": metrics},
            "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.p).items()},
            "score_traces": self._score_traces(log, truth, end),
            "_evaluation": ev,
        }

    def _count_twins(self, cars: list[str]) -> int:
        from fleetpulse.clients import mongo_client
        from fleetpulse.twin import TWIN_COLLECTION, TWIN_DATABASE

        client = mongo_client(access.mongodb_uri(self.stack_settings))
        try:
            coll = client[TWIN_DATABASE][TWIN_COLLECTION]
            # One scan, filtered here: FerretDB (SQLite) runs every count with `$in` as a full table
            # scan, and 200 of them over 100,000 twins took over 20 minutes.
            since = int(self.t_detect_start * 1000) - 60_000
            wanted = set(cars)
            found = sum(1 for d in coll.find({}, {"last_seen_ms": 1}, batch_size=10_000)
                        if d["_id"] in wanted and d.get("last_seen_ms", 0) >= since)
            return found
        finally:
            client.close()

    def _score_traces(self, log, truth, end) -> dict:
        """Scores of a few failing and healthy cars' events, asked from the model server over V2 REST."""
        from fleetpulse.codec import decode_batch
        from fleetpulse.ground_truth import HEALTHY, histories_by_car

        histories = histories_by_car(truth)
        failing = [c for c, h in histories.items() if any(r.mode != HEALTHY for r in h)][:4]
        healthy = [c for c, h in histories.items() if all(r.mode == HEALTHY for r in h)][:2]
        wanted = set(failing + healthy)
        payloads: dict[str, list[bytes]] = {c: [] for c in wanted}
        for batch in collect.read_range(self.kafka, SENSOR_DATA, self.start_offsets[SENSOR_DATA], end[SENSOR_DATA]):
            for m in batch:
                car = m.key().decode()
                if car in wanted:
                    payloads[car].append(m.value())
        traces = {}
        for car in failing + healthy:
            batch = decode_batch(payloads[car])
            rows = batch.values[batch.valid]
            scores = self._infer(rows)
            if scores is None:
                return {}
            onset = next((r for r in histories[car] if r.mode != HEALTHY), None)
            onset_seq = None
            if onset is not None:
                ts = np.sort(log.ts_ms[log.car == car])
                onset_seq = int(np.searchsorted(ts, onset.onset_ts))
            traces[car] = {"seq": list(range(len(scores))), "score": [float(s) for s in scores], "onset_seq": onset_seq,
                           "mode": onset.mode if onset else HEALTHY}  # fmt: skip
        return traces

    def _infer(self, rows):
        """Scores from the model server's V2 REST endpoint (inference/'s client speaks gRPC and its
        modules are being moved; this is the one call the report needs)."""
        import httpx

        if self.p.model != "autoencoder" or not len(rows):
            return None  # the LSTM needs per-car windows; traces are drawn for the autoencoder
        url = f"http://127.0.0.1:{self.p.http_port}/v2/models/{self.p.model_name}/infer"
        tensor = {"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}
        try:
            resp = httpx.post(url, json={"inputs": [tensor]}, timeout=30).raise_for_status()
        except httpx.HTTPError:
            return None
        return next(o["data"] for o in resp.json()["outputs"] if o["name"] == "score")


def _p99_timeline(alerts: list[dict], t0: float, bucket_s: float = 5.0) -> list[tuple[float, float]]:
    buckets: dict[int, list[int]] = {}
    for a in alerts:
        b = int((a["event_ts_ms"] / 1000 - t0) // bucket_s)
        buckets.setdefault(b, []).append(a["alert_ts_ms"] - a["event_ts_ms"])
    return [(b * bucket_s, float(np.percentile(v, 99))) for b, v in sorted(buckets.items()) if b >= 0]
