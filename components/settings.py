"""Training settings: env prefix FLEETPULSE_TRAIN_, defaults from the local stack."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from fleetpulse import endpoints
from fleetpulse.settings import KafkaClientSettings


class TrainSettings(KafkaClientSettings):
    model_config = SettingsConfigDict(env_prefix="FLEETPULSE_TRAIN_", extra="ignore")

    gcs_endpoint: str = endpoints.GCS_ENDPOINT  # empty = real GCS
    bucket: str = endpoints.MODEL_BUCKET
