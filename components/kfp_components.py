"""The pipeline steps as KFP lightweight components: thin wrappers over components/steps.py.

Each runs in the project's training image (ghcr.io/fleetpulse/training, where the fleetpulse
package and TensorFlow I/O are installed), so nothing is pip-installed at run time
(``install_kfp_package=False``). Under ``kfp.local.SubprocessRunner(use_venv=False)`` they run in
the current interpreter, which has the same packages. Optional integers use -1 for "not set",
since KFP parameters have no None. No `from __future__ import annotations`: KFP reads the real types.
"""


from kfp import dsl
from kfp.dsl import ClassificationMetrics, Input, Markdown, Metrics, Model, Output

TRAINING_IMAGE = "ghcr.io/fleetpulse/training:0.1.0"


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def train(kafka_bootstrap: str, topic: str, model_type: str, epochs: int, from_ts: int, to_ts: int,
          eval_share: float, eval_from_ts: int, eval_to_ts: int, window: int, model: Output[Model]) -> str:
    """Read the Kafka window through TF-IO and fit the model; returns the train info as JSON.

    Without an eval window a share of the cars is held out; with one, training uses every car."""
    import json
    from pathlib import Path

    from components.steps import TrainParams, train_step

    params = TrainParams(kafka_bootstrap, topic, model_type, epochs, None if from_ts < 0 else from_ts,
                         None if to_ts < 0 else to_ts, eval_share, eval_from_ts >= 0 or eval_to_ts >= 0, window)
    out = Path(model.path)
    out.mkdir(parents=True, exist_ok=True)
    info = train_step(params, out, progress=lambda m: print(m, flush=True))
    model.metadata["model_type"] = model_type
    return json.dumps(info)


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def evaluate(train_info: str, truth_topic: str, eval_from_ts: int, eval_to_ts: int, min_f1: float,
             trained: Input[Model], calibrated: Output[Model], metrics: Output[Metrics],
             classification: Output[ClassificationMetrics], summary: Output[Markdown]) -> str:
    """Calibrate the threshold on ground truth; log the figures, the confusion matrix and ROC, and the
    reviewer's summary; returns metrics JSON, with whether F1 reached min_f1."""
    import json
    from pathlib import Path

    from components import models, steps

    out = Path(calibrated.path)
    out.mkdir(parents=True, exist_ok=True)
    info = json.loads(train_info)
    result = steps.evaluate_step(Path(trained.path) / "model", info, out, truth_topic,
                                 None if eval_from_ts < 0 else eval_from_ts, None if eval_to_ts < 0 else eval_to_ts,
                                 min_f1, progress=lambda m: print(m, flush=True))
    for name, value in steps.scalar_metrics(result).items():
        metrics.log_metric(name, value)
    classification.log_confusion_matrix(steps.CATEGORIES, steps.confusion_matrix(result))
    roc = result["roc"]
    classification.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
    Path(summary.path).write_text(steps.review_markdown(models.MODEL_NAMES[info["model_type"]], result))
    return json.dumps(result)


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def publish(train_info: str, metrics_json: str, bucket: str, gcs_endpoint: str, calibrated: Input[Model]) -> str:
    """Publish the calibrated SavedModel as the next version, on its channel (rejected below the gate);
    returns {model_uri, version, channel, ...} as JSON."""
    import json
    from pathlib import Path

    from components.pipeline_local import dumps, result_summary
    from components.steps import publish_step

    info, metrics = json.loads(train_info), json.loads(metrics_json)
    published = publish_step(Path(calibrated.path) / "model", info, metrics, bucket, gcs_endpoint or None,
                             progress=lambda m: print(m, flush=True))
    return dumps(result_summary(published, info, metrics))


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def gate(published: str) -> None:
    """Fail the run if the model fell below min_f1 (publish has kept it as a rejected version)."""
    import json

    from components.steps import gate_step

    gate_step(json.loads(published))
