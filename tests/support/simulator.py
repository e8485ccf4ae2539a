"""`fleetpulse simulate` as a subprocess, and a counting subscriber on a private broker."""

from __future__ import annotations

import json
import os
import subprocess

from devtools.loadgen.mqtt_counter import CountingSubscriber
from devtools.stack import access
from fleetpulse.settings import KafkaConnection
from tests.support.paths import FLEETPULSE
from tests.support.stack import PrivateService


def simulate(*args: str, broker: PrivateService | None = None, kafka: KafkaConnection | None = None, timeout: float = 120,
             check: bool = True) -> subprocess.CompletedProcess:
    """Run `fleetpulse simulate` with --json; on success parse the summary into ``.summary``.

    ``kafka``: where its ground truth goes, given as ``FLEETPULSE_SIMULATOR_KAFKA_*`` (the password in a file)."""
    argv = [FLEETPULSE, "simulate", "--json", "--quiet", *args]
    if broker is not None:
        argv += ["--mqtt-brokers", broker.address]
    env = {**os.environ, **(access.connection_env("SIMULATOR", kafka) if kafka is not None else {})}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr
        proc.summary = json.loads(proc.stdout)
    return proc


def counter(broker: PrivateService, **kw) -> CountingSubscriber:
    ep = broker.endpoint
    return CountingSubscriber(ep["host"], ep["port"], **kw).start()
