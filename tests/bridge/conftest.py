"""Bridge test fixtures: bridge subprocesses on unique topics, private servers, the shared Kafka."""

from __future__ import annotations

import pytest

from devtools.stack import access
from fleetpulse.settings import KafkaConnection
from tests.support.bridge import BridgeProcess, create_topics
from tests.support.stack import private_servers, stack_with, start_private


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Overrides the shared fixture: of the shared servers the bridge tests use only Kafka (their
    brokers are private), so they wait for no other server's round trip."""
    return stack_with("kafka")["kafka"]["bootstrap_servers"]


@pytest.fixture(scope="session")
def kafka(kafka_bootstrap) -> KafkaConnection:
    """Overrides the shared fixture likewise: the operator's connection, once the stack's Kafka runs."""
    return access.kafka()


@pytest.fixture
def bridge_process(tmp_path, kafka, unique):
    """Factory for bridge subprocesses writing to ``bridge-<unique>`` topics (on the shared Kafka as the
    operator, or on ``kafka=`` a private one's connection); all stopped at teardown."""
    procs: list[BridgeProcess] = []

    def make(mqtt_brokers: str, kafka: KafkaConnection = kafka, **settings) -> BridgeProcess:
        settings = {
            "topic": f"bridge-{unique}",
            "dlq_topic": f"bridge-dlq-{unique}",
            "share_group": f"test{unique}",
            "client_id": f"bridge-{unique}-{len(procs)}",
            "mqtt_brokers": mqtt_brokers,
            **settings,
        }
        create_topics(kafka, settings["topic"], settings["dlq_topic"])
        p = BridgeProcess(tmp_path, kafka=kafka, **settings)
        procs.append(p)
        return p

    yield make
    for p in procs:
        if p.proc is not None and p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(10)


@pytest.fixture
def private_server(tmp_path_factory):
    """Factory like conftest's private_service, with start_private; every server is stopped at teardown."""
    yield from private_servers(tmp_path_factory, start_private)


@pytest.fixture
def private_mqtt(private_server) -> str:
    """A Mosquitto of our own (persistence on): isolates counts from other traffic on the shared broker."""
    return private_server("mqtt").address
