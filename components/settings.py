"""Training settings: env prefix FLEETPULSE_TRAIN_, defaults from the local stack."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from fleetpulse import endpoints
from fleetpulse.settings import KafkaClientSettings

MIN_F1 = 0.95
"""The quality gate: below this F1 a model is never served (kubeflow/pipeline.py's default, `fleetpulse train --min-f1`'s)."""


class TrainSettings(KafkaClientSettings):
    model_config = SettingsConfigDict(env_prefix="FLEETPULSE_TRAIN_", extra="ignore")

    kafka_group_id: str = "fleetpulse-train"
    """Prefix of the consumer groups training reads in (``-tfio``, ``-resolve``, ...): on a secured Kafka
    the training principal may join only groups whose names start with ``fleetpulse-train``."""
    gcs_endpoint: str = endpoints.GCS_ENDPOINT  # empty = real GCS
    bucket: str = endpoints.MODEL_BUCKET
