"""Car identities in bulk: `stack provision`, the file cars read (fleetpulse.identity), and 100,000 of them."""

from __future__ import annotations

import time

import pytest

from devtools.stack import control
from devtools.stack.credentials import IdentityStore
from devtools.stack.mqtt import MosquittoService
from devtools.stack.pki import Pki
from devtools.stack.process import free_port
from devtools.stack.settings import StackSettings
from fleetpulse.errors import SettingsError
from fleetpulse.identity import read_car_credentials
from tests.security.probes import NOT_AUTHORIZED, MqttProbe, accepted

TOPIC = "vehicles/sensor/data/"


def connects_as_itself(host: str, port: int, ca_file: str, car: str, password: str, other: str) -> None:
    probe = MqttProbe(host, port, username=car, password=password, client_id=car, ca_file=ca_file)
    try:
        assert probe.connect() == 0
        assert accepted(probe.publish(TOPIC + car, b"x"))
        assert probe.publish(TOPIC + other, b"x") == NOT_AUTHORIZED
    finally:
        probe.close()


def test_provisioned_cars_connect_as_themselves_through_a_running_broker(secure_settings, secure_stack, unique):
    """More cars than a running broker takes one by one: it is restarted and loads them from the store."""
    ids = [f"fleet-{unique}-{i:04d}" for i in range(2 * control.LIVE_ADD_MAX + 1)]
    assert control.provision_cars(secure_settings, ids) == ids
    assert control.provision_cars(secure_settings, ids) == []
    cars = read_car_credentials(secure_settings.identities_dir / "cars.tsv")
    for car, other in [(ids[0], ids[1]), (ids[-1], ids[0])]:
        connects_as_itself("127.0.0.1", secure_stack["mqtt"]["tls_port"], secure_stack["ca_file"], car, cars[car], other)


def test_the_car_credentials_reader_names_a_bad_line(tmp_path):
    path = tmp_path / "cars.tsv"
    path.write_text("car-1\tsecret\ncar-2 no-tab\n")
    with pytest.raises(SettingsError, match="line 2"):
        read_car_credentials(path)
    with pytest.raises(SettingsError, match="No such file"):
        read_car_credentials(tmp_path / "missing.tsv")


@pytest.mark.slow
def test_100000_car_identities_provision_and_load_into_a_broker(tmp_path):
    from simulator.car_model import car_id

    settings = StackSettings(state_dir=tmp_path, mqtt_port=free_port(), mqtt_tls_port=free_port(), secure=True)
    ids = [car_id(i) for i in range(100_000)]
    t0 = time.monotonic()
    assert len(IdentityStore(settings.identities_dir).ensure_cars(ids)) == len(ids)
    provisioned_s = time.monotonic() - t0
    broker = MosquittoService(settings)
    try:
        broker.start()
        broker.wait_ready(settings.start_timeout_s)
        loaded_s = time.monotonic() - t0 - provisioned_s
        cars = read_car_credentials(IdentityStore(settings.identities_dir).cars_file)
        ca_file = str(Pki(settings.pki_dir).ca_file)
        for car, other in [(ids[0], ids[1]), (ids[-1], ids[0])]:
            connects_as_itself("127.0.0.1", broker.tls_port, ca_file, car, cars[car], other)
    finally:
        broker.process.stop()
    print(f"100,000 car identities: provisioned in {provisioned_s:.1f}s, broker config written and loaded in {loaded_s:.1f}s")
