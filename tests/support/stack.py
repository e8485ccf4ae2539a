"""Private stack servers for fault tests: free ports, a temp state dir, ours to stop, kill and restart."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

from devtools.stack import control
from devtools.stack.gcs import FakeGCSService
from devtools.stack.kafka import KafkaService
from devtools.stack.mongodb import FerretDBService
from devtools.stack.mqtt import MosquittoService
from devtools.stack.process import free_port
from devtools.stack.settings import StackSettings
from fleetpulse.settings import KafkaConnection

SERVICES = {"kafka": KafkaService, "mqtt": MosquittoService, "mongodb": FerretDBService, "gcs": FakeGCSService}


def stack_with(*names: str) -> dict:
    """`stack status --json`, starting the stack first if one of ``names`` is not running.

    For test folders that need only those servers: the shared ``stack`` fixture waits for a round
    trip with every server, and a FerretDB that hangs on its round trip would hold them for nothing.
    """
    settings = StackSettings()
    state = control.status(settings)
    if not all(state[name]["running"] for name in names):
        control.up(settings, mqtt_brokers=max(1, control.mqtt_broker_count(settings)))
        state = control.status(settings)
    return state


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
            # Fault tests kill, stop and restart these; security is exercised on the shared stack
            # and in tests/security's private secured one.
            secure=False,
        )
        self.settings = settings
        self.service = SERVICES[name](settings)

    @property
    def endpoint(self) -> dict:
        return self.service.endpoint()

    @property
    def connection(self) -> KafkaConnection:
        """A client's connection to this private Kafka."""
        from devtools.stack import access

        return access.kafka(self.settings)

    @property
    def address(self) -> str:
        """What a client is given: Kafka's bootstrap servers, else ``host:port``."""
        ep = self.endpoint
        return ep.get("bootstrap_servers") or f"{ep['host']}:{ep['port']}"

    def start(self) -> "PrivateService":
        self.service.start()
        self.service.wait_ready(self.settings.start_timeout_s)
        return self

    def stop(self) -> None:
        self.service.process.stop()

    def kill(self) -> None:
        self.service.process.kill()

    def restart(self) -> None:
        self.stop()
        self.start()


def start_private(svc: PrivateService) -> None:
    """Start (or restart) a private server, tolerating the first instants after exec.

    ManagedProcess.running() checks /proc/<pid>/cmdline, which is briefly empty right after the
    exec on this machine, so PrivateService.start() sometimes reports "exited during start-up" for
    a server that runs fine. Wait for the cmdline before waiting for readiness.
    """
    svc.service.process.stop()
    svc.service.start()
    deadline = time.monotonic() + 5
    while not svc.service.process.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    svc.service.wait_ready(svc.settings.start_timeout_s)


def private_servers(tmp_path_factory, start: Callable[[PrivateService], object]) -> Iterator[Callable[[str], PrivateService]]:
    """The body of a private-server fixture: yields ``make(name)``, which starts one with ``start``;
    every server made is stopped at teardown."""
    started: list[PrivateService] = []

    def make(name: str) -> PrivateService:
        svc = PrivateService(name, tmp_path_factory.mktemp(f"private-{name}"))
        started.append(svc)
        start(svc)
        return svc

    yield make
    for svc in started:
        svc.stop()
