"""`fleetpulse simulate` against a real Mosquitto: delivery, the wire contract, ground truth, faults."""

from __future__ import annotations

import io
import json
import time

import fastavro
import numpy as np
import pytest

from devtools.stack.process import free_port
from fleetpulse.codec import decode_batch, encode_batch
from fleetpulse.contract import SENSOR_FIELDS, topic_for_car
from fleetpulse.ground_truth import FAILURE_MODES, HEALTHY, TruthRecord
from simulator import car_model as cm
from simulator.csv_source import DEFAULT_CSV, load_csv
from tests.support.paths import FLEETPULSE, REFERENCE
from tests.support.simulator import counter, simulate

REFERENCE_SCHEMA = REFERENCE / "cardata-v1.avsc"


def by_car(sub) -> dict[str, list[bytes]]:
    """Received payloads per car id, in arrival order (per-topic order is kept by MQTT)."""
    out: dict[str, list[bytes]] = {}
    for topic, payload in sub.messages:
        out.setdefault(topic.decode().rsplit("/", 1)[-1], []).append(payload)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("qos, floor", [(0, 0.90), (1, 1.0)])
def test_500_cars_at_2_per_s_for_10_s_reach_the_broker(broker, qos, floor):
    sub = counter(broker, qos=qos, keep_payloads=True)
    run = simulate("--cars", "500", "--rate", "2", "--duration", "10", "--qos", str(qos), "--truth-topic", "", broker=broker)
    s = run.summary
    assert s["events_sent"] == 10_000 and s["cars"] == 500 and s["errors"] == 0
    sub.wait_quiet(quiet_s=1.0, timeout=30, expect=10_000)
    sub.stop()
    assert sub.unique >= floor * 10_000
    assert len(sub.per_topic) == 500 and b"vehicles/sensor/data/electric-vehicle-00001" in sub.per_topic
    assert b"vehicles/sensor/data/electric-vehicle-00500" in sub.per_topic


def test_published_records_decode_with_the_public_reference_schema(broker):
    schema = fastavro.parse_schema(json.loads(REFERENCE_SCHEMA.read_text()))
    sub = counter(broker, qos=1, keep_payloads=True)
    simulate("--cars", "50", "--rate", "5", "--duration", "2", "--qos", "1", "--failures", "0.5", "--truth-topic", "", broker=broker)
    sub.wait_quiet(expect=500, timeout=20)
    sub.stop()
    payloads = [p for _, p in sub.messages]
    assert len(payloads) == 500
    for payload in payloads:
        assert payload[0] == 0 and int.from_bytes(payload[1:5], "big") == 1  # Confluent framing, schema id 1
        body = io.BytesIO(payload[5:])
        record = fastavro.schemaless_reader(body, schema, None)
        assert body.tell() == len(payload) - 5 and list(record) == list(SENSOR_FIELDS)
    assert decode_batch(payloads).valid.all()


def test_failing_cars_show_their_signature_on_the_wire_and_ground_truth_says_when(broker, tmp_path):
    truth_file = tmp_path / "truth.jsonl"
    sub = counter(broker, qos=1, keep_payloads=True)
    run = simulate("--cars", "60", "--rate", "10", "--duration", "4", "--qos", "1", "--failures", "1.0", "--seed", "4",
                   "--truth-topic", "", "--truth-file", str(truth_file), broker=broker)
    sub.wait_quiet(expect=2400, timeout=20)
    sub.stop()
    truth = [TruthRecord.from_json(line) for line in truth_file.read_text().splitlines()]
    healthy = [t for t in truth if t.mode == HEALTHY]
    failing = {t.car_id: t for t in truth if t.mode != HEALTHY}
    assert len(healthy) == 60 and all(t.onset_seq == 0 for t in healthy)
    assert len(failing) == 60 and set(t.mode for t in failing.values()) == set(FAILURE_MODES)
    assert run.summary["failing_started"] == 60 and sum(run.summary["failing_cars"].values()) == 60
    events = by_car(sub)
    for car, t in failing.items():
        v = decode_batch(events[car]).values.astype(np.float64)
        assert len(v) == 40 and 4 <= t.onset_seq < 36
        before, after = v[: t.onset_seq], v[t.onset_seq :]
        assert t.onset_ts >= next(h.onset_ts for h in healthy if h.car_id == car)
        assert _signature(t.mode, after) and not _signature(t.mode, before), (car, t.mode)


def _signature(mode: str, v: np.ndarray) -> bool:
    """Whether every row shows the mode's signature (float32 on the wire, hence tolerances)."""
    if mode == "tire_pressure_loss":
        return bool((v[:, cm.TIRES].min(axis=1) <= 24).all())
    if mode == "shock_absorber":
        return bool((v[:, cm.ACCEL] > 3).any(axis=1).all() & (v[:, cm.ACCEL] >= 3).sum(axis=1).min() >= 1)
    if mode == "drive_shaft_wear":
        return bool(np.allclose(v[:, cm.VIBRATION], 150 * v[:, cm.SPEED], rtol=1e-4))
    if mode == "overheating":
        excess = v[:, cm.COOLANT] - 0.8 * v[:, cm.IAT] - 0.1 * v[:, cm.CURRENT]
        return bool((excess >= 0.4 * v[:, cm.CURRENT] - 1e-3).all() and (excess > 16.01).any())
    if mode == "outdated_firmware":
        return bool((v[:, cm.FIRMWARE] == 1000).all())
    if mode == "battery_degradation":
        return bool((180 + 80 * v[:, cm.BATT_PCT] - v[:, cm.BATT_V] > 0.3 * v[:, cm.CURRENT] - 1e-3).all() and (v[:, cm.CURRENT] > 0).any())
    raise AssertionError(mode)


def test_same_seed_gives_the_same_values_and_ground_truth(broker, tmp_path):
    runs = []
    for i in range(2):
        sub = counter(broker, qos=1, keep_payloads=True)
        simulate("--cars", "40", "--rate", "10", "--duration", "2", "--qos", "1", "--failures", "0.5", "--seed", "9",
                 "--truth-topic", "", "--truth-file", str(tmp_path / f"t{i}.jsonl"), broker=broker)
        sub.wait_quiet(expect=800, timeout=20)
        sub.stop()
        truth = sorted((t.car_id, t.mode, t.onset_seq, t.severity) for t in map(TruthRecord.from_json, (tmp_path / f"t{i}.jsonl").read_text().splitlines()))
        runs.append((by_car(sub), truth))
    (a, truth_a), (b, truth_b) = runs
    assert a == b and truth_a == truth_b and len(truth_a) == 60


def test_ground_truth_goes_to_kafka_keyed_by_car(broker, kafka, unique):
    from dataclasses import replace

    from confluent_kafka import Consumer

    from fleetpulse.clients import ensure_topics, kafka_config
    from fleetpulse.topics import GROUND_TRUTH, TOPICS

    topic = f"ground-truth-test-{unique}"
    ensure_topics(kafka, [replace(TOPICS[GROUND_TRUTH], name=topic)])  # the operator's: a login creates no topic
    # QoS 0: nobody subscribes here, and at QoS 1 the cars would keep publishing events no subscriber took.
    simulate("--cars", "20", "--rate", "10", "--duration", "2", "--failures", "0.25", "--qos", "0", "--truth-topic", topic,
             broker=broker, kafka=kafka)
    consumer = Consumer(kafka_config(kafka, **{"group.id": f"t-{unique}", "auto.offset.reset": "earliest"}))
    consumer.subscribe([topic])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < 25 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            got.append((msg.key().decode(), TruthRecord.from_json(msg.value())))
    consumer.close()
    assert len(got) == 25 and all(key == t.car_id for key, t in got)
    assert sum(t.mode != HEALTHY for _, t in got) == 5


def test_csv_replay_publishes_the_reference_rows(broker):
    sub = counter(broker, qos=1, keep_payloads=True)
    run = simulate("--cars", "100", "--rate", "5", "--duration", "1", "--qos", "1", "--source", "csv", broker=broker)
    sub.wait_quiet(expect=500, timeout=20)
    sub.stop()
    assert run.summary["truth_records"] == 0
    rows = load_csv(DEFAULT_CSV)
    got = decode_batch(by_car(sub)["electric-vehicle-00002"]).values
    np.testing.assert_array_equal(got, rows[1, :5].astype(np.float32))


def test_one_connection_per_car_with_car_ids_as_client_ids(broker):
    sub = counter(broker, qos=1, keep_payloads=True)
    run = simulate("--cars", "200", "--connections", "200", "--rate", "2", "--duration", "2", "--qos", "1", "--truth-topic", "", broker=broker)
    sub.wait_quiet(expect=800, timeout=20)
    sub.stop()
    assert run.summary["connections"] == 200 and sub.unique == 800 and run.summary["errors"] == 0


@pytest.mark.slow
def test_broker_restart_mid_run_loses_nothing_at_qos1(broker):
    import subprocess

    sub = counter(broker, qos=1, keep_payloads=True, clean=False, client_id="restart-counter")
    proc = subprocess.Popen([FLEETPULSE, "simulate", "--json", "--quiet", "--cars", "100", "--rate", "10", "--duration", "8",
                             "--qos", "1", "--truth-topic", "", "--mqtt-brokers", broker.address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3.0)
    broker.restart()
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    s = json.loads(out)
    sub.wait_quiet(expect=8000, timeout=30)
    sub.stop()
    assert s["events_sent"] == 8000 and s["reconnects"] >= 1 and s["unacked"] == 0
    assert sub.unique == 8000, f"{8000 - sub.unique} events lost across the broker restart"


def test_unreachable_broker_exits_1_with_one_line():
    port = free_port()
    run = simulate("--cars", "5", "--duration", "1", "--truth-topic", "", "--mqtt-brokers", f"127.0.0.1:{port}", check=False)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0] and f"127.0.0.1:{port}" in lines[0]


@pytest.mark.parametrize("args, flag", [
    (["--rate", "-1"], "--rate"),
    (["--cars", "0"], "--cars"),
    (["--failures", "1.5"], "--failures"),
    (["--qos", "2"], "--qos"),
    (["--sample-interval", "0"], "--sample-interval"),
])
def test_bad_flags_are_usage_errors_naming_the_flag(args, flag):
    run = simulate(*args, check=False)
    assert run.returncode == 2 and flag in run.stderr and "Traceback" not in run.stderr


def test_several_worker_processes_share_the_fleet_and_report_one_ground_truth(broker, tmp_path):
    truth_file = tmp_path / "truth.jsonl"
    sub = counter(broker, qos=1)
    run = simulate("--cars", "1100", "--workers", "2", "--connections", "6", "--rate", "1", "--duration", "3", "--qos", "1",
                   "--failures", "0.1", "--truth-topic", "", "--truth-file", str(truth_file), broker=broker)
    s = run.summary
    assert s["workers"] == 2 and s["events_sent"] == 3300 and s["errors"] == 0 and s["connections"] == 6
    assert sub.wait_quiet(expect=3300, timeout=20) >= 3300
    sub.stop()
    truth = [TruthRecord.from_json(line) for line in truth_file.read_text().splitlines()]
    assert sum(t.mode == HEALTHY for t in truth) == 1100 and len({t.car_id for t in truth}) == 1100
    assert sum(t.mode != HEALTHY for t in truth) == s["failing_started"] == 110


def test_events_nobody_subscribed_to_yet_are_published_again_not_counted_as_delivered(broker):
    # An MQTT 5 PUBACK "no matching subscribers" means the broker dropped the event (as Mosquitto 2.0.11
    # does for a shared subscription right after a restart): the car keeps it and publishes it again.
    import subprocess

    proc = subprocess.Popen([FLEETPULSE, "simulate", "--json", "--quiet", "--cars", "50", "--rate", "10", "--duration", "3",
                             "--qos", "1", "--truth-topic", "", "--mqtt-brokers", broker.address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    sub = counter(broker, qos=1, keep_payloads=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    s = json.loads(out)
    sub.wait_quiet(expect=1500, timeout=30)
    sub.stop()
    assert s["events_sent"] == 1500 and s["errors"] == 0 and s["not_routed"] > 0
    assert sub.unique == 1500, f"{1500 - sub.unique} events reached no subscriber"


@pytest.mark.parametrize("profile", ["default", "urban", "highway", "cold", "ageing"])
def test_every_reading_a_car_sends_is_physically_plausible(profile):
    # The bridge dead-letters a reading outside fleetpulse.readings' ranges: no simulated car, healthy
    # or failing, with sensor noise, quantisation and stuck sensors, may send one.
    from fleetpulse.readings import implausible
    from simulator.failures import plan_failures
    from simulator.profiles import get
    from simulator.sensor_layer import SensorLayer

    for sensors in (None, SensorLayer(noise=3.0, quantise=True, stuck=0.05)):
        blocks = cm.make_blocks(1024, 7, plan_failures(1024, 200, 1.0, 7), 10.0, 300.0, profile=get(profile), sensors=sensors)
        for _ in range(200):
            for block in blocks:
                assert not implausible(block.step().values.astype(np.float32)).any()


def test_mqtt5_batch_packets_equal_one_by_one_packets():
    from fleetpulse import mqtt_wire as wire

    topics = [topic_for_car(cm.car_id(i)) for i in range(8)]
    builder = wire.PublishBuilder(topics, protocol=wire.MQTT_5)
    payloads = encode_batch(np.full((8, 18), 30.0))
    cars, pids = np.arange(8)[::-1], np.arange(65530, 65538) % 65535 + 1
    for qos in (0, 1):
        data, size = builder.build(cars, payloads, qos, pids)
        expected = [wire.publish_packet(topics[c], p, qos, int(pid), protocol=wire.MQTT_5) for c, p, pid in zip(cars, payloads, pids)]
        assert data == b"".join(expected) and size == len(expected[0])


@pytest.mark.slow
def test_pings_keep_idle_connections_alive_between_sparse_events(broker):
    # One event per 10 s with a 5 s keepalive: the broker drops a client silent for 7.5 s unless it pings.
    sub = counter(broker, qos=1)
    run = simulate("--cars", "20", "--rate", "0.1", "--duration", "15", "--keepalive", "5", "--qos", "1", "--truth-topic", "", broker=broker)
    s = run.summary
    assert s["events_sent"] == 40 and s["reconnects"] == 0 and s["errors"] == 0
    assert sub.wait_quiet(expect=40, timeout=10) == 40
    sub.stop()
