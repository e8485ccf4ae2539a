"""What the serving tests share: a tiny SavedModel with the production signature, published to fake
GCS; `fleetpulse serve` as a real subprocess on free ports; a `fleetpulse score` ``Run`` with its own
topics, group and twin collection, as the operator (``admin``) on the stack, secured or not."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from devtools.stack import access
from devtools.stack.process import free_port
from devtools.stack.settings import StackSettings
from fleetpulse import model_store
from fleetpulse.clients import gcs_client, kafka_config
from fleetpulse.codec import encode_batch
from fleetpulse.contract import N_FEATURES, SENSOR_FIELDS
from fleetpulse.readings import HIGH, LOW
from fleetpulse.settings import KafkaConnection
from tests.support.paths import FLEETPULSE

BUCKET = "fleetpulse-models"

# Healthy readings are N(MEAN, STD/2); the fixture model scores mean squared z-score, so ~0.25 when
# healthy and ~65 for failing ones (8 STD off). Both stay inside every reading's physical range
# (fleetpulse.readings), which the transformer dead-letters readings outside of; tyre pressures and
# the firmware sit where real cars have them, so payloads keep the codec's fast layout.
_PRESSURES = [i for i, name in enumerate(SENSOR_FIELDS) if name.startswith("tire_pressure")]
_FIRMWARE = SENSOR_FIELDS.index("control_unit_firmware")
MEAN = ((LOW + HIGH) / 2).astype(np.float32)
STD = ((HIGH - LOW) / 50).astype(np.float32)
MEAN[_PRESSURES], STD[_PRESSURES] = 32.0, 1.0
MEAN[_FIRMWARE], STD[_FIRMWARE] = 1000.0, 10.0
THRESHOLD = 3.0


def healthy_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    return (MEAN + STD * rng.standard_normal((n, N_FEATURES)) * 0.5).astype(np.float32)


def failing_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    return (MEAN + STD * (8.0 + rng.standard_normal((n, N_FEATURES)))).astype(np.float32)


def build_saved_model(path: Path, threshold: float = THRESHOLD, scale: float = 1.0) -> Path:
    """A SavedModel with the contract signature: input [N,18] -> score [N], anomaly [N]."""
    import tensorflow as tf

    class ZScore(tf.Module):
        def __init__(self):
            super().__init__()
            self.mean = tf.constant(MEAN)
            self.std = tf.constant(STD)
            self.scale = tf.constant(np.float32(scale))
            self.threshold = tf.Variable(np.float32(threshold), trainable=False, name="threshold")

        @tf.function(input_signature=[tf.TensorSpec([None, N_FEATURES], tf.float32, name="input")])
        def serve(self, input):  # noqa: A002 - the contract names the input `input`
            z = (input - self.mean) / self.std
            score = self.scale * tf.reduce_mean(tf.square(z), axis=1)
            return {"score": score, "anomaly": score > self.threshold}

    module = ZScore()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def build_windowed_model(path: Path, window: int, threshold: float = THRESHOLD) -> Path:
    """A valid LSTM-shaped SavedModel: input [N, window, 18] -> the z-score of each window's newest reading."""
    import tensorflow as tf

    class Newest(tf.Module):
        def __init__(self):
            super().__init__()
            self.threshold = tf.Variable(np.float32(threshold), trainable=False, name="threshold")

        @tf.function(input_signature=[tf.TensorSpec([None, window, N_FEATURES], tf.float32, name="input")])
        def serve(self, input):  # noqa: A002 - the contract names the input `input`
            score = tf.reduce_mean(tf.square((input[:, -1, :] - MEAN) / STD), axis=1)
            return {"score": score, "anomaly": score > self.threshold}

    module = Newest()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def build_broken_model(path: Path, how: str) -> Path:
    """A SavedModel the server must refuse: ``truncated`` (saved_model.pb cut short), ``wrong_signature``
    (input named ``x``, no ``anomaly``) or ``nan_scores`` (NaN for every reading)."""
    import tensorflow as tf

    if how == "truncated":
        build_saved_model(path)
        pb = path / "saved_model.pb"
        pb.write_bytes(pb.read_bytes()[: pb.stat().st_size // 3])
        return path

    class Broken(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, N_FEATURES], tf.float32, name="x" if how == "wrong_signature" else "input")])
        def serve(self, x):
            score = tf.reduce_mean(x, axis=1) * np.float32("nan")
            return {"score": score} if how == "wrong_signature" else {"score": score, "anomaly": score > THRESHOLD}

    module = Broken()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def publish_saved(gcs_endpoint: str, model: str, saved: Path, metadata: dict | None = None) -> int:
    """Publish a SavedModel directory as the model's next version (autoencoder metadata unless given)."""
    gcs = gcs_client(gcs_endpoint)
    version = model_store.claim_next_version(gcs, BUCKET, model)
    model_store.publish(gcs, version, saved, metadata or {"model_type": "autoencoder", "threshold": THRESHOLD, "features": N_FEATURES})
    return version.version


def publish_model(gcs_endpoint: str, model: str, tmp: Path, **kwargs) -> int:
    saved = build_saved_model(tmp / f"saved-{time.monotonic_ns()}", **kwargs)
    metadata = {"model_type": "autoencoder", "threshold": kwargs.get("threshold", THRESHOLD), "features": N_FEATURES}
    return publish_saved(gcs_endpoint, model, saved, metadata)


def release_saved(gcs_endpoint: str, model: str, saved: Path, metadata: dict | None = None) -> tuple[int, str]:
    """Publish a SavedModel as the next version and put it on a channel, as the pipeline does after its
    gate; returns (version, "stable" or "candidate")."""
    version = publish_saved(gcs_endpoint, model, saved, metadata)
    return version, model_store.release(gcs_client(gcs_endpoint), model_store.ModelVersion(BUCKET, model, version))


def release_model(gcs_endpoint: str, model: str, tmp: Path, **kwargs) -> tuple[int, str]:
    saved = build_saved_model(tmp / f"saved-{time.monotonic_ns()}", **kwargs)
    return release_saved(gcs_endpoint, model, saved, {"model_type": "autoencoder", "threshold": kwargs.get("threshold", THRESHOLD),
                                                      "features": N_FEATURES})


class ModelServer:
    """`fleetpulse serve` as a subprocess on free ports; may be killed and restarted on the same ports."""

    def __init__(self, model: str, gcs_endpoint: str, log: Path):
        self.model = model
        self.http_port, self.grpc_port = free_port(), free_port()
        self.env = {**os.environ, "FLEETPULSE_SERVE_MODEL_URI": f"gs://{BUCKET}/{model}", "FLEETPULSE_SERVE_GCS_ENDPOINT": gcs_endpoint,
                    "FLEETPULSE_SERVE_POLL_INTERVAL_S": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> "ModelServer":
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([FLEETPULSE, "serve", "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port)],
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self, timeout: float = 120.0) -> "ModelServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"model server exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/v2/models/{self.model}/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"model server not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def served_version(self, name: str) -> str | None:
        """The version a one-sample REST request to V2 model ``name`` is answered by; None while it is not served."""
        meta = httpx.get(f"{self.url}/v2/models/{name}", timeout=10)
        if meta.status_code == 404:
            return None
        shape = [1, *meta.json()["inputs"][0]["shape"][1:]]  # a reading, or a window of readings
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": np.broadcast_to(MEAN, shape).ravel().tolist()}]}
        r = httpx.post(f"{self.url}/v2/models/{name}/infer", json=body, timeout=10)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()["model_version"]

    def wait_serving(self, name: str, version: int | None, timeout: float = 60.0) -> "ModelServer":
        """Until ``name`` is answered by ``version`` (None: until ``name`` is not served)."""
        want = None if version is None else str(version)
        deadline = time.monotonic() + timeout
        while (got := self.served_version(name)) != want:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} is served by version {got}, not {want}, after {timeout}s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        return self

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


N_CARS = 20


class Run:
    """Topics, twin collection and env for one transformer run against given servers.

    ``kafka``: the ``kafka`` fixture, or a private server's ``connection``; ``mongodb``: the settings of
    the stack whose FerretDB holds the twins (a private server's; None: the shared stack's). The
    transformer logs in as the operator (admin): its topics and group are this run's own, on which
    no service principal has rights.
    """

    def __init__(self, unique: str, kafka: KafkaConnection, model_server, mongodb: StackSettings | None = None):
        self.kafka, self.mongodb_uri = kafka, access.mongodb_uri(mongodb)
        self.topic, self.alerts, self.dlq = f"sensor-{unique}", f"alerts-{unique}", f"dlq-{unique}"
        self.collection = f"cars_{unique}"
        admin = AdminClient(kafka_config(kafka))
        for f in admin.create_topics([NewTopic(t, 3, 1) for t in (self.topic, self.alerts, self.dlq)]).values():
            f.result()
        self.env = {**os.environ, **access.connection_env("SCORE", kafka), **access.mongodb_env("SCORE", mongodb),
                    "FLEETPULSE_SCORE_TOPIC": self.topic, "FLEETPULSE_SCORE_ALERTS_TOPIC": self.alerts, "FLEETPULSE_SCORE_DLQ_TOPIC": self.dlq,
                    "FLEETPULSE_SCORE_GROUP_ID": f"transformer-{unique}", "FLEETPULSE_SCORE_MODEL_GRPC": model_server.grpc_target,
                    "FLEETPULSE_SCORE_MODEL_NAME": model_server.model, "FLEETPULSE_SCORE_TWIN_COLLECTION": self.collection,
                    "FLEETPULSE_SCORE_METRICS_PORT": "0", "FLEETPULSE_SCORE_RETRY_MAX_S": "1"}
        self.producer = Producer(kafka_config(kafka, **{"linger.ms": 5, "message.timeout.ms": 0, "enable.idempotence": True,
                                                        "reconnect.backoff.max.ms": 500}))
        self.sent: dict[str, int] = {}

    def produce(self, rows: np.ndarray, cars: list[str]) -> None:
        for car, payload in zip(cars, encode_batch(rows)):
            self.producer.produce(self.topic, key=car.encode(), value=payload)
            self.sent[car] = self.sent.get(car, 0) + 1
        self.producer.poll(0)

    def score(self, until_idle: float = 4.0, group: str | None = None, timeout: float = 180) -> dict:
        env = {**self.env, **({"FLEETPULSE_SCORE_GROUP_ID": group} if group else {})}
        out = subprocess.run([FLEETPULSE, "score", "--until-idle", str(until_idle), "--json"], env=env, capture_output=True,
                             text=True, timeout=timeout)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    def start_score(self, until_idle: float, log) -> subprocess.Popen:
        return subprocess.Popen([FLEETPULSE, "score", "--until-idle", str(until_idle), "--json"], env=self.env,
                                stdout=subprocess.PIPE, stderr=log, text=True)

    def read(self, topic: str, expect_at_least: int = 0, timeout: float = 20.0) -> list:
        c = Consumer({**kafka_config(self.kafka), "group.id": f"reader-{time.monotonic_ns()}", "auto.offset.reset": "earliest"})
        c.subscribe([topic])
        out, deadline, idle_since = [], time.monotonic() + timeout, time.monotonic()
        while time.monotonic() < deadline:
            msgs = c.consume(1000, 0.5)
            out += [m for m in msgs if m.error() is None]
            if msgs:
                idle_since = time.monotonic()
            elif len(out) >= expect_at_least and time.monotonic() - idle_since > 2:
                break
        c.close()
        return out

    def twins(self) -> dict[str, dict]:
        from pymongo import MongoClient

        return {d["_id"]: d for d in MongoClient(self.mongodb_uri)["fleetpulse"][self.collection].find()}


def cars(n: int = N_CARS) -> list[str]:
    return [f"car-{i:03d}" for i in range(n)]


def produce_one_failing_car(run: Run, rng: np.random.Generator, steps: int = 30, fails_from: int = 10) -> list[str]:
    """``steps`` readings of every car; car-000's are failing from reading ``fails_from`` on."""
    ids = cars()
    for step in range(steps):
        rows = healthy_rows(N_CARS, rng)
        if step >= fails_from:
            rows[0] = failing_rows(1, rng)[0]
        run.produce(rows, ids)
    return ids


def stream_and_kill(run: Run, kill, restart, seconds: float = 12.0, cars_n: int = N_CARS, tmp_path=None, until_idle: float = 6.0) -> dict:
    """Produce for ``seconds`` while the transformer runs; kill a dependency a third in, restart it at two thirds."""
    log = open(tmp_path / "score.log", "w")
    proc = run.start_score(until_idle=until_idle, log=log)
    rng = np.random.default_rng(9)
    ids = cars(cars_n)
    t0 = time.monotonic()
    killed = restarted = False
    while time.monotonic() - t0 < seconds:
        run.produce(healthy_rows(cars_n, rng), ids)
        elapsed = time.monotonic() - t0
        if not killed and elapsed > seconds / 3:
            kill()
            killed = True
        if killed and not restarted and elapsed > 2 * seconds / 3:
            threading.Thread(target=restart).start()
            restarted = True
        time.sleep(0.05)
    run.producer.flush()
    out, _ = proc.communicate(timeout=240)
    log.close()
    assert proc.returncode == 0, (tmp_path / "score.log").read_text()[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    # If the first run went idle before this test's own producer had resent its backlog (Kafka case),
    # a second run resumes from the committed offsets and the twins it continues must still add up.
    scored = summary["scored"] + summary["skipped_replayed"]
    if summary["consumed"] < sum(run.sent.values()):
        second = run.score(until_idle=3.0)
        scored += second["scored"] + second["skipped_replayed"]
    twins = run.twins()
    for car in ids:
        assert twins[car]["counters"]["events"] == run.sent[car], (car, twins[car]["counters"], run.sent[car])
    assert scored >= sum(run.sent.values())
    return summary
