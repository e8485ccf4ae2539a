"""The model server over real V2 REST and gRPC, started as `fleetpulse serve` on free ports."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

from inference.transformer.v2_client import V2Client
from tests.serving.harness import THRESHOLD, ModelServer, failing_rows, healthy_rows, publish_model


def infer_body(rows: np.ndarray, name: str = "input", datatype: str = "FP32") -> dict:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": list(rows.shape), "data": rows.ravel().tolist()}]}


def test_rest_v2_infer_returns_score_and_anomaly_with_an_id(model_server):
    rng = np.random.default_rng(1)
    rows = np.vstack([healthy_rows(3, rng), failing_rows(2, rng)])
    r = httpx.post(f"{model_server.url}/v2/models/{model_server.model}/infer", json=infer_body(rows), timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"]
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["score"]["datatype"] == "FP32" and outputs["score"]["shape"] == [5]
    assert outputs["anomaly"]["datatype"] == "BOOL"
    assert outputs["anomaly"]["data"] == [False, False, False, True, True]
    assert all(s > THRESHOLD for s in outputs["score"]["data"][3:])


def test_rest_echoes_the_request_id(model_server):
    body = {**infer_body(healthy_rows(1, np.random.default_rng(2))), "id": "req-42"}
    r = httpx.post(f"{model_server.url}/v2/models/{model_server.model}/infer", json=body, timeout=10)
    assert r.status_code == 200 and r.json()["id"] == "req-42"


def test_grpc_v2_infer_with_raw_tensors(model_server):
    client = V2Client(model_server.grpc_target, model_server.model)
    rng = np.random.default_rng(3)
    rows = np.vstack([healthy_rows(500, rng), failing_rows(500, rng)])
    result = client.infer(rows)
    assert result.score.shape == (1000,) and result.score.dtype == np.float32
    assert not result.anomaly[:500].any() and result.anomaly[500:].all()
    assert result.threshold == pytest.approx(THRESHOLD)
    assert int(result.model_version) >= 1
    client.close()


def test_health_metadata_and_metrics_endpoints(model_server):
    base = model_server.url
    assert httpx.get(f"{base}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{base}/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(f"{base}/v2/models/{model_server.model}").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 18]}]
    assert {o["name"] for o in meta["outputs"]} == {"score", "anomaly"}
    metrics = httpx.get(f"{base}/metrics").text
    assert "fleetpulse_model_version" in metrics and "request_predict_seconds" in metrics
    assert "fleetpulse_model_candidate_version 0.0" in metrics  # this model has no candidate


@pytest.mark.parametrize(
    "body, content_type",
    [
        ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 17], "data": [0.0] * 34}]}, "application/json"),
        ({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 18], "data": [0.0] * 18}]}, "application/json"),
        ({"inputs": [{"name": "input", "datatype": "INT32", "shape": [1, 18], "data": [0] * 18}]}, "application/json"),
        ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 18], "data": [1.0, 2.0]}]}, "application/json"),
        ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 18], "data": ["a"] * 18}]}, "application/json"),
        ({"inputs": 3}, "application/json"),
        ("this is not json", "application/json"),
    ],
    ids=["wrong-shape", "wrong-name", "wrong-datatype", "wrong-count", "not-numbers", "inputs-not-list", "non-json"],
)
def test_malformed_rest_request_gets_4xx_with_a_message_and_server_lives(model_server, body, content_type):
    content = body if isinstance(body, str) else __import__("json").dumps(body)
    r = httpx.post(f"{model_server.url}/v2/models/{model_server.model}/infer", content=content,
                   headers={"content-type": content_type}, timeout=10)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.text
    ok = httpx.post(f"{model_server.url}/v2/models/{model_server.model}/infer", json=infer_body(healthy_rows(1, np.random.default_rng(0))))
    assert ok.status_code == 200 and model_server.alive()


def test_malformed_grpc_request_is_invalid_argument_and_server_lives(model_server):
    import grpc

    from inference.transformer.v2_client import pb

    client = V2Client(model_server.grpc_target, model_server.model)
    bad = client.request(np.zeros((2, 17), np.float32))
    with pytest.raises(grpc.RpcError) as err:
        client.infer_future(bad).result()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "shape" in err.value.details()
    wrong_name = pb.ModelInferRequest(model_name=model_server.model, inputs=[pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="FP32", shape=[1, 18])], raw_input_contents=[np.zeros(18, np.float32).tobytes()])
    with pytest.raises(grpc.RpcError) as err:
        client.infer_future(wrong_name).result()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert client.infer(np.zeros((1, 18))).score.shape == (1,)
    client.close()


@pytest.mark.slow
def test_newer_version_is_picked_up_without_restart_or_failed_requests(gcs_endpoint, unique, tmp_path):
    model = f"swap-anomaly-{unique}"
    publish_model(gcs_endpoint, model, tmp_path, scale=1.0)
    server = ModelServer(model, gcs_endpoint, tmp_path / "serve.log").wait_ready()
    try:
        client = V2Client(server.grpc_target, model)
        rows = healthy_rows(200, np.random.default_rng(4))
        first = client.infer(rows)
        errors: list[Exception] = []
        versions: set[str] = set()
        stop = threading.Event()

        def hammer():
            c = V2Client(server.grpc_target, model)
            while not stop.is_set():
                try:
                    versions.add(c.infer(rows).model_version)
                except Exception as exc:  # noqa: BLE001 - the test collects any failure
                    errors.append(exc)

        threads = [threading.Thread(target=hammer) for _ in range(2)]
        for t in threads:
            t.start()
        new_version = publish_model(gcs_endpoint, model, tmp_path, scale=10.0)
        deadline = time.monotonic() + 60
        while str(new_version) not in versions and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        assert str(new_version) in versions
        second = client.infer(rows)
        assert second.model_version == str(new_version)
        np.testing.assert_allclose(second.score, first.score * 10.0, rtol=1e-4)
        assert server.alive()
    finally:
        server.stop()
