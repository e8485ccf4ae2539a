"""Prometheus metrics of one bridge process, on their own registry (several bridges may share a process
in tests), and the HTTP endpoint that serves them with the probes: /metrics, /healthz, /readyz."""

from __future__ import annotations

from http.server import ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge

from bridges.health import STALLS, Health
from fleetpulse.probes import serve_probes
from fleetpulse.topics import DLQ_KINDS


class BridgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("fleetpulse_bridge_received", "MQTT messages received", registry=r)
        self.forwarded = Counter("fleetpulse_bridge_forwarded", "records Kafka confirmed in the data topic", registry=r)
        self.dead_lettered = Counter("fleetpulse_bridge_dead_lettered", "refused records Kafka confirmed in the DLQ", registry=r)
        self.refused = Counter("fleetpulse_bridge_refused", "records sent to the DLQ, by why (fleetpulse.topics DLQ kinds)", ["kind"], registry=r)
        self.dead_letter_failures = Counter("fleetpulse_bridge_dead_letter_failures", "dead letters Kafka refused permanently: dropped, acked", registry=r)
        self.delivery_errors = Counter("fleetpulse_bridge_delivery_errors", "failed Kafka produces or deliveries (each retried, or dead-lettered after retries)", registry=r)
        self.acks = Counter("fleetpulse_bridge_mqtt_acks", "PUBACKs sent after Kafka confirmed delivery", registry=r)
        self.reconnects = Counter("fleetpulse_bridge_mqtt_connects", "MQTT connections established", ["broker"], registry=r)
        self.in_flight = Gauge("fleetpulse_bridge_in_flight", "messages received and not yet confirmed by Kafka", registry=r)
        self.connected = Gauge("fleetpulse_bridge_mqtt_connected", "1 while connected to the broker", ["broker"], registry=r)
        self.stalled_seconds = Gauge("fleetpulse_bridge_stalled_seconds", "how long each kind of stall has lasted (0: none)", ["reason"], registry=r)
        self.stalled = Gauge("fleetpulse_bridge_stalled", "1 while this stall makes the bridge unready (/readyz)", ["reason"], registry=r)
        for kind in DLQ_KINDS:
            self.refused.labels(kind)

    def watch(self, health: Health) -> None:
        """Compute the stall gauges from ``health`` at every scrape (so a blocked loop shows too)."""
        for reason in STALLS:
            self.stalled_seconds.labels(reason).set_function(lambda r=reason: round(health.stalled_for()[r], 3))
            self.stalled.labels(reason).set_function(lambda r=reason: float(r in health.unready()))

    def serve(self, port: int, health: Health) -> ThreadingHTTPServer | None:
        """Serve /metrics, /healthz (liveness) and /readyz (readiness) on ``port`` (0: do not serve)."""
        if not port:
            return None
        def probe(why: list[str]) -> tuple[bool, bytes, str]:
            return not why, ("stalled: " + ", ".join(why) if why else "ok").encode() + b"\n", "text/plain; charset=utf-8"

        return serve_probes(port, lambda: probe(health.dead()), lambda: probe(health.unready()), self.registry, name="bridge")
