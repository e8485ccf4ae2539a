"""One model version loaded from its SavedModel on local disk; scores feature rows: [N,18] (autoencoder) or [N,W,18] (LSTM)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fleetpulse.contract import N_FEATURES
from fleetpulse.errors import FleetPulseError
from fleetpulse.model_store import METADATA
from fleetpulse.readings import HIGH, LOW

MODEL_TYPES = ("autoencoder", "lstm")
# Warm-up rows: every reading at the low end, the middle and the high end of its physical range.
# Any valid model scores plausible readings with finite numbers.
WARM_UP_ROWS = np.stack([LOW, (LOW + HIGH) / 2, HIGH]).astype(np.float32)


class ShapeError(ValueError):
    """The input does not have the shape the model takes."""


class InvalidModel(FleetPulseError):
    """A published version that must not be served: it does not load, or breaks the serving contract."""


@dataclass
class LoadedModel:
    """The ``serving_default`` signature of one model version plus its metadata.json."""

    path: Path
    version: int
    metadata: dict = field(default_factory=dict)
    _serve: object = None

    @classmethod
    def load(cls, path: Path, version: int | None = None) -> "LoadedModel":
        """Load and check a version (``validate``); InvalidModel says what is wrong with it."""
        import tensorflow as tf

        path = Path(path)
        meta_file = path / METADATA
        try:
            metadata = json.loads(meta_file.read_text()) if meta_file.exists() else {}
            loaded = tf.saved_model.load(str(path))
        except Exception as exc:  # noqa: BLE001 - TensorFlow raises many types for a damaged SavedModel
            raise InvalidModel(f"does not load: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
        if "serving_default" not in loaded.signatures:
            raise InvalidModel(f"has no serving_default signature (has {sorted(loaded.signatures)})")
        model = cls(path, int(version if version is not None else metadata.get("version", 0)), metadata)
        model._loaded = loaded  # keeps the variables alive
        model._serve = loaded.signatures["serving_default"]
        if "threshold" not in metadata and hasattr(loaded, "threshold"):
            metadata["threshold"] = float(loaded.threshold.numpy())
        model.validate()
        return model

    def validate(self) -> None:
        """The serving contract: metadata, the signature's input and outputs, finite scores on warm-up rows."""
        if self.metadata.get("model_type", MODEL_TYPES[0]) not in MODEL_TYPES:
            raise InvalidModel(f"metadata model_type {self.metadata.get('model_type')!r} is none of {MODEL_TYPES}")
        if self.window < 1 or (self.metadata.get("model_type") == "lstm" and self.window < 2):
            raise InvalidModel(f"metadata window {self.metadata.get('window')!r} is not a look-back of 2 or more readings")
        if not np.isfinite(self.threshold):
            raise InvalidModel(f"metadata threshold {self.metadata.get('threshold')!r} is not a finite number")
        args, kwargs = self._serve.structured_input_signature
        spec = kwargs.get("input")
        if args or spec is None or len(kwargs) != 1:
            raise InvalidModel(f"serving_default must take one tensor named 'input', takes {sorted(kwargs)} and {len(args)} positional")
        if spec.dtype.name != "float32":
            raise InvalidModel(f"serving_default input is {spec.dtype.name}, not float32")
        dims = spec.shape.as_list() if spec.shape.rank is not None else None
        want = self.input_shape
        if dims is None or len(dims) != len(want) or any(d is not None and w != -1 and d != w for d, w in zip(dims, want)):
            raise InvalidModel(f"serving_default input has shape {dims}, the metadata says {want}")
        outputs = set(self._serve.structured_outputs)
        if not {"score", "anomaly"} <= outputs:
            raise InvalidModel(f"serving_default must return score and anomaly, returns {sorted(outputs)}")
        self.warm_up()

    def warm_up(self) -> None:
        """Score the warm-up rows (so the first real request does not pay for tracing); their scores must be finite."""
        rows = WARM_UP_ROWS if self.window == 1 else np.repeat(WARM_UP_ROWS[:, None, :], self.window, axis=1)
        try:
            score, anomaly = self.score(rows)
        except Exception as exc:  # noqa: BLE001 - whatever the graph raises, this version cannot serve
            raise InvalidModel(f"fails on warm-up rows: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
        if score.shape != (len(rows),) or anomaly.shape != (len(rows),):
            raise InvalidModel(f"returns score {list(score.shape)} and anomaly {list(anomaly.shape)} for {len(rows)} rows")
        if not np.isfinite(score).all():
            raise InvalidModel(f"scores plausible warm-up readings {score.tolist()}: not finite")

    @property
    def window(self) -> int:
        """Rows per sample: 1 for a per-reading model, W for a windowed (LSTM) one."""
        return int(self.metadata.get("window", 1)) if self.metadata.get("model_type") == "lstm" else 1

    @property
    def input_shape(self) -> list[int]:
        return [-1, N_FEATURES] if self.window == 1 else [-1, self.window, N_FEATURES]

    @property
    def threshold(self) -> float:
        return float(self.metadata.get("threshold", float("nan")))

    def check_shape(self, shape) -> None:
        want = self.input_shape
        if len(shape) != len(want) or any(w != -1 and s != w for s, w in zip(shape, want)) or shape[0] < 0:
            raise ShapeError(f"input must have shape {want} (N rows of {N_FEATURES} features in SENSOR_FIELDS order), got {list(shape)}")

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(score float32 [N], anomaly bool [N]) for float32 input of ``input_shape``."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.check_shape(x.shape)
        if len(x) == 0:
            return np.zeros(0, np.float32), np.zeros(0, bool)
        out = self._serve(input=x)
        return out["score"].numpy().astype(np.float32, copy=False), out["anomaly"].numpy().astype(bool, copy=False)
