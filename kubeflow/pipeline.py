"""car_anomaly_training: Kafka -> TF-IO -> train -> evaluate on ground truth -> publish to GCS -> gate.

Compile with ``.venv/bin/python kubeflow/pipeline.py`` (writes kubeflow/pipeline.yaml, the file a
user uploads in the Kubeflow Pipelines UI; tests fail if it is stale). ``fleetpulse train`` runs the
same pipeline locally with kfp.local. This folder is not a Python package on purpose.
"""


from pathlib import Path

from kfp import compiler, dsl

from components import kfp_components as steps

COMPILED = Path(__file__).with_name("pipeline.yaml")


def _uncached_with_retries(task) -> None:
    """For the steps that read Kafka (train, evaluate) or write GCS (publish).

    Never cached: with the default from_ts/to_ts of -1 the window is resolved inside the step, so the
    cache key would never change and a second run would reuse the first run's model and publish
    nothing new; and even a resolved window names offsets, not data (a topic re-created under the same
    name, retention moving its start, ground truth read to its end). Training is minutes, a wrong
    cache hit is a silent stale model. Publish, a side effect, must run whenever it is reached.
    Retried with backoff for broker and storage outages; a retried publish claims a fresh version
    (an interrupted one stays incomplete, invisible to readers).
    """
    task.set_caching_options(False)
    task.set_retry(num_retries=3, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="600s")


@dsl.pipeline(name="car-anomaly-training", description="Train a car anomaly model from Kafka through TensorFlow I/O, "
              "evaluate it against the simulator's ground truth, publish a versioned SavedModel to GCS as the candidate "
              "(stable if the model has none; kept as rejected below min_f1).")
def car_anomaly_training(
    kafka_bootstrap: str = "kafka-kafka-bootstrap.fleetpulse.svc:9092",
    topic: str = "sensor-data",
    truth_topic: str = "ground-truth",
    model_type: str = "autoencoder",
    epochs: int = 20,
    from_ts: int = -1,
    to_ts: int = -1,
    eval_from_ts: int = -1,
    eval_to_ts: int = -1,
    eval_share: float = 0.3,
    window: int = 8,
    min_f1: float = 0.95,
    bucket: str = "fleetpulse-models",
    gcs_endpoint: str = "",
) -> str:
    trained = steps.train(kafka_bootstrap=kafka_bootstrap, topic=topic, model_type=model_type, epochs=epochs,
                          from_ts=from_ts, to_ts=to_ts, eval_share=eval_share, eval_from_ts=eval_from_ts,
                          eval_to_ts=eval_to_ts, window=window)
    trained.set_display_name("train")
    evaluated = steps.evaluate(train_info=trained.outputs["Output"], truth_topic=truth_topic, eval_from_ts=eval_from_ts,
                               eval_to_ts=eval_to_ts, min_f1=min_f1, trained=trained.outputs["model"])
    evaluated.set_display_name("evaluate")
    published = steps.publish(train_info=trained.outputs["Output"], metrics_json=evaluated.outputs["Output"], bucket=bucket,
                              gcs_endpoint=gcs_endpoint, calibrated=evaluated.outputs["calibrated"])
    published.set_display_name("publish")
    for task in (trained, evaluated, published):
        _uncached_with_retries(task)
    gated = steps.gate(published=published.output)
    gated.set_display_name("gate")
    # No retries: its failure is the verdict, not an outage. Uncached like every step, so that no task
    # of this pipeline is ever answered from a cache.
    gated.set_caching_options(False)
    return published.output


def compile_to(path: Path = COMPILED) -> Path:
    compiler.Compiler().compile(car_anomaly_training, str(path))
    return path


if __name__ == "__main__":
    print(compile_to())
