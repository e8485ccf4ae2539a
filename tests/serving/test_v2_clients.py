"""Any Open Inference Protocol (V2) client gets the same scores for the same rows: REST JSON with or
without a Content-Type header, REST with the binary tensor extension, gRPC, and the stock kserve 0.15
clients (whose REST client sends JSON without a Content-Type)."""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
import numpy as np
import pytest

from inference.transformer.v2_client import V2Client
from tests.serving.harness import failing_rows, healthy_rows

BINARY_HEADER = "inference-header-content-length"


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    rng = np.random.default_rng(17)
    return np.vstack([healthy_rows(6, rng), failing_rows(4, rng)])


@pytest.fixture(scope="module")
def grpc_answer(model_server, rows):
    client = V2Client(model_server.grpc_target, model_server.model)
    answer = client.infer(rows)
    client.close()
    assert not answer.anomaly[:6].any() and answer.anomaly[6:].all()
    return answer


@pytest.fixture(scope="module")
def kserve():
    # Importing kserve parses sys.argv (kserve.model_server's flags); pytest's are not for it.
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve
    finally:
        sys.argv = argv
    return kserve


def json_body(rows: np.ndarray) -> bytes:
    tensor = {"name": "input", "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def rest_outputs(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    return {"score": np.array(outputs["score"]["data"], np.float32), "anomaly": np.array(outputs["anomaly"]["data"], bool)}


def test_rest_json_without_content_type_gets_the_same_answer_as_with_it_and_as_grpc(model_server, rows, grpc_answer):
    url = f"{model_server.url}/v2/models/{model_server.model}/infer"
    with_type = httpx.post(url, content=json_body(rows), headers={"content-type": "application/json"}, timeout=10)
    without = httpx.post(url, content=json_body(rows), timeout=10)
    assert "content-type" not in without.request.headers
    a, b = rest_outputs(with_type), rest_outputs(without)
    np.testing.assert_array_equal(a["score"], b["score"])
    np.testing.assert_array_equal(a["anomaly"], b["anomaly"])
    np.testing.assert_array_equal(b["score"], grpc_answer.score)  # float32 survives JSON exactly
    np.testing.assert_array_equal(b["anomaly"], grpc_answer.anomaly)


def test_rest_binary_tensor_extension_without_content_type_is_still_binary(model_server, rows, grpc_answer):
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                                     "parameters": {"binary_data_size": rows.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()  # fmt: skip
    r = httpx.post(f"{model_server.url}/v2/models/{model_server.model}/infer", content=header + rows.astype("<f4").tobytes(),
                   headers={BINARY_HEADER: str(len(header))}, timeout=10)
    assert r.status_code == 200, r.text
    json_len = int(r.headers[BINARY_HEADER])
    meta, offset, data = json.loads(r.content[:json_len]), json_len, {}
    for out in meta["outputs"]:
        size = out["parameters"]["binary_data_size"]
        data[out["name"]] = r.content[offset : offset + size]
        offset += size
    np.testing.assert_array_equal(np.frombuffer(data["score"], "<f4"), grpc_answer.score)
    np.testing.assert_array_equal(np.frombuffer(data["anomaly"], np.uint8).astype(bool), grpc_answer.anomaly)


def test_a_json_body_that_is_not_json_without_content_type_is_a_4xx(model_server):
    r = httpx.post(f"{model_server.url}/v2/models/{model_server.model}/infer", content=b"this is not json", timeout=10)
    assert 400 <= r.status_code < 500 and r.text


def test_stock_kserve_rest_and_grpc_clients_get_the_same_scores(model_server, rows, grpc_answer, kserve):
    from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

    def request(binary: bool) -> InferRequest:
        tensor = InferInput("input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=binary)
        return InferRequest(model_server.model, [tensor], request_id=f"stock-{binary}")

    async def ask() -> dict[str, object]:
        rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=10))
        grpc_client = InferenceGRPCClient(model_server.grpc_target, timeout=10)
        try:
            assert await rest.is_model_ready(model_server.url, model_server.model)
            assert await grpc_client.is_model_ready(model_server.model)
            return {"rest json": await rest.infer(model_server.url, request(False), model_name=model_server.model),
                    "rest binary": await rest.infer(model_server.url, request(True), model_name=model_server.model),
                    "grpc": await grpc_client.infer(request(True))}  # fmt: skip
        finally:
            await rest.close()
            await grpc_client.close()

    responses = asyncio.run(ask())
    for how, response in responses.items():
        outputs = {o.name: o.as_numpy() for o in response.outputs}
        np.testing.assert_array_equal(outputs["score"], grpc_answer.score, err_msg=how)
        np.testing.assert_array_equal(outputs["anomaly"].astype(bool), grpc_answer.anomaly, err_msg=how)
        assert response.model_name == model_server.model, how
    # kserve's REST client drops model_version when it parses a response; its gRPC client keeps it.
    assert responses["grpc"].model_version == grpc_answer.model_version
