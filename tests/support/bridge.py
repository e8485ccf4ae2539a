"""The bridge as a real subprocess (so kill -9 is real), with its /metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

from devtools.stack import access
from devtools.stack.process import free_port
from fleetpulse.settings import KafkaConnection
from tests.support.paths import FLEETPULSE


def create_topics(kafka: KafkaConnection, topic: str, dlq_topic: str) -> None:
    """The bridge's data and dead-letter topics under these names, created by ``kafka`` (the operator):
    on a secured Kafka no one else may create one, the bridge included."""
    from fleetpulse.clients import ensure_topics
    from fleetpulse.topics import SENSOR_DATA, SENSOR_DATA_DLQ, TOPICS

    ensure_topics(kafka, [replace(TOPICS[SENSOR_DATA], name=topic), replace(TOPICS[SENSOR_DATA_DLQ], name=dlq_topic)])


class BridgeProcess:
    """`fleetpulse bridge` with env settings; a stable client id so a restart resumes the MQTT session.

    ``kafka``: the connection it produces with, given as ``FLEETPULSE_BRIDGE_KAFKA_*`` (its password in a
    file); the operator's in tests, whose topics are their own and no service principal's."""

    def __init__(self, log_dir: Path, kafka: KafkaConnection | None = None, **settings):
        self.metrics_port = free_port()
        self.env = {
            **os.environ,
            **(access.connection_env("BRIDGE", kafka) if kafka is not None else {}),
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
