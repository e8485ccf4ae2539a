"""Simulator settings (env prefix ``FLEETPULSE_SIMULATOR_``), defaults from the local stack."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

from fleetpulse import endpoints
from fleetpulse.settings import BrokerList, parse_hostports


class SimulatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEETPULSE_SIMULATOR_", extra="ignore")

    mqtt_brokers: BrokerList = endpoints.MQTT_BROKERS
    """Comma list of host:port; cars are spread over them by car index."""
    kafka_bootstrap_servers: str = endpoints.KAFKA_BOOTSTRAP
    """Where ground truth goes (topic ``ground-truth``)."""
    metrics_port: int = 9102
    """Prometheus /metrics port, served only with ``--metrics``."""

    def broker_list(self) -> list[tuple[str, int]]:
        return parse_hostports(self.mqtt_brokers, 1883)
