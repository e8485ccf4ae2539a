"""Typed settings of the transformer (``FLEETPULSE_SCORE_``), and the Kafka clients' configuration built from them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from fleetpulse import endpoints, topics
from fleetpulse.drift import DRIFT_THRESHOLD
from fleetpulse.clients import kafka_config
from fleetpulse.hysteresis import Rule
from fleetpulse.settings import KafkaClientSettings, secret_from
from fleetpulse.twin import TWIN_COLLECTION, TWIN_DATABASE
from inference import DEFAULT_MODEL

_RULE = Rule()  # the kernel's rule, which evaluate calibrates and reports with


class ScoreSettings(KafkaClientSettings):
    model_config = SettingsConfigDict(env_prefix="FLEETPULSE_SCORE_", extra="ignore")

    topic: str = topics.SENSOR_DATA
    group_id: str = "fleetpulse-transformer"
    """On a secured Kafka the transformer's principal may join only groups named ``fleetpulse-transformer*``."""
    alerts_topic: str = topics.ALERTS
    dlq_topic: str = topics.SENSOR_DATA_DLQ
    model_grpc: str = "127.0.0.1:8081"
    model_name: str = DEFAULT_MODEL
    mongodb_uri: str = endpoints.MONGODB_URI
    """May hold credentials when it comes from the environment (a Secret's connection string); never log it
    (``mongodb_target`` is the printable form)."""
    mongodb_username: str | None = None
    mongodb_password: SecretStr | None = None
    mongodb_password_file: Path | None = None
    """A file holding the MongoDB password (a mounted Secret); read at start-up, never logged."""
    mongodb_auth_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"] = "SCRAM-SHA-256"
    mongodb_auth_source: str = "admin"
    mongodb_tls: bool = False
    mongodb_ca_file: str | None = None
    """The CA that signed the server's certificate (with mongodb_tls); the system's CAs when unset."""
    twin_database: str = TWIN_DATABASE
    twin_collection: str = TWIN_COLLECTION
    poll_batch: int = Field(5000, ge=1, description="records per consume() call")
    poll_timeout_s: float = Field(0.02, gt=0, description="longest wait for a full poll batch")
    model_batch: int = Field(2000, ge=1, description="rows per infer request")
    max_in_flight: int = Field(4, ge=1, description="infer requests in flight")
    checkpoint_interval_s: float = Field(1.0, gt=0, description="alerts flushed, twin written, offsets committed")
    twin_interval_s: float = Field(60.0, gt=0, description="longest a car's twin waits for a write when its status did not change")
    twin_batch_max: int = Field(5000, ge=1, description="cars per twin bulk write, besides status changes (which are never deferred)")
    twin_write_timeout_s: float = Field(60.0, gt=0, description="longest wait for one twin bulk command before it is retried")
    twin_pause_s: float = Field(1.0, gt=0, description="a process that did not run for longer than this was paused (SIGSTOP, "
                                                        "a stall): its twin writes wait twin_pause_hold_s")
    twin_pause_hold_s: float = Field(5.0, ge=0, description="how long twin writes wait after a pause, so that a revocation "
                                                            "Kafka sent meanwhile arrives first (librdkafka's 1 s timer and a "
                                                            "heartbeat, 3 s, with margin)")
    twin_preload_max: int = Field(200_000, ge=0, description="load every twin once when the collection holds at most this many; "
                                                              "else query first-seen cars per poll batch (0 = always query)")
    hysteresis_n: int = Field(_RULE.n, ge=1, le=62)
    hysteresis_k_warning: int = Field(_RULE.k_warning, ge=1)
    hysteresis_k_failing: int = Field(_RULE.k_failing, ge=1)
    hysteresis_m: int = Field(_RULE.m, ge=1)
    metrics_port: int = Field(9101, ge=0, le=65535)  # 0 = no metrics server
    retry_max_s: float = Field(5.0, gt=0, description="longest wait between retries of a dependency (backoff cap)")
    stuck_after_s: float | None = Field(None, gt=0, description="/healthz and /readyz fail once work is pending and no commit "
                                                                 "advanced for this long; longer than twin_interval_s "
                                                                 "(default: 3 x twin_interval_s, at least 180)")
    stop_timeout_s: float = Field(30.0, gt=0, description="longest a stop (SIGTERM) takes; a final checkpoint not done by then "
                                                          "is left to the replay (keep below the pod's grace period)")
    produce_attempts: int = Field(5, ge=1, description="times a record Kafka refuses is produced before it is dead-lettered")
    twin_refuse_after: int = Field(3, ge=1, description="times a twin document MongoDB refuses (while it answers) is tried "
                                                        "before it is dead-lettered")
    # The model lifecycle (#17): shadow scoring of the candidate, drift against the served version's training window.
    shadow_share: float = Field(1.0, ge=0, le=1, description="share of cars (by car id) the candidate also scores while the "
                                                             "server serves one; 0 = no shadow")
    shadow_topic: str = topics.MODEL_SHADOW
    shadow_probe_s: float = Field(10.0, gt=0, description="how often the server is asked whether it serves a candidate")
    model_uri: str | None = Field(None, description="gs://<bucket>/<model>: where the served versions' metadata (their drift "
                                                    "reference) is read [default: the local bucket / model_name]")
    gcs_endpoint: str = endpoints.GCS_ENDPOINT  # empty = real GCS
    drift_threshold: float = Field(DRIFT_THRESHOLD, gt=0, description="PSI above which a feature has drifted; 0 turns drift off")
    drift_window_s: float = Field(60.0, gt=0, description="readings per drift window (one PSI per feature each)")
    drift_windows: int = Field(2, ge=1, description="windows in a row a feature must drift before a retrain is requested")
    drift_min_rows: int = Field(500, ge=1, description="a window with fewer readings is not judged")
    drift_cooldown_s: float = Field(3600.0, ge=0, description="at most one retrain request per version in this time")
    drift_off: bool = Field(False, description="no drift watch (no GCS read)")
    requests_topic: str = topics.MODEL_REQUESTS
    # librdkafka tuning (the no-loss settings are fixed in consumer_config/producer_config, not settings).
    consumer_fetch_wait_max_ms: int = Field(50, ge=0, description="librdkafka fetch.wait.max.ms: longest a fetch waits for data")
    consumer_queued_min_messages: int = Field(200_000, ge=1, description="librdkafka queued.min.messages prefetched per partition")
    consumer_session_timeout_ms: int = Field(45_000, ge=1, description="librdkafka session.timeout.ms: a dead member's partitions move after this")
    # The final twin flush (and a revoke's) blocks the loop: 100,000 cars at FerretDB's ~700-1,300
    # writes/s under load is 1-2.5 minutes; the default 5 minutes left too little margin.
    consumer_max_poll_interval_ms: int = Field(600_000, ge=1, description="librdkafka max.poll.interval.ms: longest the loop may block between polls")
    producer_linger_ms: int = Field(5, ge=0, description="librdkafka linger.ms before an alert batch is sent")
    producer_compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field("lz4", description="librdkafka compression.type")

    @model_validator(mode="after")
    def _hysteresis_consistent(self):
        if not self.hysteresis_k_warning <= self.hysteresis_k_failing <= self.hysteresis_n:
            raise ValueError("hysteresis needs k_warning <= k_failing <= n")
        return self

    @model_validator(mode="after")
    def _stuck_after_the_twin_interval(self):
        # Deferred twins hold commits back for up to twin_interval_s: that is not being stuck.
        if self.stuck_after_s is None:
            self.stuck_after_s = max(180.0, 3 * self.twin_interval_s)
        elif self.stuck_after_s <= self.twin_interval_s:
            raise ValueError(f"stuck_after_s ({self.stuck_after_s:g}) must be longer than twin_interval_s ({self.twin_interval_s:g})")
        return self

    @model_validator(mode="after")
    def _mongodb_consistent(self):
        env = self.model_config["env_prefix"]
        if self.mongodb_ca_file and not self.mongodb_tls:
            raise ValueError(f"{env}MONGODB_CA_FILE is set but {env}MONGODB_TLS is off")
        if (self.mongodb_password is not None or self.mongodb_password_file is not None) and not self.mongodb_username:
            raise ValueError(f"a MongoDB password is set but {env}MONGODB_USERNAME is not")
        return self

    @property
    def mongodb_target(self) -> str:
        """``mongodb_uri`` without its credentials and options: for messages and logs."""
        parts = urlsplit(self.mongodb_uri)
        return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))

    def mongodb_options(self) -> dict:
        """MongoClient keyword arguments for the login and TLS settings (secrets included: never log them)."""
        options: dict = {}
        if self.mongodb_username:
            password = secret_from(self.mongodb_password, self.mongodb_password_file, "mongodb_password_file")
            options.update(username=self.mongodb_username, password=password.get_secret_value() if password else None,
                           authMechanism=self.mongodb_auth_mechanism, authSource=self.mongodb_auth_source)
        if self.mongodb_tls:
            options["tls"] = True
            if self.mongodb_ca_file:
                options["tlsCAFile"] = self.mongodb_ca_file
        return options

    @property
    def rule(self) -> Rule:
        return Rule(self.hysteresis_n, self.hysteresis_k_warning, self.hysteresis_k_failing, self.hysteresis_m)

    def consumer_config(self) -> dict:
        # Offsets are committed by the checkpoint only, never automatically (the no-loss ordering).
        return kafka_config(self.kafka, **{
            "group.id": self.group_id, "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "enable.partition.eof": False, "fetch.min.bytes": 1, "fetch.wait.max.ms": self.consumer_fetch_wait_max_ms,
            "queued.min.messages": self.consumer_queued_min_messages, "session.timeout.ms": self.consumer_session_timeout_ms,
            "max.poll.interval.ms": self.consumer_max_poll_interval_ms})

    @property
    def model_root(self) -> tuple[str, str]:
        """(bucket, model) of the versions' metadata."""
        uri = self.model_uri or f"gs://{endpoints.MODEL_BUCKET}/{self.model_name}"
        bucket, _, model = uri.removeprefix("gs://").rstrip("/").partition("/")
        return bucket, model

    def side_producer_config(self) -> dict:
        """Shadow batches and retrain requests: bounded delivery, never the alert producer's endless retries
        (whose flush gates every checkpoint)."""
        return kafka_config(self.kafka, **{"acks": 1, "message.timeout.ms": 30_000, "linger.ms": 50,
                                            "compression.type": self.producer_compression_type})

    def producer_config(self) -> dict:
        # Idempotent, infinitely retried: an alert is resent until Kafka has it, never reordered or doubled.
        return kafka_config(self.kafka, **{
            "enable.idempotence": True, "acks": "all", "message.timeout.ms": 0,
            "linger.ms": self.producer_linger_ms, "compression.type": self.producer_compression_type})
