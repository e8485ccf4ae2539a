"""Simulator settings (env prefix ``FLEETPULSE_SIMULATOR_``), defaults from the local stack."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from fleetpulse import endpoints
from fleetpulse.settings import BrokerList, KafkaClientSettings, parse_hostports


class SimulatorSettings(KafkaClientSettings):
    """The MQTT brokers the cars publish to; Kafka (the mixin's ``kafka_*`` fields) is where ground truth goes."""

    model_config = SettingsConfigDict(env_prefix="FLEETPULSE_SIMULATOR_", extra="ignore")

    mqtt_brokers: BrokerList = endpoints.MQTT_BROKERS
    """Comma list of host:port; cars are spread over them by car index."""
    metrics_port: int = 9102
    """Prometheus /metrics port, served only with ``--metrics``."""

    def broker_list(self) -> list[tuple[str, int]]:
        return parse_hostports(self.mqtt_brokers, 1883)
