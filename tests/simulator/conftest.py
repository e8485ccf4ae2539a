"""Simulator test helpers: a private Mosquitto per test (we flood it), the CLI as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fleetpulse.errors import StackError
from devtools.loadgen.mqtt_counter import CountingSubscriber

FLEETPULSE = str(Path(sys.executable).with_name("fleetpulse"))


@pytest.fixture
def broker(private_service):
    """A Mosquitto of our own: the simulator's fixed topics would reach others' subscribers on the shared one."""
    for attempt in range(3):
        try:
            svc = private_service("mqtt")
            break
        except StackError:  # seen once: a free port taken between choosing it and binding it
            if attempt == 2:
                raise
    ep = svc.endpoint
    svc.host, svc.port = ep["host"], ep["port"]
    svc.address = f"{ep['host']}:{ep['port']}"
    return svc


def simulate(*args: str, broker=None, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run `fleetpulse simulate` with --json; on success parse the summary into ``.summary``."""
    argv = [FLEETPULSE, "simulate", "--json", "--quiet", *args]
    if broker is not None:
        argv += ["--mqtt-brokers", broker.address]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr
        proc.summary = json.loads(proc.stdout)
    return proc


def counter(broker, **kw) -> CountingSubscriber:
    return CountingSubscriber(broker.host, broker.port, **kw).start()
