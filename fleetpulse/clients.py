"""The one place that builds Kafka, MongoDB and GCS clients from settings values."""

from __future__ import annotations

import os
import socket

from fleetpulse.errors import BrokerUnavailable
from fleetpulse.settings import parse_hostports


def kafka_config(bootstrap_servers: str, **extra) -> dict:
    return {"bootstrap.servers": bootstrap_servers, **extra}


def require_kafka(bootstrap_servers: str, timeout: float = 10.0) -> None:
    """Raise BrokerUnavailable unless a Kafka metadata round trip succeeds within ``timeout``.

    TF-IO's Kafka datasets and librdkafka producers silently wait or yield nothing when the broker
    is down; call this first so the user gets one clear line instead.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "socket.connection.setup.timeout.ms": int(timeout * 1000), "log_level": 0})
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BrokerUnavailable(f"Kafka at {bootstrap_servers} is unreachable ({exc.args[0].str()}); is the stack up? (fleetpulse stack up)") from None


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


def split_gs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ("bucket", "a/b")."""
    if not uri.startswith("gs://"):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix
