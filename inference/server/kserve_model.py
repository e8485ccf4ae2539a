"""The thin kserve.Model adapter: V2 request -> LoadedModel -> V2 response with ``score`` and ``anomaly``."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput, ModelNotFound
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from inference.server.model_watcher import Slot
from inference.server.saved_model import LoadedModel, ShapeError

INPUT_NAME = "input"
# Below this many rows the thread hop costs more than it overlaps.
_EXECUTOR_MIN_ROWS = 256


class CarAnomalyModel(Model):
    """One served name (stable or candidate): whatever version its slot holds at the moment a request starts."""

    def __init__(self, slot: Slot):
        super().__init__(slot.name)
        self.slot = slot

    def load(self) -> bool:
        self.ready = self.slot.current is not None
        return self.ready

    def get_input_types(self) -> list[dict]:
        model = self.slot.current
        return [{"name": INPUT_NAME, "datatype": "FP32", "shape": model.input_shape if model else []}]

    def get_output_types(self) -> list[dict]:
        return [{"name": "score", "datatype": "FP32", "shape": [-1]}, {"name": "anomaly", "datatype": "BOOL", "shape": [-1]}]

    async def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
        if not isinstance(payload, InferRequest):
            raise InvalidInput("expected an Open Inference Protocol (V2) request: POST /v2/models/<model>/infer")
        model = self.slot.current  # one version for the whole request, even if a swap happens now
        if model is None:  # the candidate was withdrawn while this request was on its way
            raise ModelNotFound(self.name)
        x = _input_rows(payload, model)
        if len(x) >= _EXECUTOR_MIN_ROWS:
            # TensorFlow releases the GIL: the event loop parses the next request meanwhile.
            score, anomaly = await asyncio.get_running_loop().run_in_executor(None, model.score, x)
        else:
            score, anomaly = model.score(x)
        binary = payload.use_binary_outputs
        outputs = [InferOutput("score", [len(score)], "FP32"), InferOutput("anomaly", [len(anomaly)], "BOOL")]
        outputs[0].set_data_from_numpy(score, binary_data=binary)
        outputs[1].set_data_from_numpy(anomaly, binary_data=binary)
        # KServe turns a V2 response without an id into a 500 and resets the keep-alive connection.
        return InferResponse(response_id=payload.id or str(uuid.uuid4()), model_name=self.name, infer_outputs=outputs,
                             model_version=str(model.version), use_binary_outputs=binary,
                             parameters={"threshold": str(model.threshold)})


def _input_rows(request: InferRequest, model: LoadedModel) -> np.ndarray:
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT_NAME:
        names = [i.name for i in request.inputs]
        raise InvalidInput(f"expected exactly one input named {INPUT_NAME!r}, got {names}")
    tensor = request.inputs[0]
    if tensor.datatype != "FP32":
        raise InvalidInput(f"input {INPUT_NAME!r} must be FP32, got {tensor.datatype}")
    shape = [int(d) for d in tensor.shape]
    try:
        model.check_shape(shape)
        x = tensor.as_numpy()
    except ShapeError as exc:
        raise InvalidInput(str(exc)) from None
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"input {INPUT_NAME!r} data does not match shape {shape}: {exc}") from None
    return x
