"""Simulator settings (env prefix ``FLEETPULSE_SIMULATOR_``), defaults from the local stack."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from fleetpulse.settings import KafkaClientSettings, MqttClientSettings


class SimulatorSettings(MqttClientSettings, KafkaClientSettings):
    """The MQTT brokers the cars publish to (cars spread over them by car index; ``mqtt_username`` and
    its password are the gateway identity of the multiplexed mode), and the Kafka (the mixin's
    ``kafka_*`` fields) ground truth goes to."""

    model_config = SettingsConfigDict(env_prefix="FLEETPULSE_SIMULATOR_", extra="ignore")

    car_credentials_file: Path | None = None
    """Per-car passwords (``car_id<TAB>password`` lines, `fleetpulse stack provision` writes them): with
    one connection per car, each car logs in as itself (username = client id = car id)."""
    metrics_port: int = 9102
    """Prometheus /metrics port, served only with ``--metrics``."""

    def broker_list(self) -> list[tuple[str, int]]:
        return self.mqtt.endpoints
