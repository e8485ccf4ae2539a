"""Where the local stack listens; every service's settings default to these.

The kernel owns these ports (env prefix ``FLEETPULSE_STACK_``) and the dev stack reads them from here,
so moving a stack port (``FLEETPULSE_STACK_KAFKA_PORT=...``) moves every service's default with it
while no deployable imports the dev tooling.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class LocalEndpoints(BaseSettings):
    """The local stack's host, ports and model bucket."""

    model_config = SettingsConfigDict(env_prefix="FLEETPULSE_STACK_", extra="ignore")

    host: str = "127.0.0.1"
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    mqtt_port: int = 11883
    mongodb_port: int = 27117
    gcs_port: int = 14443
    model_bucket: str = "fleetpulse-models"


_local = LocalEndpoints()

HOST = _local.host
KAFKA_BOOTSTRAP = f"{HOST}:{_local.kafka_port}"
MQTT_BROKERS = f"{HOST}:{_local.mqtt_port}"
MONGODB_URI = f"mongodb://{HOST}:{_local.mongodb_port}/"
GCS_ENDPOINT = f"http://{HOST}:{_local.gcs_port}"
MODEL_BUCKET = _local.model_bucket
