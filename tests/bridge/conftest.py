"""Bridge test helpers: the bridge as a real subprocess (so kill -9 is real), its /metrics, counting in Kafka."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLEETPULSE = str(ROOT / ".venv" / "bin" / "fleetpulse")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BridgeProcess:
    """`fleetpulse bridge` with env settings; a stable client id so a restart resumes the MQTT session."""

    def __init__(self, log_dir: Path, **settings):
        self.metrics_port = free_port()
        self.env = {
            **os.environ,
            **{f"FLEETPULSE_BRIDGE_{k.upper()}": str(v) for k, v in settings.items()},
            "FLEETPULSE_BRIDGE_METRICS_PORT": str(self.metrics_port),
        }
        self.brokers = settings["mqtt_brokers"].split(",")
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 30.0) -> "BridgeProcess":
        self.starts += 1
        log = open(self.log_dir / f"bridge-{self.starts}.log", "w")
        self.proc = subprocess.Popen([FLEETPULSE, "bridge", "-v", "--json", "--progress-every", "1"], env=self.env, stdout=subprocess.PIPE, stderr=log, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bridge exited {self.proc.returncode}: {self.log()}")
            try:
                if self.metric("fleetpulse_bridge_mqtt_connected") >= len(self.brokers):
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"bridge not connected within {timeout}s: {self.log()}")

    def log(self) -> str:
        return (self.log_dir / f"bridge-{self.starts}.log").read_text()[-2000:]

    def metrics(self) -> dict[str, float]:
        """Sample name -> value, summed over labels."""
        from prometheus_client.parser import text_string_to_metric_families

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
        return out

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    def wait_metric(self, name: str, at_least: float, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.metric(name)
            if value >= at_least:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"{name} stayed below {at_least} ({self.metric(name)}): {self.log()}")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> dict:
        """SIGTERM: drain, last acks, disconnect; return the --json summary."""
        if self.proc is None or self.proc.poll() is not None:
            return {}
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, self.log()
        return json.loads(out.strip().splitlines()[-1])


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


def start_private(svc) -> None:
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


@pytest.fixture
def private_server(tmp_path_factory):
    """Factory like conftest's private_service, with start_private; every server is stopped at teardown."""
    from tests.conftest import PrivateService

    started = []

    def make(name: str):
        svc = PrivateService(name, tmp_path_factory.mktemp(f"private-{name}"))
        started.append(svc)
        start_private(svc)
        return svc

    yield make
    for svc in started:
        svc.stop()


def endpoint_of(svc) -> str:
    ep = svc.endpoint
    return ep.get("bootstrap_servers") or f"{ep['host']}:{ep['port']}"


@pytest.fixture
def private_mqtt(private_server) -> str:
    """A Mosquitto of our own (persistence on): isolates counts from other traffic on the shared broker."""
    return endpoint_of(private_server("mqtt"))
