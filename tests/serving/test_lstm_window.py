"""A windowed (LSTM) model gets each car's last W readings in stream order from `fleetpulse score`."""

from __future__ import annotations

import time
import uuid

import numpy as np

from fleetpulse import model_store
from fleetpulse.clients import gcs_client
from fleetpulse.contract import N_FEATURES
from tests.serving.harness import BUCKET, MEAN, STD, THRESHOLD, ModelServer, N_CARS, Run, produce_one_failing_car

WINDOW = 4


def publish_oldest_reading_model(gcs_endpoint: str, model: str, tmp) -> None:
    """input [N, 4, 18] -> the z-score of the *oldest* reading in each window: a car's score turns
    high exactly W - 1 readings after its readings do, if and only if the windows are right."""
    import tensorflow as tf

    class Oldest(tf.Module):
        def __init__(self):
            super().__init__()
            self.threshold = tf.Variable(np.float32(THRESHOLD), trainable=False, name="threshold")

        @tf.function(input_signature=[tf.TensorSpec([None, WINDOW, N_FEATURES], tf.float32, name="input")])
        def serve(self, input):  # noqa: A002 - the contract names the input `input`
            score = tf.reduce_mean(tf.square((input[:, 0, :] - MEAN) / STD), axis=1)
            return {"score": score, "anomaly": score > self.threshold}

    module = Oldest()
    path = tmp / f"saved-{time.monotonic_ns()}"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    gcs = gcs_client(gcs_endpoint)
    version = model_store.claim_next_version(gcs, BUCKET, model)
    model_store.publish(gcs, version, path, {"model_type": "lstm", "window": WINDOW, "threshold": THRESHOLD})


def test_transformer_sends_windowed_model_each_cars_last_readings_in_order(gcs_endpoint, kafka, unique, tmp_path):
    model = f"test-lstm-{uuid.uuid4().hex[:8]}"
    publish_oldest_reading_model(gcs_endpoint, model, tmp_path)
    server = ModelServer(model, gcs_endpoint, tmp_path / "serve.log").wait_ready()
    try:
        run = Run(unique, kafka, server)
        ids = produce_one_failing_car(run, np.random.default_rng(11))  # car-000's readings fail from its 11th on
        run.producer.flush()

        summary = run.score()
    finally:
        server.stop()

    assert summary["scored"] == 30 * N_CARS
    twins = run.twins()
    # Readings 10..29 fail; the oldest reading of the window is failing from reading 13 on: 17 readings.
    assert twins["car-000"]["counters"]["over_threshold"] == 30 - 10 - (WINDOW - 1)
    assert twins["car-000"]["status"] == "failing"
    assert all(twins[c]["status"] == "ok" and twins[c]["counters"]["over_threshold"] == 0 for c in ids[1:])
