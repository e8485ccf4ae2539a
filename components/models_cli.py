"""`fleetpulse models`: a model's versions on GCS and the channels that say which one serves.

Reads the bucket `fleetpulse train` publishes to (FLEETPULSE_TRAIN_BUCKET, FLEETPULSE_TRAIN_GCS_ENDPOINT).
Every command prints one line (``list``: one per version). A change is a compare-and-swap on the
channels object: if another writer changed it since this command read it, nothing is written and the
command fails (a person's decision was made on a state that no longer holds).
"""

from __future__ import annotations

import json

import click

from components.models import MODEL_NAMES
from fleetpulse import model_store

_MODELS = sorted(MODEL_NAMES.values())


def _target(fn):
    fn = click.option("--bucket", default=None, help="Overrides FLEETPULSE_TRAIN_BUCKET.")(fn)
    return click.option("--model", "model_name", type=click.Choice(_MODELS), default=MODEL_NAMES["autoencoder"],
                        show_default=True, help="Which model's versions.")(fn)  # fmt: skip


def _gcs(bucket: str | None):
    from components.publish import gcs_bucket
    from components.settings import TrainSettings
    from fleetpulse.settings import load_settings

    settings = load_settings(TrainSettings, bucket=bucket)
    return settings.bucket, gcs_bucket(settings.bucket, settings.gcs_endpoint)


def headline(metrics: dict) -> dict:
    """The figures a promotion is argued on (the version's metadata.json keeps them all)."""
    keep = ("f1", "precision", "recall", "false_alerts_per_1000_car_hours", "threshold")
    out = {k: metrics[k] for k in keep if k in metrics}
    if "hysteresis" in metrics:
        out["alerts"] = {k: metrics["hysteresis"][k] for k in ("f1", "recall", "false_alerts_per_1000_car_hours")}
    if "per_mode" in metrics:
        out["recall_per_mode"] = {mode: m["recall"] for mode, m in metrics["per_mode"].items()}
    if "gate" in metrics:
        out["gate"] = metrics["gate"]
    return out


def _line(entry: model_store.CatalogEntry) -> str:
    m = entry.metadata.get("metrics", {})
    figures = (f"F1 {m['f1']:.3f}, {m['false_alerts_per_1000_car_hours']:.2f} false alerts/1000 car-h"
               if {"f1", "false_alerts_per_1000_car_hours"} <= m.keys() else "no metrics")  # fmt: skip
    why = f" ({entry.reason})" if entry.reason else ""
    return f"{entry.version:>4}  {entry.channel:<9}  {figures}, published {entry.metadata.get('published_at', '?')}{why}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def models() -> None:
    """A model's versions on GCS and their channels: stable serves, candidate is on trial."""


@models.command("list")
@_target
@click.option("--json", "as_json", is_flag=True, help='One JSON line: [{"version", "channel", "metrics", "published_at"}].')
def list_(model_name: str, bucket: str | None, as_json: bool) -> None:
    """Every complete version with its channel (stable, candidate, rejected, retired)."""
    name, gcs = _gcs(bucket)
    with gcs as client:
        entries = model_store.catalog(client, name, model_name)
    if as_json:
        click.echo(json.dumps([{"version": e.version, "channel": e.channel, "metrics": headline(e.metadata.get("metrics", {})),
                                "published_at": e.metadata.get("published_at")} for e in entries], separators=(",", ":")))  # fmt: skip
        return
    if not entries:
        click.echo(f"no versions of {model_name} in gs://{name}/")
    for entry in entries:
        click.echo(_line(entry))


@models.command()
@_target
@click.argument("version", type=click.IntRange(min=1))
def promote(model_name: str, bucket: str | None, version: int) -> None:
    """Make VERSION stable (the stable it replaces is where a rollback returns)."""
    name, gcs = _gcs(bucket)
    with gcs as client:
        before, _ = model_store.promote(client, name, model_name, version)
    was = f" (was version {before.stable})" if before.stable is not None else ""
    click.echo(f"{model_name} version {version} is stable{was}")


@models.command()
@_target
def rollback(model_name: str, bucket: str | None) -> None:
    """Return stable to the previous stable version; the one it leaves is marked rejected."""
    name, gcs = _gcs(bucket)
    with gcs as client:
        before, after = model_store.rollback(client, name, model_name)
    click.echo(f"{model_name} rolled back to version {after.stable} (version {before.stable} rejected)")


@models.command()
@_target
@click.argument("version", type=click.IntRange(min=1))
@click.option("--reason", default="rejected by hand", show_default=True, help="Recorded with the rejection.")
def reject(model_name: str, bucket: str | None, version: int, reason: str) -> None:
    """Mark VERSION rejected (it never serves); a candidate leaves its channel."""
    name, gcs = _gcs(bucket)
    with gcs as client:
        model_store.reject(client, name, model_name, version, reason)
    click.echo(f"{model_name} version {version} rejected ({reason})")


@models.command()
@click.option("--model", "model_name", type=click.Choice(_MODELS), default=None,
              help="Which model's channels. [default: FLEETPULSE_DECIDE_MODEL, else car-anomaly]")
@click.option("--bucket", default=None, help="Overrides FLEETPULSE_DECIDE_BUCKET.")
@click.option("--once", is_flag=True, help="Decide once on what the topics hold now, print every outcome (waiting too) and exit.")
@click.option("--interval", "interval_s", type=click.FloatRange(min=0.1), default=None,
              help="Seconds between decisions in the loop. [default: FLEETPULSE_DECIDE_INTERVAL_S, else 30]")
@click.option("--shadow-topic", default=None, help="Overrides FLEETPULSE_DECIDE_SHADOW_TOPIC (model-shadow).")
@click.option("--truth-topic", default=None, help="Overrides FLEETPULSE_DECIDE_TRUTH_TOPIC (ground-truth).")
@click.option("--alerts-topic", default=None, help="Overrides FLEETPULSE_DECIDE_ALERTS_TOPIC (alerts).")
@click.option("--kafka-bootstrap-servers", default=None, help="Overrides FLEETPULSE_DECIDE_KAFKA_BOOTSTRAP_SERVERS.")
@click.option("--min-car-hours", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Shadow car-hours before a verdict. [default: FLEETPULSE_DECIDE_MIN_CAR_HOURS, else 1000]")
@click.option("--watch-car-hours", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Car-hours of a new stable's alerts the rollback watch judges. "
                   "[default: FLEETPULSE_DECIDE_WATCH_CAR_HOURS, else 1000]")
@click.option("--json", "as_json", is_flag=True,
              help="Each decision as one JSON line (with both models' figures) instead of a sentence.")
def decide(model_name, bucket, once, interval_s, shadow_topic, truth_topic, alerts_topic, kafka_bootstrap_servers,
           min_car_hours, watch_car_hours, as_json) -> None:
    """Promote or reject the candidate on its shadow figures; roll back a new stable whose alert rate jumps.

    \b
    Both models are judged on the same shadowed events (model-shadow), under the serving hysteresis,
    with the figures of fleetpulse.evaluation. After --min-car-hours of shadow the candidate is
    rejected if it is worse than stable, else promoted. Worse (FLEETPULSE_DECIDE_* override each):
      recall on labelled failure episodes lower by more than RECALL_MARGIN (0.02) and by more
        than one episode, judged on at least MIN_EPISODES (10) failures;
      false alerts per 1,000 car-hours above stable's by more than FALSE_ALERT_MARGIN (0.5) and
        above FALSE_ALERT_BUDGET (1);
      without ground truth for the shadowed cars: alerts per 1,000 car-hours above
        ALERT_RATE_FACTOR (1.5) x stable's (at least ALERT_RATE_FLOOR, 1).
    After a promotion, the new stable's first --watch-car-hours of alerts (on the alerts topic) are
    compared with the previous stable's last ones: above ROLLBACK_FACTOR (2) x (at least
    ROLLBACK_FLOOR, 1) it is rolled back.

    \b
    Every change is a compare-and-swap on channels.json, made only if the channels still say what
    the decision was made on: of two deciders, one change lands and the other writes nothing. Each
    decision is one line on stdout; progress goes to stderr. On a secured Kafka it logs in as
    FLEETPULSE_DECIDE_KAFKA_USERNAME (the decider), its password from FLEETPULSE_DECIDE_KAFKA_PASSWORD_FILE.
    """
    import signal
    import threading

    from components import lifecycle
    from components.publish import gcs_bucket
    from components.settings import DecideSettings
    from fleetpulse.clients import require_kafka
    from fleetpulse.settings import load_settings

    settings = load_settings(DecideSettings, model=model_name, bucket=bucket, interval_s=interval_s, shadow_topic=shadow_topic,
                             truth_topic=truth_topic, alerts_topic=alerts_topic, kafka_bootstrap_servers=kafka_bootstrap_servers,
                             min_car_hours=min_car_hours, watch_car_hours=watch_car_hours)  # fmt: skip
    kafka = settings.kafka
    topics = [settings.shadow_topic, settings.truth_topic, settings.alerts_topic]
    if kafka.authenticated:
        require_kafka(kafka, topics=[settings.shadow_topic, settings.alerts_topic], groups=[settings.group_id])
    else:
        require_kafka(kafka)

    def progress(message: str) -> None:
        click.echo(f"  {message}", err=True)

    def emit(outcome: lifecycle.Outcome) -> None:
        click.echo(json.dumps(outcome.as_dict(), separators=(",", ":")) if as_json else outcome.line())

    stop = threading.Event()
    health = None
    if not once:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        health = lifecycle.Health(stuck_after_s=max(3 * settings.interval_s, 120.0))
        if settings.metrics_port:
            from fleetpulse.probes import serve_probes

            serve_probes(settings.metrics_port, health.live, health.ready, name="decider")
    with gcs_bucket(settings.bucket, settings.gcs_endpoint) as client:
        reader = lifecycle.TopicReader(kafka, topics, settings.group_id)
        decider = lifecycle.Decider(reader, client, settings.bucket, settings.model, *topics, rule=settings.rule(),
                                    progress=progress)
        progress(f"deciding on {settings.model} in gs://{settings.bucket}/ from {', '.join(topics)} on {kafka.bootstrap_servers}"
                 + ("" if once else f", every {settings.interval_s:g} s"))  # fmt: skip
        try:
            lifecycle.run(decider, settings.interval_s, once, emit, progress, health, stop)
        except KeyboardInterrupt:
            pass
        finally:
            reader.close()


@models.command()
@click.option("--once", is_flag=True, help="Handle the requests the topic holds now, print each outcome and exit.")
@click.option("--requests-topic", default=None, help="Overrides FLEETPULSE_RETRAIN_REQUESTS_TOPIC (model-requests).")
@click.option("--topic", default=None, help="Sensor data to train on. Overrides FLEETPULSE_RETRAIN_TOPIC (sensor-data).")
@click.option("--truth-topic", default=None, help="Labels to evaluate on. Overrides FLEETPULSE_RETRAIN_TRUTH_TOPIC (ground-truth).")
@click.option("--window-minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Train on the last this many minutes of sensor data. [default: FLEETPULSE_RETRAIN_WINDOW_MINUTES, else 60]")
@click.option("--max-age", "max_age_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds after which a request is ignored. [default: FLEETPULSE_RETRAIN_MAX_AGE_S, else 3600]")
@click.option("--epochs", type=click.IntRange(1, 1000), default=None, help="Overrides FLEETPULSE_RETRAIN_EPOCHS (20).")
@click.option("--min-f1", type=click.FloatRange(0, 1), default=None, help="The pipeline's gate. Overrides FLEETPULSE_RETRAIN_MIN_F1.")
@click.option("--kfp-host", default=None,
              help="Submit a KFP run of the compiled pipeline to this API instead of training here. Overrides FLEETPULSE_RETRAIN_KFP_HOST.")
@click.option("--interval", "interval_s", type=click.FloatRange(min=0.1), default=None,
              help="Seconds between polls of the requests in the loop. [default: FLEETPULSE_RETRAIN_INTERVAL_S, else 10]")
@click.option("--group-id", default=None, help="Overrides FLEETPULSE_RETRAIN_GROUP_ID (fleetpulse-train-requests).")
@click.option("--kafka-bootstrap-servers", default=None, help="Overrides FLEETPULSE_RETRAIN_KAFKA_BOOTSTRAP_SERVERS.")
@click.option("--bucket", default=None, help="Overrides FLEETPULSE_RETRAIN_BUCKET.")
@click.option("--json", "as_json", is_flag=True, help="Each outcome as one JSON line instead of a sentence.")
def retrain(once, requests_topic, topic, truth_topic, window_minutes, max_age_s, epochs, min_f1, kfp_host, interval_s, group_id,
            kafka_bootstrap_servers, bucket, as_json) -> None:
    """Retrain on recent data when model-requests asks (drift): the new version goes out as the candidate.

    \b
    Each request is acted on once per drifted model version, and not at all when a newer version
    already exists or the request is older than --max-age. Acting is training on the last
    --window-minutes of sensor data: here (the steps of `fleetpulse train --runner direct`, logged
    in as FLEETPULSE_TRAIN_KAFKA_*), or with --kfp-host a KFP run of FLEETPULSE_RETRAIN_PIPELINE_PACKAGE
    with FLEETPULSE_RETRAIN_PIPELINE_ARGUMENTS. The pipeline publishes a version that passes its gate
    as the candidate; `fleetpulse models decide` judges it. One line per request on stdout. The
    requests are read as FLEETPULSE_RETRAIN_KAFKA_USERNAME (training) in the group
    fleetpulse-train-requests, whose committed offsets say what was handled.
    """
    import signal
    import threading

    from components import lifecycle, retrain as loop
    from components.publish import gcs_bucket
    from components.settings import RetrainSettings
    from fleetpulse.clients import require_kafka
    from fleetpulse.errors import BrokerUnavailable
    from fleetpulse.settings import load_settings

    settings = load_settings(RetrainSettings, requests_topic=requests_topic, topic=topic, truth_topic=truth_topic,
                             window_minutes=window_minutes, max_age_s=max_age_s, epochs=epochs, min_f1=min_f1,
                             kfp_host=kfp_host, interval_s=interval_s, group_id=group_id, kafka_bootstrap_servers=kafka_bootstrap_servers,
                             bucket=bucket)  # fmt: skip
    kafka = settings.kafka
    if kafka.authenticated:
        require_kafka(kafka, topics=[settings.requests_topic], groups=[settings.group_id])
    else:
        require_kafka(kafka)

    def progress(message: str) -> None:
        click.echo(f"  {message}", err=True)

    action = loop.submit_to_kfp(settings, progress) if settings.kfp_host else loop.train_in_process(settings, progress)
    stop = threading.Event()
    health = None
    if not once:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        # Training here takes minutes and is one step; a KFP submission takes seconds.
        health = lifecycle.Health(stuck_after_s=max(3 * settings.interval_s, 120.0) if settings.kfp_host else 4 * 3600.0)
        if settings.metrics_port:
            from fleetpulse.probes import serve_probes

            serve_probes(settings.metrics_port, health.live, health.ready, name="retrain")
    failed = False
    with gcs_bucket(settings.bucket, settings.gcs_endpoint) as client:
        reader = loop.RequestReader(kafka, settings.requests_topic, settings.group_id)
        retrainer = loop.Retrainer(reader, client, settings, action)
        where = f"KFP at {settings.kfp_host}" if settings.kfp_host else "this process"
        progress(f"retraining on requests from {settings.requests_topic} on {kafka.bootstrap_servers} in {where}, "
                 f"the last {settings.window_minutes:g} min of {settings.topic}, models in gs://{settings.bucket}/")
        try:
            while True:
                try:
                    outcomes, error = retrainer.step(), None
                except BrokerUnavailable as exc:
                    if once:
                        raise
                    outcomes, error = [], str(exc)
                    progress(f"{exc}; trying again in {settings.interval_s:g} s")
                if health is not None:
                    health.stepped(error)
                for o in outcomes:
                    failed |= o.outcome == loop.FAILED
                    click.echo(json.dumps(o.as_dict(), separators=(",", ":")) if as_json else o.line())
                if once or stop.wait(settings.interval_s):
                    break
        except KeyboardInterrupt:
            pass
        finally:
            reader.close()
    if once and failed:
        raise SystemExit(1)
