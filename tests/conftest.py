"""Shared fixtures: the real local stack (session-scoped) and private servers for fault tests.

Tests never stop the shared stack. A test that kills or restarts a server starts its own copy on
free ports with `private_service` and does what it likes with that one.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest

from devtools.stack import control
from devtools.stack.gcs import FakeGCSService
from devtools.stack.kafka import KafkaService
from devtools.stack.mongodb import FerretDBService
from devtools.stack.mqtt import MosquittoService
from devtools.stack.settings import StackSettings

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"

_SERVICES = {"kafka": KafkaService, "mqtt": MosquittoService, "mongodb": FerretDBService, "gcs": FakeGCSService}


@pytest.fixture(scope="session")
def stack() -> dict:
    """The local stack, started if needed (idempotent); returns `stack status --json`."""
    settings = StackSettings()
    control.up(settings, mqtt_brokers=max(1, control.mqtt_broker_count(settings)))
    return control.status(settings)


@pytest.fixture(scope="session")
def kafka_bootstrap(stack) -> str:
    return stack["kafka"]["bootstrap_servers"]


@pytest.fixture(scope="session")
def mqtt_endpoint(stack) -> tuple[str, int]:
    return stack["mqtt"]["host"], stack["mqtt"]["port"]


@pytest.fixture(scope="session")
def mongodb_uri(stack) -> str:
    return stack["mongodb"]["uri"]


@pytest.fixture(scope="session")
def gcs_endpoint(stack) -> str:
    return stack["gcs"]["endpoint"]


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic, group, collection and bucket names."""
    return uuid.uuid4().hex[:10]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateService:
    """One stack server of our own (free ports, temp state dir) that a test may stop, kill and restart."""

    def __init__(self, name: str, state_dir: Path):
        settings = StackSettings(
            state_dir=state_dir,
            kafka_port=free_port(),
            kafka_controller_port=free_port(),
            mqtt_port=free_port(),
            mongodb_port=free_port(),
            gcs_port=free_port(),
            kafka_heap="512m",
        )
        self.settings = settings
        self.service = _SERVICES[name](settings)

    @property
    def endpoint(self) -> dict:
        return self.service.endpoint()

    def start(self) -> "PrivateService":
        self.service.start()
        self.service.wait_ready(self.settings.start_timeout_s)
        return self

    def stop(self) -> None:
        self.service.process.stop()

    def kill(self) -> None:
        import os
        import signal

        pid = self.service.process.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            self.service.process.stop()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def private_service(tmp_path_factory):
    """Factory: ``private_service("kafka")`` starts a private server; all are stopped at teardown."""
    started: list[PrivateService] = []

    def make(name: str) -> PrivateService:
        svc = PrivateService(name, tmp_path_factory.mktemp(f"private-{name}"))
        started.append(svc)
        return svc.start()

    yield make
    for svc in started:
        svc.stop()
