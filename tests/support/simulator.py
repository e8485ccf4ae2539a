"""`fleetpulse simulate` as a subprocess, and a counting subscriber on a private broker."""

from __future__ import annotations

import json
import subprocess

from devtools.loadgen.mqtt_counter import CountingSubscriber
from tests.support.paths import FLEETPULSE
from tests.support.stack import PrivateService


def simulate(*args: str, broker: PrivateService | None = None, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run `fleetpulse simulate` with --json; on success parse the summary into ``.summary``."""
    argv = [FLEETPULSE, "simulate", "--json", "--quiet", *args]
    if broker is not None:
        argv += ["--mqtt-brokers", broker.address]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr
        proc.summary = json.loads(proc.stdout)
    return proc


def counter(broker: PrivateService, **kw) -> CountingSubscriber:
    ep = broker.endpoint
    return CountingSubscriber(ep["host"], ep["port"], **kw).start()
