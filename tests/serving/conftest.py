"""Serving fixtures: a tiny SavedModel with the production signature, published to fake GCS, and
`fleetpulse serve` / `fleetpulse score` started as real subprocesses on free ports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from fleetpulse import model_store
from fleetpulse.clients import gcs_client
from fleetpulse.contract import N_FEATURES

ROOT = Path(__file__).resolve().parents[2]
FLEETPULSE = str(ROOT / ".venv" / "bin" / "fleetpulse")
BUCKET = "fleetpulse-models"

# Healthy readings are N(MEAN, STD); the fixture model scores mean squared z-score, so ~1 when healthy.
MEAN = np.linspace(10.0, 100.0, N_FEATURES).astype(np.float32)
STD = np.full(N_FEATURES, 2.0, dtype=np.float32)
THRESHOLD = 3.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    return (MEAN + STD * rng.standard_normal((n, N_FEATURES)) * 0.5).astype(np.float32)


def failing_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    return (MEAN + STD * (8.0 + rng.standard_normal((n, N_FEATURES)))).astype(np.float32)


def build_saved_model(path: Path, threshold: float = THRESHOLD, scale: float = 1.0) -> Path:
    """A SavedModel with the contract signature: input [N,18] -> score [N], anomaly [N]."""
    import tensorflow as tf

    class ZScore(tf.Module):
        def __init__(self):
            super().__init__()
            self.mean = tf.constant(MEAN)
            self.std = tf.constant(STD)
            self.scale = tf.constant(np.float32(scale))
            self.threshold = tf.Variable(np.float32(threshold), trainable=False, name="threshold")

        @tf.function(input_signature=[tf.TensorSpec([None, N_FEATURES], tf.float32, name="input")])
        def serve(self, input):  # noqa: A002 - the contract names the input `input`
            z = (input - self.mean) / self.std
            score = self.scale * tf.reduce_mean(tf.square(z), axis=1)
            return {"score": score, "anomaly": score > self.threshold}

    module = ZScore()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def publish_model(gcs_endpoint: str, model: str, tmp: Path, **kwargs) -> int:
    gcs = gcs_client(gcs_endpoint)
    saved = build_saved_model(tmp / f"saved-{time.monotonic_ns()}", **kwargs)
    version = model_store.claim_next_version(gcs, BUCKET, model)
    metadata = {"model_type": "autoencoder", "threshold": kwargs.get("threshold", THRESHOLD), "features": N_FEATURES}
    model_store.publish(gcs, version, saved, metadata)
    return version.version


class ModelServer:
    """`fleetpulse serve` as a subprocess on free ports; may be killed and restarted on the same ports."""

    def __init__(self, model: str, gcs_endpoint: str, log: Path):
        self.model = model
        self.http_port, self.grpc_port = free_port(), free_port()
        self.env = {**os.environ, "FLEETPULSE_SERVE_MODEL_URI": f"gs://{BUCKET}/{model}", "FLEETPULSE_SERVE_GCS_ENDPOINT": gcs_endpoint,
                    "FLEETPULSE_SERVE_POLL_INTERVAL_S": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> "ModelServer":
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([FLEETPULSE, "serve", "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port)],
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self, timeout: float = 120.0) -> "ModelServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"model server exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/v2/models/{self.model}/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"model server not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="session")
def serving_model(gcs_endpoint, tmp_path_factory) -> str:
    """A model name with one published version, shared by the read-only server tests."""
    import uuid

    name = f"test-anomaly-{uuid.uuid4().hex[:8]}"
    publish_model(gcs_endpoint, name, tmp_path_factory.mktemp("model"))
    return name


@pytest.fixture(scope="session")
def model_server(serving_model, gcs_endpoint, tmp_path_factory):
    server = ModelServer(serving_model, gcs_endpoint, tmp_path_factory.mktemp("serve") / "serve.log").wait_ready()
    yield server
    server.stop()
