"""`stack up | down | status | logs`: the stack as a whole."""

from __future__ import annotations

import json
import shutil
import time
from typing import Callable

from fleetpulse.errors import StackError
from devtools.stack.gcs import FakeGCSService
from devtools.stack.kafka import KafkaService
from devtools.stack.mongodb import FerretDBService
from devtools.stack.mqtt import MosquittoService
from devtools.stack.process import port_in_use, port_owner
from devtools.stack.service import Service
from devtools.stack.settings import StackSettings

SERVICE_NAMES = ("kafka", "mqtt", "mongodb", "gcs")


def _layout_file(settings: StackSettings):
    return settings.state_dir / "stack.json"


def mqtt_broker_count(settings: StackSettings) -> int:
    try:
        return int(json.loads(_layout_file(settings).read_text()).get("mqtt_brokers", 1))
    except (FileNotFoundError, ValueError):
        return 1


def services(settings: StackSettings, mqtt_brokers: int | None = None) -> list[Service]:
    n = mqtt_brokers or mqtt_broker_count(settings)
    return [
        KafkaService(settings),
        *[MosquittoService(settings, i) for i in range(n)],
        FerretDBService(settings),
        FakeGCSService(settings),
    ]


def up(settings: StackSettings, mqtt_brokers: int = 1, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Install (first time), start and wait for every server; idempotent. Returns timings per service."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    previous = mqtt_broker_count(settings)
    if previous > mqtt_brokers:  # shrink: stop the extra brokers we started before
        for svc in services(settings, previous)[1 + mqtt_brokers : 1 + previous]:
            svc.process.stop()
    _layout_file(settings).write_text(json.dumps({"mqtt_brokers": mqtt_brokers}))
    _preflight(services(settings, mqtt_brokers))
    timings: dict[str, float] = {}
    started: list[Service] = []
    for svc in services(settings, mqtt_brokers):
        t0 = time.monotonic()
        if svc.process.running() and not _answers(svc):
            # A server that runs but no longer answers (seen: FerretDB's SQLite pool exhausted by
            # cursors of killed clients) is restarted rather than reported as up.
            progress(f"{svc.label}: running but not answering a round trip; restarting it")
            svc.process.stop()
        progress(f"{svc.label}: starting")
        if svc.start():
            started.append(svc)
        timings[svc.label] = time.monotonic() - t0
    for svc in services(settings, mqtt_brokers):
        t0 = time.monotonic()
        progress(f"{svc.label}: waiting for a round trip")
        svc.wait_ready(settings.start_timeout_s)
        timings[svc.label] += time.monotonic() - t0
        progress(f"{svc.label}: ready")
    return {"started": [s.label for s in started], "seconds": timings}


def _answers(svc: Service, attempts: int = 3) -> bool:
    for _ in range(attempts):
        try:
            svc.round_trip()
            return True
        except Exception:  # noqa: BLE001 - any failure to answer counts; the restart below reports it
            time.sleep(1)
    return False


def _preflight(svcs: list[Service]) -> None:
    """Fail before starting anything if a port we need is held by a program that is not ours."""
    for svc in svcs:
        if svc.process.running():
            continue
        for port in svc.ports():
            if port_in_use(svc.host, port):
                raise StackError(
                    f"{svc.label}: port {svc.host}:{port} is taken by {port_owner(port)}; stop it or move the stack "
                    f"with FLEETPULSE_STACK_{svc.name.upper()}_PORT (log dir: {svc.dir})"
                )


def down(settings: StackSettings, wipe: bool = False) -> list[str]:
    stopped = [svc.label for svc in reversed(services(settings)) if svc.process.stop()]
    if wipe and settings.state_dir.exists():
        shutil.rmtree(settings.state_dir)
    return stopped


def status(settings: StackSettings) -> dict:
    svcs = services(settings)
    kafka, *mqtts = [s for s in svcs if s.name in ("kafka", "mqtt")]
    by_name = {s.name: s for s in svcs}
    mqtt = {**mqtts[0].status(), "brokers": [m.status() for m in mqtts]}
    mqtt["running"] = all(b["running"] for b in mqtt["brokers"])
    return {
        "kafka": kafka.status(),
        "mqtt": mqtt,
        "mongodb": by_name["mongodb"].status(),
        "gcs": by_name["gcs"].status(),
        "state_dir": str(settings.state_dir),
    }


def log_file(settings: StackSettings, name: str):
    for svc in services(settings):
        if svc.label == name:
            return svc.process.log_file
    raise KeyError(name)
