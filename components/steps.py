"""The pipeline's steps as plain functions: train, evaluate, publish, and the gate that fails a run
whose model fell below its floor (after publish has kept it, rejected).

The KFP components (kfp_components.py) and the direct runner (pipeline_local.py) both call these;
each step reads its inputs from arguments and directories and returns JSON-able dicts. What the
Kubeflow UI shows of an evaluation (confusion matrix, ROC, the reviewer's summary) is built here too,
from the figures fleetpulse.evaluation computed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from components import features, models
from components.evaluate import ZScoreBaseline, calibration_half, evaluate_scores
from components.gate import QualityGate
from components.kafka_dataset import (
    Window,
    WindowError,
    is_eval_car,
    read_records,
    read_timed_records,
    read_truth,
    resolve_window,
)
from fleetpulse import drift
from fleetpulse.contract import CARDATA_V1_ID, SENSOR_FIELDS
from fleetpulse.errors import FleetPulseError
from fleetpulse.evaluation import Counts, label

Progress = Callable[[str], None]


class QualityGateFailed(FleetPulseError):
    """The evaluated model did not pass its gate (components.gate); it is kept as a rejected version, never served."""


@dataclass
class TrainParams:
    bootstrap: str
    topic: str = "sensor-data"
    model_type: str = models.AUTOENCODER
    epochs: int = 20
    from_ts: int | None = None
    to_ts: int | None = None
    eval_share: float = 0.3  # share of cars held out for evaluation when no eval window is given
    explicit_eval_window: bool = False
    window: int = models.DEFAULT_WINDOW
    max_train_rows: int = 300_000
    batch_size: int = 256
    min_records: int = 200
    seed: int = 0


def _quiet(_: str) -> None:
    pass


def train_step(p: TrainParams, out_dir: Path, progress: Progress = _quiet) -> dict:
    """Read the window through TF-IO, fit the model, save it (threshold uncalibrated) to out_dir/model."""
    if p.model_type not in models.MODEL_TYPES:
        raise ValueError(f"model type must be one of {models.MODEL_TYPES}, got {p.model_type!r}")
    import tensorflow  # noqa: F401 - imported before the clock starts, so read_s measures reading

    t0 = time.monotonic()
    window = resolve_window(p.bootstrap, p.topic, p.from_ts, p.to_ts)
    progress(f"train: reading {window.records} records from {window.describe()} through TF-IO")
    records = read_records(p.bootstrap, window, min_records=p.min_records)
    read_s = time.monotonic() - t0
    values, keys = records.values, records.keys
    if not p.explicit_eval_window:
        train = ~is_eval_car(keys, p.eval_share)
        values, keys = values[train], keys[train]
    if len(values) < p.min_records:
        raise WindowError(f"{len(values)} decodable training records in {window.describe()}, fewer than {p.min_records}")
    progress(f"train: {len(records)} records decoded in {read_s:.1f}s ({records.undecodable} undecodable, "
             f"{records.implausible} with an implausible reading dropped), {len(values)} for training")

    center, scale = features.robust_stats(values)
    rng = np.random.default_rng(p.seed)
    rows = rng.choice(len(values), p.max_train_rows, replace=False) if len(values) > p.max_train_rows else np.arange(len(values))
    if p.model_type == models.AUTOENCODER:
        model, x = models.build_autoencoder(center, scale), values[rows]
    else:
        model, x = models.build_lstm(center, scale, p.window), features.car_windows(values, keys, p.window, np.sort(rows))
    t1 = time.monotonic()
    losses = models.fit(model, x, p.epochs, p.batch_size, p.seed,
                        progress=lambda stage, i, n, loss: progress(f"train: {stage} {i}/{n} loss {loss:.4f}"))
    fit_s = time.monotonic() - t1
    rscale = models.residual_scale(model, x)
    models.export(model, Path(out_dir) / "model", p.model_type, p.window, rscale)
    info = {
        "model_type": p.model_type,
        "window": p.window if p.model_type == models.LSTM else None,
        "kafka": {**window.to_json(), "bootstrap": p.bootstrap},
        "records": len(records),
        "train_rows": int(len(x)),
        "undecodable": records.undecodable,
        "implausible": records.implausible,
        "epochs": p.epochs,
        "loss": losses,
        "read_s": read_s,
        "read_records_per_s": len(records) / read_s if read_s else None,
        "fit_s": fit_s,
        "epoch_s": fit_s / max(p.epochs, 1),
        "robust_center": center.tolist(),
        "robust_scale": scale.tolist(),
        "residual_scale": rscale.tolist(),
        "eval_share": None if p.explicit_eval_window else p.eval_share,
        # What live readings are compared with for drift (fleetpulse.drift): the rows the model learned from.
        # Only the features the model reads as they are may ask for a retrain (fleetpulse.drift).
        "drift_reference": drift.reference(values, SENSOR_FIELDS, [SENSOR_FIELDS[i] for i in features.FREE_SENSORS]),
    }
    (Path(out_dir) / "train.json").write_text(json.dumps(info, indent=2))
    return info


def _score(model_dir: Path, model_type: str, window: int | None, values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    run, _ = models.load_scorer(model_dir)
    x = values if model_type == models.AUTOENCODER else features.car_windows(values, keys, window)
    return run(x)


def evaluate_step(model_dir: Path, train_info: dict, out_dir: Path, truth_topic: str = "ground-truth",
                  eval_from_ts: int | None = None, eval_to_ts: int | None = None, min_f1: float = 0.0,
                  progress: Progress = _quiet) -> dict:
    """Score held-out events, calibrate the threshold on labels, write out_dir/model with it set.

    The metrics say whether the model passed its gate (components.gate: the alert F1 under the
    serving hysteresis, what the transformer raises, against ``min_f1`` when there are failures
    enough to judge it; false alerts otherwise). A model that failed is still returned, so that
    publish keeps it as a rejected version and gate_step then fails the run. Alert F1, not
    per-reading F1: the threshold is set low enough that single healthy readings cross it now and
    then (the hysteresis absorbs them), so per-reading precision no longer says what users get.
    """
    bootstrap = train_info["kafka"]["bootstrap"]
    if eval_from_ts is not None or eval_to_ts is not None:
        window = resolve_window(bootstrap, train_info["kafka"]["topic"], eval_from_ts, eval_to_ts)
    else:
        window = Window.from_json(train_info["kafka"])
    progress(f"evaluate: reading {window.describe()} and ground truth {truth_topic!r}")
    recs = read_timed_records(bootstrap, window, min_records=1)
    values, keys, ts = recs.values, recs.keys, recs.ts_ms
    if train_info.get("eval_share") is not None:
        held = is_eval_car(keys, train_info["eval_share"])
        values, keys, ts = values[held], keys[held], ts[held]
    if len(values) == 0:
        raise WindowError(f"no held-out events to evaluate in {window.describe()}")
    truth = read_truth(bootstrap, truth_topic)
    lab = label(keys, ts, truth)
    if not lab.failing.any():
        raise WindowError(f"no failing events among {len(values)} held-out events of {window.describe()} "
                          f"per {truth_topic!r} ({len(truth)} truth records); cannot calibrate a threshold")
    scores = _score(model_dir, train_info["model_type"], train_info.get("window"), values, keys)
    baseline = ZScoreBaseline(train_info["robust_center"], train_info["robust_scale"]).score(values)
    threshold, metrics = evaluate_scores(scores, baseline, keys, lab)
    metrics["undecodable"] = train_info["undecodable"] + recs.undecodable
    metrics["eval_window"] = window.to_json()
    metrics["gate"] = QualityGate(min_f1).judge(metrics["hysteresis"])
    # The same events the figures describe: evaluate_scores reports on the half it did not calibrate on.
    report = ~calibration_half(keys) if metrics["calibrated_on"] == "half" else np.ones(len(keys), bool)
    metrics["roc"] = roc_curve(scores[report], lab.failing[report], threshold)
    models.set_threshold(model_dir, threshold, Path(out_dir) / "model")
    (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2))
    progress(f"evaluate: F1 {metrics['f1']:.3f} precision {metrics['precision']:.3f} recall {metrics['recall']:.3f} "
             f"threshold {threshold:.4g} (baseline robust-z F1 {metrics['baseline_robust_z']['f1']:.3f}); "
             f"gate {'passed' if metrics['gate']['passed'] else 'FAILED'}: {metrics['gate']['reason']}")
    return metrics


ROC_POINTS = 101
"""Enough for the UI's curve; a point per distinct score would be one per event on a large fleet."""


def roc_curve(scores: np.ndarray, failing: np.ndarray, threshold: float, points: int = ROC_POINTS) -> dict:
    """Per event: false positive rate and recall at up to ``points`` finite thresholds, highest first
    (score quantiles, the calibrated threshold, and one below every score, where both rates are 1)."""
    finite = scores[np.isfinite(scores)]
    # Cuts in the scores' own dtype, as the flags compare them: a float64 cut just below the lowest
    # float32 score would round up to it and leave that score unflagged.
    below_all = np.nextafter(finite.min(), np.array(-np.inf, finite.dtype))
    cuts = np.r_[np.quantile(finite, np.linspace(0.0, 1.0, points - 2)), threshold, below_all].astype(finite.dtype)
    cuts = np.unique(cuts[np.isfinite(cuts)])[::-1]
    fpr, tpr = [], []
    for cut in cuts.tolist():
        c = Counts.of(scores > cut, failing)
        fpr.append(c.fp / (c.fp + c.tn) if c.fp + c.tn else 0.0)
        tpr.append(c.recall)
    return {"thresholds": cuts.tolist(), "fpr": fpr, "tpr": tpr}


CATEGORIES = ["ok", "failing"]


def confusion_matrix(metrics: dict) -> list[list[int]]:
    """Events by truth (rows) and flag at the calibrated threshold (columns), in CATEGORIES order."""
    return [[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]]


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """The figures a KFP Metrics artifact shows, one number each."""
    alerts, base = metrics["hysteresis"], metrics["baseline_robust_z"]
    out = {name: float(metrics[name]) for name in ("f1", "precision", "recall", "false_alerts_per_1000_car_hours", "threshold")}
    if metrics.get("median_detection_delay") is not None:
        out["median_detection_delay"] = float(metrics["median_detection_delay"])
    out["alert_f1"] = float(alerts["f1"])
    out["alert_false_alerts_per_1000_car_hours"] = float(alerts["false_alerts_per_1000_car_hours"])
    out["baseline_robust_z_f1"] = float(base["f1"])
    for mode, figures in metrics["per_mode"].items():
        out[f"f1_{mode}"] = float(figures["f1"])
        out[f"recall_{mode}"] = float(figures["recall"])
    out["gate_passed"] = float(metrics["gate"]["passed"])
    return out


def _delay(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}"


def review_markdown(model: str, metrics: dict) -> str:
    """The evaluation summary a reviewer reads before approving a version."""
    gate, alerts, base = metrics["gate"], metrics["hysteresis"], metrics["baseline_robust_z"]
    verdict = "passed" if gate["passed"] else "FAILED"
    fate = ("publish makes it the candidate (stable if the model has none); it serves once promoted" if gate["passed"]
            else "publish keeps it as a rejected version with these metrics; it never serves")  # fmt: skip
    equal = base["at_model_recall"]
    lines = [
        f"# {model}: evaluation, gate {verdict}",
        "",
        f"**Gate {verdict}**: {gate['reason']} (alert figures, under the serving hysteresis); {fate}.",
        "",
        "| | per reading | as alerts (serving hysteresis) | robust z-score baseline |",
        "|---|---|---|---|",
        f"| F1 | {metrics['f1']:.3f} | **{alerts['f1']:.3f}** | {base['f1']:.3f} |",
        f"| precision | {metrics['precision']:.3f} | {alerts['precision']:.3f} | {base['precision']:.3f} |",
        f"| recall | {metrics['recall']:.3f} | {alerts['recall']:.3f} | {base['recall']:.3f} |",
        f"| false alerts per 1,000 car-hours | {metrics['false_alerts_per_1000_car_hours']:.2f} | "
        f"**{alerts['false_alerts_per_1000_car_hours']:.2f}** | {base['false_alerts_per_1000_car_hours']:.2f} |",
        f"| median detection delay (events) | {_delay(metrics['median_detection_delay'])} | "
        f"{_delay(alerts['median_detection_delay'])} | {_delay(base['median_detection_delay'])} |",
        "",
        f"At the model's recall the baseline raises {equal['false_alerts_per_1000_car_hours']:.2f} false alerts per "
        f"1,000 car-hours against the model's {metrics['false_alerts_per_1000_car_hours']:.2f}: the model "
        f"{'beats' if metrics['beats_baseline_false_alerts_at_equal_recall'] else 'does not beat'} the baseline.",
        "",
        "## Recall per failure mode",
        "",
        "| mode | cars | events | recall | as alerts | F1 | median delay (events) | failures detected / missed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, m in metrics["per_mode"].items():
        a = alerts["per_mode"].get(mode, {})
        lines.append(f"| {mode} | {m['cars']} | {m['events']} | {m['recall']:.3f} | {a.get('recall', float('nan')):.3f} | "
                     f"{m['f1']:.3f} | {_delay(m['median_detection_delay'])} | {m['failures_detected']} / {m['failures_missed']} |")
    lines += [
        "",
        "## What was measured",
        "",
        f"{metrics['events']} events of {metrics['cars']} held-out cars ({metrics['car_hours']:.1f} car-hours), threshold "
        f"{metrics['threshold']:.4g} calibrated on {'the other half of the held-out cars' if metrics['calibrated_on'] == 'half' else 'these same cars (too few failing cars to split)'}; "
        f"{metrics['undecodable']} undecodable records skipped.",
        "",
    ]
    return "\n".join(lines)


def model_metadata(train_info: dict, metrics: dict) -> dict:
    model_type = train_info["model_type"]
    from components.publish import code_version

    meta = {
        "model": models.MODEL_NAMES[model_type],
        "model_type": model_type,
        "threshold": metrics["threshold"],
        "features": list(SENSOR_FIELDS),
        "metrics": metrics,
        "kafka": {k: train_info["kafka"][k] for k in ("topic", "partitions")},
        "schema_id": CARDATA_V1_ID,
        "code_version": code_version(),
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "records": train_info["records"],
        "undecodable": metrics.get("undecodable", train_info["undecodable"]),
        "epochs": train_info["epochs"],
        "signature": {"name": "serving_default", "input": "input", "outputs": ["score", "anomaly"]},
    }
    if model_type == models.LSTM:
        meta["window"] = train_info["window"]
    if "drift_reference" in train_info:
        meta["drift_reference"] = train_info["drift_reference"]
    return meta


def publish_step(model_dir: Path, train_info: dict, metrics: dict, bucket: str, gcs_endpoint: str | None,
                 progress: Progress = _quiet) -> dict:
    """Publish the calibrated model: on a channel if it passed its gate, else kept as rejected."""
    from components.publish import publish

    meta = model_metadata(train_info, metrics)
    gate = metrics["gate"]
    rejected = None if gate["passed"] else gate["reason"]
    version, channel = publish(Path(model_dir), meta["model"], meta, bucket, gcs_endpoint, rejected=rejected)
    progress(f"publish: {version.uri} ({channel})")
    return {"model_uri": version.uri, "version": version.version, "model": meta["model"], "channel": channel}


def gate_step(result: dict) -> None:
    """Fail the run whose model fell below its floor; publish has already kept it, rejected."""
    gate = result["metrics"]["gate"]
    if not gate["passed"]:
        raise QualityGateFailed(f"{gate['reason']}; kept as rejected version {result['version']} of {result['model']}, never served")
