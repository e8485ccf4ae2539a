"""Typed settings of the model server (``FLEETPULSE_SERVE_``)."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleetpulse import endpoints
from inference import DEFAULT_MODEL


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
