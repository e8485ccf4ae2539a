"""The one place that builds Kafka, MongoDB and GCS clients from settings values."""

from __future__ import annotations

import os
import socket
from typing import Iterable

from fleetpulse.errors import BrokerUnavailable
from fleetpulse.settings import KafkaConnection, parse_hostports
from fleetpulse.topics import TOPICS, TopicSpec


def kafka_config(connection: KafkaConnection | str, **extra) -> dict:
    """librdkafka config for ``connection`` (a bare bootstrap string means PLAINTEXT) plus ``extra``."""
    if isinstance(connection, str):
        connection = KafkaConnection(bootstrap_servers=connection)
    return {**connection.librdkafka(), **extra}


def require_kafka(connection: KafkaConnection | str, timeout: float = 10.0) -> None:
    """Raise BrokerUnavailable unless a Kafka metadata round trip succeeds within ``timeout``.

    TF-IO's Kafka datasets and librdkafka producers silently wait or yield nothing when the broker
    is down; call this first so the user gets one clear line instead.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    conf = kafka_config(connection, **{"socket.connection.setup.timeout.ms": int(timeout * 1000), "log_level": 0})
    admin = AdminClient(conf)
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BrokerUnavailable(f"Kafka at {conf['bootstrap.servers']} is unreachable ({exc.args[0].str()}); is the stack up? (fleetpulse stack up)") from None


def require_tcp(what: str, host: str, port: int, timeout: float = 3.0) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise BrokerUnavailable(f"{what} at {host}:{port} is unreachable ({exc.strerror or exc}); is the stack up? (fleetpulse stack up)") from None


def require_mqtt(brokers: str, default_port: int = 1883) -> list[tuple[str, int]]:
    endpoints = parse_hostports(brokers, default_port)
    for host, port in endpoints:
        require_tcp("MQTT broker", host, port)
    return endpoints


def mongo_client(uri: str, timeout_ms: int = 5000):
    from pymongo import MongoClient

    return MongoClient(uri, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms)


def gcs_client(endpoint: str | None, project: str = "fleetpulse"):
    """A google-cloud-storage client; ``endpoint`` set means the emulator (anonymous), empty means real GCS."""
    from google.cloud import storage

    if endpoint:
        from google.auth.credentials import AnonymousCredentials

        # The client library also reads STORAGE_EMULATOR_HOST; set it so libraries that build their
        # own client (kserve's Storage) hit the same emulator.
        os.environ["STORAGE_EMULATOR_HOST"] = endpoint
        return storage.Client(project=project, credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint})
    return storage.Client(project=project)


def ensure_topics(connection: KafkaConnection | str, specs: Iterable[TopicSpec] | None = None, timeout: float = 15.0) -> list[str]:
    """Create the project's topics that do not exist yet; return the names created."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(kafka_config(connection, log_level=0))
    specs = list(TOPICS.values() if specs is None else specs)
    existing = set(admin.list_topics(timeout=timeout).topics)
    new = [NewTopic(s.name, s.partitions, 1, config=s.kafka_config()) for s in specs if s.name not in existing]
    created = []
    for name, fut in (admin.create_topics(new, request_timeout=timeout).items() if new else []):
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created
