"""Kafka, secured: SASL_SSL with SCRAM-SHA-512, and each principal's rights (real broker, stock confluent-kafka)."""

from __future__ import annotations

import socket
import ssl
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient

from fleetpulse.topics import ALERTS, GROUND_TRUTH, SENSOR_DATA, SENSOR_DATA_DLQ
from tests.security.probes import kafka_error_code


@pytest.fixture(scope="module")
def client_config(secure_stack, credentials):
    """``client_config("bridge")``: librdkafka config built from `stack status --json` and `stack credentials`."""
    kafka = secure_stack["kafka"]
    base = {"bootstrap.servers": kafka["bootstrap_servers"], "security.protocol": kafka["security_protocol"],
            "sasl.mechanism": kafka["sasl_mechanism"], "ssl.ca.location": secure_stack["ca_file"]}

    def make(name: str, **extra) -> dict:
        creds = credentials(name)
        return {**base, "sasl.username": creds["username"], "sasl.password": creds["password"], **extra}

    return make


def deliver(config: dict, topic: str, **extra) -> KafkaError | None:
    """Produce one record; return its delivery error (None: Kafka has it)."""
    errors: list = []
    producer = Producer({**config, "message.timeout.ms": 10_000, **extra})
    producer.produce(topic, key=b"car", value=b"x", on_delivery=lambda err, msg: errors.append(err))
    producer.flush(20)
    return errors[0]


def first_event(config: dict, topic: str, group: str, timeout: float = 20.0):
    """Subscribe as ``group`` and return the first record or error the consumer sees."""
    consumer = Consumer({**config, "group.id": group, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None:
                return msg
        raise AssertionError(f"nothing from {topic} within {timeout:.0f}s")
    finally:
        consumer.close()


def test_status_names_the_listener_in_librdkafka_spelling(secure_stack):
    assert secure_stack["kafka"]["security_protocol"] == "SASL_SSL"
    assert secure_stack["kafka"]["sasl_mechanism"] == "SCRAM-SHA-512"


def test_a_client_without_credentials_gets_no_metadata(secure_stack):
    plaintext = AdminClient({"bootstrap.servers": secure_stack["kafka"]["bootstrap_servers"], "log_level": 0})
    assert kafka_error_code(lambda: plaintext.list_topics(timeout=5)) == KafkaError._TRANSPORT


def test_a_wrong_password_is_an_authentication_error(client_config):
    seen: list[KafkaError] = []
    admin = AdminClient(client_config("bridge", **{"sasl.password": "not-it", "error_cb": seen.append, "log_level": 0}))
    assert kafka_error_code(lambda: admin.list_topics(timeout=5)) == KafkaError._TRANSPORT
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        admin.poll(0.2)  # error_cb is served by poll
    assert KafkaError._AUTHENTICATION in {e.code() for e in seen}


@pytest.mark.parametrize("name, topic", [("bridge", SENSOR_DATA), ("bridge", SENSOR_DATA_DLQ), ("simulator", GROUND_TRUTH),
                                         ("transformer", ALERTS), ("transformer", SENSOR_DATA_DLQ)])
def test_each_service_writes_its_own_topics_with_an_idempotent_producer(client_config, name, topic):
    """Write on the topic is enough for an idempotent producer: Kafka 3.9 needs no IDEMPOTENT_WRITE on the cluster."""
    assert deliver(client_config(name), topic, **{"enable.idempotence": True, "acks": "all"}) is None


@pytest.mark.parametrize("name, topic", [("transformer", SENSOR_DATA), ("bridge", ALERTS), ("simulator", SENSOR_DATA),
                                         ("training", SENSOR_DATA), ("training", GROUND_TRUTH), ("bridge", GROUND_TRUTH)])
def test_writing_outside_ones_rights_is_a_topic_authorization_error(client_config, name, topic):
    assert deliver(client_config(name), topic).code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_the_bridge_reading_alerts_is_refused(client_config):
    bridge = client_config("bridge", log_level=0)
    topic = AdminClient(bridge).list_topics(ALERTS, timeout=10).topics[ALERTS]
    assert topic.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # The bridge joins no consumer group at all, so its consumer fails on the group first.
    assert first_event(bridge, ALERTS, "fleetpulse-bridge").error().code() == KafkaError.GROUP_AUTHORIZATION_FAILED


def test_training_reads_sensor_data_and_ground_truth_but_not_alerts(client_config, unique):
    assert deliver(client_config("admin"), SENSOR_DATA) is None
    assert deliver(client_config("admin"), GROUND_TRUTH) is None
    training = client_config("training")
    for topic in (SENSOR_DATA, GROUND_TRUTH):
        assert first_event(training, topic, f"fleetpulse-train-{unique}").error() is None
    assert first_event(training, ALERTS, f"fleetpulse-train-{unique}").error().code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_the_transformer_consumes_only_in_its_own_groups(client_config, unique):
    assert deliver(client_config("admin"), SENSOR_DATA) is None
    transformer = client_config("transformer")
    assert first_event(transformer, SENSOR_DATA, f"fleetpulse-transformer-{unique}").error() is None
    assert first_event(transformer, SENSOR_DATA, f"someone-else-{unique}").error().code() == KafkaError.GROUP_AUTHORIZATION_FAILED


def test_topics_are_not_created_on_first_use(client_config):
    topic = f"not-created-{uuid.uuid4().hex[:8]}"
    admin_config = client_config("admin")
    assert deliver(admin_config, topic, **{"message.timeout.ms": 3000}).code() == KafkaError._MSG_TIMED_OUT
    assert topic not in AdminClient(admin_config).list_topics(timeout=10).topics


def test_the_stack_created_the_project_topics(client_config):
    from fleetpulse.topics import TOPICS

    topics = AdminClient(client_config("admin")).list_topics(timeout=10).topics
    assert {name: len(topics[name].partitions) for name in TOPICS} == {name: spec.partitions for name, spec in TOPICS.items()}


def test_the_controller_listener_admits_only_the_brokers_certificate(secure_settings, secure_stack):
    from devtools.stack.pki import Pki
    from devtools.stack.rights import KAFKA_BROKER

    def first_read(cert: Path | None = None, key: Path | None = None) -> bytes:
        context = ssl.create_default_context(cafile=secure_stack["ca_file"])
        if cert is not None:
            context.load_cert_chain(cert, key)
        with socket.create_connection(("127.0.0.1", secure_settings.kafka_controller_port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"\0\0\0\0")  # an empty request: Kafka closes the connection, over TLS
                return tls.recv(1)

    broker = Pki(secure_settings.pki_dir).certificate(KAFKA_BROKER)
    assert first_read(broker.cert_file, broker.key_file) == b""
    # TLS 1.3 reports the missing client certificate after the handshake, on the first read.
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        first_read()
