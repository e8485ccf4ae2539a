"""Training settings: env prefix FLEETPULSE_TRAIN_, defaults from the local stack."""

from __future__ import annotations

from dataclasses import fields

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from components.models import AUTOENCODER, MODEL_NAMES
from fleetpulse import endpoints, topics
from fleetpulse.promotion import PromotionRule
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


class DecideSettings(KafkaClientSettings):
    """`fleetpulse models decide`: env prefix FLEETPULSE_DECIDE_. The rule's numbers default to
    fleetpulse.promotion.PromotionRule's (rates per 1,000 car-hours)."""

    model_config = SettingsConfigDict(env_prefix="FLEETPULSE_DECIDE_", extra="ignore")

    model: str = MODEL_NAMES[AUTOENCODER]
    gcs_endpoint: str = endpoints.GCS_ENDPOINT  # empty = real GCS
    bucket: str = endpoints.MODEL_BUCKET
    shadow_topic: str = topics.MODEL_SHADOW
    truth_topic: str = topics.GROUND_TRUTH
    """Optional: while it holds no record for the shadowed cars, the unlabelled rule applies."""
    alerts_topic: str = topics.ALERTS
    group_id: str = "fleetpulse-decider"
    """Named to Kafka (its ACL grants this prefix); no offset is ever committed: every start reads the
    topics from their beginning."""
    interval_s: float = Field(30.0, gt=0)
    metrics_port: int = Field(0, ge=0, le=65535)
    """/metrics, /healthz, /readyz on this port (0: none)."""
    min_car_hours: float = PromotionRule.min_car_hours
    recall_margin: float = PromotionRule.recall_margin
    min_episodes: int = PromotionRule.min_episodes
    false_alert_margin: float = PromotionRule.false_alert_margin
    false_alert_budget: float = PromotionRule.false_alert_budget
    alert_rate_factor: float = PromotionRule.alert_rate_factor
    alert_rate_floor: float = PromotionRule.alert_rate_floor
    watch_car_hours: float = PromotionRule.watch_car_hours
    rollback_factor: float = PromotionRule.rollback_factor
    rollback_floor: float = PromotionRule.rollback_floor

    @model_validator(mode="after")
    def _rule_valid(self):
        self.rule()
        return self

    def rule(self) -> PromotionRule:
        return PromotionRule(**{f.name: getattr(self, f.name) for f in fields(PromotionRule)})


class RetrainSettings(KafkaClientSettings):
    """`fleetpulse models retrain`: env prefix FLEETPULSE_RETRAIN_. Acts on model-requests by training
    on the last ``window_minutes`` of ``topic``: in this process, or, with ``kfp_host``, as a KFP run of
    the compiled pipeline."""

    model_config = SettingsConfigDict(env_prefix="FLEETPULSE_RETRAIN_", extra="ignore")

    requests_topic: str = topics.MODEL_REQUESTS
    group_id: str = "fleetpulse-train-requests"
    """Its committed offsets are what was handled; on a secured Kafka the training principal may join
    only groups under ``fleetpulse-train``."""
    topic: str = topics.SENSOR_DATA
    truth_topic: str = topics.GROUND_TRUTH
    window_minutes: float = Field(60.0, gt=0)
    """Train on this much of the newest sensor data: what the fleet looks like since the drift."""
    max_age_s: float = Field(3600.0, gt=0)
    """A request older than this is ignored: the stream it described is gone from the window."""
    epochs: int = Field(20, ge=1)
    min_f1: float = Field(MIN_F1, ge=0, le=1)
    gcs_endpoint: str = endpoints.GCS_ENDPOINT  # empty = real GCS
    bucket: str = endpoints.MODEL_BUCKET
    interval_s: float = Field(10.0, gt=0)
    """Seconds between polls of the requests topic in the loop."""
    metrics_port: int = Field(0, ge=0, le=65535)
    """/metrics, /healthz, /readyz on this port (0: none)."""
    kfp_host: str = ""
    """Empty: train in this process. Else the KFP API a run of ``pipeline_package`` is submitted to."""
    pipeline_package: str = "kubeflow/pipeline.yaml"
    pipeline_arguments: str = "{}"
    """JSON object of run arguments (kafka_bootstrap, bucket, gcs_endpoint: the cluster's view)."""
    kfp_experiment: str = "fleetpulse"
    pipeline_service_account: str = ""
