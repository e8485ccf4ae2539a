"""Typed settings of the model server (``FLEETPULSE_SERVE_``) and the transformer (``FLEETPULSE_SCORE_``)."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleetpulse import endpoints, topics
from fleetpulse.hysteresis import Rule

_RULE = Rule()  # the kernel's rule, which evaluate calibrates and reports with

DEFAULT_MODEL = "car-anomaly"


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEETPULSE_SERVE_", extra="ignore")

    model_uri: str = f"gs://{endpoints.MODEL_BUCKET}/{DEFAULT_MODEL}"
    gcs_endpoint: str = endpoints.GCS_ENDPOINT  # empty string = real GCS
    http_port: int = Field(8080, ge=1, le=65535)
    grpc_port: int = Field(8081, ge=1, le=65535)
    poll_interval_s: float = Field(10.0, gt=0)
    workers: int = Field(1, ge=1)
    grpc_threads: int = Field(4, ge=1)
    cache_dir: str = ""  # where versions are downloaded; empty = a temporary directory
    log_level: str = "WARNING"

    @model_validator(mode="after")
    def _uri_is_gs(self):
        if not self.model_uri.startswith("gs://") or self.model_uri.rstrip("/").count("/") < 3:
            raise ValueError(f"model_uri must be gs://<bucket>/<model>, got {self.model_uri!r}")
        return self

    @property
    def bucket(self) -> str:
        return self.model_uri[5:].split("/", 1)[0]

    @property
    def model_name(self) -> str:
        return self.model_uri.rstrip("/").rsplit("/", 1)[-1]


class ScoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEETPULSE_SCORE_", extra="ignore")

    kafka_bootstrap_servers: str = endpoints.KAFKA_BOOTSTRAP
    topic: str = topics.SENSOR_DATA
    group_id: str = "fleetpulse-transformer"
    alerts_topic: str = topics.ALERTS
    dlq_topic: str = topics.SENSOR_DATA_DLQ
    model_grpc: str = "127.0.0.1:8081"
    model_name: str = DEFAULT_MODEL
    mongodb_uri: str = endpoints.MONGODB_URI
    twin_database: str = "fleetpulse"
    twin_collection: str = "cars"
    poll_batch: int = Field(5000, ge=1, description="records per consume() call")
    poll_timeout_s: float = Field(0.02, gt=0, description="longest wait for a full poll batch")
    model_batch: int = Field(2000, ge=1, description="rows per infer request")
    max_in_flight: int = Field(4, ge=1, description="infer requests in flight")
    checkpoint_interval_s: float = Field(1.0, gt=0, description="alerts flushed, twin written, offsets committed")
    twin_interval_s: float = Field(60.0, gt=0, description="longest a car's twin waits for a write when its status did not change")
    twin_batch_max: int = Field(5000, ge=1, description="cars per twin bulk write, besides status changes (which are never deferred)")
    twin_write_timeout_s: float = Field(60.0, gt=0, description="longest wait for one twin bulk command before it is retried")
    twin_preload_max: int = Field(200_000, ge=0, description="load every twin once when the collection holds at most this many; "
                                                              "else query first-seen cars per poll batch (0 = always query)")
    hysteresis_n: int = Field(_RULE.n, ge=1, le=62)
    hysteresis_k_warning: int = Field(_RULE.k_warning, ge=1)
    hysteresis_k_failing: int = Field(_RULE.k_failing, ge=1)
    hysteresis_m: int = Field(_RULE.m, ge=1)
    metrics_port: int = Field(9101, ge=0, le=65535)  # 0 = no metrics server
    retry_max_s: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _hysteresis_consistent(self):
        if not self.hysteresis_k_warning <= self.hysteresis_k_failing <= self.hysteresis_n:
            raise ValueError("hysteresis needs k_warning <= k_failing <= n")
        return self
