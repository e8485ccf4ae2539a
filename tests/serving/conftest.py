"""Serving fixtures: a published test model and one `fleetpulse serve` for the read-only server tests
(helpers in tests/serving/harness.py)."""

from __future__ import annotations

import uuid

import pytest

from tests.serving.harness import ModelServer, publish_model


@pytest.fixture(scope="session")
def serving_model(gcs_endpoint, tmp_path_factory) -> str:
    """A model name with one published version, shared by the read-only server tests."""
    name = f"test-anomaly-{uuid.uuid4().hex[:8]}"
    publish_model(gcs_endpoint, name, tmp_path_factory.mktemp("model"))
    return name


@pytest.fixture(scope="session")
def model_server(serving_model, gcs_endpoint, tmp_path_factory):
    server = ModelServer(serving_model, gcs_endpoint, tmp_path_factory.mktemp("serve") / "serve.log").wait_ready()
    yield server
    server.stop()
