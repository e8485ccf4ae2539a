"""`fleetpulse train`: run the car_anomaly_training pipeline locally against the stack."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from components.models import MODEL_TYPES
from components.settings import MIN_F1
from fleetpulse import topics
from fleetpulse.settings import load_settings

RUNNERS = ("kfp", "direct")


def _stderr(message: str) -> None:
    click.echo(f"  {message}", err=True)


def _check_window(from_ts, to_ts, from_flag: str, to_flag: str) -> None:
    if from_ts is not None and to_ts is not None and to_ts <= from_ts:
        raise click.BadParameter(f"must be after {from_flag} ({from_ts})", param_hint=to_flag)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_type", type=click.Choice(MODEL_TYPES), default="autoencoder", show_default=True, help="Model type to train.")
@click.option("--epochs", type=click.IntRange(1, 1000), default=20, show_default=True, help="LSTM training epochs (the autoencoder is solved in closed form).")
@click.option("--topic", default=topics.SENSOR_DATA, show_default=True, help="Kafka topic of cardata-v1 events.")
@click.option("--truth-topic", default=topics.GROUND_TRUTH, show_default=True, help="Kafka topic of the simulator's ground truth.")
@click.option("--from-ts", type=click.IntRange(min=0), default=None, help="Train on records with Kafka timestamp >= this (ms).")
@click.option("--to-ts", type=click.IntRange(min=0), default=None, help="... and < this (ms). Default: the whole topic.")
@click.option("--eval-from-ts", type=click.IntRange(min=0), default=None, help="Evaluate on this time window (all cars) instead of held-out cars.")
@click.option("--eval-to-ts", type=click.IntRange(min=0), default=None)
@click.option("--eval-share", type=click.FloatRange(0.05, 0.95), default=0.3, show_default=True, help="Share of cars held out for evaluation (no eval window).")
@click.option("--window", type=click.IntRange(2, 256), default=8, show_default=True, help="LSTM look-back window (events per car).")
@click.option("--min-f1", type=click.FloatRange(0, 1), default=MIN_F1, show_default=True, help="Below this alert F1 (under the serving hysteresis) the model is kept as a rejected version (never served) and the run fails.")
@click.option("--runner", type=click.Choice(RUNNERS), default="kfp", show_default=True, help="kfp: kfp.local SubprocessRunner; direct: this process.")
@click.option("--pipeline-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="kfp runner: keep the run's artifacts (metrics, confusion matrix and ROC, summary) here.")
@click.option("--kafka-bootstrap-servers", default=None, help="Overrides FLEETPULSE_TRAIN_KAFKA_BOOTSTRAP_SERVERS.")
@click.option("--bucket", default=None, help="Overrides FLEETPULSE_TRAIN_BUCKET.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON line (the last line of stdout).")
def train(model_type, epochs, topic, truth_topic, from_ts, to_ts, eval_from_ts, eval_to_ts, eval_share, window, min_f1,
          runner, pipeline_root, kafka_bootstrap_servers, bucket, as_json):
    """Train an anomaly model from Kafka through TensorFlow I/O, evaluate it on ground truth, publish it to GCS.

    On a secured Kafka every step logs in as FLEETPULSE_TRAIN_KAFKA_USERNAME, its password from
    FLEETPULSE_TRAIN_KAFKA_PASSWORD_FILE (never a flag or a pipeline parameter), with
    FLEETPULSE_TRAIN_KAFKA_SECURITY_PROTOCOL, _KAFKA_SASL_MECHANISM and _KAFKA_CA_FILE, in consumer
    groups under FLEETPULSE_TRAIN_KAFKA_GROUP_ID (fleetpulse-train, the training ACL's prefix).
    """
    from components.settings import TrainSettings

    _check_window(from_ts, to_ts, "--from-ts", "--to-ts")
    _check_window(eval_from_ts, eval_to_ts, "--eval-from-ts", "--eval-to-ts")
    settings = load_settings(TrainSettings, kafka_bootstrap_servers=kafka_bootstrap_servers, bucket=bucket)
    _precheck(settings, topic, from_ts, to_ts)
    t0 = time.monotonic()
    click.echo(f"training {model_type} from {topic!r} on {settings.kafka_bootstrap_servers} ({runner} runner)", err=True)
    if runner == "kfp":
        from components import kfp_local

        result = kfp_local.run({
            "kafka_bootstrap": settings.kafka_bootstrap_servers, "topic": topic, "truth_topic": truth_topic,
            "model_type": model_type, "epochs": epochs, "from_ts": _unset(from_ts), "to_ts": _unset(to_ts),
            "eval_from_ts": _unset(eval_from_ts), "eval_to_ts": _unset(eval_to_ts), "eval_share": eval_share,
            "window": window, "min_f1": min_f1, "bucket": settings.bucket, "gcs_endpoint": settings.gcs_endpoint,
        }, progress=_stderr, pipeline_root=pipeline_root)
    else:
        from components import pipeline_local, steps

        params = steps.TrainParams(settings.kafka_bootstrap_servers, topic, model_type, epochs, from_ts, to_ts, eval_share,
                                   eval_from_ts is not None or eval_to_ts is not None, window)
        result = pipeline_local.run(settings, params, truth_topic, eval_from_ts, eval_to_ts, min_f1, progress=_stderr)
    _summary(result, time.monotonic() - t0)
    if as_json:
        from components.pipeline_local import dumps

        sys.stdout.flush()
        click.echo(dumps(result))


def _precheck(settings, topic: str, from_ts, to_ts) -> None:
    """Fail in a second with one line (no TensorFlow import, no pipeline start) for the common mistakes."""
    from components.kafka_dataset import WindowError, require_kafka, resolve_window
    from components.steps import TrainParams

    # TF-IO would wait forever on a refused login: the same credentials are checked here first.
    require_kafka(settings.kafka, (topic,))
    window = resolve_window(settings.kafka, topic, from_ts, to_ts)
    if window.records < TrainParams.min_records:
        raise WindowError(f"{window.describe()} holds {window.records} records, fewer than the {TrainParams.min_records} needed to train")


def _unset(value: int | None) -> int:
    return -1 if value is None else value


def _summary(result: dict, seconds: float) -> None:
    m = result["metrics"]
    base = m["baseline_robust_z"]
    alerts = m.get("hysteresis", {})
    delay = alerts.get("median_detection_delay")
    click.echo(
        f"published {result['model_uri']} (version {result['version']}, {result['channel']}) in {seconds:.0f}s from {result['records']} records: "
        f"per reading F1 {m['f1']:.3f} precision {m['precision']:.3f} recall {m['recall']:.3f}; as alerts (serving hysteresis) "
        f"F1 {alerts.get('f1', float('nan')):.3f}, median delay {'n/a' if delay is None else f'{delay:g}'} events, "
        f"{alerts.get('false_alerts_per_1000_car_hours', float('nan')):.1f} false alerts/1000 car-h; "
        f"robust z-score baseline F1 {base['f1']:.3f}",
        err=True,
    )
