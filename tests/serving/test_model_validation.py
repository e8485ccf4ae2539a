"""Model rollout is validated: a version that does not load or breaks the serving contract is never
served, the newest valid one is (at start too), and a valid model with another input shape is valid."""

from __future__ import annotations

import time
import uuid

import pytest

from fleetpulse.clients import gcs_client
from inference.server.model_watcher import ModelWatcher
from inference.server.saved_model import InvalidModel, LoadedModel
from tests.serving.harness import BUCKET, THRESHOLD, build_broken_model, build_saved_model, build_windowed_model, publish_saved

AUTOENCODER = {"model_type": "autoencoder", "threshold": THRESHOLD}
LSTM = {"model_type": "lstm", "window": 4, "threshold": THRESHOLD}


def saved_dir(tmp_path, build, *args, metadata: dict | None = AUTOENCODER):
    import json

    path = build(tmp_path / f"m-{time.monotonic_ns()}", *args)
    if metadata is not None:
        (path / "metadata.json").write_text(json.dumps(metadata))
    return path


@pytest.mark.parametrize("how, why", [("truncated", "does not load"), ("wrong_signature", "one tensor named 'input'"),
                                      ("nan_scores", "not finite")])
def test_a_broken_version_is_invalid_with_the_reason(tmp_path, how, why):
    with pytest.raises(InvalidModel, match=why):
        LoadedModel.load(saved_dir(tmp_path, build_broken_model, how), 7)


def test_a_signature_whose_input_is_not_the_metadatas_is_invalid(tmp_path):
    with pytest.raises(InvalidModel, match=r"shape \[None, 4, 18\], the metadata says \[-1, 18\]"):
        LoadedModel.load(saved_dir(tmp_path, build_windowed_model, 4, metadata=AUTOENCODER), 3)


def test_metadata_without_a_finite_threshold_is_invalid(tmp_path):
    with pytest.raises(InvalidModel, match="threshold"):
        LoadedModel.load(saved_dir(tmp_path, build_saved_model, metadata={"model_type": "autoencoder", "threshold": "nan"}), 3)


def test_a_valid_model_with_another_input_shape_is_valid(tmp_path):
    model = LoadedModel.load(saved_dir(tmp_path, build_windowed_model, 4, metadata=LSTM), 5)
    assert model.input_shape == [-1, 4, 18] and model.version == 5


def test_the_watcher_serves_the_newest_valid_version_and_skips_invalid_ones_once(gcs_endpoint, tmp_path, caplog):
    model = f"valid-{uuid.uuid4().hex[:8]}"
    publish_saved(gcs_endpoint, model, build_saved_model(tmp_path / "v1"))
    publish_saved(gcs_endpoint, model, build_broken_model(tmp_path / "v2", "truncated"))
    publish_saved(gcs_endpoint, model, build_broken_model(tmp_path / "v3", "wrong_signature"))
    watcher = ModelWatcher(gcs_client(gcs_endpoint), BUCKET, model, tmp_path / "cache")
    assert watcher.wait_for_first(timeout_s=30).version == 1  # a fresh server goes down the list
    assert set(watcher.invalid) == {2, 3}
    caplog.clear()
    assert watcher.refresh() is False and not caplog.records  # remembered: no second attempt, no second log line
    publish_saved(gcs_endpoint, model, build_windowed_model(tmp_path / "v4", 4), LSTM)
    assert watcher.refresh() is True and watcher.current.version == 4 and watcher.current.input_shape == [-1, 4, 18]
