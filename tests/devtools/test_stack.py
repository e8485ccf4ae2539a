"""The local stack: real servers, real round trips with stock clients, idempotent lifecycle."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from devtools.stack import access
from devtools.stack.process import free_port
from devtools.stack.settings import StackSettings
from fleetpulse.clients import kafka_config
from tests.support.mqtt import connect_to, paho_client

FLEETPULSE = [sys.executable, "-m", "fleetpulse.cli"]


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*FLEETPULSE, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)


def test_status_json_has_the_documented_shape(stack):
    proc = run_cli("stack", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout)
    assert state["kafka"]["bootstrap_servers"].startswith("127.0.0.1:")
    assert state["mqtt"]["host"] == "127.0.0.1" and isinstance(state["mqtt"]["port"], int)
    assert state["mongodb"]["uri"].startswith("mongodb://127.0.0.1:")
    assert state["gcs"]["endpoint"].startswith("http://127.0.0.1:")
    assert all(state[name]["running"] is True for name in ("kafka", "mqtt", "mongodb", "gcs"))


def test_kafka_round_trip_with_a_stock_client(kafka, unique):
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"test-roundtrip-{unique}"
    admin = AdminClient(kafka_config(kafka))  # secured, topics are never created by a first produce
    for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        f.result()
    producer = Producer(kafka_config(kafka))
    producer.produce(topic, key=b"car-1", value=b"hello")
    assert producer.flush(10) == 0
    consumer = Consumer({**kafka_config(kafka), "group.id": unique, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + 20
        msg = None
        while time.monotonic() < deadline and (msg is None or msg.error()):
            msg = consumer.poll(0.5)
        assert msg is not None and not msg.error()
        assert (msg.key(), msg.value()) == (b"car-1", b"hello")
    finally:
        consumer.close()


def test_project_topics_exist_with_their_partitions(kafka):
    from confluent_kafka.admin import AdminClient

    from fleetpulse.topics import TOPICS

    topics = AdminClient(kafka_config(kafka)).list_topics(timeout=10).topics
    for spec in TOPICS.values():
        assert spec.name in topics
        assert len(topics[spec.name].partitions) == spec.partitions


def test_mqtt_round_trip_with_a_stock_client(mqtt, unique):
    import threading

    got: list[bytes] = []
    done = threading.Event()
    client = paho_client(mqtt)
    client.on_message = lambda c, u, m: (got.append(m.payload), done.set())
    connect_to(client, mqtt)
    client.loop_start()
    try:
        client.subscribe(f"vehicles/sensor/data/{unique}", qos=1)
        time.sleep(0.2)
        client.publish(f"vehicles/sensor/data/{unique}", b"\x00payload", qos=1).wait_for_publish(5)
        assert done.wait(5)
        assert got == [b"\x00payload"]
    finally:
        client.loop_stop()
        client.disconnect()


def test_mongodb_wire_round_trip_with_pymongo(mongodb_uri, unique):
    from pymongo import MongoClient

    client = MongoClient(mongodb_uri, serverSelectionTimeoutMS=5000)
    coll = client["fleetpulse_test"][f"cars_{unique}"]
    coll.update_one({"_id": "car-1"}, {"$set": {"status": "ok"}}, upsert=True)
    assert coll.find_one({"_id": "car-1"}) == {"_id": "car-1", "status": "ok"}
    coll.drop()


def test_gcs_round_trip_and_generation_precondition(gcs_endpoint, unique):
    from google.api_core.exceptions import PreconditionFailed

    from fleetpulse.clients import gcs_client

    client = gcs_client(gcs_endpoint)
    blob = client.bucket("fleetpulse-models").blob(f"tests/{unique}/object")
    blob.upload_from_string(b"v1", if_generation_match=0)
    assert blob.download_as_bytes() == b"v1"
    with pytest.raises(PreconditionFailed):
        client.bucket("fleetpulse-models").blob(f"tests/{unique}/object").upload_from_string(b"v2", if_generation_match=0)
    blob.delete()


def test_stack_up_twice_is_harmless(stack):
    proc = run_cli("stack", "up")
    assert proc.returncode == 0, proc.stderr
    assert "none, all were running" in proc.stdout


def stack_settings(env: dict) -> StackSettings:
    """The settings `fleetpulse stack` reads from ``env`` (a private stack's)."""
    return StackSettings(**{k.removeprefix("FLEETPULSE_STACK_").lower(): v for k, v in env.items()})


@pytest.fixture
def private_stack_env(tmp_path) -> dict:
    """Env for a whole second stack on free ports, so lifecycle tests never touch the shared one."""
    return {
        "FLEETPULSE_STACK_STATE_DIR": str(tmp_path / "state"),
        "FLEETPULSE_STACK_KAFKA_PORT": str(free_port()),
        "FLEETPULSE_STACK_KAFKA_CONTROLLER_PORT": str(free_port()),
        "FLEETPULSE_STACK_MQTT_PORT": str(free_port()),
        "FLEETPULSE_STACK_MQTT_TLS_PORT": str(free_port()),  # a new stack is secured: its TLS listener too
        "FLEETPULSE_STACK_MONGODB_PORT": str(free_port()),
        "FLEETPULSE_STACK_GCS_PORT": str(free_port()),
        "FLEETPULSE_STACK_KAFKA_HEAP": "512m",
    }


@pytest.mark.slow
def test_down_then_up_keeps_kafka_data_and_twins(stack, private_stack_env):
    from confluent_kafka import Consumer, Producer
    from pymongo import MongoClient

    env = private_stack_env
    try:
        assert run_cli("stack", "up", env=env).returncode == 0
        settings = stack_settings(env)
        kafka, uri = access.kafka(settings), access.mongodb_uri(settings)
        producer = Producer(kafka_config(kafka))
        producer.produce("sensor-data", key=b"car-7", value=b"kept")
        assert producer.flush(10) == 0
        MongoClient(uri)["fleetpulse"]["cars"].insert_one({"_id": "car-7", "status": "failing"})

        down = run_cli("stack", "down", env=env)
        assert down.returncode == 0 and "kafka" in down.stdout
        assert json.loads(run_cli("stack", "status", "--json", env=env).stdout)["kafka"]["running"] is False
        assert run_cli("stack", "up", env=env).returncode == 0

        consumer = Consumer({**kafka_config(kafka), "group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest"})
        consumer.subscribe(["sensor-data"])
        values, deadline = [], time.monotonic() + 30
        while time.monotonic() < deadline and b"kept" not in values:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                values.append(msg.value())
        consumer.close()
        assert b"kept" in values
        assert MongoClient(uri)["fleetpulse"]["cars"].find_one({"_id": "car-7"})["status"] == "failing"
    finally:
        run_cli("stack", "down", "--wipe", env=env)
    assert not Path(env["FLEETPULSE_STACK_STATE_DIR"]).exists()


def test_a_taken_port_fails_with_one_clear_line_before_starting_anything(private_stack_env):
    env = private_stack_env
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(env["FLEETPULSE_STACK_MQTT_PORT"])))
        squatter.listen()
        proc = run_cli("stack", "up", env=env)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"port 127.0.0.1:{env['FLEETPULSE_STACK_MQTT_PORT']} is taken" in lines[0]
    assert "FLEETPULSE_STACK_MQTT_PORT" in lines[0]
    assert "Traceback" not in proc.stderr
    status = json.loads(run_cli("stack", "status", "--json", env=env).stdout)
    assert status["kafka"]["running"] is False  # nothing was started


@pytest.mark.slow
def test_stack_up_restarts_a_server_that_runs_but_no_longer_answers(private_stack_env):
    import signal

    env = private_stack_env
    try:
        assert run_cli("stack", "up", env=env).returncode == 0
        pid_file = Path(env["FLEETPULSE_STACK_STATE_DIR"]) / "mongodb" / "pid"
        wedged = int(pid_file.read_text())
        os.kill(wedged, signal.SIGSTOP)  # alive, port open, but answers nothing
        proc = run_cli("stack", "up", env=env)
        assert proc.returncode == 0, proc.stderr
        assert "mongodb: running but not answering a round trip; restarting it" in proc.stderr
        assert int(pid_file.read_text()) != wedged
        uri = json.loads(run_cli("stack", "status", "--json", env=env).stdout)["mongodb"]["uri"]
        from pymongo import MongoClient

        assert MongoClient(uri, serverSelectionTimeoutMS=5000, socketTimeoutMS=5000).admin.command("ping")["ok"] == 1.0
    finally:
        run_cli("stack", "down", "--wipe", env=env)


def test_twin_store_writes_thousands_of_existing_twins_without_wedging_ferretdb(private_service):
    """FerretDB 1.24/SQLite deadlocks on one update command of >100 upserts; the twin store chunks."""
    from pymongo import MongoClient

    from inference.transformer.twin_store import TwinStore

    mongo = private_service("mongodb")
    client = MongoClient(mongo.endpoint["uri"], serverSelectionTimeoutMS=5000, socketTimeoutMS=20000)
    store = TwinStore(client, "fleetpulse", "cars")
    cars = [f"electric-vehicle-{i:05d}" for i in range(2000)]
    assert store.write((c, {"status": "ok", "n": 1}) for c in cars) == 2000
    assert store.write((c, {"status": "warning", "n": 2}) for c in cars) == 2000  # existing documents
    coll = client["fleetpulse"]["cars"]
    assert coll.count_documents({"status": "warning", "n": 2}) == 2000


def test_kafka_storage_formats_with_a_cluster_id_starting_with_a_dash(tmp_path):
    """1 in 64 random cluster ids starts with "-"; the first cold `make demo` run drew one."""
    from devtools.stack.kafka import KafkaService, _cluster_id
    from devtools.stack.settings import StackSettings

    kafka = KafkaService(StackSettings(state_dir=tmp_path / "state", kafka_port=free_port(), kafka_controller_port=free_port()))
    kafka.install()  # cached jars
    kafka.dir.mkdir(parents=True, exist_ok=True)
    (kafka.dir / "cluster.id").write_text("-AbCdEfGhIjKlMnOpQrStUv")
    kafka.prepare()
    assert "cluster.id=-AbCdEfGhIjKlMnOpQrStUv" in next(kafka.dir.rglob("meta.properties")).read_text()
    assert not any(_cluster_id().startswith("-") for _ in range(2000))


def test_a_killed_server_has_let_go_of_its_port_when_kill_returns(tmp_path):
    # The kernel tears a SIGKILLed process down after the signal: a server holding memory keeps its
    # listening socket for a while after kill(2) returns, so a restart on the same port must wait.
    from devtools.stack.process import ManagedProcess, port_in_use

    port = free_port()
    listen = (
        "import socket, time\n"
        "held = bytearray(300 * 1024 * 1024)\n"
        f"s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); print('listening', flush=True)\n"
        "time.sleep(120)\n"
    )
    server = ManagedProcess("holder", tmp_path / "holder.pid", tmp_path / "holder.log", marker="held = bytearray")
    server.start([sys.executable, "-c", listen])
    deadline = time.monotonic() + 30
    while "listening" not in server.log_tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert port_in_use("127.0.0.1", port), server.log_tail()

    assert server.kill() is True
    assert not port_in_use("127.0.0.1", port)
    assert not server.running() and not server.pid_file.exists()
    assert server.kill() is False  # nothing left to kill
