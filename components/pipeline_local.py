"""Run train -> evaluate -> publish -> gate directly in this process (no kfp.local), for speed and debugging."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from components import steps
from components.settings import TrainSettings


def run(settings: TrainSettings, params: steps.TrainParams, truth_topic: str = "ground-truth",
        eval_from_ts: int | None = None, eval_to_ts: int | None = None, min_f1: float = 0.0,
        progress: steps.Progress = steps._quiet, work_dir: Path | None = None) -> dict:
    """The same steps as the KFP pipeline; returns {model_uri, version, channel, records, metrics}."""
    with tempfile.TemporaryDirectory(prefix="fleetpulse-train-") as tmp:
        work = Path(work_dir or tmp)
        train_dir, eval_dir = work / "train", work / "evaluate"
        train_dir.mkdir(parents=True, exist_ok=True)
        eval_dir.mkdir(parents=True, exist_ok=True)
        info = steps.train_step(params, train_dir, progress)
        metrics = steps.evaluate_step(train_dir / "model", info, eval_dir, truth_topic, eval_from_ts, eval_to_ts, min_f1, progress)
        published = steps.publish_step(eval_dir / "model", info, metrics, settings.bucket, settings.gcs_endpoint, progress)
    result = result_summary(published, info, metrics)
    steps.gate_step(result)
    return result


def result_summary(published: dict, info: dict, metrics: dict) -> dict:
    keep = ("f1", "precision", "recall", "median_detection_delay", "false_alerts_per_1000_car_hours", "threshold", "per_mode",
            "hysteresis", "baseline_robust_z", "undecodable", "calibrated_on", "report_events", "gate")
    return {
        "model_uri": published["model_uri"],
        "version": published["version"],
        "model": published["model"],
        "channel": published["channel"],
        "records": info["records"],
        "epoch_s": info["epoch_s"],
        "metrics": {k: metrics[k] for k in keep if k in metrics},
    }


def dumps(result: dict) -> str:
    return json.dumps(result, separators=(",", ":"))
