"""The kernel's MQTT connection settings: names, secrets from files, and one-line refusals of half a setup."""

from __future__ import annotations

import ssl

import pytest

from bridges.settings import BridgeSettings
from fleetpulse.errors import SettingsError
from fleetpulse.settings import load_settings
from simulator.settings import SimulatorSettings


@pytest.mark.parametrize("cls, prefix", [(BridgeSettings, "FLEETPULSE_BRIDGE_"), (SimulatorSettings, "FLEETPULSE_SIMULATOR_")])
def test_mqtt_env_vars_reach_the_connection_with_the_password_from_a_file(cls, prefix, monkeypatch, tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    monkeypatch.setenv(f"{prefix}MQTT_BROKERS", "mqtt-0,mqtt-1:8884")
    monkeypatch.setenv(f"{prefix}MQTT_TLS", "true")
    monkeypatch.setenv(f"{prefix}MQTT_USERNAME", "bridge")
    monkeypatch.setenv(f"{prefix}MQTT_PASSWORD_FILE", str(secret))
    mqtt = cls().mqtt
    assert (mqtt.endpoints, mqtt.username, mqtt.password.get_secret_value()) == ([("mqtt-0", 8883), ("mqtt-1", 8884)], "bridge", "s3cret")
    context = mqtt.ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_without_tls_there_is_no_context_and_the_plain_port_is_the_default():
    mqtt = BridgeSettings(mqtt_brokers="mqtt-0").mqtt
    assert mqtt.ssl_context() is None and mqtt.endpoints == [("mqtt-0", 1883)]


@pytest.mark.parametrize("given, message", [
    ({"mqtt_ca_file": "/ca.pem"}, "FLEETPULSE_BRIDGE_MQTT_CA_FILE is set but FLEETPULSE_BRIDGE_MQTT_TLS is off"),
    ({"mqtt_password": "x"}, "an MQTT password is set but FLEETPULSE_BRIDGE_MQTT_USERNAME is not"),
    ({"kafka_security_protocol": "SASL_SSL"}, "FLEETPULSE_BRIDGE_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs FLEETPULSE_BRIDGE_KAFKA_SASL_MECHANISM"),
    ({"kafka_username": "bridge"}, "FLEETPULSE_BRIDGE_KAFKA_USERNAME is set but FLEETPULSE_BRIDGE_KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
])
def test_half_a_security_setup_is_refused_in_one_line_naming_the_variables(given, message):
    """Each would otherwise be ignored: the client would connect in clear, or anonymously."""
    with pytest.raises(SettingsError) as refused:
        load_settings(BridgeSettings, **given)
    assert str(refused.value).startswith(message)


def test_an_unreadable_password_file_is_one_line_naming_the_setting(tmp_path):
    settings = BridgeSettings(mqtt_username="bridge", mqtt_password_file=tmp_path / "missing")
    with pytest.raises(SettingsError, match="mqtt_password_file .*missing: No such file"):
        settings.mqtt


def test_an_unreadable_ca_file_is_one_line(tmp_path):
    with pytest.raises(SettingsError, match="mqtt_ca_file .*: No such file"):
        BridgeSettings(mqtt_tls=True, mqtt_ca_file=str(tmp_path / "missing.pem")).mqtt.ssl_context()


def test_training_readers_get_the_login_from_the_environment_when_given_a_bare_bootstrap(monkeypatch, tmp_path):
    """What a KFP step gets is a bootstrap parameter; the secret comes from its pod's environment."""
    from components.kafka_dataset import consumer_config, tfio_config

    secret = tmp_path / "password"
    secret.write_text("s3cret")
    for name, value in {"SECURITY_PROTOCOL": "SASL_SSL", "SASL_MECHANISM": "SCRAM-SHA-512", "USERNAME": "training",
                        "PASSWORD_FILE": str(secret), "CA_FILE": "/ca.pem"}.items():
        monkeypatch.setenv(f"FLEETPULSE_TRAIN_KAFKA_{name}", value)
    login = {"security.protocol=SASL_SSL", "sasl.mechanism=SCRAM-SHA-512", "sasl.username=training", "sasl.password=s3cret",
             "ssl.ca.location=/ca.pem", "bootstrap.servers=kafka:9093"}
    assert login | {"group.id=fleetpulse-train-tfio"} <= set(tfio_config("kafka:9093"))
    assert consumer_config("kafka:9093", "eval")["group.id"] == "fleetpulse-train-eval"
    secret.write_text("has=sign")
    with pytest.raises(SettingsError, match="contains '=', which TF-IO"):
        tfio_config("kafka:9093")
