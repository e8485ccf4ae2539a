"""`fleetpulse score` against real Kafka, the real model server and MongoDB (FerretDB)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from fleetpulse.codec import encode_batch
from fleetpulse.topics import DLQ_REASON_HEADER
from fleetpulse.alerts import decode_alert
from tests.serving.conftest import FLEETPULSE, ModelServer, failing_rows, healthy_rows

N_CARS = 20


class Run:
    """Topics, twin collection and env for one transformer run against given servers."""

    def __init__(self, unique: str, kafka: str, mongodb_uri: str, model_server):
        self.kafka, self.mongodb_uri = kafka, mongodb_uri
        self.topic, self.alerts, self.dlq = f"sensor-{unique}", f"alerts-{unique}", f"dlq-{unique}"
        self.collection = f"cars_{unique}"
        admin = AdminClient({"bootstrap.servers": kafka})
        for f in admin.create_topics([NewTopic(t, 3, 1) for t in (self.topic, self.alerts, self.dlq)]).values():
            f.result()
        self.env = {**os.environ, "FLEETPULSE_SCORE_KAFKA_BOOTSTRAP_SERVERS": kafka, "FLEETPULSE_SCORE_TOPIC": self.topic,
                    "FLEETPULSE_SCORE_ALERTS_TOPIC": self.alerts, "FLEETPULSE_SCORE_DLQ_TOPIC": self.dlq,
                    "FLEETPULSE_SCORE_GROUP_ID": f"transformer-{unique}", "FLEETPULSE_SCORE_MODEL_GRPC": model_server.grpc_target,
                    "FLEETPULSE_SCORE_MODEL_NAME": model_server.model, "FLEETPULSE_SCORE_MONGODB_URI": mongodb_uri,
                    "FLEETPULSE_SCORE_TWIN_COLLECTION": self.collection, "FLEETPULSE_SCORE_METRICS_PORT": "0",
                    "FLEETPULSE_SCORE_RETRY_MAX_S": "1"}
        self.producer = Producer({"bootstrap.servers": kafka, "linger.ms": 5, "message.timeout.ms": 0, "enable.idempotence": True,
                                  "reconnect.backoff.max.ms": 500})
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
        c = Consumer({"bootstrap.servers": self.kafka, "group.id": f"reader-{time.monotonic_ns()}", "auto.offset.reset": "earliest"})
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


def test_failing_car_goes_ok_warning_failing_with_an_alert_per_change_and_healthy_cars_stay_ok(
        model_server, kafka_bootstrap, mongodb_uri, unique):
    run = Run(unique, kafka_bootstrap, mongodb_uri, model_server)
    ids = produce_one_failing_car(run, np.random.default_rng(7))  # car-000 fails from its 11th reading on
    run.producer.produce(run.topic, key=b"car-garbage", value=b"\x00\x00\x00\x00\x01\xff")
    run.producer.flush()

    summary = run.score()
    assert summary["consumed"] == 30 * N_CARS + 1 and summary["scored"] == 30 * N_CARS and summary["dlq"] == 1

    alerts = [decode_alert(m.value()) for m in run.read(run.alerts, expect_at_least=2)]
    assert [(a["car_id"], a["previous_status"], a["status"]) for a in alerts] == [
        ("car-000", "ok", "warning"), ("car-000", "warning", "failing")]
    assert alerts[0]["source_offset"] < alerts[1]["source_offset"] and alerts[0]["score"] > alerts[0]["threshold"]
    assert all(a["event_ts_ms"] <= a["alert_ts_ms"] for a in alerts)

    twins = run.twins()
    assert set(twins) == set(ids)
    assert twins["car-000"]["status"] == "failing" and twins["car-000"]["counters"]["alerts"] == 2
    assert all(twins[c]["status"] == "ok" and twins[c]["counters"] == {"events": 30, "over_threshold": 0, "alerts": 0}
               for c in ids[1:])
    assert twins["car-000"]["model_version"] == "1" and twins["car-000"]["threshold"] == pytest.approx(3.0)

    dlq = run.read(run.dlq, expect_at_least=1)
    assert len(dlq) == 1 and dict(dlq[0].headers())[DLQ_REASON_HEADER]


def test_replaying_the_same_offsets_leaves_the_same_twins_and_no_new_alerts(model_server, kafka_bootstrap, mongodb_uri, unique):
    run = Run(unique, kafka_bootstrap, mongodb_uri, model_server)
    rng = np.random.default_rng(8)
    for step in range(20):
        rows = healthy_rows(N_CARS, rng)
        if step >= 5:
            rows[3] = failing_rows(1, rng)[0]
        run.produce(rows, cars())
    run.producer.flush()
    run.score()
    before = run.twins()
    alerts_before = len(run.read(run.alerts, expect_at_least=2))
    # A new group starts at the beginning: every event is a replay of one already in the twin.
    summary = run.score(group=f"replay-{unique}")
    assert summary["skipped_replayed"] == 20 * N_CARS and summary["scored"] == 0
    assert run.twins() == before
    assert len(run.read(run.alerts, expect_at_least=alerts_before)) == alerts_before == 2


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


@pytest.mark.slow
def test_model_server_killed_mid_stream_loses_nothing(serving_model, gcs_endpoint, kafka_bootstrap, mongodb_uri, unique, tmp_path):
    server = ModelServer(serving_model, gcs_endpoint, tmp_path / "serve.log").wait_ready()
    try:
        run = Run(unique, kafka_bootstrap, mongodb_uri, server)
        summary = stream_and_kill(run, server.kill, lambda: server.start().wait_ready(), tmp_path=tmp_path)
        assert summary["retries"].get("model-server", 0) > 0
    finally:
        server.stop()


@pytest.mark.slow
def test_kafka_killed_mid_stream_loses_nothing(model_server, private_service, mongodb_uri, unique, tmp_path):
    kafka = private_service("kafka")
    run = Run(unique, kafka.endpoint["bootstrap_servers"], mongodb_uri, model_server)
    # Idle only counts once Kafka answers again; give the test's own producer time to resend its backlog.
    stream_and_kill(run, kafka.kill, kafka.start, seconds=15.0, tmp_path=tmp_path, until_idle=10.0)


@pytest.mark.slow
def test_mongodb_killed_mid_stream_loses_nothing(model_server, private_service, kafka_bootstrap, unique, tmp_path):
    mongo = private_service("mongodb")
    run = Run(unique, kafka_bootstrap, mongo.endpoint["uri"], model_server)
    # Every car's twin at every checkpoint, so writes meet the outage (deferred twins: test_twin_writes.py).
    run.env["FLEETPULSE_SCORE_TWIN_INTERVAL_S"] = "0.5"
    summary = stream_and_kill(run, mongo.kill, mongo.start, tmp_path=tmp_path)
    assert summary["retries"].get("mongodb", 0) > 0
