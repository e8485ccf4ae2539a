"""The one place that builds Kafka, MongoDB and GCS clients from settings values."""

from __future__ import annotations

import os
import socket
import time
from typing import Iterable

from fleetpulse.errors import AccessDenied, BrokerUnavailable
from fleetpulse.settings import KafkaConnection, MqttConnection, parse_hostports
from fleetpulse.topics import TOPICS, TopicSpec


def kafka_config(connection: KafkaConnection | str, **extra) -> dict:
    """librdkafka config for ``connection`` (a bare bootstrap string means PLAINTEXT) plus ``extra``."""
    if isinstance(connection, str):
        connection = KafkaConnection(bootstrap_servers=connection)
    return {**connection.librdkafka(), **extra}


MQTT_LOGIN_REFUSALS = (0x85, 0x86, 0x87, 0x8A)
"""MQTT 5 CONNACK reasons that name the client's identity (client id, credentials, rights, a ban):
reconnecting with the same identity cannot help, so at start-up they are AccessDenied."""


def require_kafka(connection: KafkaConnection | str, timeout: float = 10.0, topics: Iterable[str] = (),
                  groups: Iterable[str] = ()) -> None:
    """Raise BrokerUnavailable unless a Kafka metadata round trip succeeds within ``timeout``, and
    AccessDenied (one line naming the principal) when Kafka refuses the login, or the principal may
    not see one of ``topics`` or join one of ``groups``.

    TF-IO's Kafka datasets and librdkafka clients silently wait or yield nothing when the broker is
    down or refuses the credentials; call this first so the user gets one clear line instead.
    ``topics`` are checked for rights, not created: name them only for a principal (an authenticated
    connection), since a metadata request may auto-create a missing topic on an open broker.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    if isinstance(connection, str):
        connection = KafkaConnection(bootstrap_servers=connection)
    errors: list = []
    conf = kafka_config(connection, **{"socket.connection.setup.timeout.ms": int(timeout * 1000), "log_level": 0,
                                       "error_cb": errors.append})
    admin = AdminClient(conf)
    deadline = time.monotonic() + timeout
    while True:
        try:
            metadata = admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            break
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb: a refused login or TLS handshake is only reported there
            _raise_refusal(connection, errors)
            if time.monotonic() >= deadline:
                raise BrokerUnavailable(f"Kafka at {connection.bootstrap_servers} is unreachable ({exc.args[0].str()}); "
                                        "is the stack up? (fleetpulse stack up)") from None
    _require_rights(admin, connection, metadata, list(topics), list(groups), timeout)


def _principal(connection: KafkaConnection) -> str:
    return f"principal {connection.username!r}" if connection.username else "an anonymous client"


def _raise_refusal(connection: KafkaConnection, errors: list) -> None:
    from confluent_kafka import KafkaError

    codes = {e.code(): e for e in errors}
    where = f"Kafka at {connection.bootstrap_servers}"
    if KafkaError._AUTHENTICATION in codes:
        raise AccessDenied(f"{where} refused the login of {_principal(connection)} ({connection.sasl_mechanism}): "
                           "wrong username or password (check its password file or variable)")
    if KafkaError._SSL in codes:
        reason = codes[KafkaError._SSL].str().split(": ", 1)[-1].split(", verify")[0].split(" (after ")[0]
        raise AccessDenied(f"TLS with {where} failed for {_principal(connection)} (CA file {connection.ca_file}): {reason}")


def _require_rights(admin, connection: KafkaConnection, metadata, topics: list[str], groups: list[str], timeout: float) -> None:
    from confluent_kafka import KafkaError, KafkaException

    for topic in topics:
        found = metadata.topics.get(topic)
        # A principal's metadata lists only the topics it may describe; ask for the others by name.
        error = found.error if found is not None else admin.list_topics(topic, timeout=timeout).topics[topic].error
        if error is None:
            continue
        if error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            raise AccessDenied(f"Kafka at {connection.bootstrap_servers}: {_principal(connection)} has no rights on topic "
                               f"{topic!r} (or it does not exist; without rights Kafka does not say which)")
        if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise BrokerUnavailable(f"Kafka topic {topic!r} does not exist on {connection.bootstrap_servers}; a service principal "
                                    "may not create topics (the operator does: `fleetpulse stack up` creates the project's)")
        raise BrokerUnavailable(f"Kafka topic {topic!r} on {connection.bootstrap_servers}: {error.str()}")
    if groups:
        for group, future in admin.describe_consumer_groups(groups, request_timeout=timeout).items():
            try:
                future.result()
            except KafkaException as exc:
                # Only a refusal is decisive; a group not yet coordinated (NOT_COORDINATOR) is created on join.
                if exc.args[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
                    raise AccessDenied(f"Kafka at {connection.bootstrap_servers}: {_principal(connection)} may not join "
                                       f"consumer group {group!r} (its ACLs grant other group names)") from None


def prepare_topics(connection: KafkaConnection, specs: Iterable[TopicSpec], timeout: float = 15.0) -> list[str]:
    """The topics a producer writes: created when missing on an open broker; on a secured one (a
    principal, who may not create topics) checked for existence and rights. Returns the names created."""
    specs = list(specs)
    if connection.authenticated:
        require_kafka(connection, timeout, topics=[s.name for s in specs])
        return []
    return ensure_topics(connection, specs, timeout)


def require_tcp(what: str, host: str, port: int, timeout: float = 3.0) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise BrokerUnavailable(f"{what} at {host}:{port} is unreachable ({exc.strerror or exc}); is the stack up? (fleetpulse stack up)") from None


def require_mqtt(brokers: MqttConnection | str, default_port: int = 1883) -> list[tuple[str, int]]:
    """The brokers' endpoints, once each answers TCP (``brokers``: a connection, or a bare host:port list)."""
    endpoints = brokers.endpoints if isinstance(brokers, MqttConnection) else parse_hostports(brokers, default_port)
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
