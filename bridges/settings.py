"""Bridge settings (env prefix ``FLEETPULSE_BRIDGE_``), defaults for the local stack."""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from fleetpulse.contract import MQTT_TOPIC_PREFIX
from fleetpulse.settings import KafkaClientSettings, MqttClientSettings
from fleetpulse.topics import SENSOR_DATA, SENSOR_DATA_DLQ


RECORD_OVERHEAD_BYTES = 1024
"""Key, headers and record framing next to the payload: a valid car id and its topic take under 200."""


class BridgeSettings(MqttClientSettings, KafkaClientSettings):
    """The brokers it subscribes on (the MQTT mixin's ``mqtt_*``: one subscription per broker in
    ``mqtt_brokers``, since cars may be spread over several) and the Kafka it produces to."""

    model_config = SettingsConfigDict(env_prefix="FLEETPULSE_BRIDGE_", extra="ignore")

    topic: str = SENSOR_DATA
    dlq_topic: str = SENSOR_DATA_DLQ
    qos: int = Field(1, ge=0, le=1)
    share_group: str = Field("fleetpulse", pattern=r"^[^/#+]+$")
    client_id: str = Field(default_factory=lambda: f"fleetpulse-bridge-{socket.gethostname()}", min_length=1, max_length=200)
    """Stable across restarts (the persistent session is keyed by it); distinct per bridge process."""
    session_expiry_s: int = Field(3600, ge=0)
    keepalive_s: int = Field(30, ge=5, le=300)
    receive_maximum: int = Field(10_000, ge=1, le=65535)
    """QoS 1 messages the broker may have un-acked towards us (MQTT 5 Receive Maximum)."""
    max_in_flight: int = Field(50_000, ge=100)
    """Messages read from MQTT but not yet confirmed by Kafka; above it the bridge stops reading."""
    read_bytes: int = Field(1 << 20, ge=4096)
    """Bytes read from a broker socket per recv(): one read is one validate-and-produce batch."""
    kafka_linger_ms: float = Field(5.0, ge=0)
    kafka_batch_messages: int = Field(10_000, ge=1)
    kafka_batch_bytes: int = Field(1_000_000, ge=1)
    kafka_compression: Literal["none", "lz4", "snappy", "zstd", "gzip"] = "lz4"
    kafka_delivery_timeout_ms: int = Field(120_000, ge=1000)
    """librdkafka message.timeout.ms; a timed-out record is produced again, never acked to MQTT."""
    kafka_max_message_bytes: int = Field(1_000_000, ge=10_000, le=100_000_000)
    """The producer's message.max.bytes; keep it at or below the brokers' (and topics') limit. A payload
    that would not fit goes to the DLQ as a prefix instead."""
    kafka_refused_tries: int = Field(3, ge=1, le=100)
    """Attempts at a record Kafka refuses permanently (too large, invalid, not authorised) before it goes
    to the DLQ; transient errors (broker away) are retried for as long as they last."""
    dlq_prefix_bytes: int = Field(4096, ge=0, le=65536)
    """How much of an oversized payload its dead letter keeps (the header has the original size)."""
    stall_timeout_s: float = Field(30.0, gt=0)
    """/readyz fails after this long with pending input and no progress, a blocked loop or no broker."""
    live_stall_timeout_s: float = Field(300.0, gt=0)
    """/healthz fails (the kubelet restarts us) after this long blocked, or pending with no progress."""
    shutdown_timeout_s: float = Field(20.0, ge=0)
    """After SIGTERM: how long to wait for Kafka to confirm what is in flight (acked as confirmed)."""
    metrics_port: int = Field(9100, ge=0, le=65535)
    """Port of /metrics, /healthz and /readyz; 0 disables."""

    @property
    def max_payload_bytes(self) -> int:
        """The largest payload a data record may carry: message.max.bytes less room for key and headers."""
        return self.kafka_max_message_bytes - RECORD_OVERHEAD_BYTES

    @property
    def broker_endpoints(self) -> list[tuple[str, int]]:
        return self.mqtt.endpoints

    @property
    def topic_filter(self) -> str:
        return f"$share/{self.share_group}/{MQTT_TOPIC_PREFIX}+"
