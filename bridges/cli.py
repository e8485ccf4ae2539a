"""`fleetpulse bridge`: move cardata events from MQTT (shared subscription) into Kafka, at least once."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time

import click

SECRETS = {"mqtt_password", "kafka_password"}
"""Settings the --json summary leaves out (the *_file ones name a file, not its contents)."""


def _opt(name: str, help: str, **kw):
    return click.option(f"--{name}", default=None, help=f"{help} [env FLEETPULSE_BRIDGE_{name.upper().replace('-', '_')}]", **kw)


@click.command()
@_opt("mqtt-brokers", "MQTT brokers, comma list host:port; subscribes on each.")
@_opt("kafka-bootstrap-servers", "Kafka bootstrap servers.")
@_opt("topic", "Kafka topic for valid records (default sensor-data).")
@_opt("dlq-topic", "Kafka dead-letter topic (default sensor-data-dlq).")
@_opt("qos", "Subscription QoS: 1 acks MQTT after Kafka delivery, 0 is best effort (default 1).", type=click.IntRange(0, 1))
@_opt("share-group", "Shared-subscription group (default fleetpulse).")
@_opt("client-id", "MQTT client id; stable across restarts, distinct per bridge process.")
@_opt("metrics-port", "Port of /metrics, /healthz and /readyz, 0 disables (default 9100).", type=click.IntRange(0, 65535))
@click.option("--max-messages", type=click.IntRange(min=1), default=None, help="Stop after this many messages were received and delivered.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None, help="Stop after this many seconds.")
@click.option("--progress-every", type=click.FloatRange(min=0.1), default=5.0, show_default=True, help="Seconds between progress lines on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON on stdout.")
@click.option("-v", "--verbose", is_flag=True, help="Log connections and Kafka errors on stderr.")
def bridge(max_messages, duration, progress_every, as_json, verbose, **flags) -> None:
    """Bridge MQTT `vehicles/sensor/data/+` into Kafka `sensor-data` (invalid payloads to the DLQ).

    Runs until SIGINT/SIGTERM (or --duration / --max-messages), then waits up to
    FLEETPULSE_BRIDGE_SHUTDOWN_TIMEOUT_S (20 s) for Kafka to confirm what is in flight, acks what it
    confirmed and disconnects, keeping the persistent session: the broker redelivers the rest.

    Identities and TLS come from the environment, never from flags: FLEETPULSE_BRIDGE_MQTT_TLS,
    _MQTT_CA_FILE, _MQTT_USERNAME, _MQTT_PASSWORD_FILE (or _MQTT_PASSWORD) and
    FLEETPULSE_BRIDGE_KAFKA_SECURITY_PROTOCOL, _KAFKA_SASL_MECHANISM, _KAFKA_USERNAME,
    _KAFKA_PASSWORD_FILE, _KAFKA_CA_FILE. As a Kafka principal the bridge creates no topics.
    """
    from confluent_kafka import KafkaException

    from bridges.bridge import build_bridge
    from bridges.kafka_sink import ensure_topics
    from bridges.settings import BridgeSettings
    from fleetpulse.clients import require_kafka, require_mqtt
    from fleetpulse.errors import FleetPulseError
    from fleetpulse.settings import load_settings

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    settings = load_settings(BridgeSettings, **flags)
    require_kafka(settings.kafka)
    require_mqtt(settings.mqtt)
    try:
        ensure_topics(settings)
    except KafkaException as exc:
        raise FleetPulseError(f"cannot create Kafka topics {settings.topic}/{settings.dlq_topic}: {exc.args[0].str()}") from None
    b = build_bridge(settings)
    b.connect_first()
    b.metrics.watch(b.health)
    try:
        b.metrics.serve(settings.metrics_port, b.health)
    except OSError as exc:
        raise click.BadParameter(f"cannot serve metrics on port {settings.metrics_port}: {exc.strerror}", param_hint="--metrics-port")

    stopping = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.append(True))
    deadline = time.monotonic() + duration if duration else None

    def should_stop() -> bool:
        if stopping or (deadline is not None and time.monotonic() >= deadline):
            return True
        s = b.summary
        return max_messages is not None and s.received >= max_messages and b.in_flight == 0

    last = [0.0, 0]

    def progress(s) -> None:
        rate = (s.forwarded + s.dead_lettered - last[1]) / max(s.elapsed_s - last[0], 1e-9)
        last[:] = [s.elapsed_s, s.forwarded + s.dead_lettered]
        up = sum(src.connected for src in b.sources)
        click.echo(
            f"[{s.elapsed_s:7.0f}s] received {s.received:,} forwarded {s.forwarded:,} dlq {s.dead_lettered:,} "
            f"in-flight {s.in_flight:,} errors {s.delivery_errors:,} ({rate:,.0f}/s, mqtt {up}/{len(b.sources)} up)",
            err=True,
        )

    click.echo(
        f"bridge {settings.topic_filter} on {settings.mqtt_brokers} (qos {settings.qos}, client {settings.client_id}) "
        f"-> kafka {settings.kafka_bootstrap_servers} {settings.topic} / {settings.dlq_topic}",
        err=True,
    )
    summary = b.run(should_stop, progress, every_s=progress_every)
    if as_json:
        click.echo(json.dumps({**summary.as_dict(), "settings": settings.model_dump(mode="json", exclude=SECRETS)}))
    else:
        click.echo(
            f"bridge stopped after {summary.elapsed_s:.1f}s: received {summary.received:,}, forwarded {summary.forwarded:,}, "
            f"dead-lettered {summary.dead_lettered:,}, dead letters dropped {summary.dead_letter_failures:,}, "
            f"delivery errors {summary.delivery_errors:,}, mqtt acks {summary.mqtt_acks:,}"
            + (f", {summary.in_flight:,} still in flight (not acked; the broker redelivers them)" if summary.in_flight else "")
        )
