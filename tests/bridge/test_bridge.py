"""The bridge end to end with real servers: records, headers, DLQ, shared subscription, several brokers, CLI errors."""

from __future__ import annotations

import subprocess

import pytest

from devtools.loadgen import bridge_load as loadgen
from devtools.stack import access
from devtools.stack.process import free_port
from fleetpulse.settings import KafkaConnection
from fleetpulse.topics import ARRIVAL_TIME_HEADER, DLQ_REASON_HEADER, DLQ_SOURCE_HEADER, DLQ_TIME_HEADER, MQTT_TOPIC_HEADER
from tests.support.paths import FLEETPULSE


def publish(endpoint: str, pkts: list[bytes], qos: int = 1) -> loadgen.PublishReport:
    host, port = endpoint.rsplit(":", 1)
    pub = loadgen.Publisher(host, int(port), qos=qos)
    try:
        return pub.publish(pkts)
    finally:
        pub.close()


def test_records_keep_the_payload_and_carry_car_id_key_topic_header_and_arrival_time(bridge_process, private_mqtt, kafka, unique):
    bridge = bridge_process(private_mqtt).start()
    bodies = loadgen.payloads(1000)
    rep = publish(private_mqtt, loadgen.packets(bodies, 50, f"car{unique}", qos=1))
    recs = loadgen.read_topic(kafka, f"bridge-{unique}", 1000, timeout_s=30, idle_s=0.5)

    assert sorted(recs.values) == sorted(bodies)
    for key, headers, ts in zip(recs.keys, recs.headers, recs.timestamps):
        assert headers[MQTT_TOPIC_HEADER] == b"vehicles/sensor/data/" + key
        assert key.startswith(f"car{unique}-".encode())
        assert int(headers[ARRIVAL_TIME_HEADER]) == ts
        assert rep.started * 1000 - 5 <= ts <= rep.finished * 1000 + 5000
    m = bridge.metrics()
    assert m["fleetpulse_bridge_received_total"] == m["fleetpulse_bridge_forwarded_total"] == 1000
    assert m["fleetpulse_bridge_mqtt_acks_total"] == 1000 and m["fleetpulse_bridge_in_flight"] == 0
    summary = bridge.stop()
    assert summary["forwarded"] == 1000 and summary["dead_lettered"] == 0


def test_garbage_payloads_go_to_dlq_with_reasons_and_the_stream_continues(bridge_process, private_mqtt, kafka, unique):
    bridge_process(private_mqtt).start()
    good, bad = loadgen.payloads(20_000), loadgen.garbage(100)
    bodies = list(good)
    for i, g in enumerate(bad):  # spread through the stream, so batches mix good and bad
        bodies.insert(i * 200 + 7, g)
    publish(private_mqtt, loadgen.packets(bodies, 200, f"car{unique}", qos=1))

    data = loadgen.read_topic(kafka, f"bridge-{unique}", 20_000, timeout_s=60, idle_s=0.5)
    dlq = loadgen.read_topic(kafka, f"bridge-dlq-{unique}", 100, timeout_s=30, idle_s=0.5)

    assert len(data.values) == 20_000 and sorted(data.values) == sorted(good)
    assert len(dlq.values) == 100 and sorted(dlq.values) == sorted(bad)
    reasons = {h[DLQ_REASON_HEADER].decode() for h in dlq.headers}
    assert any("magic" in r for r in reasons) and any("schema id" in r for r in reasons) and any("truncated" in r for r in reasons)
    for key, h in zip(dlq.keys, dlq.headers):
        assert h[DLQ_SOURCE_HEADER] == b"vehicles/sensor/data/" + key and int(h[DLQ_TIME_HEADER]) > 0


def test_two_bridges_share_the_subscription_and_each_message_lands_once(bridge_process, private_mqtt, kafka, unique):
    a, b = bridge_process(private_mqtt).start(), bridge_process(private_mqtt).start()
    bodies = loadgen.payloads(10_000)
    publish(private_mqtt, loadgen.packets(bodies, 100, f"car{unique}", qos=1))
    recs = loadgen.read_topic(kafka, f"bridge-{unique}", 10_000, timeout_s=30, idle_s=0.5)

    assert sorted(recs.values) == sorted(bodies)
    sa, sb = a.stop(), b.stop()
    assert sa["forwarded"] + sb["forwarded"] == 10_000 and sa["forwarded"] > 0 and sb["forwarded"] > 0


def test_bridge_subscribes_on_every_broker_of_the_list(bridge_process, private_server, kafka, unique):
    eps = [private_server("mqtt").endpoint for _ in range(2)]
    brokers = [f"{e['host']}:{e['port']}" for e in eps]
    bridge_process(",".join(brokers)).start()
    bodies = loadgen.payloads(2_000)
    publish(brokers[0], loadgen.packets(bodies[:1000], 10, f"a{unique}"))
    publish(brokers[1], loadgen.packets(bodies[1000:], 10, f"b{unique}"))
    recs = loadgen.read_topic(kafka, f"bridge-{unique}", 2_000, timeout_s=30, idle_s=0.5)
    assert sorted(recs.values) == sorted(bodies)


def test_qos0_is_forwarded_without_acks(bridge_process, private_mqtt, kafka, unique):
    bridge = bridge_process(private_mqtt, qos=0).start()
    bodies = loadgen.payloads(5_000)
    publish(private_mqtt, loadgen.packets(bodies, 100, f"car{unique}", qos=0), qos=0)
    recs = loadgen.read_topic(kafka, f"bridge-{unique}", 5_000, timeout_s=30, idle_s=0.5)
    assert sorted(recs.values) == sorted(bodies)
    assert bridge.metric("fleetpulse_bridge_mqtt_acks_total") == 0


def run_cli(*args: str, kafka: KafkaConnection | None = None, **env: str) -> subprocess.CompletedProcess:
    import os

    login = access.connection_env("BRIDGE", kafka) if kafka is not None else {}
    full_env = {**os.environ, **login, **{f"FLEETPULSE_BRIDGE_{k.upper()}": v for k, v in env.items()}}
    return subprocess.run([FLEETPULSE, "bridge", *args], capture_output=True, text=True, env=full_env, timeout=60)


def test_bridge_help_names_the_settings():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "--mqtt-brokers" in proc.stdout and "FLEETPULSE_BRIDGE_QOS" in proc.stdout


@pytest.mark.parametrize(
    "args, env, expected",
    [
        (["--qos", "2"], {}, "--qos"),
        ([], {"qos": "2"}, "FLEETPULSE_BRIDGE_QOS"),
        ([], {"mqtt_brokers": "127.0.0.1:notaport"}, "FLEETPULSE_BRIDGE_MQTT_BROKERS"),
        (["--share-group", "a/b"], {}, "--share-group"),
    ],
)
def test_bad_settings_fail_with_one_line_naming_the_setting(args, env, expected):
    proc = run_cli(*args, **env)
    assert proc.returncode != 0 and expected in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreachable_servers_fail_with_one_clear_line(kafka):
    proc = run_cli(mqtt_brokers=f"127.0.0.1:{free_port()}", kafka=kafka, metrics_port="0")
    assert proc.returncode == 1 and "MQTT broker at 127.0.0.1:" in proc.stderr and "unreachable" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_producer_takes_the_kafka_connection_from_settings_and_keeps_its_delivery_guarantees(monkeypatch):
    from bridges.kafka_sink import producer_config
    from bridges.settings import BridgeSettings

    monkeypatch.setenv("FLEETPULSE_BRIDGE_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("FLEETPULSE_BRIDGE_KAFKA_CA_FILE", "/etc/fleetpulse/ca.pem")
    conf = producer_config(BridgeSettings())
    assert conf["security.protocol"] == "SSL" and conf["ssl.ca.location"] == "/etc/fleetpulse/ca.pem"
    assert conf["enable.idempotence"] is True and conf["acks"] == "all"
