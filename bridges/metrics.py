"""Prometheus metrics of one bridge process, on their own registry (several bridges may share a process in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class BridgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("fleetpulse_bridge_received", "MQTT messages received", registry=r)
        self.forwarded = Counter("fleetpulse_bridge_forwarded", "records Kafka confirmed in the data topic", registry=r)
        self.dead_lettered = Counter("fleetpulse_bridge_dead_lettered", "invalid payloads Kafka confirmed in the DLQ", registry=r)
        self.delivery_errors = Counter("fleetpulse_bridge_delivery_errors", "failed Kafka deliveries (each is produced again)", registry=r)
        self.acks = Counter("fleetpulse_bridge_mqtt_acks", "PUBACKs sent after Kafka confirmed delivery", registry=r)
        self.reconnects = Counter("fleetpulse_bridge_mqtt_connects", "MQTT connections established", ["broker"], registry=r)
        self.in_flight = Gauge("fleetpulse_bridge_in_flight", "messages received and not yet confirmed by Kafka", registry=r)
        self.connected = Gauge("fleetpulse_bridge_mqtt_connected", "1 while connected to the broker", ["broker"], registry=r)

    def serve(self, port: int) -> None:
        """Expose /metrics on ``port`` (0: do not serve)."""
        if port:
            start_http_server(port, registry=self.registry)
