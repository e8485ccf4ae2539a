"""The pipeline's three steps as plain functions: train, evaluate, publish.

The KFP components (kfp_components.py) and the direct runner (pipeline_local.py) both call these;
each step reads its inputs from arguments and directories and returns JSON-able dicts.
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
from components.evaluate import ZScoreBaseline, evaluate_scores
from components.kafka_dataset import (
    Window,
    WindowError,
    is_eval_car,
    read_records,
    read_timed_records,
    read_truth,
    resolve_window,
)
from fleetpulse.contract import CARDATA_V1_ID, SENSOR_FIELDS
from fleetpulse.errors import FleetPulseError
from fleetpulse.evaluation import label

Progress = Callable[[str], None]


class QualityGateFailed(FleetPulseError):
    """The evaluated model is below the F1 floor; it is not published."""


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
    progress(f"train: {len(records)} records decoded in {read_s:.1f}s ({records.undecodable} undecodable), {len(values)} for training")

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

    Raises QualityGateFailed (after writing metrics) when F1 < min_f1.
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
    models.set_threshold(model_dir, threshold, Path(out_dir) / "model")
    (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2))
    progress(f"evaluate: F1 {metrics['f1']:.3f} precision {metrics['precision']:.3f} recall {metrics['recall']:.3f} "
             f"threshold {threshold:.4g} (baseline robust-z F1 {metrics['baseline_robust_z']['f1']:.3f})")
    if metrics["f1"] < min_f1:
        raise QualityGateFailed(f"F1 {metrics['f1']:.3f} is below the floor --min-f1 {min_f1}; model not published")
    return metrics


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
    return meta


def publish_step(model_dir: Path, train_info: dict, metrics: dict, bucket: str, gcs_endpoint: str | None,
                 progress: Progress = _quiet) -> dict:
    from components.publish import publish

    meta = model_metadata(train_info, metrics)
    version = publish(Path(model_dir), meta["model"], meta, bucket, gcs_endpoint)
    progress(f"publish: {version.uri}")
    return {"model_uri": version.uri, "version": version.version, "model": meta["model"]}
