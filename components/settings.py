"""Training settings: env prefix FLEETPULSE_TRAIN_, defaults from the local stack."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

from fleetpulse import endpoints


class TrainSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEETPULSE_TRAIN_", extra="ignore")

    kafka_bootstrap_servers: str = endpoints.KAFKA_BOOTSTRAP
    gcs_endpoint: str = endpoints.GCS_ENDPOINT  # empty = real GCS
    bucket: str = endpoints.MODEL_BUCKET
