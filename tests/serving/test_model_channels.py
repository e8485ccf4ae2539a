"""The model server follows channels.json: stable under the model's own name, the candidate under
model_store.candidate_model_name; a promotion, a rollback to a lower version and a new candidate swap
without a failed request, a withdrawn candidate is unloaded, an invalid version a channel names is
skipped once while the previous one serves, and a bucket without channels.json serves its newest."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid

import httpx
import numpy as np
import pytest

from fleetpulse import model_store
from fleetpulse.clients import gcs_client
from fleetpulse.model_store import candidate_model_name
from inference.server.model_watcher import ModelWatcher
from inference.transformer.v2_client import V2Client
from tests.serving.harness import (BUCKET, THRESHOLD, ModelServer, build_broken_model, build_saved_model, build_windowed_model,
                                   healthy_rows, publish_saved, release_model, release_saved)

LSTM = {"model_type": "lstm", "window": 4, "threshold": THRESHOLD}


def infer_rest(server: ModelServer, name: str, rows: np.ndarray) -> dict:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}]}
    r = httpx.post(f"{server.url}/v2/models/{name}/infer", json=body, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def scores(body: dict) -> np.ndarray:
    return np.array(next(o["data"] for o in body["outputs"] if o["name"] == "score"), np.float32)


@pytest.fixture(scope="module")
def two_channels(gcs_endpoint, tmp_path_factory):
    """A server whose model has stable v1 (autoencoder) and candidate v2 (LSTM-shaped, window 4)."""
    tmp = tmp_path_factory.mktemp("channels")
    model = f"channels-{uuid.uuid4().hex[:8]}"
    assert release_model(gcs_endpoint, model, tmp) == (1, "stable")
    assert release_saved(gcs_endpoint, model, build_windowed_model(tmp / "lstm", 4), LSTM) == (2, "candidate")
    server = ModelServer(model, gcs_endpoint, tmp / "serve.log").wait_ready()
    server.wait_serving(candidate_model_name(model), 2)
    yield server
    server.stop()


def test_stable_and_candidate_are_served_under_two_names_with_their_versions(two_channels):
    server = two_channels
    rows = healthy_rows(3, np.random.default_rng(1))
    stable = infer_rest(server, server.model, rows)
    candidate = infer_rest(server, candidate_model_name(server.model), np.repeat(rows[:, None, :], 4, axis=1))
    assert (stable["model_name"], stable["model_version"]) == (server.model, "1")
    assert (candidate["model_name"], candidate["model_version"]) == (candidate_model_name(server.model), "2")
    # Both fixture graphs score a window's newest reading like the autoencoder scores the reading.
    np.testing.assert_allclose(scores(candidate), scores(stable), rtol=1e-5)
    grpc_candidate = V2Client(server.grpc_target, candidate_model_name(server.model))
    assert grpc_candidate.infer(np.repeat(rows[:, None, :], 4, axis=1)).model_version == "2"
    grpc_candidate.close()


def test_model_metadata_describes_both_models(two_channels):
    server = two_channels
    names = httpx.get(f"{server.url}/v2/models").json()["models"]
    assert sorted(names) == sorted([server.model, candidate_model_name(server.model)])
    stable = httpx.get(f"{server.url}/v2/models/{server.model}").json()
    candidate = httpx.get(f"{server.url}/v2/models/{candidate_model_name(server.model)}").json()
    assert stable["name"] == server.model and stable["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 18]}]
    assert candidate["name"] == candidate_model_name(server.model)
    assert candidate["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4, 18]}]
    assert stable["outputs"] == candidate["outputs"] and {o["name"] for o in stable["outputs"]} == {"score", "anomaly"}
    for name, shape in ((server.model, [-1, 18]), (candidate_model_name(server.model), [-1, 4, 18])):
        client = V2Client(server.grpc_target, name)
        assert client.metadata() == {"name": name, "inputs": [{"name": "input", "datatype": "FP32", "shape": shape}]}
        client.close()
    assert "fleetpulse_model_candidate_version 2.0" in httpx.get(f"{server.url}/metrics").text


class Hammer:
    """One thread per transport (gRPC, REST) sending the same rows to one V2 model name, recording every
    answer's version (in order, per transport) and every failure, until stopped (or a minute at most)."""

    def __init__(self, server: ModelServer, name: str, rows: np.ndarray, transports=("grpc", "rest")):
        self.server, self.name, self.rows = server, name, rows
        self.versions: dict[str, list[str]] = {t: [] for t in transports}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in transports]
        for t in self._threads:
            t.start()

    def _run(self, transport: str) -> None:
        deadline = time.monotonic() + 60
        grpc_client = V2Client(self.server.grpc_target, self.name) if transport == "grpc" else None
        versions = self.versions[transport]
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                if grpc_client is not None:
                    versions.append(grpc_client.infer(self.rows).model_version)
                else:
                    versions.append(infer_rest(self.server, self.name, self.rows)["model_version"])
            except Exception as exc:  # noqa: BLE001 - the test counts every failure, whatever it is
                self.failures.append(f"{transport}: {type(exc).__name__}: {exc}"[:300])
        if grpc_client is not None:
            grpc_client.close()

    def stop(self) -> "Hammer":
        self._stop.set()
        for t in self._threads:
            t.join(10)
        return self

    def sequences(self) -> dict[str, list[str]]:
        """Per transport, the versions that answered, each run of equal answers once: ["1", "3", "1"]."""
        return {t: [v for i, v in enumerate(vs) if i == 0 or v != vs[i - 1]] for t, vs in self.versions.items()}


@pytest.mark.slow
def test_new_candidate_promotion_and_rollback_swap_with_zero_failed_requests(gcs_endpoint, unique, tmp_path):
    model, candidate = f"lifecycle-{unique}", candidate_model_name(f"lifecycle-{unique}")
    gcs = gcs_client(gcs_endpoint)
    rows = healthy_rows(50, np.random.default_rng(5))
    assert release_model(gcs_endpoint, model, tmp_path, scale=1.0) == (1, "stable")
    assert release_model(gcs_endpoint, model, tmp_path, scale=2.0) == (2, "candidate")
    server = ModelServer(model, gcs_endpoint, tmp_path / "serve.log").wait_ready().wait_serving(candidate, 2)
    try:
        base = scores(infer_rest(server, model, rows))
        stable_load = Hammer(server, model, rows)
        candidate_load = Hammer(server, candidate, rows, transports=("rest",))

        assert release_model(gcs_endpoint, model, tmp_path, scale=3.0) == (3, "candidate")  # a newer candidate replaces v2
        server.wait_serving(candidate, 3)
        candidate_load.stop()
        assert not candidate_load.failures, candidate_load.failures[:3]
        assert candidate_load.sequences() == {"rest": ["2", "3"]}

        model_store.promote(gcs, BUCKET, model, 3)
        server.wait_serving(model, 3).wait_serving(candidate, None)  # the empty candidate channel is unloaded
        np.testing.assert_allclose(scores(infer_rest(server, model, rows)), base * 3.0, rtol=1e-4)

        model_store.rollback(gcs, BUCKET, model)  # back to a *lower* version
        server.wait_serving(model, 1)
        stable_load.stop()
        assert not stable_load.failures, stable_load.failures[:3]
        assert stable_load.sequences() == {"grpc": ["1", "3", "1"], "rest": ["1", "3", "1"]}
        np.testing.assert_allclose(scores(infer_rest(server, model, rows)), base, rtol=1e-5)
        assert server.alive()
    finally:
        server.stop()


def test_an_invalid_version_named_by_a_channel_is_skipped_once_and_the_previous_keeps_serving(gcs_endpoint, tmp_path, caplog):
    model = f"invalid-channel-{uuid.uuid4().hex[:8]}"
    gcs = gcs_client(gcs_endpoint)
    release_saved(gcs_endpoint, model, build_saved_model(tmp_path / "v1"))
    release_saved(gcs_endpoint, model, build_saved_model(tmp_path / "v2", scale=2.0))
    watcher = ModelWatcher(gcs, BUCKET, model, tmp_path / "cache")
    watcher.wait_for_first(timeout_s=30)
    assert (watcher.stable.current.version, watcher.candidate.current.version) == (1, 2)

    caplog.clear()
    assert release_saved(gcs_endpoint, model, build_broken_model(tmp_path / "v3", "truncated")) == (3, "candidate")
    assert watcher.refresh() is False
    assert watcher.candidate.current.version == 2  # the previous candidate keeps serving
    [line] = [r.getMessage() for r in caplog.records]
    assert "version 3 (candidate in channels.json) is invalid" in line and "still serves version 2" in line

    model_store.promote(gcs, BUCKET, model, 3)  # a person promotes it anyway
    caplog.clear()
    watcher.refresh()
    assert watcher.stable.current.version == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # remembered: not loaded, not logged again
    assert watcher.candidate.current is None  # the promotion emptied the candidate channel: v2 is unloaded


def test_a_fresh_server_whose_stable_is_invalid_serves_the_earlier_stable(gcs_endpoint, tmp_path):
    model = f"invalid-stable-{uuid.uuid4().hex[:8]}"
    gcs = gcs_client(gcs_endpoint)
    release_saved(gcs_endpoint, model, build_saved_model(tmp_path / "v1"))
    release_saved(gcs_endpoint, model, build_broken_model(tmp_path / "v2", "wrong_signature"))
    model_store.promote(gcs, BUCKET, model, 2)
    watcher = ModelWatcher(gcs, BUCKET, model, tmp_path / "cache")
    assert watcher.wait_for_first(timeout_s=30).version == 1
    assert set(watcher.invalid) == {2}


def test_a_promoted_candidate_keeps_its_loaded_graph(gcs_endpoint, tmp_path):
    model = f"promote-{uuid.uuid4().hex[:8]}"
    gcs = gcs_client(gcs_endpoint)
    release_saved(gcs_endpoint, model, build_saved_model(tmp_path / "v1"))
    release_saved(gcs_endpoint, model, build_saved_model(tmp_path / "v2", scale=2.0))
    watcher = ModelWatcher(gcs, BUCKET, model, tmp_path / "cache")
    watcher.wait_for_first(timeout_s=30)
    loaded = watcher.candidate.current
    model_store.promote(gcs, BUCKET, model, 2)
    assert watcher.refresh() is True
    assert watcher.stable.current is loaded and watcher.candidate.current is None
    assert loaded.path.exists() and not (tmp_path / "cache" / "1").exists()  # the files of what no name serves are gone


def test_a_bucket_without_channels_serves_its_newest_valid_version(gcs_endpoint, tmp_path):
    model = f"no-channels-{uuid.uuid4().hex[:8]}"
    gcs = gcs_client(gcs_endpoint)
    for v, saved in enumerate([build_saved_model(tmp_path / "v1"), build_saved_model(tmp_path / "v2", scale=2.0),
                               build_broken_model(tmp_path / "v3", "nan_scores")], start=1):
        assert publish_saved(gcs_endpoint, model, saved) == v
    assert model_store.read_channels(gcs, BUCKET, model)[1] == 0  # no channels.json at all
    watcher = ModelWatcher(gcs, BUCKET, model, tmp_path / "cache")
    assert watcher.wait_for_first(timeout_s=30).version == 2 and watcher.candidate.current is None
    publish_saved(gcs_endpoint, model, build_saved_model(tmp_path / "v4", scale=4.0))
    assert watcher.refresh() is True and watcher.current.version == 4


def test_the_shared_server_without_channels_serves_the_newest_version(model_server, gcs_endpoint):
    gcs = gcs_client(gcs_endpoint)
    assert model_store.read_channels(gcs, BUCKET, model_server.model)[1] == 0
    newest = model_store.list_versions(gcs, BUCKET, model_server.model)[-1]
    assert model_server.served_version(model_server.model) == str(newest)
    assert model_server.served_version(candidate_model_name(model_server.model)) is None
    assert json.loads(httpx.get(f"{model_server.url}/v2/models").text)["models"] == [model_server.model]
