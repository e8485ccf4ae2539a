"""Bridge test fixtures: bridge subprocesses on unique topics, private servers, the shared Kafka."""

from __future__ import annotations

import pytest

from tests.support.bridge import BridgeProcess
from tests.support.stack import private_servers, start_private


@pytest.fixture(scope="session")
def kafka_bootstrap(request) -> str:
    """The shared stack's Kafka, without waiting on the rest of the stack (the bridge needs only Kafka).

    Overrides tests/conftest.py's fixture: that one goes through `stack`, which waits for every
    server, and a FerretDB that hangs on its round trip would hold the bridge tests for no reason.
    Falls back to starting the stack when Kafka is not up.
    """
    from fleetpulse import endpoints
    from fleetpulse.clients import require_kafka
    from fleetpulse.errors import BrokerUnavailable

    try:
        require_kafka(endpoints.KAFKA_BOOTSTRAP, timeout=10)
        return endpoints.KAFKA_BOOTSTRAP
    except BrokerUnavailable:
        return request.getfixturevalue("stack")["kafka"]["bootstrap_servers"]


@pytest.fixture
def bridge_process(tmp_path, kafka_bootstrap, unique):
    """Factory for bridge subprocesses writing to ``bridge-<unique>`` topics; all stopped at teardown."""
    procs: list[BridgeProcess] = []

    def make(mqtt_brokers: str, **settings) -> BridgeProcess:
        settings = {
            "kafka_bootstrap_servers": kafka_bootstrap,
            "topic": f"bridge-{unique}",
            "dlq_topic": f"bridge-dlq-{unique}",
            "share_group": f"test{unique}",
            "client_id": f"bridge-{unique}-{len(procs)}",
            "mqtt_brokers": mqtt_brokers,
            **settings,
        }
        p = BridgeProcess(tmp_path, **settings)
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
