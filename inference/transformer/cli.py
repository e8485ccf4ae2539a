"""`fleetpulse score`: the Kafka-consuming transformer (sensor-data -> model server -> alerts + twin)."""

from __future__ import annotations

import functools
import json
import signal
from urllib.parse import urlsplit

import click

from fleetpulse.settings import load_settings


@click.command("score")
@click.option("--bootstrap-servers", "kafka_bootstrap_servers", default=None, help="Kafka bootstrap servers. [default: local stack]")
@click.option("--topic", default=None, help="Topic to consume. [default: sensor-data]")
@click.option("--group-id", default=None, help="Consumer group id. [default: fleetpulse-transformer]")
@click.option("--model-grpc", default=None, help="Model server gRPC host:port. [default: 127.0.0.1:8081]")
@click.option("--model-name", default=None, help="Model name on the server. [default: car-anomaly]")
@click.option("--mongodb-uri", default=None, help="MongoDB URI for the twin, without credentials (those come from "
              "FLEETPULSE_SCORE_MONGODB_USERNAME and _MONGODB_PASSWORD_FILE, or a URI in FLEETPULSE_SCORE_MONGODB_URI). [default: local stack]")
@click.option("--alerts-topic", default=None, help="Topic for alert-v1 records. [default: alerts]")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None, help="Prometheus /metrics port, 0 = off. [default: 9101]")
@click.option("--until-idle", type=click.FloatRange(min=0.1), default=None, metavar="SECONDS",
              help="Exit after no new record arrived for this long (run as a batch to completion). Default: run forever.")
@click.option("--max-events", type=click.IntRange(min=1), default=None, help="Exit after consuming this many records.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout.")
def score(kafka_bootstrap_servers, topic, group_id, model_grpc, model_name, mongodb_uri, alerts_topic, metrics_port,
          until_idle, max_events, as_json) -> None:
    """Score car events from Kafka with the model server; write alerts on status changes and the digital twin.

    Offsets are committed only after the alerts are acknowledged by Kafka and the twin write succeeded;
    undecodable records and implausible readings go to the dead-letter topic with the reason. SIGTERM
    stops within FLEETPULSE_SCORE_STOP_TIMEOUT_S (30 s), committing only what is durable.

    Identities and TLS come from the environment, never from flags: FLEETPULSE_SCORE_KAFKA_SECURITY_PROTOCOL,
    _KAFKA_SASL_MECHANISM, _KAFKA_USERNAME, _KAFKA_PASSWORD_FILE, _KAFKA_CA_FILE, and
    FLEETPULSE_SCORE_MONGODB_USERNAME, _MONGODB_PASSWORD_FILE (or _MONGODB_PASSWORD), _MONGODB_TLS,
    _MONGODB_CA_FILE. As a Kafka principal its group must be one its ACLs grant (fleetpulse-transformer*).
    """
    from inference.transformer.settings import ScoreSettings

    if mongodb_uri and urlsplit(mongodb_uri).password:
        raise click.BadParameter("credentials never go on the command line (other users see it): use "
                                 "FLEETPULSE_SCORE_MONGODB_USERNAME and FLEETPULSE_SCORE_MONGODB_PASSWORD_FILE", param_hint="--mongodb-uri")

    settings = load_settings(ScoreSettings, kafka_bootstrap_servers=kafka_bootstrap_servers, topic=topic, group_id=group_id,
                             model_grpc=model_grpc, model_name=model_name, mongodb_uri=mongodb_uri, alerts_topic=alerts_topic,
                             metrics_port=metrics_port)
    progress = lambda msg: click.echo(msg, err=True)  # noqa: E731
    from inference.transformer.health import Health, serve

    health = Health(settings.stuck_after_s)
    if settings.metrics_port:
        serve(health, settings.metrics_port)  # /metrics, /healthz, /readyz (not ready until the loop runs)
    transformer = build(settings, progress, health)
    signal.signal(signal.SIGTERM, lambda *_: transformer.stop())
    progress(f"scoring {settings.topic} (group {settings.group_id}) with {settings.model_name} at {settings.model_grpc}; "
             f"alerts -> {settings.alerts_topic}, twin -> {settings.twin_database}.{settings.twin_collection} "
             f"(status changes at once, others every {settings.twin_interval_s:g}s)"
             + (f"; until idle for {until_idle}s" if until_idle else ""))
    try:
        summary = transformer.run(until_idle_s=until_idle, max_events=max_events)
    except KeyboardInterrupt:
        summary = transformer.summary
    result = summary.as_dict(len(transformer.table))  # before close(): its revoke forgets the cars
    transformer.consumer.close()
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"consumed {result['consumed']:,} events ({result['events_per_s']:,.0f}/s), scored {result['scored']:,}, "
                   f"alerts {result['alerts']:,} {result['alerts_by_status']}, dead-lettered {result['dlq']:,}, "
                   f"replays skipped {result['skipped_replayed']:,}, cars {result['cars']:,}, twin writes {result['twin_writes']:,} "
                   f"({result['twin_inserts']:,} new)")


def build(settings, progress, health=None):
    """Check every dependency answers, then wire the transformer from ready clients."""
    from confluent_kafka import Consumer, Producer

    from pymongo import MongoClient

    from fleetpulse.clients import require_kafka
    from inference.transformer.loop import Transformer
    from inference.transformer.twin_store import TwinStore
    from inference.transformer.v2_client import V2Client

    kafka = settings.kafka
    if kafka.authenticated:  # a principal: its rights are checked up front, one line each
        require_kafka(kafka, topics=[settings.topic, settings.alerts_topic, settings.dlq_topic], groups=[settings.group_id])
    else:
        require_kafka(kafka)
    # No driver-level read retries: a twin read (the fence's stored offset, the loader) that meets an
    # outage fails fast and is retried by the transformer's own Retries: counted, reported, and seen by
    # /healthz, instead of waiting silently inside the driver. (FerretDB has no retryable writes anyway.)
    mongo = MongoClient(settings.mongodb_uri, serverSelectionTimeoutMS=5000, connectTimeoutMS=5000, retryReads=False,
                        **settings.mongodb_options())
    require_mongodb(mongo, settings)
    client = V2Client(settings.model_grpc, settings.model_name)
    client.wait_ready(timeout_s=30)
    consumer = Consumer(settings.consumer_config())
    producer = Producer(settings.producer_config())
    twins = TwinStore(mongo, settings.twin_database, settings.twin_collection, settings.twin_write_timeout_s,
                      settings.twin_refuse_after)
    side = Producer(settings.side_producer_config())
    transformer = Transformer(settings, consumer, producer, client, twins, progress, health=health,
                              shadow=_shadow(settings, side, progress), drift=_drift(settings, side, progress))
    consumer.subscribe([settings.topic], on_revoke=transformer.on_revoke, on_lost=transformer.on_lost)
    return transformer


def _shadow(settings, producer, progress):
    """The candidate's scoring (shadow.py), unless the share is 0."""
    from fleetpulse.model_store import candidate_model_name
    from inference.transformer.shadow import Shadow
    from inference.transformer.v2_client import V2Client

    if settings.shadow_share <= 0:
        return None
    candidate = V2Client(settings.model_grpc, candidate_model_name(settings.model_name))
    return Shadow(candidate, producer, settings.shadow_topic, settings.shadow_share, progress=progress,
                  probe_every_s=settings.shadow_probe_s)


def _drift(settings, producer, progress):
    """The drift watch (drift_watch.py) over the served versions' references on GCS."""
    from fleetpulse import model_store
    from fleetpulse.clients import gcs_client
    from inference.transformer.drift_watch import DriftWatch

    if settings.drift_off:
        return None
    bucket, model = settings.model_root
    gcs = functools.cache(lambda: gcs_client(settings.gcs_endpoint or None))  # at first use: a failure only turns drift off

    def reference(version: str) -> dict | None:
        if not version.isdigit():
            return None
        return model_store.read_metadata(gcs(), model_store.ModelVersion(bucket, model, int(version))).get("drift_reference")

    return DriftWatch(reference, producer, settings.requests_topic, model, settings.drift_threshold, settings.drift_window_s,
                      settings.drift_windows, settings.drift_min_rows, settings.drift_cooldown_s, progress)


def require_mongodb(client, settings) -> None:
    """One line naming the user when MongoDB refuses the login or the TLS handshake, or cannot be reached
    (never the URI: it may hold credentials)."""
    from pymongo.errors import OperationFailure, PyMongoError

    from fleetpulse.errors import AccessDenied
    from fleetpulse.errors import BrokerUnavailable

    where = f"MongoDB at {settings.mongodb_target}"
    user = settings.mongodb_username or urlsplit(settings.mongodb_uri).username
    try:
        # Not ping: FerretDB answers it without a login. Listing the twin's collection needs one.
        client[settings.twin_database].command("listCollections", filter={"name": settings.twin_collection}, nameOnly=True)
    except OperationFailure as exc:
        if exc.code in (13, 18) and not user:  # Unauthorized
            raise AccessDenied(f"{where} requires a login: set FLEETPULSE_SCORE_MONGODB_USERNAME and "
                               "FLEETPULSE_SCORE_MONGODB_PASSWORD_FILE") from None
        if exc.code in (13, 18):  # Unauthorized, AuthenticationFailed
            raise AccessDenied(f"{where} refused user {user!r}: wrong username or password, or no rights "
                               "(check its password file or variable)") from None
        raise BrokerUnavailable(f"{where} answered {exc.code}: {exc.details.get('errmsg', exc) if exc.details else exc}") from None
    except PyMongoError as exc:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            raise AccessDenied(f"TLS with {where} failed: certificate verify failed (is mongodb_ca_file the CA that signed "
                               "its certificate?)") from None
        raise BrokerUnavailable(f"{where} is unreachable ({type(exc).__name__}); is the stack up? (fleetpulse stack up)") from None
