"""What the Kubeflow UI shows of a run, read from a kfp.local run's artifacts: the Metrics, the
confusion matrix and ROC (ClassificationMetrics) and the reviewer's Markdown summary, checked against
the figures the evaluate step returned. One `fleetpulse train` run (LSTM, kfp runner) serves them all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from components import steps
from components.gate import QualityGate
from components.evaluate import evaluate_scores
from devtools.stack import access
from fleetpulse import model_store
from fleetpulse.clients import gcs_client
from fleetpulse.evaluation import Labels
from tests.training.conftest import _fleet_topics

FP = str(Path(sys.executable).with_name("fleetpulse"))
MIN_F1 = 0.5


@dataclass
class KfpRun:
    out: subprocess.CompletedProcess
    bucket: str
    root: Path

    def task(self, name: str) -> Path:
        [run_dir] = self.root.iterdir()
        return run_dir / name

    def executor_output(self, task: str) -> dict:
        return json.loads((self.task(task) / "executor_output.json").read_text())

    def artifact(self, task: str, output: str) -> dict:
        [artifact] = self.executor_output(task)["artifacts"][output]["artifacts"]
        return artifact

    def evaluated(self) -> dict:
        """The evaluate step's own figures (its returned metrics JSON)."""
        return json.loads(self.executor_output("evaluate")["parameterValues"]["Output"])


@pytest.fixture(scope="module")
def kfp_run(kafka, gcs_endpoint, tmp_path_factory) -> KfpRun:
    # The simulator's cars as in fleet_topics, with a fifth of them failing: enough failures held out
    # for the gate to judge alert F1 (components.gate), as on a real training window.
    fleet_topics = _fleet_topics(kafka, simulated=True, n_cars=400, n_events=60, failures=0.2, seed=11)
    bucket = f"fp-kfp-{uuid.uuid4().hex[:10]}"
    gcs_client(gcs_endpoint).create_bucket(bucket)
    root = tmp_path_factory.mktemp("kfp-root")
    # Module-scoped, so before the per-test training_login: the login is given here the same way.
    env = {**os.environ, "FLEETPULSE_TRAIN_GCS_ENDPOINT": gcs_endpoint, **access.connection_env("TRAIN", fleet_topics.kafka)}
    out = subprocess.run([FP, "train", "--model", "lstm", "--epochs", "3", "--topic", fleet_topics.topic, "--truth-topic",
                          fleet_topics.truth_topic, "--bucket", bucket, "--min-f1", str(MIN_F1), "--pipeline-root", str(root),
                          "--json"], capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return KfpRun(out, bucket, root)


@pytest.mark.slow
def test_lstm_runs_through_kfp_local_and_cli_json_is_the_last_stdout_line(kfp_run, gcs_endpoint):
    out, model_bucket = kfp_run.out, kfp_run.bucket
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["model_uri"] == f"gs://{model_bucket}/car-anomaly-lstm/1/" and result["version"] == 1
    assert result["records"] == 24_000
    assert {"f1", "precision", "recall"} <= result["metrics"].keys()
    assert "train: epoch 3/3" in out.stderr and "kfp.local: step publish succeeded" in out.stderr

    meta = model_store.read_metadata(gcs_client(gcs_endpoint), model_store.ModelVersion(model_bucket, "car-anomaly-lstm", 1))
    assert meta["model_type"] == "lstm" and meta["window"] == 8
    assert result["channel"] == model_store.STABLE and "kfp.local: step gate succeeded" in out.stderr


@pytest.mark.slow
def test_confusion_matrix_counts_every_reported_event_as_the_metrics_do(kfp_run):
    figures = kfp_run.evaluated()
    matrix = kfp_run.artifact("evaluate", "classification")["metadata"]["confusionMatrix"]
    assert [spec["displayName"] for spec in matrix["annotationSpecs"]] == ["ok", "failing"]
    [[tn, fp], [fn, tp]] = [row["row"] for row in matrix["rows"]]
    assert tn + fp + fn + tp == figures["events"] == figures["report_events"]
    assert (tp, fp, fn, tn) == (figures["tp"], figures["fp"], figures["fn"], figures["tn"])
    logged = kfp_run.artifact("evaluate", "metrics")["metadata"]
    assert logged["recall"] == pytest.approx(tp / (tp + fn)) and logged["precision"] == pytest.approx(tp / (tp + fp))
    assert logged["threshold"] == pytest.approx(figures["threshold"]) and logged["gate_passed"] == 1.0


@pytest.mark.slow
def test_roc_is_finite_monotone_bounded_and_meets_the_matrix_at_the_calibrated_threshold(kfp_run):
    figures = kfp_run.evaluated()
    points = kfp_run.artifact("evaluate", "classification")["metadata"]["confidenceMetrics"]
    thresholds = np.array([p["confidenceThreshold"] for p in points])
    fpr, tpr = np.array([p["falsePositiveRate"] for p in points]), np.array([p["recall"] for p in points])
    assert 10 <= len(points) <= steps.ROC_POINTS
    assert np.isfinite(thresholds).all() and np.isfinite(fpr).all() and np.isfinite(tpr).all()
    assert (np.diff(thresholds) < 0).all() and (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    [at] = np.flatnonzero(np.isclose(thresholds, figures["threshold"], rtol=0, atol=1e-12))
    assert fpr[at] == pytest.approx(figures["fp"] / (figures["fp"] + figures["tn"]))
    assert tpr[at] == pytest.approx(figures["recall"])


@pytest.mark.slow
def test_summary_names_the_gate_result_alert_figures_and_recall_per_mode(kfp_run):
    figures = kfp_run.evaluated()
    summary = (kfp_run.task("evaluate") / "summary").read_text()
    assert summary.startswith("# car-anomaly-lstm: evaluation, gate passed")
    gate = figures["gate"]
    assert gate["judged"] == "alert_f1" and gate["failures"] >= gate["min_failures"]
    assert f"**Gate passed**: alert F1 {figures['hysteresis']['f1']:.3f} on {gate['failures']} failures reaches the floor --min-f1 {MIN_F1:g}" in summary
    assert f"**{figures['hysteresis']['f1']:.3f}**" in summary
    assert f"**{figures['hysteresis']['false_alerts_per_1000_car_hours']:.2f}**" in summary
    assert figures["per_mode"]
    for mode, m in figures["per_mode"].items():
        assert f"| {mode} | {m['cars']} | {m['events']} | {m['recall']:.3f} |" in summary


def _evaluated(seed: int = 0) -> dict:
    """Figures of a small synthetic fleet through the real calibration and evaluation."""
    rng = np.random.default_rng(seed)
    cars = np.repeat(np.arange(40), 50)
    modes = np.where((cars % 8 == 0) & (np.tile(np.arange(50), 40) >= 20), "overheating", "healthy").astype(object)
    scores = rng.gamma(2.0, 0.3, len(cars)).astype(np.float32) + np.where(modes != "healthy", 2.0, 0.0).astype(np.float32)
    keys = np.array([f"car-{c}".encode() for c in cars], dtype=object)
    _, metrics = evaluate_scores(scores, scores, keys, Labels(cars, modes, np.full(len(cars), 10 / 3600)))
    return {**metrics, "undecodable": 0}


def test_roc_ignores_nan_scores_and_keeps_ties_to_one_point():
    scores = np.array([np.nan, 3.0, 3.0, 2.0, 1.0, 1.0, np.inf], np.float32)
    failing = np.array([True, True, False, True, False, False, False])
    roc = steps.roc_curve(scores, failing, 2.5, points=50)
    assert np.isfinite(roc["thresholds"]).all() and len(set(roc["thresholds"])) == len(roc["thresholds"]) <= 50
    assert roc["fpr"] == sorted(roc["fpr"]) and roc["tpr"] == sorted(roc["tpr"])


def test_summary_of_a_model_below_its_gate_says_it_is_kept_rejected_and_never_serves():
    metrics = _evaluated()
    metrics["gate"] = QualityGate(0.999).judge({**metrics["hysteresis"], "f1": 0.9, "failures_detected": 12, "failures_missed": 0})
    summary = steps.review_markdown("car-anomaly", metrics)
    assert summary.startswith("# car-anomaly: evaluation, gate FAILED")
    assert "**Gate FAILED**: alert F1 0.900 on 12 failures is below the floor --min-f1 0.999" in summary and "rejected version" in summary and "never serves" in summary
    assert "| overheating |" in summary
