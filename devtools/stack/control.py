"""`stack up | down | status | logs`: the stack as a whole."""

from __future__ import annotations

import json
import shutil
import time
from typing import Callable

from fleetpulse.errors import StackError
from devtools.stack.credentials import IdentityStore
from devtools.stack.gcs import FakeGCSService
from devtools.stack.kafka import KafkaService
from devtools.stack.mongodb import FerretDBService
from devtools.stack.mqtt import MosquittoService
from devtools.stack.postgres import PostgresService
from devtools.stack.pki import Pki, ensure_pki
from devtools.stack.process import port_in_use, port_owner
from devtools.stack.rights import ADMIN, MONGODB_USERS, SERVICES
from devtools.stack.service import Service
from devtools.stack.settings import StackSettings

SERVICE_NAMES = ("kafka", "mqtt", "mongodb", "gcs")
LIVE_ADD_MAX = 50
"""New cars added to running brokers one command each; more restart the brokers, which load them
from the identity store (every control command makes Mosquitto rewrite its whole identity file:
~0.4 s at 100,000 cars, so adding 100,000 that way would take hours)."""


def _layout_file(settings: StackSettings):
    return settings.state_dir / "stack.json"


def _layout(settings: StackSettings) -> dict:
    try:
        return json.loads(_layout_file(settings).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def mqtt_broker_count(settings: StackSettings) -> int:
    return int(_layout(settings).get("mqtt_brokers", 1))


def resolved(settings: StackSettings) -> StackSettings:
    """``settings`` with ``secure`` decided: as given, else as the stack was last brought up (on for a new one)."""
    if settings.secure is not None:
        return settings
    return settings.model_copy(update={"secure": bool(_layout(settings).get("secure", True))})


def services(settings: StackSettings, mqtt_brokers: int | None = None) -> list[Service]:
    settings = resolved(settings)
    n = mqtt_brokers or mqtt_broker_count(settings)
    postgres = PostgresService(settings)
    # Before FerretDB, which it serves (started first, stopped last); listed while it runs even if the
    # backend setting has changed since, so `down` still stops it.
    backend = [postgres] if settings.mongodb_backend == "postgresql" or postgres.process.running() else []
    return [
        KafkaService(settings),
        *[MosquittoService(settings, i) for i in range(n)],
        *backend,
        FerretDBService(settings),
        FakeGCSService(settings),
    ]


def up(settings: StackSettings, mqtt_brokers: int = 1, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Install (first time), start and wait for every server; idempotent. Returns timings per service."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    before = resolved(settings.model_copy(update={"secure": None}))
    settings = resolved(settings)
    previous = mqtt_broker_count(settings)
    if settings.secure != before.secure:
        # Every server's configuration changes with the mode: restart what runs in the other one.
        for svc in services(before, previous):
            if svc.process.stop():
                progress(f"{svc.label}: stopped, to restart {'with' if settings.secure else 'without'} security")
    elif previous > mqtt_brokers:  # shrink: stop the extra brokers we started before
        for svc in services(settings, previous)[1 + mqtt_brokers : 1 + previous]:
            svc.process.stop()
    _layout_file(settings).write_text(json.dumps({"mqtt_brokers": mqtt_brokers, "secure": settings.secure}))
    if settings.secure:
        ensure_pki(settings.pki_dir, [settings.host])
        IdentityStore(settings.identities_dir).services()
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
    """Endpoints and whether each server runs: what `stack status --json` prints, never a secret."""
    settings = resolved(settings)
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
        **({"postgresql": by_name["postgresql"].status()} if "postgresql" in by_name else {}),
        "state_dir": str(settings.state_dir),
        "secure": settings.secure,
        "ca_file": str(Pki(settings.pki_dir).ca_file) if settings.secure else None,
    }


def _secured(settings: StackSettings) -> StackSettings:
    settings = resolved(settings)
    if not settings.secure:
        raise StackError("the stack runs without security, so it has no identities; bring it up with `fleetpulse stack up --secure`")
    return settings


def provision_cars(settings: StackSettings, car_ids: list[str], progress: Callable[[str], None] = lambda _: None) -> list[str]:
    """Give each car an identity, in the store and in every running MQTT broker; return the ids created now."""
    settings = _secured(settings)
    running = [m for m in services(settings) if isinstance(m, MosquittoService) and m.process.running()]
    store = IdentityStore(settings.identities_dir)

    def load(new: list[str]) -> None:
        if len(new) <= LIVE_ADD_MAX:
            passwords = store.cars()
            for broker in running:
                broker.add_cars({car: passwords[car] for car in new})
            return
        for broker in running:
            progress(f"{broker.label}: restarting to load {len(new):,} new car identities")
            broker.process.stop()
            broker.start()
            broker.wait_ready(settings.start_timeout_s)

    return store.ensure_cars(car_ids, on_created=load if running else None)


def credentials(settings: StackSettings, name: str) -> dict:
    """What a stock client needs to connect as ``name`` (a service, ``admin`` or a car id, created on first use)."""
    settings = _secured(settings)
    store = IdentityStore(settings.identities_dir)
    ca_file = str(Pki(settings.pki_dir).ca_file)
    if name == ADMIN or name in SERVICES:
        found = {"username": name, "password": store.password(name), "ca_file": ca_file}
        if name == ADMIN or name in MONGODB_USERS:
            found["mongodb_uri"] = FerretDBService(settings).uri_for(name)
        return found
    provision_cars(settings, [name])
    # The car's MQTT client id must equal its username (the broker binds them).
    return {"username": name, "password": store.cars()[name], "client_id": name, "ca_file": ca_file}


def log_file(settings: StackSettings, name: str):
    for svc in services(settings):
        if svc.label == name:
            return svc.process.log_file
    raise KeyError(name)
