"""Every service reads its Kafka connection through the kernel's mixin, under its own env prefix."""

from __future__ import annotations

import pytest

from bridges.settings import BridgeSettings
from components.settings import TrainSettings
from fleetpulse.clients import kafka_config
from simulator.settings import SimulatorSettings


@pytest.mark.parametrize("cls, prefix", [
    (BridgeSettings, "FLEETPULSE_BRIDGE_"),
    (SimulatorSettings, "FLEETPULSE_SIMULATOR_"),
    (TrainSettings, "FLEETPULSE_TRAIN_"),
])
def test_kafka_env_vars_keep_their_names_and_reach_the_client_config(cls, prefix, monkeypatch, tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    monkeypatch.setenv(f"{prefix}KAFKA_BOOTSTRAP_SERVERS", "kafka-0:9093,kafka-1:9093")
    monkeypatch.setenv(f"{prefix}KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv(f"{prefix}KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv(f"{prefix}KAFKA_USERNAME", "fleetpulse")
    monkeypatch.setenv(f"{prefix}KAFKA_PASSWORD_FILE", str(secret))
    settings = cls()
    assert settings.kafka_bootstrap_servers == "kafka-0:9093,kafka-1:9093"
    assert kafka_config(settings.kafka, acks="all") == {
        "bootstrap.servers": "kafka-0:9093,kafka-1:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "fleetpulse",
        "sasl.password": "s3cret",
        "acks": "all",
    }
