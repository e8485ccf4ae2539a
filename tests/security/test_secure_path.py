"""The whole path on the secured stack, each client as its own identity: cars (per-car MQTT logins over
TLS) -> bridge (its MQTT identity, Kafka principal ``bridge``) -> Kafka -> transformer (principal
``transformer``, its MongoDB user over TLS) -> twins; training reads through TF-IO as ``training``.

The run's topics are its own, granted to each principal the same rights rights.py gives it on the
project's topics, so other tests' records (and theirs ours) never mix into the counts. Every password
goes to the processes in a 0600 file named by an environment variable; none may show in their argv,
their logs, their --help or their printed settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from devtools.stack.kafka import KafkaService, grant
from devtools.stack.rights import KafkaRights
from fleetpulse.clients import kafka_config
from simulator.car_model import car_id
from tests.support.bridge import BridgeProcess
from tests.support.paths import FLEETPULSE

CARS = 12
EVENTS_PER_CAR = 10  # --rate 2 for --duration 5
SERVICES = ("bridge", "simulator", "transformer", "training")


@pytest.fixture(scope="module")
def secrets(credentials, tmp_path_factory) -> dict[str, dict]:
    """Each service's `stack credentials`, plus ``password_file``: its password in a file only we can read."""
    folder = tmp_path_factory.mktemp("secrets")
    folder.chmod(0o700)
    found = {}
    for name in SERVICES:
        creds = dict(credentials(name))
        path = folder / name
        path.write_text(creds["password"])
        path.chmod(0o600)
        found[name] = {**creds, "password_file": str(path)}
    return found


@pytest.fixture(scope="module")
def kafka_env(secure_stack, secrets):
    """``kafka_env("FLEETPULSE_BRIDGE_", "bridge")``: a service's Kafka settings as its env vars."""
    kafka = secure_stack["kafka"]

    def make(prefix: str, name: str) -> dict[str, str]:
        return {f"{prefix}KAFKA_BOOTSTRAP_SERVERS": kafka["bootstrap_servers"], f"{prefix}KAFKA_SECURITY_PROTOCOL": kafka["security_protocol"],
                f"{prefix}KAFKA_SASL_MECHANISM": kafka["sasl_mechanism"], f"{prefix}KAFKA_USERNAME": name,
                f"{prefix}KAFKA_PASSWORD_FILE": secrets[name]["password_file"], f"{prefix}KAFKA_CA_FILE": secure_stack["ca_file"]}

    return make


@pytest.fixture(scope="module")
def mqtt_tls(secure_stack) -> dict[str, str]:
    return {"mqtt_brokers": f"{secure_stack['mqtt']['host']}:{secure_stack['mqtt']['tls_port']}", "mqtt_tls": "true",
            "mqtt_ca_file": secure_stack["ca_file"]}


@pytest.fixture
def run_topics(secure_settings, unique) -> dict[str, str]:
    """This run's topics, created by the operator (``admin``): no service principal may create one."""
    names = {"data": f"sensor-{unique}", "dlq": f"dlq-{unique}", "alerts": f"alerts-{unique}", "truth": f"truth-{unique}"}
    admin = AdminClient(kafka_config(KafkaService(secure_settings).connection("admin")))
    for future in admin.create_topics([NewTopic(t, 3, 1) for t in names.values()]).values():
        future.result()
    grant(admin, {
        "simulator": KafkaRights(write=(names["truth"],)),
        "bridge": KafkaRights(write=(names["data"], names["dlq"])),
        "training": KafkaRights(read=(names["data"], names["truth"])),
        "transformer": KafkaRights(read=(names["data"],), write=(names["alerts"], names["dlq"])),
    })
    return names


def process_tree_argv(pid: int) -> list[str]:
    """The command lines of ``pid`` and every process under it (spawned simulator workers included)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            out.append(Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended meanwhile
    return out


def watch_argv(proc: subprocess.Popen, timeout: float) -> list[str]:
    """Every command line seen under ``proc`` while it runs (sampled every 0.2 s), until it exits."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        seen += process_tree_argv(proc.pid)
        time.sleep(0.2)
    return seen


def assert_no_secret(texts: list[str], secrets: dict[str, dict], where: str) -> None:
    for name, creds in secrets.items():
        leaked = [t for t in texts if creds["password"] in t]
        assert not leaked, f"{name}'s password in {where}"


@pytest.mark.slow
def test_cars_to_twins_and_training_each_as_its_own_identity(secure_settings, secure_stack, stack_env, secrets, kafka_env,
                                                            mqtt_tls, run_topics, credentials, unique, tmp_path):
    from pymongo import MongoClient

    from tests.serving.harness import ModelServer, publish_model

    topics, base = run_topics, {**os.environ, **stack_env}
    provision = subprocess.run([FLEETPULSE, "stack", "provision", "--cars", str(CARS)], env=base, capture_output=True, text=True, timeout=120)
    assert provision.returncode == 0, provision.stderr
    argv_seen: list[str] = []

    bridge = BridgeProcess(tmp_path, topic=topics["data"], dlq_topic=topics["dlq"], share_group=f"secure{unique}",
                           client_id=f"bridge-{unique}", mqtt_username="bridge", mqtt_password_file=secrets["bridge"]["password_file"],
                           **mqtt_tls, **{k.removeprefix("FLEETPULSE_BRIDGE_").lower(): v
                                          for k, v in kafka_env("FLEETPULSE_BRIDGE_", "bridge").items()})
    bridge.env.update(stack_env)
    bridge.start()
    try:
        argv_seen += process_tree_argv(bridge.proc.pid)
        sim_env = {**base, **kafka_env("FLEETPULSE_SIMULATOR_", "simulator"),
                   **{f"FLEETPULSE_SIMULATOR_{k.upper()}": v for k, v in mqtt_tls.items()},
                   "FLEETPULSE_SIMULATOR_CAR_CREDENTIALS_FILE": str(secure_settings.identities_dir / "cars.tsv")}
        # Two spawned workers: each reads the car credentials file itself.
        sim = subprocess.Popen([FLEETPULSE, "simulate", "--cars", str(CARS), "--connections", str(CARS), "--workers", "2",
                                "--rate", "2", "--duration", "5", "--truth-topic", topics["truth"], "--json", "--quiet"],
                               env=sim_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        argv_seen += watch_argv(sim, timeout=120)
        out, err = sim.communicate(timeout=60)
        assert sim.returncode == 0, err
        simulated = json.loads(out)
        assert simulated["acked"] == simulated["events_sent"] == CARS * EVENTS_PER_CAR
        assert simulated["truth_records"] >= CARS
        bridge.wait_metric("fleetpulse_bridge_forwarded_total", CARS * EVENTS_PER_CAR)
    finally:
        bridged = bridge.stop()
    assert bridged["forwarded"] == CARS * EVENTS_PER_CAR and bridged["dead_lettered"] == 0
    logs = [bridge.log(), err]

    gcs = secure_stack["gcs"]["endpoint"]
    model = f"secure-{unique}"
    publish_model(gcs, model, tmp_path)
    server = ModelServer(model, gcs, tmp_path / "serve.log").wait_ready()
    try:
        mongodb = secure_stack["mongodb"]["uri"].split("?")[0]
        score_env = {**base, **kafka_env("FLEETPULSE_SCORE_", "transformer"), "FLEETPULSE_SCORE_TOPIC": topics["data"],
                     "FLEETPULSE_SCORE_ALERTS_TOPIC": topics["alerts"], "FLEETPULSE_SCORE_DLQ_TOPIC": topics["dlq"],
                     "FLEETPULSE_SCORE_GROUP_ID": f"fleetpulse-transformer-{unique}", "FLEETPULSE_SCORE_MODEL_GRPC": server.grpc_target,
                     "FLEETPULSE_SCORE_MODEL_NAME": model, "FLEETPULSE_SCORE_MONGODB_URI": mongodb,
                     "FLEETPULSE_SCORE_MONGODB_USERNAME": "transformer", "FLEETPULSE_SCORE_MONGODB_PASSWORD_FILE": secrets["transformer"]["password_file"],
                     "FLEETPULSE_SCORE_MONGODB_TLS": "true", "FLEETPULSE_SCORE_MONGODB_CA_FILE": secure_stack["ca_file"],
                     "FLEETPULSE_SCORE_TWIN_COLLECTION": f"cars_{unique}", "FLEETPULSE_SCORE_METRICS_PORT": "0"}
        score = subprocess.Popen([FLEETPULSE, "score", "--until-idle", "4", "--json"], env=score_env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        argv_seen += watch_argv(score, timeout=180)
        out, err = score.communicate(timeout=60)
        assert score.returncode == 0, err[-3000:]
    finally:
        server.stop()
    scored = json.loads(out.strip().splitlines()[-1])
    assert scored["consumed"] == CARS * EVENTS_PER_CAR and scored["dlq"] == 0
    logs.append(err)
    # Read back as the operator: the transformer's user wrote every car's twin, every event counted once.
    twins = {d["_id"]: d for d in MongoClient(credentials("admin")["mongodb_uri"])["fleetpulse"][f"cars_{unique}"].find()}
    assert {car: twin["counters"]["events"] for car, twin in twins.items()} == {car_id(i): EVENTS_PER_CAR for i in range(CARS)}

    train_env = {**base, **kafka_env("FLEETPULSE_TRAIN_", "training"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    reader = (
        "import json, sys\n"
        "from components.kafka_dataset import read_records, read_truth, resolve_window\n"
        "bootstrap, data, truth = sys.argv[1:]\n"
        "window = resolve_window(bootstrap, data)\n"
        "records = read_records(bootstrap, window)\n"
        "print(json.dumps({'records': len(records), 'undecodable': records.undecodable, 'truth': len(read_truth(bootstrap, truth))}))\n"
    )
    # The bare bootstrap is what a KFP step gets; the login comes from FLEETPULSE_TRAIN_KAFKA_*.
    training = subprocess.Popen([sys.executable, "-c", reader, secure_stack["kafka"]["bootstrap_servers"], topics["data"], topics["truth"]],
                                env=train_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    argv_seen += watch_argv(training, timeout=180)
    if training.poll() is None:
        training.kill()
        pytest.fail("TF-IO read nothing within 180 s as training")
    out, err = training.communicate(timeout=30)
    assert training.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1]) == {"records": CARS * EVENTS_PER_CAR, "undecodable": 0, "truth": simulated["truth_records"]}

    assert argv_seen and any("simulate" in a for a in argv_seen) and any("multiprocessing" in a for a in argv_seen)
    assert_no_secret(argv_seen, secrets, "a process's argv")
    assert_no_secret(logs + [err, json.dumps(bridged)], secrets, "a log or summary")


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The single line a FleetPulse command prints when it refuses to start."""
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_a_wrong_kafka_password_for_the_bridge_is_one_line_naming_its_principal(stack_env, kafka_env, mqtt_tls, secrets, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    env = {**os.environ, **stack_env, **kafka_env("FLEETPULSE_BRIDGE_", "bridge"), "FLEETPULSE_BRIDGE_KAFKA_PASSWORD_FILE": str(wrong),
           **{f"FLEETPULSE_BRIDGE_{k.upper()}": v for k, v in mqtt_tls.items()}, "FLEETPULSE_BRIDGE_METRICS_PORT": "0"}
    line = one_line_error(subprocess.run([FLEETPULSE, "bridge", "--duration", "5"], env=env, capture_output=True, text=True, timeout=60))
    assert "refused the login of principal 'bridge'" in line


def test_a_wrong_mqtt_password_for_the_bridge_is_one_line_naming_its_identity(stack_env, kafka_env, mqtt_tls, secrets, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    env = {**os.environ, **stack_env, **kafka_env("FLEETPULSE_BRIDGE_", "bridge"),
           **{f"FLEETPULSE_BRIDGE_{k.upper()}": v for k, v in mqtt_tls.items()}, "FLEETPULSE_BRIDGE_MQTT_USERNAME": "bridge",
           "FLEETPULSE_BRIDGE_MQTT_PASSWORD_FILE": str(wrong), "FLEETPULSE_BRIDGE_METRICS_PORT": "0"}
    line = one_line_error(subprocess.run([FLEETPULSE, "bridge", "--duration", "5"], env=env, capture_output=True, text=True, timeout=60))
    assert "refused the bridge's login as 'bridge'" in line


def test_the_bridge_as_a_principal_creates_no_topic_and_says_so(stack_env, kafka_env, mqtt_tls, secrets, unique):
    env = {**os.environ, **stack_env, **kafka_env("FLEETPULSE_BRIDGE_", "bridge"), "FLEETPULSE_BRIDGE_TOPIC": f"never-{unique}",
           **{f"FLEETPULSE_BRIDGE_{k.upper()}": v for k, v in mqtt_tls.items()}, "FLEETPULSE_BRIDGE_MQTT_USERNAME": "bridge",
           "FLEETPULSE_BRIDGE_MQTT_PASSWORD_FILE": secrets["bridge"]["password_file"], "FLEETPULSE_BRIDGE_METRICS_PORT": "0"}
    line = one_line_error(subprocess.run([FLEETPULSE, "bridge", "--duration", "5"], env=env, capture_output=True, text=True, timeout=60))
    assert f"principal 'bridge' has no rights on topic 'never-{unique}'" in line


def test_training_with_a_wrong_password_fails_in_one_line_before_tfio_waits_forever(stack_env, kafka_env, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    env = {**os.environ, **stack_env, **kafka_env("FLEETPULSE_TRAIN_", "training"), "FLEETPULSE_TRAIN_KAFKA_PASSWORD_FILE": str(wrong)}
    proc = subprocess.run([FLEETPULSE, "train", "--runner", "direct"], env=env, capture_output=True, text=True, timeout=120)
    assert "refused the login of principal 'training'" in one_line_error(proc)


def test_the_transformer_outside_its_groups_is_one_line(stack_env, kafka_env, secrets):
    env = {**os.environ, **stack_env, **kafka_env("FLEETPULSE_SCORE_", "transformer"), "FLEETPULSE_SCORE_GROUP_ID": "someone-else",
           "FLEETPULSE_SCORE_METRICS_PORT": "0"}
    proc = subprocess.run([FLEETPULSE, "score", "--until-idle", "1"], env=env, capture_output=True, text=True, timeout=60)
    assert "principal 'transformer' may not join consumer group 'someone-else'" in one_line_error(proc)


def test_a_car_missing_from_the_credentials_file_stops_the_simulator_before_it_connects(secure_settings, stack_env, mqtt_tls):
    cars_file = secure_settings.identities_dir / "cars.tsv"
    known = {line.split("\t")[0] for line in cars_file.read_text().splitlines()}
    n = next(n for n in range(1, 100_000) if car_id(n - 1) not in known)
    env = {**os.environ, **stack_env, **{f"FLEETPULSE_SIMULATOR_{k.upper()}": v for k, v in mqtt_tls.items()},
           "FLEETPULSE_SIMULATOR_CAR_CREDENTIALS_FILE": str(cars_file)}
    proc = subprocess.run([FLEETPULSE, "simulate", "--cars", str(n), "--connections", str(n), "--duration", "1", "--truth-topic", ""],
                          env=env, capture_output=True, text=True, timeout=60)
    assert f"has no password for car {car_id(n - 1)}" in one_line_error(proc)


def test_cli_help_and_printed_settings_never_show_a_secret(secrets, kafka_env, monkeypatch):
    from bridges.settings import BridgeSettings
    from components.settings import TrainSettings
    from inference.transformer.settings import ScoreSettings
    from simulator.settings import SimulatorSettings

    password = secrets["bridge"]["password"]
    env = {f"FLEETPULSE_{service}_{kind}_PASSWORD": password for service in ("BRIDGE", "SIMULATOR", "SCORE", "TRAIN")
           for kind in ("KAFKA", "MQTT", "MONGODB")}
    env.update({f"FLEETPULSE_{service}_{kind}_USERNAME": "bridge" for service in ("BRIDGE", "SIMULATOR", "SCORE")
                for kind in ("MQTT", "MONGODB")})
    env.update({f"FLEETPULSE_{s}_KAFKA_SECURITY_PROTOCOL": "SASL_SSL" for s in ("BRIDGE", "SIMULATOR", "SCORE", "TRAIN")})
    env.update({f"FLEETPULSE_{s}_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512" for s in ("BRIDGE", "SIMULATOR", "SCORE", "TRAIN")})
    env.update({f"FLEETPULSE_{s}_KAFKA_USERNAME": "bridge" for s in ("BRIDGE", "SIMULATOR", "SCORE", "TRAIN")})
    for command in ("bridge", "simulate", "score", "train"):
        shown = subprocess.run([FLEETPULSE, command, "--help"], env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and password not in shown.stdout + shown.stderr
        assert "password" not in "".join(o for o in shown.stdout.split() if o.startswith("--")).lower()  # no flag takes one
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for cls in (BridgeSettings, SimulatorSettings, ScoreSettings, TrainSettings):
        settings = cls()
        assert password not in repr(settings) + str(settings) + settings.model_dump_json()
        assert settings.kafka.password.get_secret_value() == password  # it is there, for the client only


def test_the_multiplexed_simulator_publishes_every_car_as_the_fleet_gateway(secure_stack, stack_env, mqtt_tls, secrets, credentials):
    """Many cars per connection: the connections log in as ``simulator``, whose role may publish any car's data."""
    from tests.security.probes import MqttProbe, accepted

    admin = credentials("admin")
    watcher = MqttProbe(secure_stack["mqtt"]["host"], secure_stack["mqtt"]["tls_port"], username="admin", password=admin["password"],
                        ca_file=secure_stack["ca_file"])
    assert watcher.connect() == 0 and accepted(watcher.subscribe("vehicles/sensor/data/+"))
    env = {**os.environ, **stack_env, **{f"FLEETPULSE_SIMULATOR_{k.upper()}": v for k, v in mqtt_tls.items()},
           "FLEETPULSE_SIMULATOR_MQTT_USERNAME": "simulator", "FLEETPULSE_SIMULATOR_MQTT_PASSWORD_FILE": secrets["simulator"]["password_file"]}
    try:
        proc = subprocess.run([FLEETPULSE, "simulate", "--cars", "6", "--connections", "2", "--rate", "2", "--duration", "2",
                               "--truth-topic", "", "--json", "--quiet"], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        assert summary["acked"] == summary["events_sent"] == 24 and summary["connections"] == 2
        got = watcher.wait_for_messages(24)
    finally:
        watcher.close()
    assert {topic for topic, _ in got} == {f"vehicles/sensor/data/{car_id(i)}" for i in range(6)}
    assert_no_secret([proc.stdout, proc.stderr], secrets, "the simulator's output")
