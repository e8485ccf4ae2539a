"""Mosquitto, secured: who may connect, publish and subscribe (real broker, stock paho MQTT 5 clients)."""

from __future__ import annotations

import ssl
import uuid

import pytest

from devtools.stack.pki import ensure_pki
from tests.security.probes import BAD_CREDENTIALS, NOT_AUTHORIZED, MqttProbe, accepted

TOPIC = "vehicles/sensor/data/"


@pytest.fixture
def tls(secure_stack):
    """``tls(name or None, **overrides)``: an unconnected probe on the TLS listener as that identity."""
    host, port, ca_file = secure_stack["mqtt"]["host"], secure_stack["mqtt"]["tls_port"], secure_stack["ca_file"]
    probes: list[MqttProbe] = []

    def make(creds: dict | None, **overrides) -> MqttProbe:
        login = {"username": creds["username"], "password": creds["password"], "client_id": creds.get("client_id")} if creds else {}
        probe = MqttProbe(host, port, ca_file=ca_file, **{**login, **overrides})
        probes.append(probe)
        return probe

    yield make
    for probe in probes:
        probe.close()


@pytest.fixture
def car(credentials):
    """A fresh car identity (created on first use, as `stack credentials <car>` does)."""
    return lambda: credentials(f"test-car-{uuid.uuid4().hex[:8]}")


def test_anonymous_connect_is_refused_on_both_listeners(secure_stack, tls):
    assert tls(None).connect() in (NOT_AUTHORIZED, BAD_CREDENTIALS)
    plain = MqttProbe(secure_stack["mqtt"]["host"], secure_stack["mqtt"]["port"])
    try:
        assert plain.connect() in (NOT_AUTHORIZED, BAD_CREDENTIALS)
    finally:
        plain.close()


def test_wrong_password_is_refused(tls, car):
    creds = car()
    assert tls({**creds, "password": creds["password"] + "x"}).connect() in (NOT_AUTHORIZED, BAD_CREDENTIALS)
    assert tls(creds).connect() == 0


def test_a_car_must_use_its_own_client_id(tls, car):
    assert tls(car(), client_id="fleetpulse-bridge-somehost").connect() in (NOT_AUTHORIZED, BAD_CREDENTIALS)


def test_the_tls_listener_proves_it_is_the_stacks_broker(secure_stack, tmp_path):
    other_ca = ensure_pki(tmp_path, ["127.0.0.1"]).ca_file  # another stack's CA
    probe = MqttProbe(secure_stack["mqtt"]["host"], secure_stack["mqtt"]["tls_port"], ca_file=str(other_ca))
    with pytest.raises(ssl.SSLCertVerificationError):
        probe.connect()


def test_a_car_publishes_its_own_topic(tls, car, credentials):
    a = car()
    watcher = tls(credentials("admin"))
    assert watcher.connect() == 0 and watcher.subscribe(TOPIC + "#") == 1
    sender = tls(a)
    assert sender.connect() == 0
    assert accepted(sender.publish(TOPIC + a["username"], b"reading"))
    assert watcher.wait_for_messages(1) == [(TOPIC + a["username"], b"reading")]


def test_car_a_publishing_to_car_bs_topic_is_refused_and_reaches_nobody(tls, car, credentials, unique):
    a, b = car(), car()
    watcher = tls(credentials("admin"))
    bridge = tls(credentials("bridge"))
    assert watcher.connect() == 0 and watcher.subscribe(TOPIC + "#") == 1
    assert bridge.connect() == 0 and bridge.subscribe(f"$share/test{unique}/{TOPIC}+") == 1
    sender = tls(a)
    assert sender.connect() == 0
    assert sender.publish(TOPIC + b["username"], b"spoofed") == NOT_AUTHORIZED
    assert sender.publish(TOPIC + a["username"] + "/extra", b"spoofed") == NOT_AUTHORIZED
    assert accepted(sender.publish(TOPIC + a["username"], b"own"))  # the marker that everything before it arrived
    assert watcher.wait_for_messages(1) == [(TOPIC + a["username"], b"own")]
    assert bridge.wait_for_messages(1) == [(TOPIC + a["username"], b"own")]


@pytest.mark.parametrize("topic", [TOPIC + "{other}", TOPIC + "+", "#", "$share/fleetpulse/" + TOPIC + "+", TOPIC + "{own}"])
def test_a_car_subscribes_to_nothing(tls, car, topic):
    me, other = car(), car()
    probe = tls(me)
    assert probe.connect() == 0
    assert probe.subscribe(topic.format(own=me["username"], other=other["username"])) == NOT_AUTHORIZED


def test_a_car_in_the_bridges_share_group_takes_none_of_its_messages(tls, car, credentials, unique):
    """With Mosquitto's acl_file the SUBSCRIBE is granted and the broker drops the messages it hands the car."""
    group = f"$share/test{unique}/{TOPIC}+"
    bridge, thief, sender = tls(credentials("bridge")), tls(car()), car()
    assert bridge.connect() == 0 and bridge.subscribe(group) == 1
    assert thief.connect() == 0 and thief.subscribe(group) == NOT_AUTHORIZED
    publisher = tls(sender)
    assert publisher.connect() == 0
    for i in range(20):
        assert accepted(publisher.publish(TOPIC + sender["username"], b"%d" % i))
    assert len(bridge.wait_for_messages(20)) == 20


def test_the_bridge_reads_only_through_a_shared_subscription_and_publishes_nothing(tls, credentials, unique):
    bridge = tls(credentials("bridge"))
    assert bridge.connect() == 0
    assert bridge.subscribe(f"$share/test{unique}/{TOPIC}+") == 1
    assert bridge.subscribe(TOPIC + "+") == NOT_AUTHORIZED
    assert bridge.subscribe(f"$share/test{unique}/#") == NOT_AUTHORIZED
    assert bridge.publish(TOPIC + "electric-vehicle-00001", b"x") == NOT_AUTHORIZED


def test_the_simulator_gateway_publishes_any_cars_topic_and_subscribes_to_nothing(tls, credentials):
    gateway = tls(credentials("simulator"))
    assert gateway.connect() == 0
    assert accepted(gateway.publish(TOPIC + "electric-vehicle-00042", b"x"))
    assert gateway.publish("fleetpulse/other", b"x") == NOT_AUTHORIZED
    assert gateway.subscribe(TOPIC + "+") == NOT_AUTHORIZED


def test_services_without_mqtt_rights_cannot_connect(tls, credentials):
    for name in ("training", "transformer"):
        assert tls(credentials(name)).connect() in (NOT_AUTHORIZED, BAD_CREDENTIALS)
