"""Shared fixtures: the real local stack (session-scoped) and private servers for fault tests.

Tests never stop the shared stack. A test that kills or restarts a server starts its own copy on
free ports with `private_service` and does what it likes with that one. Helpers that test modules
import live in tests/support/.
"""

from __future__ import annotations

import uuid

import pytest

from devtools.stack import access, control
from devtools.stack.settings import StackSettings
from fleetpulse.settings import KafkaConnection, MqttConnection
from tests.support.stack import PrivateService, private_servers


@pytest.fixture(scope="session")
def stack() -> dict:
    """The local stack, started if needed (idempotent); returns `stack status --json`."""
    settings = StackSettings()
    control.up(settings, mqtt_brokers=max(1, control.mqtt_broker_count(settings)))
    return control.status(settings)


@pytest.fixture(scope="session")
def kafka_bootstrap(stack) -> str:
    """Only the address; clients connect with ``kafka`` (secured like any client when the stack is)."""
    return stack["kafka"]["bootstrap_servers"]


@pytest.fixture(scope="session")
def kafka(stack) -> KafkaConnection:
    """The operator's (``admin``) connection to the stack's Kafka, as `stack credentials admin` gives it:
    test topics and groups are the tests' own, which no service principal has rights on."""
    return access.kafka()


@pytest.fixture(scope="session")
def mqtt(stack) -> MqttConnection:
    """The operator's connection to the stack's Mosquitto (TLS and a login when secured)."""
    return access.mqtt()


@pytest.fixture(scope="session")
def mqtt_endpoint(stack) -> tuple[str, int]:
    return stack["mqtt"]["host"], stack["mqtt"]["port"]


@pytest.fixture(scope="session")
def mongodb_uri(stack) -> str:
    """The operator's MongoDB URI (with its credentials when secured)."""
    return access.mongodb_uri()


@pytest.fixture(scope="session")
def gcs_endpoint(stack) -> str:
    return stack["gcs"]["endpoint"]


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic, group, collection and bucket names."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def private_service(tmp_path_factory):
    """Factory: ``private_service("kafka")`` starts a private server; all are stopped at teardown."""
    yield from private_servers(tmp_path_factory, PrivateService.start)
