"""Settings of the local stack: ports, state and cache directories (env prefix ``FLEETPULSE_STACK_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


KAFKA_VERSION = "3.9.2"
FERRETDB_VERSION = "1.24.2"


class StackSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEETPULSE_STACK_", extra="ignore")

    state_dir: Path = Field(default_factory=lambda: Path.home() / ".local/state/fleetpulse")
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache/fleetpulse")
    host: str = "127.0.0.1"
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    kafka_heap: str = "1g"
    mqtt_port: int = 11883
    mongodb_port: int = 27117
    gcs_port: int = 14443
    model_bucket: str = "fleetpulse-models"
    start_timeout_s: float = 90.0

    def service_dir(self, name: str) -> Path:
        return self.state_dir / name
